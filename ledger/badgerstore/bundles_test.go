package badgerstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4"
)

func leafK(i uint64) []byte { return appendLeafKey(nil, i) }

// small sizes a store's memtables down (8 MiB), so that the many opens of
// these tests do not each zero badger's default 64 MiB arenas.
var small = Options{MemoryBudget: 64 << 20}

// plainStore makes, in dir, a store as versions before leaf bundles made
// it: each leaf under its own key, no layout record.
func plainStore(t *testing.T, dir string, leaves int) {
	t.Helper()
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil).WithMemTableSize(8 << 20))
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(txn *badger.Txn) error {
		for i := range leaves {
			if err := txn.Set(leafK(uint64(i)), leafValue(uint64(i), 0)); err != nil {
				return err
			}
		}
		return txn.Set([]byte("mtree"), binary.BigEndian.AppendUint64(nil, uint64(leaves)))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

// leafValue is a value for leaf i, version gen, of a length that varies
// with i (some empty, some past the value threshold).
func leafValue(i uint64, gen int) []byte {
	if i%37 == 5 {
		return []byte{}
	}
	return bytes.Repeat(fmt.Appendf(nil, "%d.%d;", i, gen), int(i%97)+1)
}

// rawKeys lists the keys badger holds, as stored.
func rawKeys(t *testing.T, s *Store) [][]byte {
	t.Helper()
	var out [][]byte
	err := s.db.View(func(txn *badger.Txn) error {
		opt := badger.DefaultIteratorOptions
		opt.PrefetchValues = false
		it := txn.NewIterator(opt)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			out = append(out, it.Item().KeyCopy(nil))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestLeafBundlesAgainstModel: a store that keeps its leaves in bundles,
// and one made before bundles, answer Get and Scan exactly as a map of the
// committed keys does, through batches that extend the log, leave gaps,
// overwrite leaves, repeat a key within a batch, and mix leaf keys with
// other keys (also other keys starting with 'l', which sort between leaf
// keys), before and after a reopen.
func TestLeafBundlesAgainstModel(t *testing.T) {
	for _, layout := range []string{"bundles", "plain"} {
		t.Run(layout, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			model := map[string][]byte{}
			if layout == "plain" {
				plainStore(t, dir, 300)
				for i := range uint64(300) {
					model[string(leafK(i))] = leafValue(i, 0)
				}
				model["mtree"] = binary.BigEndian.AppendUint64(nil, 300)
			}
			s := open(t, dir, small)
			if s.bundles != (layout == "bundles") {
				t.Fatalf("store keeps bundles = %v, want %v", s.bundles, layout == "bundles")
			}
			r := rand.New(rand.NewPCG(1, 2))
			next := uint64(len(model))
			if layout == "plain" {
				next = 300
			}
			for gen := 1; gen <= 24; gen++ {
				var ks, vs [][]byte
				add := func(k, v []byte) {
					ks, vs = append(ks, k), append(vs, v)
					model[string(k)] = v
				}
				switch r.IntN(5) {
				case 0: // overwrite some leaves, also of full bundles
					for range r.IntN(20) + 1 {
						if next > 0 {
							i := r.Uint64N(next)
							add(leafK(i), leafValue(i, gen))
						}
					}
				case 1: // a gap, then leaves
					next += uint64(r.IntN(300)) + 1
					fallthrough
				default: // extend, often across bundle boundaries
					for range r.IntN(700) + 1 {
						add(leafK(next), leafValue(next, gen))
						next++
					}
				}
				if r.IntN(3) == 0 && next > 0 { // a repeat within the batch: the later wins
					i := r.Uint64N(next)
					add(leafK(i), []byte("first"))
					add(leafK(i), leafValue(i, gen+1000))
				}
				// Other keys, some of them between leaf keys.
				i := r.Uint64N(next + 1)
				add(append(leafK(i), 'x'), []byte("after leaf key"))
				add([]byte{leafKind}, []byte("just l"))
				add([]byte("lz"), []byte("past the leaves"))
				add([]byte("k"), fmt.Appendf(nil, "%d", gen))
				add(fmt.Appendf(nil, "t%04d", gen), bytes.Repeat([]byte("t"), 300))
				r.Shuffle(len(ks), func(a, b int) {
					// keep repeats in order: shuffle only distinct keys
					if bytes.Equal(ks[a], ks[b]) {
						return
					}
					for _, k := range [][]byte{ks[a], ks[b]} {
						if countKey(ks, k) > 1 {
							return
						}
					}
					ks[a], ks[b] = ks[b], ks[a]
					vs[a], vs[b] = vs[b], vs[a]
				})
				if err := s.Commit(ks, vs); err != nil {
					t.Fatalf("batch %d: %v", gen, err)
				}
				if gen%8 == 0 {
					if err := s.Close(); err != nil {
						t.Fatal(err)
					}
					s = open(t, dir, small)
				}
				checkModel(t, s, model, next, r)
			}
			// Each layout stores what it says.
			var plain, bundles int
			for _, k := range rawKeys(t, s) {
				switch {
				case isLeafKey(k):
					plain++
				case bytes.HasPrefix(k, append(bytes.Clone(reservedPrefix), bundleKind)):
					bundles++
				}
			}
			if layout == "bundles" && (plain != 0 || bundles == 0 || bundles > int(next)/bundleWidth+1) {
				t.Errorf("bundled store holds %d leaf keys and %d bundles for %d leaf indexes", plain, bundles, next)
			}
			if layout == "plain" && (plain == 0 || bundles != 0) {
				t.Errorf("store made before bundles holds %d leaf keys and %d bundles", plain, bundles)
			}
			s.Close()
		})
	}
}

func countKey(ks [][]byte, k []byte) int {
	n := 0
	for _, x := range ks {
		if bytes.Equal(x, k) {
			n++
		}
	}
	return n
}

// checkModel compares Get of every leaf index up to next (and a few
// others) and Scan of random ranges with the model.
func checkModel(t *testing.T, s *Store, model map[string][]byte, next uint64, r *rand.Rand) {
	t.Helper()
	var ks [][]byte
	for i := range next + 3 {
		ks = append(ks, leafK(i))
	}
	ks = append(ks, []byte("k"), []byte("missing"), []byte{leafKind}, leafK(1<<64-1))
	// Out of order and repeated, too.
	ks = append(ks, leafK(7), leafK(3), leafK(7))
	got, err := s.Get(ks...)
	if err != nil {
		t.Fatal(err)
	}
	for j, k := range ks {
		want, ok := model[string(k)]
		if !ok && got[j] != nil || ok && (got[j] == nil || !bytes.Equal(got[j], want)) {
			t.Fatalf("Get(%x) = %q (nil %v), want %q (present %v)", k, got[j], got[j] == nil, want, ok)
		}
	}
	sorted := make([]string, 0, len(model))
	for k := range model {
		sorted = append(sorted, k)
	}
	slices.Sort(sorted)
	bound := func() []byte {
		switch r.IntN(6) {
		case 0:
			return nil
		case 1:
			return []byte{leafKind}
		case 2:
			return append(leafK(r.Uint64N(next+2)), 'x')
		case 3:
			return leafK(r.Uint64N(next + 2))[:r.IntN(9)+1]
		default:
			return leafK(r.Uint64N(next + 2))
		}
	}
	for range 20 {
		start, end := bound(), bound()
		var want []string
		for _, k := range sorted {
			if k >= string(start) && (end == nil || k < string(end)) {
				want = append(want, k)
			}
		}
		var gotKeys []string
		err := s.Scan(start, end, func(k, v []byte) error {
			if !bytes.Equal(v, model[string(k)]) {
				return fmt.Errorf("Scan: key %x has %q, want %q", k, v, model[string(k)])
			}
			gotKeys = append(gotKeys, string(k))
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(gotKeys, want) {
			t.Fatalf("Scan(%x, %x) = %d keys, want %d\n got %x\nwant %x", start, end, len(gotKeys), len(want), gotKeys, want)
		}
	}
	// A scan stopped by its callback returns the callback's error.
	stop := errors.New("stop")
	n := 0
	if err := s.Scan(nil, nil, func(k, v []byte) error { n++; return stop }); err != stop || n != 1 {
		t.Fatalf("Scan stopped by fn = %v after %d keys, want the callback's error after 1", err, n)
	}
}

// TestLeafBundlesLayout: a new store keeps leaves in bundles and says so in
// its layout record; a store made before bundles stays as it is, also when
// leaves are added; a backup of either restores into a new store with its
// own layout; the reserved keys cannot be written; an unknown layout is
// refused with an error saying what to do.
func TestLeafBundlesLayout(t *testing.T) {
	dir := t.TempDir()
	s := open(t, filepath.Join(dir, "new"), small)
	if !s.bundles {
		t.Fatal("a new store does not keep its leaves in bundles")
	}
	if err := s.Commit([][]byte{append(bytes.Clone(reservedPrefix), 'x')}, [][]byte{{1}}); !errors.Is(err, ErrReservedKey) {
		t.Fatalf("Commit of a reserved key = %v, want ErrReservedKey", err)
	}
	if got, _ := s.Get(layoutKey); got[0] != nil {
		t.Fatalf("Get(layout record) = %q, want a miss", got[0])
	}
	var ks, vs [][]byte
	for i := range uint64(600) {
		ks, vs = append(ks, leafK(i)), append(vs, leafValue(i, 0))
	}
	if err := s.Commit(ks, vs); err != nil {
		t.Fatal(err)
	}
	ix := open(t, filepath.Join(dir, "index"), Options{NoSync: true, MemoryBudget: small.MemoryBudget})
	if ix.bundles {
		t.Fatal("a NoSync store keeps leaves in bundles")
	}
	ix.Close()

	plainStore(t, filepath.Join(dir, "old"), 600)
	old := open(t, filepath.Join(dir, "old"), small)
	if old.bundles {
		t.Fatal("a store made before bundles was switched to bundles")
	}
	if err := old.Commit([][]byte{leafK(600)}, [][]byte{leafValue(600, 0)}); err != nil {
		t.Fatal(err)
	}
	if got := rawKeys(t, old); countPrefix(got, []byte{leafKind}) != 601 {
		t.Fatalf("store made before bundles holds %d leaf keys after one more, want 601", countPrefix(got, []byte{leafKind}))
	}

	for _, src := range []*Store{s, old} {
		var buf bytes.Buffer
		if err := src.Backup(t.Context(), &buf); err != nil {
			t.Fatal(err)
		}
		dst := open(t, t.TempDir(), small)
		if err := dst.Restore(&buf); err != nil {
			t.Fatal(err)
		}
		if dst.bundles != src.bundles {
			t.Errorf("restored store keeps bundles = %v, its backup's store %v", dst.bundles, src.bundles)
		}
		for _, i := range []uint64{0, 255, 256, 599} {
			got, err := dst.Get(leafK(i))
			if err != nil || !bytes.Equal(got[0], leafValue(i, 0)) {
				t.Errorf("restored Get(leaf %d) = %q, %v", i, got[0], err)
			}
		}
		dst.Close()
	}
	s.Close()
	old.Close()

	// A layout this version does not know.
	p := filepath.Join(dir, "future")
	db, err := badger.Open(badger.DefaultOptions(p).WithLogger(nil).WithMemTableSize(8 << 20))
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(txn *badger.Txn) error { return txn.Set(layoutKey, []byte("leaf-bundles-v9")) }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := Open(p, small); err == nil || !strings.Contains(err.Error(), "leaf-bundles-v9") || !strings.Contains(err.Error(), "version that made it") {
		t.Fatalf("Open(unknown layout) = %v, want an error naming the layout and what to do", err)
	}
}

func countPrefix(ks [][]byte, p []byte) int {
	n := 0
	for _, k := range ks {
		if bytes.HasPrefix(k, p) {
			n++
		}
	}
	return n
}

// TestLeafBundleDamage: a bundle whose value-log record fails its checksum
// is an error wrapping ErrDamaged that names the bundle, its leaves and the
// checksum, from Get and Scan; other bundles still read.
func TestLeafBundleDamage(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{BadgerOptions: func(o badger.Options) badger.Options { return o.WithValueLogFileSize(1 << 20) }})
	// More than one value-log file, so that the damaged one is not the
	// newest (badger cuts the newest at its first bad record when it
	// opens).
	var vs [][]byte
	for from := uint64(0); from < 4096; from += 512 {
		var ks [][]byte
		for i := from; i < from+512; i++ {
			ks, vs = append(ks, leafK(i)), append(vs, bytes.Repeat(fmt.Appendf(nil, "leaf-%04d;", i), 40))
		}
		if err := s.Commit(ks, vs[from:]); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	p := filepath.Join(dir, "000001.vlog")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, vs[300])
	if i < 0 {
		t.Fatal("leaf 300 not found in the value log")
	}
	b[i+5] ^= 1
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, Options{BadgerOptions: func(o badger.Options) badger.Options { return o.WithValueLogFileSize(1 << 20) }})
	defer s.Close()
	check := func(what string, err error) {
		t.Helper()
		var d *damagedError
		n := 300 / bundleWidth
		want := fmt.Sprintf("leaf bundle %d (the values of leaves %d-%d)", n, n*bundleWidth, n*bundleWidth+bundleWidth-1)
		if !errors.Is(err, ErrDamaged) || !errors.As(err, &d) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "checksum mismatch") {
			t.Fatalf("%s = %v, want ErrDamaged naming %q and a checksum mismatch", what, err, want)
		}
	}
	_, err = s.Get(leafK(301))
	check("Get(leaf 301)", err)
	err = s.Scan(leafK(200), leafK(301), func(k, v []byte) error { return nil })
	check("Scan", err)
	if got, err := s.Get(leafK(0), leafK(700)); err != nil || !bytes.Equal(got[0], vs[0]) || !bytes.Equal(got[1], vs[700]) {
		t.Fatalf("Get of leaves in intact bundles = %v", err)
	}
}

// TestDecodeBundle: a bundle decodes to what was encoded, and damaged
// headers and offsets are errors, never a panic or a wrong slice.
func TestDecodeBundle(t *testing.T) {
	var b bundle
	b.n = 5
	b.has[0], b.slot[0] = true, []byte("zero")
	b.has[2], b.slot[2] = true, []byte{}
	b.has[4], b.slot[4] = true, []byte("four!")
	v := b.encode(nil)
	var d bundle
	if err := decodeBundle(v, &d); err != nil {
		t.Fatal(err)
	}
	for j := range bundleWidth {
		leaf, ok, err := slotOf(v, j)
		if err != nil || ok != b.has[j] || !bytes.Equal(leaf, b.slot[j]) || d.has[j] != b.has[j] || !bytes.Equal(d.slot[j], b.slot[j]) {
			t.Fatalf("slot %d = %q %v %v, decoded %q %v; want %q %v", j, leaf, ok, err, d.slot[j], d.has[j], b.slot[j], b.has[j])
		}
	}
	bad := map[string][]byte{
		"empty":          {},
		"format":         append([]byte{2}, v[1:]...),
		"no slots":       {bundleFormat, 0, 0},
		"too many slots": {bundleFormat, 1, 1},
		"short offsets":  v[:bundleHeader+3],
		"offset beyond":  slices.Concat(v[:bundleHeader], []byte{0x80, 0, 1, 0}, v[bundleHeader+4:]),
		"trailing bytes": append(bytes.Clone(v), 'x'),
		"empty slot":     slices.Concat(v[:bundleHeader+4], []byte{0, 0, 0, 5}, v[bundleHeader+8:]),
	}
	for name, v := range bad {
		if err := decodeBundle(v, &d); err == nil {
			t.Errorf("decodeBundle(%s) = nil, want an error", name)
		}
	}
	for _, name := range []string{"empty", "format", "no slots", "too many slots", "short offsets"} {
		if _, _, err := slotOf(bad[name], 0); err == nil {
			t.Errorf("slotOf(%s) = nil error", name)
		}
	}
}

// TestLeafBundleFailedCommit: a commit that fails after its bundles were
// built writes nothing, and the next commit builds on what the store holds,
// not on the failed batch (the kept edge bundle is dropped with it).
func TestLeafBundleFailedCommit(t *testing.T) {
	s := open(t, t.TempDir(), small)
	defer s.Close()
	var ks, vs [][]byte
	for i := range uint64(10) {
		ks, vs = append(ks, leafK(i)), append(vs, leafValue(i, 0))
	}
	if err := s.Commit(ks, vs); err != nil {
		t.Fatal(err)
	}
	count, _ := s.Limits()
	ks, vs = [][]byte{leafK(10)}, [][]byte{[]byte("lost")}
	for i := range count + 1 {
		ks, vs = append(ks, fmt.Appendf(nil, "x%08d", i)), append(vs, nil)
	}
	if err := s.Commit(ks, vs); !errors.Is(err, ErrTooBig) {
		t.Fatalf("Commit beyond the limits = %v, want ErrTooBig", err)
	}
	if err := s.Commit([][]byte{leafK(11)}, [][]byte{[]byte("eleven")}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(leafK(9), leafK(10), leafK(11))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[0], leafValue(9, 0)) || got[1] != nil || string(got[2]) != "eleven" {
		t.Fatalf("after a failed commit, leaves 9-11 = %q, want [leaf 9, missing, eleven]", got)
	}
}

// TestLeafBundleRepeatsKeepSlots: a batch with as many leaf keys as a
// bundle has slots, one of them repeated, does not fill the bundle: the
// slot it misses keeps what the store held.
func TestLeafBundleRepeatsKeepSlots(t *testing.T) {
	s := open(t, t.TempDir(), small)
	defer s.Close()
	var ks, vs [][]byte
	for i := range uint64(bundleWidth) {
		ks, vs = append(ks, leafK(i)), append(vs, leafValue(i, 0))
	}
	if err := s.Commit(ks, vs); err != nil {
		t.Fatal(err)
	}
	ks, vs = nil, nil
	for i := range uint64(bundleWidth - 1) {
		ks, vs = append(ks, leafK(i)), append(vs, leafValue(i, 1))
	}
	ks, vs = append(ks, leafK(3)), append(vs, []byte("three again"))
	s.tail = tailBundle{} // read the bundle back from the store, too
	if err := s.Commit(ks, vs); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(leafK(3), leafK(bundleWidth-1), leafK(0))
	if err != nil {
		t.Fatal(err)
	}
	if string(got[0]) != "three again" || !bytes.Equal(got[1], leafValue(bundleWidth-1, 0)) || !bytes.Equal(got[2], leafValue(0, 1)) {
		t.Fatalf("leaves 3, %d, 0 = %q, want [three again, its first value, the second value of leaf 0]", bundleWidth-1, got)
	}
}

// TestLeafBundleEmpty: a bundle whose stored value is empty (no commit
// writes one: every bundle holds at least its header) is damage for every
// path that reads it: Get of one of its leaves, a Scan over it, and a
// Commit that extends it. Each answers ErrDamaged naming the bundle, its
// leaves, the empty value and what to do, with a leaf of it as the Key;
// none skips the bundle or starts it afresh.
func TestLeafBundleEmpty(t *testing.T) {
	const n = 2 // the emptied bundle: leaves 32-47
	for _, tc := range []struct {
		name    string
		read    func(s *Store) error
		wantKey uint64 // the leaf the error names
	}{
		{"Get", func(s *Store) error {
			_, err := s.Get(leafK(n*bundleWidth + 5))
			return err
		}, n*bundleWidth + 5},
		{"Get of the next bundle too", func(s *Store) error {
			_, err := s.Get(leafK(n*bundleWidth+15), leafK(n*bundleWidth+16))
			return err
		}, n*bundleWidth + 15},
		{"Scan", func(s *Store) error {
			return s.Scan(leafK(10), nil, func(k, v []byte) error { return nil })
		}, n * bundleWidth},
		{"Scan from inside the bundle", func(s *Store) error {
			return s.Scan(leafK(n*bundleWidth+3), leafK(n*bundleWidth+9), func(k, v []byte) error { return nil })
		}, n*bundleWidth + 3},
		{"Commit extending it", func(s *Store) error {
			return s.Commit([][]byte{leafK(n*bundleWidth + 15)}, [][]byte{[]byte("again")})
		}, n * bundleWidth},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t, t.TempDir(), small)
			defer s.Close()
			var ks, vs [][]byte
			for i := range uint64(5 * bundleWidth) {
				ks, vs = append(ks, leafK(i)), append(vs, leafValue(i, 0))
			}
			if err := s.Commit(ks, vs); err != nil {
				t.Fatal(err)
			}
			// Damage behind the store's back: Commit refuses reserved keys.
			if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(bundleKey(n), []byte{}) }); err != nil {
				t.Fatal(err)
			}
			s.tail = tailBundle{}
			err := tc.read(s)
			var d *damagedError
			if !errors.Is(err, ErrDamaged) || !errors.As(err, &d) {
				t.Fatalf("%s over an empty bundle = %v, want ErrDamaged", tc.name, err)
			}
			for _, want := range []string{
				fmt.Sprintf("leaf bundle %d (the values of leaves %d-%d)", n, n*bundleWidth, n*bundleWidth+bundleWidth-1),
				"its value is empty", "restore the store from a backup",
			} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			if !bytes.Equal(d.Key(), leafK(tc.wantKey)) {
				t.Errorf("Key() = %x, want leaf %d's key %x", d.Key(), tc.wantKey, leafK(tc.wantKey))
			}
			// The bundles around it still read.
			got, err := s.Get(leafK(n*bundleWidth-1), leafK(n*bundleWidth+bundleWidth))
			if err != nil || !bytes.Equal(got[0], leafValue(n*bundleWidth-1, 0)) || !bytes.Equal(got[1], leafValue(n*bundleWidth+bundleWidth, 0)) {
				t.Fatalf("leaves beside the empty bundle = %q, %v", got, err)
			}
		})
	}
}
