package ledger

import (
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// filterKey is the i-th test key of a series (SHA-256, like dedupe keys).
func filterKey(series byte, i int) [32]byte {
	var b [9]byte
	b[0] = series
	binary.BigEndian.PutUint64(b[1:], uint64(i))
	return sha256.Sum256(b[:])
}

// TestDedupeFilter adds keys to filters of several bounds, through new
// segments and past the bound: every key added must be reported as maybe
// present (no false negatives), memory must stay within the bound, and
// while within its sizing the filter must rule out most keys never added.
func TestDedupeFilter(t *testing.T) {
	for _, tc := range []struct {
		name     string
		size     uint64 // tree size at creation
		maxBytes int64
		keys     int
		segs     int     // segments at the end, at least
		maxFP    float64 // largest false-positive rate allowed
	}{
		{"grows", 0, 64 << 20, 600_000, 4, 0.06},
		{"reopened-large", 500_000, 64 << 20, 600_000, 1, 0.03},
		{"bounded", 0, 3 * filterMinKeys * filterBitsPerKey / 8, 600_000, 2, 1},
		{"smallest", 0, filterMinKeys * filterBitsPerKey / 8, 300_000, 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newDedupeFilter(tc.size, tc.maxBytes)
			if f == nil {
				t.Fatalf("no filter for a bound of %d bytes", tc.maxBytes)
			}
			if f.mayContain(&[32]byte{1}) != true {
				t.Fatal("a filter not yet filled ruled out a key")
			}
			f.ready.Store(true)
			for i := range tc.keys {
				k := filterKey('a', i)
				f.add(&k)
			}
			for i := range tc.keys {
				if k := filterKey('a', i); !f.mayContain(&k) {
					t.Fatalf("key %d of %d was added but is ruled out (%d segments)", i, tc.keys, len(f.segs))
				}
			}
			if len(f.segs) < tc.segs {
				t.Errorf("%d segments, want at least %d", len(f.segs), tc.segs)
			}
			if f.bytes() > tc.maxBytes {
				t.Errorf("the filter takes %d bytes, over its bound of %d", f.bytes(), tc.maxBytes)
			}
			fp := 0
			const probes = 100_000
			for i := range probes {
				if k := filterKey('b', i); f.mayContain(&k) {
					fp++
				}
			}
			if rate := float64(fp) / probes; rate > tc.maxFP {
				t.Errorf("false-positive rate %.4f, want at most %.2f", rate, tc.maxFP)
			}
			t.Logf("%d keys: %d segments, %d bytes, false positives %.4f", tc.keys, len(f.segs), f.bytes(), float64(fp)/probes)
		})
	}
	if f := newDedupeFilter(0, filterMinKeys*filterBitsPerKey/8-1); f != nil {
		t.Errorf("a bound below the smallest segment made a filter of %d bytes", f.bytes())
	}
	var none *dedupeFilter
	if !none.mayContain(&[32]byte{}) {
		t.Error("no filter ruled out a key")
	}
	none.add(&[32]byte{}) // no filter: a no-op, not a panic
}

// countingStore counts the dedupe keys looked up with Get, and can hold
// back the scan of the dedupe records (the filter's fill) until released.
type countingStore struct {
	Store
	dedupeGets atomic.Int64
	hold       chan struct{} // nil: scans run at once
	holding    chan struct{} // receives once a held scan waits
}

func (s *countingStore) Get(keys ...[]byte) ([][]byte, error) {
	for _, k := range keys {
		if len(k) > 0 && k[0] == kDedupe {
			s.dedupeGets.Add(1)
		}
	}
	return s.Store.Get(keys...)
}

func (s *countingStore) Scan(start, end []byte, fn func(k, v []byte) error) error {
	if s.hold != nil && len(start) == 1 && start[0] == kDedupe {
		s.holding <- struct{}{}
		<-s.hold
	}
	return s.Store.Scan(start, end, fn)
}

