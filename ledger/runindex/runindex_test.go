package runindex

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestOracle appends random batches, looks up present, duplicated and
// absent keys against a map, and checks that Verify yields exactly the
// appended (key, index) set. With a small FlushEntries many flushes and
// merges happen and the index is flushed and reopened now and then; with a
// large one every key stays in the memory buffers (their hash tables), or
// some do while others are in runs, duplicates spanning both.
func TestOracle(t *testing.T) {
	tests := []struct {
		name       string
		flush, fan int
		reopen     bool // Flush and reopen now and then
		buffered   bool // nothing is ever flushed
	}{
		{name: "fanout=2", flush: 64, fan: 2, reopen: true},
		{name: "fanout=3", flush: 64, fan: 3, reopen: true},
		{name: "fanout=4", flush: 64, fan: 4, reopen: true},
		{name: "all in buffers", flush: 1 << 15, fan: 2, buffered: true},
		{name: "buffers and runs", flush: 1500, fan: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fan := tc.fan
			rng := rand.New(rand.NewPCG(uint64(tc.flush*10+fan), 7))
			dir := t.TempDir()
			o := Options{FlushEntries: tc.flush, Fanout: fan}
			x := openT(t, dir, 0, o)
			hot := randKey(rng) // appended again and again: a long run of duplicates
			var keys []Key      // keys[i] is leaf i's key
			want := map[Key][]uint64{}
			check := func(step int) {
				t.Helper()
				for range 5 {
					i := rng.Uint64N(uint64(len(keys)))
					k := keys[i]
					if got := lookupAll(t, x, k); !slices.Equal(got, want[k]) {
						t.Fatalf("step %d: Lookup(key of leaf %d) = %v, want %v", step, i, got, want[k])
					}
				}
				// The newest leaf's key is in the active buffer.
				if k := keys[len(keys)-1]; !slices.Equal(lookupAll(t, x, k), want[k]) {
					t.Fatalf("step %d: Lookup(key of the newest leaf %d) = %v, want %v", step, len(keys)-1, lookupAll(t, x, k), want[k])
				}
				if got := lookupAll(t, x, hot); !slices.Equal(got, want[hot]) {
					t.Fatalf("step %d: Lookup(a key appended %d times) = %v, want %v", step, len(want[hot]), got, want[hot])
				}
				for range 2 {
					if got := lookupAll(t, x, randKey(rng)); len(got) != 0 {
						t.Fatalf("step %d: Lookup(absent key) = %v, want none", step, got)
					}
				}
			}
			var merges, flushes uint64
			for step := range 250 {
				n := rng.IntN(120)
				batch := make([]Key, n)
				for j := range batch {
					switch {
					case len(keys) > 0 && rng.IntN(50) == 0:
						batch[j] = keys[rng.IntN(len(keys))] // a shared key
					case rng.IntN(100) == 0:
						batch[j] = hot
					default:
						batch[j] = randKey(rng)
					}
				}
				first := uint64(len(keys))
				appendT(t, x, first, batch)
				for j, k := range batch {
					want[k] = append(want[k], first+uint64(j))
				}
				keys = append(keys, batch...)
				clear(batch) // Append copied them
				if got := x.Covered(); got != uint64(len(keys)) {
					t.Fatalf("step %d: Covered() = %d, want %d", step, got, len(keys))
				}
				if len(keys) > 0 {
					check(step)
				}
				switch {
				case !tc.reopen:
				case step%83 == 82:
					s := x.Stats()
					merges, flushes = merges+s.Merges, flushes+s.Flushes
					if err := x.Close(); err != nil {
						t.Fatalf("Close: %v", err)
					}
					x = openT(t, dir, uint64(len(keys)), o)
					if got := x.Covered(); got != uint64(len(keys)) {
						t.Fatalf("after reopening: Covered() = %d, want %d (Close flushes)", got, len(keys))
					}
				case step%31 == 30:
					if err := x.Flush(); err != nil {
						t.Fatalf("Flush: %v", err)
					}
					if got := x.Durable(); got != uint64(len(keys)) {
						t.Fatalf("after Flush: Durable() = %d, want %d", got, len(keys))
					}
				}
			}
			if err := x.quiesce(); err != nil {
				t.Fatal(err)
			}
			s := x.Stats()
			merges, flushes = merges+s.Merges, flushes+s.Flushes
			switch {
			case tc.buffered:
				if s.Flushes != 0 || s.Buffered != len(keys) {
					t.Errorf("stats %+v, want all %d keys in the buffer", s, len(keys))
				}
			case tc.reopen:
				if merges < 20 || flushes < 100 {
					t.Errorf("%d merges and %d flushes, want many of both", merges, flushes)
				}
			default:
				if flushes < 5 || s.Buffered == 0 {
					t.Errorf("stats %+v, want some keys flushed and some in the buffer", s)
				}
			}
			if s.Runs > 12*fan {
				t.Errorf("%d runs after merging settled, want few (fanout %d)", s.Runs, fan)
			}
			for _, below := range []uint64{uint64(len(keys)), uint64(len(keys)) / 3} {
				got := map[uint64]Key{}
				err := x.Verify(t.Context(), below, func(k Key, i uint64) {
					if _, dup := got[i]; dup {
						t.Fatalf("Verify gave leaf %d twice", i)
					}
					got[i] = k
				})
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if uint64(len(got)) != below {
					t.Fatalf("Verify(below %d) gave %d records", below, len(got))
				}
				for i, k := range got {
					if i >= below || keys[i] != k {
						t.Fatalf("Verify(below %d) gave leaf %d with key %x, want key %x", below, i, k, keys[i])
					}
				}
			}
		})
	}
}

