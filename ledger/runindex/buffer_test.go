package runindex

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// TestSharedPrefixInBuffer: keys hand-picked to share their first 8 bytes
// (or their last 8), some appended twice, all in one buffer: each is found
// at exactly its leaves, absent keys with the same prefix are not, and the
// hash table does not pile them into one cluster (its home slot mixes all
// 16 bytes).
func TestSharedPrefixInBuffer(t *testing.T) {
	const n = 6000
	tests := []struct {
		name string
		key  func(i uint64) Key
	}{
		{"first 8 bytes shared", func(i uint64) Key { k := keyOf(i); copy(k[:8], "samepref"); return k }},
		{"last 8 bytes shared", func(i uint64) Key { k := keyOf(i); copy(k[8:], "samesuff"); return k }},
		{"counting in the last bytes", func(i uint64) Key {
			var k Key
			copy(k[:8], "samepref")
			k[14], k[15] = byte(i>>8), byte(i)
			return k
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := openT(t, t.TempDir(), 0, Options{FlushEntries: 1 << 14})
			var ks []Key
			want := map[Key][]uint64{}
			for i := range uint64(n) {
				k := tt.key(i)
				if i%10 == 9 {
					k = ks[i/2] // a duplicate of an earlier key
				}
				ks = append(ks, k)
				want[k] = append(want[k], i)
			}
			appendT(t, x, 0, ks[:n/2])
			appendT(t, x, n/2, ks[n/2:])
			if s := x.Stats(); s.Buffered != n || s.Flushes != 0 {
				t.Fatalf("stats %+v, want all %d keys in the buffer", s, n)
			}
			for i, k := range ks {
				if got := lookupAll(t, x, k); !slices.Equal(got, want[k]) {
					t.Fatalf("Lookup(key of leaf %d) = %v, want %v", i, got, want[k])
				}
			}
			for i := uint64(n); i < n+2000; i++ {
				if k := tt.key(i); len(want[k]) == 0 {
					if got := lookupAll(t, x, k); len(got) != 0 {
						t.Fatalf("Lookup(absent key %x) = %v, want none", k, got)
					}
				}
			}
			// 6,000 keys in 32,768 slots: random homes give clusters of a
			// few dozen at most; one home for all would give thousands.
			x.mu.Lock()
			b := x.active
			x.mu.Unlock()
			if got := longestCluster(b); got > 100 {
				t.Fatalf("the longest run of occupied slots is %d for %d keys in %d slots, want short runs", got, n, len(b.slots))
			}
		})
	}
}

// longestCluster returns the most occupied slots in a row in b's table.
func longestCluster(b *buffer) int {
	best, cur := 0, 0
	for i := range 2 * len(b.slots) { // twice round: a cluster may wrap
		if b.slots[i%len(b.slots)].Load() == 0 {
			cur = 0
			continue
		}
		cur++
		best = max(best, min(cur, len(b.slots)))
	}
	return best
}

// TestTableSize: a buffer's table has at least twice FlushEntries slots, a
// power of two, so a probe always ends at an empty slot.
func TestTableSize(t *testing.T) {
	for _, tt := range []struct{ flush, want int }{
		{1, 2}, {2, 4}, {3, 8}, {64, 128}, {100, 256}, {1500, 4096}, {DefaultFlushEntries, 1 << 17},
	} {
		if got := tableSlots(tt.flush); got != tt.want {
			t.Errorf("tableSlots(%d) = %d, want %d", tt.flush, got, tt.want)
		}
	}
	// FlushEntries 1: every key fills a buffer and is flushed at once.
	x := openT(t, t.TempDir(), 0, Options{FlushEntries: 1, Fanout: 2})
	if got := lookupAll(t, x, keyOf(0)); len(got) != 0 { // an empty buffer has no table yet
		t.Fatalf("Lookup in an empty index = %v, want none", got)
	}
	for i := range uint64(20) {
		appendT(t, x, i, []Key{keyOf(i % 3)})
	}
	for i := range uint64(3) {
		var want []uint64
		for j := i; j < 20; j += 3 {
			want = append(want, j)
		}
		if got := lookupAll(t, x, keyOf(i)); !slices.Equal(got, want) {
			t.Fatalf("Lookup(key %d) with FlushEntries 1 = %v, want %v", i, got, want)
		}
	}
}

