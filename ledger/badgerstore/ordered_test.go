package badgerstore

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/dgraph-io/badger/v4"
)

// TestSortedOrder checks the order commitOrdered applies a batch in
// against a stable sort of the keys: ascending bytes, equal keys in batch
// order (so the later value wins), with keys shorter than, as long as and
// longer than the 8-byte head it sorts by first, heads that are equal but
// keys that are not, and a key that is another's prefix padded with zeros.
func TestSortedOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 9))
	random := func(n int) [][]byte {
		ks := make([][]byte, n)
		for i := range ks {
			k := make([]byte, r.IntN(20))
			for j := range k {
				k[j] = byte(r.IntN(3)) // few symbols: many equal heads and equal keys
			}
			ks[i] = k
		}
		return ks
	}
	for _, tc := range []struct {
		name string
		keys [][]byte
	}{
		{"empty", nil},
		{"one", [][]byte{[]byte("k")}},
		{"zero padding", [][]byte{[]byte("ab\x00"), []byte("ab"), []byte("ab\x00\x00\x00\x00\x00\x00\x00"), []byte("ab\x00"), {}, []byte("ab\x00\x00\x00\x00\x00\x00")}},
		{"equal heads", [][]byte{[]byte("s-user-1\x00\x01z"), []byte("s-user-1\x00\x01a"), []byte("s-user-1"), []byte("s-user-1\x00\x01a")}},
		{"index keys", [][]byte{[]byte("hAAAAAAAAAAAAAAAA"), []byte("dBBBBBBBBBBBBBBBB"), []byte("hAAAAAAAAAAAAAAAA"), []byte("hAAAAAAA0AAAAAAAA")}},
		{"random", random(5000)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := make([]int, len(tc.keys))
			for i := range want {
				want[i] = i
			}
			slices.SortStableFunc(want, func(a, b int) int { return bytes.Compare(tc.keys[a], tc.keys[b]) })
			got := sortedOrder(tc.keys)
			if !slices.Equal(got, want) {
				i := 0
				for i < min(len(got), len(want)) && got[i] == want[i] {
					i++
				}
				t.Fatalf("order differs from a stable sort at position %d of %d: got %v, want %v", i, len(want), got[i:min(i+5, len(got))], want[i:min(i+5, len(want))])
			}
		})
	}
}

// TestOrderedCommit checks the NoSync store's commit in ordered
// transactions (commitOrdered): every entry of a batch given in any order
// is stored, a key repeated in a batch keeps its last value, the batch's
// last entry is stored, all of it survives a clean reopen, and the limits
// are those of Limits (a batch at them accepted, one beyond refused with
// nothing written).
func TestOrderedCommit(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    int // entries before the last
	}{
		{"one entry", 0},
		{"under a chunk", orderedChunk - 3},
		{"several chunks", 5*orderedChunk + 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir, Options{NoSync: true})
			var keys, vals [][]byte
			for i := range tc.n {
				// Descending keys: the store must sort them.
				keys = append(keys, fmt.Appendf(nil, "k%06d", tc.n-i))
				vals = append(vals, fmt.Appendf(nil, "v%d", i))
			}
			if tc.n > 2 {
				// A repeated key: the later value wins.
				keys = append(keys, keys[1])
				vals = append(vals, []byte("again"))
			}
			keys = append(keys, []byte("m-watermark"))
			vals = append(vals, []byte("last"))
			if err := s.Commit(keys, vals); err != nil {
				t.Fatal(err)
			}
			want := map[string]string{}
			for i, k := range keys {
				want[string(k)] = string(vals[i])
			}
			check := func(s *Store, when string) {
				t.Helper()
				for k, v := range want {
					got, err := s.Get([]byte(k))
					if err != nil {
						t.Fatal(err)
					}
					if string(got[0]) != v {
						t.Errorf("%s: %s = %q, want %q", when, k, got[0], v)
					}
				}
			}
			check(s, "after commit")
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s = open(t, dir, Options{NoSync: true})
			defer s.Close()
			check(s, "after reopen")
		})
	}
	t.Run("limits", func(t *testing.T) {
		s := open(t, t.TempDir(), Options{NoSync: true})
		defer s.Close()
		count, _ := s.Limits()
		keys, vals := make([][]byte, count+1), make([][]byte, count+1)
		for i := range keys {
			keys[i], vals[i] = fmt.Appendf(nil, "k%08d", i), []byte{}
		}
		if err := s.Commit(keys, vals); !errors.Is(err, ErrTooBig) {
			t.Fatalf("commit of %d entries (limit %d): %v, want ErrTooBig", len(keys), count, err)
		}
		if got, err := s.Get(keys[0]); err != nil || got[0] != nil {
			t.Fatalf("after a refused commit, %s = %q (%v), want missing", keys[0], got[0], err)
		}
		if err := s.Commit(keys[:count], vals[:count]); err != nil {
			t.Fatalf("commit of %d entries (the limit): %v", count, err)
		}
	})
}