// TestDuplicateKeys: Lookup returns every leaf of a shared key, in buffers
// and in runs, and stops when fn says so.
func TestDuplicateKeys(t *testing.T) {
	x := openT(t, t.TempDir(), 0, Options{FlushEntries: 100, Fanout: 2})
	dup := keyOf(1 << 40)
	var at []uint64
	for i := range uint64(1050) {
		k := keyOf(i)
		if i%150 == 3 {
			k = dup
			at = append(at, i)
		}
		appendT(t, x, i, []Key{k})
	}
	if err := x.quiesce(); err != nil {
		t.Fatal(err)
	}
	if got := lookupAll(t, x, dup); !slices.Equal(got, at) {
		t.Fatalf("Lookup(shared key) = %v, want %v", got, at)
	}
	calls := 0
	if err := x.Lookup(dup, func(uint64) bool { calls++; return false }); err != nil || calls != 1 {
		t.Fatalf("Lookup stopping at the first candidate: %d calls, err %v; want 1, nil", calls, err)
	}
	// Records with one key prefix across sparse block boundaries: many
	// leaves sharing the first 8 bytes, in one run.
	y := openT(t, t.TempDir(), 0, Options{FlushEntries: 1000})
	var ks []Key
	for i := range uint64(1000) {
		k := keyOf(i)
		if i%3 == 0 {
			copy(k[:8], "samepref")
		}
		ks = append(ks, k)
	}
	appendT(t, y, 0, ks)
	if err := y.Flush(); err != nil {
		t.Fatal(err)
	}
	for i, k := range ks {
		if got := lookupAll(t, y, k); !slices.Equal(got, []uint64{uint64(i)}) {
			t.Fatalf("Lookup(key of leaf %d, shared prefix %v) = %v", i, i%3 == 0, got)
		}
	}
}

