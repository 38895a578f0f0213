package badgerstore

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
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