// TestCommitAtomic: CommitAtomic writes every entry, on a NoSync store as
// on a durable one, and refuses what Commit refuses: a reserved key, keys
// and values of different lengths, a batch beyond Limits.
func TestCommitAtomic(t *testing.T) {
	for _, noSync := range []bool{false, true} {
		t.Run(fmt.Sprintf("NoSync=%v", noSync), func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir, Options{NoSync: noSync})
			keys := [][]byte{[]byte("mmapped"), []byte("vstate"), []byte("qnode"), []byte("mindexed")}
			vals := [][]byte{{1}, {2}, {3}, {4}}
			if err := s.CommitAtomic(keys, vals); err != nil {
				t.Fatal(err)
			}
			if err := s.CommitAtomic([][]byte{append(bytes.Clone(reservedPrefix), 'x')}, [][]byte{{1}}); !errors.Is(err, ErrReservedKey) {
				t.Errorf("CommitAtomic of a reserved key = %v, want ErrReservedKey", err)
			}
			if err := s.CommitAtomic(keys, vals[:1]); err == nil {
				t.Error("CommitAtomic of 4 keys and 1 value = nil, want an error")
			}
			count, _ := s.Limits()
			many := make([][]byte, count+1)
			for i := range many {
				many[i] = fmt.Appendf(nil, "k%08d", i)
			}
			if err := s.CommitAtomic(many, many); !errors.Is(err, ErrTooBig) {
				t.Errorf("CommitAtomic of %d entries (limit %d) = %v, want ErrTooBig", len(many), count, err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s = open(t, dir, Options{NoSync: noSync})
			defer s.Close()
			got, err := s.Get(keys...)
			if err != nil {
				t.Fatal(err)
			}
			for i, v := range got {
				if !bytes.Equal(v, vals[i]) {
					t.Errorf("after reopening, %s = %v, want %v", keys[i], v, vals[i])
				}
			}
			if got, err := s.Get(many[0]); err != nil || got[0] != nil {
				t.Errorf("an entry of the refused batch is present: %v, %v", got, err)
			}
		})
	}
}

// TestNoSyncLevelZero checks a NoSync store in the LSM shape noSyncOptions
// gives it, with many more level-0 tables than badger's default allows
// before compacting: random keys committed over many memtable flushes (the
// memtable shrunk so that the test is quick) read back identically by point
// reads and by ordered scans, before and after a reopen, against a map of
// what was committed (overwritten keys keep their latest value).
func TestNoSyncLevelZero(t *testing.T) {
	const memtable = 256 << 10
	o := Options{NoSync: true, BadgerOptions: func(bo badger.Options) badger.Options {
		if bo.NumLevelZeroTables != noSyncLevelZeroTables || bo.NumLevelZeroTablesStall != noSyncLevelZeroStall || bo.MemTableSize > noSyncMemTableSize {
			t.Errorf("a NoSync store opens with %d level-0 tables (stall %d), memtable %d; want %d (stall %d), at most %d",
				bo.NumLevelZeroTables, bo.NumLevelZeroTablesStall, bo.MemTableSize, noSyncLevelZeroTables, noSyncLevelZeroStall, noSyncMemTableSize)
		}
		return bo.WithMemTableSize(memtable)
	}}
	dir := t.TempDir()
	s := open(t, dir, o)
	r := rand.New(rand.NewPCG(3, 5))
	want := map[string]string{}
	var keys, vals, all [][]byte
	for batch := range 150 {
		keys, vals = keys[:0], vals[:0]
		for range 250 {
			k := make([]byte, 17)
			k[0] = "hd"[r.IntN(2)]
			for j := 1; j < len(k); j++ {
				k[j] = byte(r.Uint32())
			}
			if len(all) > 0 && r.IntN(50) == 0 {
				k = all[r.IntN(len(all))] // overwrite an earlier key
			} else {
				all = append(all, k)
			}
			keys = append(keys, k)
			vals = append(vals, fmt.Appendf(nil, "%08d", batch))
		}
		keys = append(keys, []byte("m-watermark"))
		vals = append(vals, fmt.Appendf(nil, "%d", batch))
		if err := s.Commit(keys, vals); err != nil {
			t.Fatal(err)
		}
		for i, k := range keys {
			want[string(k)] = string(vals[i])
		}
	}
	check := func(s *Store, when string) {
		t.Helper()
		sorted := slices.Sorted(maps.Keys(want))
		ks := make([][]byte, len(sorted))
		for i, k := range sorted {
			ks[i] = []byte(k)
		}
		got, err := s.Get(ks...)
		if err != nil {
			t.Fatal(err)
		}
		for i, k := range sorted {
			if string(got[i]) != want[k] {
				t.Fatalf("%s: Get %x = %q, want %q", when, k, got[i], want[k])
			}
		}
		i := 0
		err = s.Scan(nil, nil, func(k, v []byte) error {
			if i >= len(sorted) || string(k) != sorted[i] || string(v) != want[sorted[i]] {
				return fmt.Errorf("scan entry %d: %x = %q, want %x = %q", i, k, v, sorted[min(i, len(sorted)-1)], want[sorted[min(i, len(sorted)-1)]])
			}
			i++
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		if i != len(sorted) {
			t.Fatalf("%s: scan gave %d entries, want %d", when, i, len(sorted))
		}
	}
	check(s, "after the commits")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, o)
	defer s.Close()
	// Close flushed the memtables; nothing compacted level 0.
	if l0 := s.db.Levels()[0].NumTables; l0 <= 5 {
		t.Fatalf("level 0 holds %d tables, want more than badger's default of 5 (flushes of %d-byte memtables)", l0, memtable)
	}
	check(s, "after a reopen")
}