func TestAppendMisuse(t *testing.T) {
	dir := t.TempDir()
	x := openT(t, dir, 0, Options{FlushEntries: 10})
	appendT(t, x, 0, keysFor(0, 5))
	err := x.Append(4, keysFor(4, 6))
	if err == nil || !strings.Contains(err.Error(), "from 4") || !strings.Contains(err.Error(), "covers 5") {
		t.Fatalf("Append(4) at 5: %v, want an error naming 4 and 5", err)
	}
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}
	if err := x.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := x.Append(5, keysFor(5, 6)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v, want ErrClosed", err)
	}
	if err := x.Lookup(keyOf(1), func(uint64) bool { return true }); !errors.Is(err, ErrClosed) {
		t.Fatalf("Lookup after Close: %v, want ErrClosed", err)
	}
	if got := x.Covered(); got != 5 {
		t.Fatalf("Covered() after Close = %d, want 5", got)
	}
	for _, o := range []Options{{Fanout: 1}, {Fanout: -2}, {FlushEntries: -1}} {
		if y, err := Open(t.TempDir(), 0, o); err == nil {
			y.Close()
			t.Errorf("Open(%+v) succeeded, want an error", o)
		}
	}
}

// TestOpenCrashStates builds directories by hand in the states a crash (or
// a restore from an older backup, or damage) leaves, and checks what Open
// keeps.
func TestOpenCrashStates(t *testing.T) {
	type span struct{ from, to uint64 }
	tests := []struct {
		name    string
		runs    []span
		extra   func(t *testing.T, dir string) // more set-up
		limit   uint64
		covered uint64
		files   []span // the runs left, besides other files
		others  []string
		damaged string // non-empty: Open fails with ErrDamaged, mentioning this
	}{
		{name: "empty", limit: 100},
		{name: "one chain", runs: []span{{0, 10}, {10, 20}}, limit: 100, covered: 20, files: []span{{0, 10}, {10, 20}}},
		{name: "leftover tmp", runs: []span{{0, 10}}, limit: 100, covered: 10, files: []span{{0, 10}},
			extra: func(t *testing.T, dir string) {
				os.WriteFile(filepath.Join(dir, runName(10, 20)+tmpSuffix), []byte("half a run"), 0o644)
			}},
		{name: "merge output and its inputs", runs: []span{{0, 10}, {10, 20}, {0, 20}, {20, 25}}, limit: 100, covered: 25,
			files: []span{{0, 20}, {20, 25}}},
		{name: "merge output, inputs partly removed", runs: []span{{10, 20}, {0, 20}, {20, 25}}, limit: 100, covered: 25,
			files: []span{{0, 20}, {20, 25}}},
		{name: "run beyond limit", runs: []span{{0, 10}, {10, 20}}, limit: 15, covered: 10, files: []span{{0, 10}}},
		{name: "merge output beyond limit, inputs kept", runs: []span{{0, 10}, {10, 20}, {0, 20}}, limit: 12, covered: 10,
			files: []span{{0, 10}}},
		{name: "gap", runs: []span{{0, 10}, {20, 30}, {30, 40}}, limit: 100, covered: 10, files: []span{{0, 10}}},
		{name: "no run from 0", runs: []span{{5, 10}}, limit: 100, covered: 0},
		{name: "foreign files stay", runs: []span{{0, 10}}, limit: 100, covered: 10, files: []span{{0, 10}}, others: []string{"README"},
			extra: func(t *testing.T, dir string) { os.WriteFile(filepath.Join(dir, "README"), nil, 0o644) }},
		{name: "truncated run", runs: []span{{0, 300}}, limit: 1000, damaged: "file size",
			extra: func(t *testing.T, dir string) { os.Truncate(filepath.Join(dir, runName(0, 300)), 1000) }},
		{name: "bad magic", runs: []span{{0, 300}}, limit: 1000, damaged: "magic",
			extra: func(t *testing.T, dir string) { patch(t, filepath.Join(dir, runName(0, 300)), 0, []byte("XX")) }},
		{name: "name not matching header", runs: []span{{0, 10}}, limit: 1000, damaged: "header says",
			extra: func(t *testing.T, dir string) {
				os.Rename(filepath.Join(dir, runName(0, 10)), filepath.Join(dir, runName(0, 11)))
			}},
		{name: "empty range in a name", limit: 1000, damaged: "empty",
			extra: func(t *testing.T, dir string) { os.WriteFile(filepath.Join(dir, runName(7, 7)), nil, 0o644) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, s := range tt.runs {
				writeRun(t, dir, s.from, s.to)
			}
			if tt.extra != nil {
				tt.extra(t, dir)
			}
			x, err := Open(dir, tt.limit, Options{FlushEntries: 1 << 20})
			if tt.damaged != "" {
				if err == nil {
					x.Close()
				}
				if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), tt.damaged) ||
					!strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "delete the directory") {
					t.Fatalf("Open: %v, want ErrDamaged naming the file, %q and the remedy", err, tt.damaged)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer x.Close()
			if got := x.Covered(); got != tt.covered {
				t.Fatalf("Covered() = %d, want %d", got, tt.covered)
			}
			want := slices.Clone(tt.others)
			for _, s := range tt.files {
				want = append(want, runName(s.from, s.to))
			}
			slices.Sort(want)
			if got := runFiles(t, dir); !slices.Equal(got, want) {
				t.Fatalf("files after Open: %v, want %v", got, want)
			}
			for i := range tt.covered {
				if got := lookupAll(t, x, keyOf(i)); !slices.Contains(got, i) {
					t.Fatalf("Lookup(key of leaf %d) = %v, want it", i, got)
				}
			}
			// The caller re-appends from Covered().
			appendT(t, x, tt.covered, keysFor(tt.covered, tt.covered+5))
			if got := lookupAll(t, x, keyOf(tt.covered+4)); !slices.Equal(got, []uint64{tt.covered + 4}) {
				t.Fatalf("Lookup of a re-appended leaf = %v", got)
			}
		})
	}
}

