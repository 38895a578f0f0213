package runindex

import (
	"errors"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestConcurrentReads runs lookups and Verify while appends force flushes
// and merges (run it with -race).
func TestConcurrentReads(t *testing.T) {
	x := openT(t, t.TempDir(), 0, Options{FlushEntries: 64, Fanout: 2})
	const total = 6000
	done := make(chan struct{})
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	for g := range 2 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for {
				select {
				case <-done:
					return
				default:
				}
				c := x.Covered()
				if c == 0 {
					continue
				}
				i := rng.Uint64N(c)
				found := false
				if err := x.Lookup(keyOf(i), func(j uint64) bool { found = j == i; return !found }); err != nil {
					errs <- err
					return
				}
				if !found {
					errs <- errors.New("a covered leaf was not found")
					return
				}
			}
		})
	}
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			below := x.Covered()
			seen := make([]bool, below)
			n := uint64(0)
			err := x.Verify(t.Context(), below, func(k Key, i uint64) {
				if i >= below || seen[i] || k != keyOf(i) {
					errs <- errors.New("Verify gave a wrong or repeated record")
				}
				seen[i] = true
				n++
			})
			if err != nil {
				errs <- err
				return
			}
			if n != below {
				errs <- errors.New("Verify missed records")
				return
			}
		}
	})
	rng := rand.New(rand.NewPCG(9, 9))
	for c := uint64(0); c < total; {
		n := min(uint64(rng.IntN(300)), total-c)
		appendT(t, x, c, keysFor(c, c+n))
		c += n
		if b := x.Stats().Buffered; b > 3*64 {
			t.Fatalf("%d keys buffered, want at most three buffers of 64 (back-pressure)", b)
		}
	}
	if err := x.quiesce(); err != nil {
		t.Fatal(err)
	}
	close(done)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if s := x.Stats(); s.Merges == 0 {
		t.Fatalf("no merge happened: %+v", s)
	}
}

// TestLookupOutlivesMerge: a lookup that holds its snapshot while a merge
// replaces its runs goes on reading them; the replaced files are removed
// when it is done.
func TestLookupOutlivesMerge(t *testing.T) {
	x := openT(t, t.TempDir(), 0, Options{FlushEntries: 100, Fanout: 2})
	dup := keyOf(1 << 50)
	ks := keysFor(0, 100)
	ks[7] = dup
	appendT(t, x, 0, ks)
	if err := x.Flush(); err != nil {
		t.Fatal(err)
	}
	// The second run is the merge's trigger; leaf 150 shares the key so
	// that the lookup, paused in the newest run, then reads the oldest.
	x.mu.Lock()
	old := slices.Clone(x.runs)
	x.mu.Unlock()
	if len(old) != 1 {
		t.Fatalf("%d runs, want 1", len(old))
	}
	ks = keysFor(100, 200)
	ks[50] = dup
	appendT(t, x, 100, ks)

	paused := make(chan struct{})
	resume := make(chan struct{})
	var got []uint64
	var lerr error
	var wg sync.WaitGroup
	wg.Go(func() {
		lerr = x.Lookup(dup, func(i uint64) bool {
			got = append(got, i)
			if len(got) == 1 {
				close(paused)
				<-resume
			}
			return true
		})
	})
	<-paused // the lookup holds a snapshot with leaf 150 in a buffer and run [0, 100)
	if err := x.quiesce(); err != nil {
		t.Fatal(err)
	}
	if s := x.Stats(); s.Merges != 1 || s.Runs != 1 {
		t.Fatalf("stats after the merge: %+v, want one merge into one run", s)
	}
	if _, err := os.Stat(old[0].path); err != nil {
		t.Fatalf("a run replaced while a lookup holds it is gone: %v", err)
	}
	close(resume)
	wg.Wait()
	if lerr != nil || !slices.Equal(got, []uint64{150, 7}) {
		t.Fatalf("Lookup across a merge: %v, %v; want [150 7], nil", got, lerr)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(old[0].path); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replaced run %s still on disk after its last reader finished", old[0].path)
		}
		time.Sleep(time.Millisecond)
	}
	if got := lookupAll(t, x, dup); !slices.Equal(got, []uint64{7, 150}) {
		t.Fatalf("Lookup after the merge = %v, want [7 150]", got)
	}
}

// TestCloseAbandonsMerge: Close during a merge leaves the inputs (or the
// output), never a gap.
func TestCloseAbandonsMerge(t *testing.T) {
	dir := t.TempDir()
	x := openT(t, dir, 0, Options{FlushEntries: 20000, Fanout: 2})
	appendT(t, x, 0, keysFor(0, 60000))
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}
	for _, name := range runFiles(t, dir) {
		if _, _, ok := parseRunName(name); !ok {
			t.Fatalf("file %s left after Close", name)
		}
	}
	y := openT(t, dir, 60000, Options{FlushEntries: 20000, Fanout: 2})
	if got := y.Covered(); got != 60000 {
		t.Fatalf("after Close during merges: Covered() = %d, want 60000", got)
	}
	for _, i := range []uint64{0, 19999, 20000, 45000, 59999} {
		if got := lookupAll(t, y, keyOf(i)); !slices.Equal(got, []uint64{i}) {
			t.Fatalf("Lookup(leaf %d) = %v", i, got)
		}
	}
}