// TestDedupeFilterSkipsLookups: with the filter, appending new events
// looks up (almost) none of their dedupe keys in the store, and after a
// reopen (the filter filled from the index) every resent event is still
// answered as the duplicate, or conflict, of the stored one. Without the
// filter every new key is looked up. Both index layouts.
func TestDedupeFilterSkipsLookups(t *testing.T) {
	for _, split := range []bool{false, true} {
		for _, filterBytes := range []int64{0, -1} {
			name := map[bool]string{false: "main-store", true: "index-store"}[split] + map[bool]string{true: "/filter", false: "/no-filter"}[filterBytes == 0]
			t.Run(name, func(t *testing.T) {
				st, ix := newFakeStore(), lazy()
				open := func() (*Log, *countingStore) {
					t.Helper()
					o := testOptions()
					o.DedupeFilterBytes = filterBytes
					c := &countingStore{Store: Store(st)}
					if split {
						c.Store = ix
						o.Index = c
						l, err := Open(t.Context(), st, o)
						if err != nil {
							t.Fatal(err)
						}
						return l, c
					}
					l, err := Open(t.Context(), c, o)
					if err != nil {
						t.Fatal(err)
					}
					return l, c
				}
				l, c := open()
				a := acked{}
				a.add(t, testEvents(0, 1000), mustAppend(t, l, testEvents(0, 1000)))
				a.add(t, testEvents(1000, 1000), mustAppend(t, l, testEvents(1000, 1000)))
				gets := c.dedupeGets.Load()
				if filterBytes == 0 && gets > 100 {
					t.Errorf("with the filter, 2,000 new events looked up %d dedupe keys in the store, want almost none", gets)
				}
				if filterBytes < 0 && gets != 2000 {
					t.Errorf("without the filter, 2,000 new events looked up %d dedupe keys, want 2,000", gets)
				}
				l.Close()
				st, ix = st.clone(), ix.clone()
				l, c = open()
				defer l.Close()
				changed := testEvent(17)
				changed.Reason = "another reason"
				res := mustAppend(t, l, append(testEvents(0, 2000), changed))
				a.add(t, testEvents(0, 2000), res[:2000])
				for i, r := range res[:2000] {
					if !r.Duplicate || r.Index != uint64(i) {
						t.Fatalf("resent event %d after reopen: %+v, want a duplicate of index %d", i, r, i)
					}
				}
				if r := res[2000]; !r.Conflict || r.Index != 17 {
					t.Fatalf("changed event 17 after reopen: %+v, want a conflict with index 17", r)
				}
				checkInvariants(t, l, a)
			})
		}
	}
}

// TestDedupeFilterBackgroundFill: a log beyond filterSyncMax fills its
// filter in the background. Events appended while the fill runs (their
// keys in no scan) must be found as duplicates once the filter is ready,
// as must the events stored before the reopen; Close waits for a fill.
func TestDedupeFilterBackgroundFill(t *testing.T) {
	defer func(v uint64) { filterSyncMax = v }(filterSyncMax)
	filterSyncMax = 100
	st, ix := newFakeStore(), lazy()
	l := mustOpenSplit(t, st, ix)
	mustAppend(t, l, testEvents(0, 500))
	l.Close()
	st, ix = st.clone(), ix.clone()
	c := &countingStore{Store: ix, hold: make(chan struct{}), holding: make(chan struct{}, 1)}
	var (
		l2   *Log
		err  error
		wg   sync.WaitGroup
		open = make(chan struct{})
	)
	wg.Go(func() {
		defer close(open)
		l2, err = openSplit(t, st, c)
	})
	<-open
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	<-c.holding // the fill waits
	if l2.filter == nil || l2.filter.ready.Load() {
		t.Fatal("the filter of a log beyond filterSyncMax is ready before its fill ran")
	}
	// While the fill waits: old events found in the store, new ones added.
	res := mustAppend(t, l2, testEvents(250, 500))
	for i, r := range res {
		if want := i < 250; r.Duplicate != want {
			t.Fatalf("event %d during the fill: %+v, duplicate want %v", 250+i, r, want)
		}
	}
	close(c.hold)
	deadline := time.Now().Add(10 * time.Second)
	for !l2.filter.ready.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the filter did not turn ready")
		}
		time.Sleep(time.Millisecond)
	}
	before := c.dedupeGets.Load()
	res = mustAppend(t, l2, testEvents(0, 1000))
	for i, r := range res {
		if want := i < 750; r.Duplicate != want || (want && r.Index != uint64(i)) {
			t.Fatalf("event %d once the filter is ready: %+v, want duplicate %v at %d", i, r, want, i)
		}
	}
	if n := c.dedupeGets.Load() - before; n < 750 || n > 800 {
		t.Errorf("%d dedupe lookups for 750 stored and 250 new events, want 750 and few more", n)
	}
	wg.Wait()
}