func patch(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// TestVerifyCatches plants damage in one run and expects Verify to name it.
func TestVerifyCatches(t *testing.T) {
	const n = 1000
	rec := func(i int64) int64 { return headerSize + i*recordSize }
	tests := []struct {
		name  string
		plant func(t *testing.T, path string, b []byte) // b: the file's bytes
		want  string
	}{
		{name: "flipped byte in a record", want: "CRC-32C", plant: func(t *testing.T, path string, b []byte) {
			patch(t, path, rec(500)+3, []byte{b[rec(500)+3] ^ 0x40})
		}},
		{name: "out of order", want: "out of order", plant: func(t *testing.T, path string, b []byte) {
			r1 := slices.Clone(b[rec(10):rec(11)])
			patch(t, path, rec(10), b[rec(11):rec(12)])
			patch(t, path, rec(11), r1)
			rewriteCRC(t, path)
		}},
		{name: "value outside the run", want: "outside", plant: func(t *testing.T, path string, b []byte) {
			var v [8]byte
			binary.BigEndian.PutUint64(v[:], n+5)
			patch(t, path, rec(20)+KeySize, v[:])
			rewriteCRC(t, path)
		}},
		{name: "value twice", want: "twice", plant: func(t *testing.T, path string, b []byte) {
			patch(t, path, rec(30)+KeySize, b[rec(31)+KeySize:rec(32)])
			rewriteCRC(t, path)
		}},
		{name: "sparse entry", want: "sparse", plant: func(t *testing.T, path string, b []byte) {
			var v [8]byte // block 1's prefix, off by one: still in order
			binary.BigEndian.PutUint64(v[:], binary.BigEndian.Uint64(b[rec(n)+8:])+1)
			patch(t, path, rec(n)+8, v[:])
			rewriteCRC(t, path)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			x := openT(t, dir, 0, Options{FlushEntries: n})
			appendT(t, x, 0, keysFor(0, n))
			if err := x.Close(); err != nil {
				t.Fatal(err)
			}
			path := onlyRun(t, dir)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			// Undamaged, Verify passes.
			y := openT(t, dir, n, Options{})
			if err := y.Verify(t.Context(), n, func(Key, uint64) {}); err != nil {
				t.Fatalf("Verify before damage: %v", err)
			}
			y.Close()
			tt.plant(t, path, b)
			z, err := Open(dir, n, Options{})
			if err != nil {
				t.Fatalf("Open after planting: %v", err)
			}
			defer z.Close()
			err = z.Verify(t.Context(), n, func(Key, uint64) {})
			if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), tt.want) ||
				!strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "offset") {
				t.Fatalf("Verify: %v, want ErrDamaged naming %s, an offset and %q", err, path, tt.want)
			}
		})
	}
}