// TestLookupWhileAppending (run it with -race): one goroutine appends,
// forcing buffer swaps, flushes and merges, while others look up keys
// appended moments ago (each must be found once its Append returned: the
// appender publishes how far it got only then) and keys never appended
// (never found).
func TestLookupWhileAppending(t *testing.T) {
	x := openT(t, t.TempDir(), 0, Options{FlushEntries: 256, Fanout: 2})
	const total = 20000
	var done atomic.Uint64 // leaves whose Append has returned
	stop := make(chan struct{})
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	for g := range 3 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 2))
			for {
				select {
				case <-stop:
					return
				default:
				}
				c := done.Load()
				if c == 0 {
					continue
				}
				i := c - 1 - rng.Uint64N(min(c, 300)) // one of the last 300 leaves
				found := false
				if err := x.Lookup(keyOf(i), func(j uint64) bool { found = j == i; return !found }); err != nil {
					errs <- err
					return
				}
				if !found {
					errs <- fmt.Errorf("leaf %d, appended before the lookup began (%d done), not found", i, c)
					return
				}
				absent := keyOf(1<<62 + rng.Uint64N(1<<20))
				if err := x.Lookup(absent, func(j uint64) bool {
					errs <- fmt.Errorf("a key never appended found at leaf %d", j)
					return false
				}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	rng := rand.New(rand.NewPCG(9, 9))
	for c := uint64(0); c < total; {
		n := min(1+uint64(rng.IntN(400)), total-c)
		appendT(t, x, c, keysFor(c, c+n))
		c += n
		done.Store(c)
	}
	if err := x.quiesce(); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if s := x.Stats(); s.Flushes < 50 || s.Merges == 0 {
		t.Fatalf("stats %+v, want many buffer swaps and some merges", s)
	}
}

// TestName: Options.Name names the index in its errors and log lines.
func TestName(t *testing.T) {
	for _, tt := range []struct{ name, want string }{{"", "leaf-hash index"}, {"dedupe index", "dedupe index"}} {
		t.Run(tt.want, func(t *testing.T) {
			var logs bytes.Buffer
			o := Options{Name: tt.name, FlushEntries: 10, Logger: slog.New(slog.NewTextHandler(&logs, nil))}
			check := func(what, msg string) {
				t.Helper()
				if !strings.Contains(msg, tt.want) || (tt.want != DefaultName && strings.Contains(msg, DefaultName)) {
					t.Errorf("%s: %q, want it to name the %s (only)", what, msg, tt.want)
				}
			}
			for _, bad := range []Options{{Name: tt.name, Fanout: 1}, {Name: tt.name, FlushEntries: -1}, {Name: tt.name, FlushEntries: MaxFlushEntries + 1}} {
				if _, err := Open(t.TempDir(), 0, bad); err == nil {
					t.Fatalf("Open(%+v) succeeded", bad)
				} else {
					check("Open with bad options", err.Error())
				}
			}
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, runName(0, 10)+tmpSuffix), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			x := openT(t, dir, 0, o)
			check("log of Open", logs.String())
			if err := x.Append(3, keysFor(3, 4)); err == nil {
				t.Fatal("Append(3) at 0 succeeded")
			} else {
				check("Append misuse", err.Error())
			}
			appendT(t, x, 0, keysFor(0, 10))
			if err := x.Flush(); err != nil {
				t.Fatal(err)
			}
			x.mu.Lock()
			x.runs[0].f.Close() // the run's reads now fail
			x.mu.Unlock()
			if err := x.Lookup(keyOf(5), func(uint64) bool { return true }); err == nil {
				t.Fatal("Lookup in a closed run file succeeded")
			} else {
				check("Lookup failing", err.Error())
			}
			if err := os.Mkdir(filepath.Join(dir, runName(10, 20)+tmpSuffix), 0o700); err != nil {
				t.Fatal(err)
			}
			appendT(t, x, 10, keysFor(10, 20))
			if err := x.Flush(); err == nil {
				t.Fatal("Flush onto a directory in the way succeeded")
			} else {
				check("background write failure", err.Error())
			}
			logs.Reset()
			if err := x.Close(); err == nil || !errors.Is(err, x.err) {
				t.Fatalf("Close: %v, want the background failure", err)
			}
			check("log of Close (closing a closed run)", logs.String())
		})
	}
}