// TestBackgroundFailure: a flush that cannot write fails every later
// Append, Flush and Close with the path in the error, while reads go on.
func TestBackgroundFailure(t *testing.T) {
	tests := []struct {
		name  string
		fault func(t *testing.T, dir string)
	}{
		{name: "directory not writable", fault: func(t *testing.T, dir string) {
			if os.Geteuid() == 0 {
				t.Skip("root writes into a read-only directory")
			}
			if err := os.Chmod(dir, 0o500); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.Chmod(dir, 0o700) })
		}},
		{name: "a directory where the run's temporary file goes", fault: func(t *testing.T, dir string) {
			if err := os.Mkdir(filepath.Join(dir, runName(50, 100)+tmpSuffix), 0o700); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			x := openT(t, dir, 0, Options{FlushEntries: 50})
			appendT(t, x, 0, keysFor(0, 50))
			if err := x.Flush(); err != nil {
				t.Fatal(err)
			}
			tt.fault(t, dir)
			appendT(t, x, 50, keysFor(50, 100)) // fills a buffer: the writer fails on it
			err := x.Flush()
			if err == nil || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "leaves [50, 100)") {
				t.Fatalf("Flush after a failed write: %v, want the failure naming %s and the leaves", err, dir)
			}
			if err2 := x.Append(100, keysFor(100, 101)); err2 == nil || err2.Error() != err.Error() {
				t.Fatalf("Append after a failed write: %v, want %v", err2, err)
			}
			for _, i := range []uint64{10, 75} {
				if got := lookupAll(t, x, keyOf(i)); !slices.Equal(got, []uint64{i}) {
					t.Fatalf("Lookup(leaf %d) after the failure = %v, want it", i, got)
				}
			}
			if got := x.Durable(); got != 50 {
				t.Fatalf("Durable() = %d, want 50", got)
			}
			if err2 := x.Close(); err2 == nil || err2.Error() != err.Error() {
				t.Fatalf("Close after a failed write: %v, want %v", err2, err)
			}
			os.Chmod(dir, 0o700)
			os.Remove(filepath.Join(dir, runName(50, 100)+tmpSuffix))
			y := openT(t, dir, 100, Options{})
			if got := y.Covered(); got != 50 {
				t.Fatalf("after reopening, Covered() = %d, want 50", got)
			}
		})
	}
}

// TestSortRecs: the bucket sort gives exactly the order of sorting by
// (key, index), for random keys and for keys ground to share leading bits.
func TestSortRecs(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	tests := []struct {
		name string
		n    int
		key  func(i int) (hi, lo uint64)
	}{
		{"random", 70000, func(int) (uint64, uint64) { return rng.Uint64(), rng.Uint64() }},
		{"small", 500, func(int) (uint64, uint64) { return rng.Uint64(), rng.Uint64() }},
		{"one leading prefix", 5000, func(int) (uint64, uint64) { return 0xabcd<<48 | rng.Uint64N(1<<20), rng.Uint64() }},
		{"buckets of 20", 4000, func(i int) (uint64, uint64) { return uint64(i/20) << 52, rng.Uint64() }},
		{"buckets of 12", 4000, func(i int) (uint64, uint64) { return uint64(i/12) << 52, rng.Uint64N(4) }},
		{"equal keys", 3000, func(i int) (uint64, uint64) { return uint64(i%7) << 60, 42 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			recs := make([]rec, tt.n)
			for i := range recs {
				hi, lo := tt.key(i)
				recs[i] = rec{hi, lo, uint64(1000 + i)}
			}
			rng.Shuffle(len(recs), func(i, j int) { recs[i], recs[j] = recs[j], recs[i] })
			want := slices.Clone(recs)
			slices.SortFunc(want, cmpRec)
			if got := sortRecs(recs); !slices.Equal(got, want) {
				t.Fatalf("sortRecs differs from sorting by (key, index)")
			}
		})
	}
}
