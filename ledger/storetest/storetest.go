// Package storetest checks that a storage driver keeps the contract of the
// ledger's Store interface (ledger/store.go), the way testing/fstest checks a
// file system: misses are nil and empty values are not, returned slices
// belong to the caller, scans are ordered bytewise and bounded as asked,
// read from one snapshot and stop on the callback's error, commits are
// atomic (no reader ever sees half a batch) and durable across a reopen, and
// a batch beyond Limits writes nothing. Drivers run it from their tests:
//
//	storetest.Run(t, storetest.Driver{Open: ..., Reopen: ...})
//
// The checker writes only keys that start with 'x', so a driver whose
// fencing reads other keys (the ledger's tree size) is not disturbed.
package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Store is the ledger's Store interface (ledger.Store), repeated here so
// that drivers can run the checker without importing the ledger.
type Store interface {
	Get(keys ...[]byte) ([][]byte, error)
	Scan(start, end []byte, fn func(key, value []byte) error) error
	Commit(keys, values [][]byte) error
	Limits() (count int, bytes int64)
	Close() error
}

// Driver makes stores for the checker.
type Driver struct {
	// Open returns a new, empty store, ready to Commit. The checker closes
	// it (tests may also close it in t.Cleanup; Close must then tolerate a
	// second call).
	Open func(t *testing.T) Store
	// Reopen, when set, closes s and opens the same storage again: what a
	// restart of the process sees. The checker then tests durability.
	Reopen func(t *testing.T, s Store) Store
}

// Run runs the contract checks as subtests of t.
func Run(t *testing.T, d Driver) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, d Driver)
	}{
		{"GetMissesAndEmptyValues", testGet},
		{"GetReturnsCallerOwnedCopies", testGetOwned},
		{"CommitOverwrites", testOverwrite},
		{"BinaryKeysAndLargeValues", testBinary},
		{"ScanBoundsAndOrder", testScanBounds},
		{"ScanLongRangesAndEarlyStop", testScanLong},
		{"ScanReturnsCallbackError", testScanError},
		{"ScanReadsOneSnapshot", testScanSnapshot},
		{"CommitIsAtomicToReaders", testAtomicReaders},
		{"CommitRefusesMismatchedBatch", testMismatch},
		{"CommitRefusesBatchBeyondLimits", testLimits},
		{"CommitIsDurableAcrossReopen", testReopen},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, d) })
	}
}

func open(t *testing.T, d Driver) Store {
	t.Helper()
	s := d.Open(t)
	t.Cleanup(func() { s.Close() })
	return s
}

func bs(ss ...string) [][]byte {
	out := make([][]byte, len(ss))
	for i, s := range ss {
		out[i] = []byte(s)
	}
	return out
}

func commit(t *testing.T, s Store, kv ...string) {
	t.Helper()
	var ks, vs [][]byte
	for i := 0; i < len(kv); i += 2 {
		ks, vs = append(ks, []byte(kv[i])), append(vs, []byte(kv[i+1]))
	}
	if err := s.Commit(ks, vs); err != nil {
		t.Fatalf("Commit(%d entries): %v", len(ks), err)
	}
}

func get(t *testing.T, s Store, keys ...string) [][]byte {
	t.Helper()
	got, err := s.Get(bs(keys...)...)
	if err != nil {
		t.Fatalf("Get(%q): %v", keys, err)
	}
	if len(got) != len(keys) {
		t.Fatalf("Get(%q) returned %d values, want %d", keys, len(got), len(keys))
	}
	return got
}

func scanKeys(t *testing.T, s Store, start, end []byte) []string {
	t.Helper()
	var ks []string
	if err := s.Scan(start, end, func(k, v []byte) error { ks = append(ks, string(k)); return nil }); err != nil {
		t.Fatalf("Scan(%q, %q): %v", start, end, err)
	}
	return ks
}

func testGet(t *testing.T, d Driver) {
	s := open(t, d)
	if got := get(t, s); len(got) != 0 {
		t.Fatalf("Get() = %q, want no values", got)
	}
	commit(t, s, "xa", "one", "xempty", "")
	tests := []struct {
		keys []string
		want []string // "<nil>" for a miss
	}{
		{[]string{"xa"}, []string{"one"}},
		{[]string{"xmissing"}, []string{"<nil>"}},
		{[]string{"xempty"}, []string{""}},
		{[]string{"xa", "xmissing", "xempty", "xa"}, []string{"one", "<nil>", "", "one"}},
		{[]string{"xmissing", "xmissing2"}, []string{"<nil>", "<nil>"}},
	}
	for _, tt := range tests {
		got := get(t, s, tt.keys...)
		for i, v := range got {
			w := tt.want[i]
			switch {
			case w == "<nil>" && v != nil:
				t.Errorf("Get(%q)[%d] = %q, want nil (a miss)", tt.keys, i, v)
			case w != "<nil>" && v == nil:
				t.Errorf("Get(%q)[%d] = nil, want %q (present; an empty value must be non-nil)", tt.keys, i, w)
			case w != "<nil>" && string(v) != w:
				t.Errorf("Get(%q)[%d] = %q, want %q", tt.keys, i, v, w)
			}
		}
	}
}

func testGetOwned(t *testing.T, d Driver) {
	s := open(t, d)
	commit(t, s, "xa", "value-a", "xb", "value-b")
	got := get(t, s, "xa", "xb")
	for _, v := range got {
		for i := range v {
			v[i] = '!'
		}
	}
	got = get(t, s, "xb", "xa")
	if string(got[0]) != "value-b" || string(got[1]) != "value-a" {
		t.Fatalf("after changing the slices Get returned, Get = %q; want the stored values", got)
	}
}

func testOverwrite(t *testing.T, d Driver) {
	s := open(t, d)
	commit(t, s, "xa", "1", "xb", "1")
	commit(t, s, "xa", "2")
	commit(t, s, "xb", "")
	got := get(t, s, "xa", "xb")
	if string(got[0]) != "2" || got[1] == nil || len(got[1]) != 0 {
		t.Fatalf("after overwrites Get = %q, want [2, empty]", got)
	}
}

func testBinary(t *testing.T, d Driver) {
	s := open(t, d)
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	big := bytes.Repeat(all, 32*1024/256) // a 32 KiB leaf
	keys := [][]byte{[]byte("x\x00\x01"), []byte("x\xff\x00"), append([]byte("x"), all...), []byte("xbig")}
	vals := [][]byte{all, {0}, []byte("k"), big}
	if err := s.Commit(keys, vals); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(keys...)
	if err != nil {
		t.Fatal(err)
	}
	for i := range keys {
		if !bytes.Equal(got[i], vals[i]) {
			t.Errorf("Get(%x) = %d bytes %.16x..., want %d bytes %.16x...", keys[i], len(got[i]), got[i], len(vals[i]), vals[i])
		}
	}
}

func testScanBounds(t *testing.T, d Driver) {
	s := open(t, d)
	// Bytewise order: a key sorts before its extensions, 0x00 < 'a' < 0xff.
	commit(t, s, "xa1", "", "xa2", "", "xb1", "", "xa", "", "xa\x00", "", "xa\xff", "", "x\xff", "", "xc", "")
	tests := []struct {
		start, end []byte
		want       []string
	}{
		{[]byte("xa"), []byte("xb"), []string{"xa", "xa\x00", "xa1", "xa2", "xa\xff"}},
		{[]byte("xa2"), nil, []string{"xa2", "xa\xff", "xb1", "xc", "x\xff"}},
		{nil, []byte("xa1"), []string{"xa", "xa\x00"}},
		{[]byte("x"), nil, []string{"xa", "xa\x00", "xa1", "xa2", "xa\xff", "xb1", "xc", "x\xff"}},
		{[]byte("xa\x00"), []byte("xa\x01"), []string{"xa\x00"}},
		{[]byte("xd"), []byte("xe"), nil},
		{[]byte("xb"), []byte("xb"), nil},
		{[]byte("xc"), []byte("xb"), nil},
		{[]byte("x\xff"), []byte("x\xff\x00"), []string{"x\xff"}},
	}
	for _, tt := range tests {
		if got := scanKeys(t, s, tt.start, tt.end); !slices.Equal(got, tt.want) {
			t.Errorf("Scan(%q, %q) = %q, want %q", tt.start, tt.end, got, tt.want)
		}
	}
}

func testScanLong(t *testing.T, d Driver) {
	s := open(t, d)
	const n = 20000
	ks, vs := make([][]byte, n), make([][]byte, n)
	for i := range ks {
		ks[i], vs[i] = fmt.Appendf(nil, "xs%06d", i), fmt.Appendf(nil, "v%d", i)
	}
	if err := s.Commit(ks, vs); err != nil {
		t.Fatal(err)
	}
	stop := errors.New("stop")
	for _, tt := range []struct{ from, stopAt, want int }{
		{0, -1, n},    // the whole range
		{0, 0, 1},     // the first key
		{100, 63, 64}, // across the smallest page boundaries
		{0, 64, 65},   //
		{5000, 9999, 10000},
		{n - 10, -1, 10}, // the tail
	} {
		i := tt.from
		err := s.Scan(ks[tt.from], []byte("xt"), func(k, v []byte) error {
			if string(k) != string(ks[i]) || string(v) != string(vs[i]) {
				return fmt.Errorf("key %d: got %q=%q, want %q=%q", i, k, v, ks[i], vs[i])
			}
			if i-tt.from == tt.stopAt {
				i++
				return stop
			}
			i++
			return nil
		})
		if tt.stopAt >= 0 && err != stop {
			t.Errorf("Scan from %d stopping at %d: error %v, want the callback's", tt.from, tt.stopAt, err)
		} else if tt.stopAt < 0 && err != nil {
			t.Errorf("Scan from %d: %v", tt.from, err)
		}
		if i-tt.from != tt.want {
			t.Errorf("Scan from %d stopping at %d visited %d keys, want %d", tt.from, tt.stopAt, i-tt.from, tt.want)
		}
	}
}

func testScanError(t *testing.T, d Driver) {
	s := open(t, d)
	commit(t, s, "xa", "1", "xb", "2")
	stop := errors.New("stop")
	calls := 0
	err := s.Scan(nil, nil, func(k, v []byte) error { calls++; return stop })
	if err != stop {
		t.Fatalf("Scan error = %v, want the callback's error unchanged", err)
	}
	if calls != 1 {
		t.Fatalf("Scan called fn %d times after it failed, want 1", calls)
	}
}

func testScanSnapshot(t *testing.T, d Driver) {
	s := open(t, d)
	for i := range 200 {
		commit(t, s, fmt.Sprintf("xs%04d", i), "old")
	}
	var first = true
	seen := 0
	err := s.Scan([]byte("xs"), []byte("xt"), func(k, v []byte) error {
		if first {
			first = false
			// Written while the scan is open: the scan must not see it,
			// neither the new key nor the new values.
			ks, vs := [][]byte{[]byte("xs0150a")}, [][]byte{[]byte("new")}
			for i := 100; i < 200; i++ {
				ks, vs = append(ks, fmt.Appendf(nil, "xs%04d", i)), append(vs, []byte("new"))
			}
			if err := s.Commit(ks, vs); err != nil {
				return err
			}
		}
		seen++
		if string(v) != "old" {
			return fmt.Errorf("scan saw %q=%q, written after it started", k, v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen != 200 {
		t.Fatalf("scan saw %d keys, want the 200 present when it started", seen)
	}
	if got := get(t, s, "xs0150a", "xs0199"); string(got[0]) != "new" || string(got[1]) != "new" {
		t.Fatalf("after the scan Get = %q, want the new values", got)
	}
}

// testAtomicReaders commits batches that keep an invariant (every key of a
// batch holds the same generation) while readers check it with Get and Scan.
func testAtomicReaders(t *testing.T, d Driver) {
	s := open(t, d)
	const width = 50
	keys := make([][]byte, width)
	for i := range keys {
		keys[i] = fmt.Appendf(nil, "xg%03d", i)
	}
	write := func(gen int) error {
		vs := make([][]byte, width)
		for i := range vs {
			vs[i] = fmt.Appendf(nil, "%d", gen)
		}
		return s.Commit(keys, vs)
	}
	if err := write(0); err != nil {
		t.Fatal(err)
	}
	var done atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for r := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !done.Load() {
				var vals []string
				if r%2 == 0 {
					got, err := s.Get(keys...)
					if err != nil {
						errs <- err
						return
					}
					for _, v := range got {
						vals = append(vals, string(v))
					}
				} else if err := s.Scan([]byte("xg"), []byte("xh"), func(k, v []byte) error {
					vals = append(vals, string(v))
					return nil
				}); err != nil {
					errs <- err
					return
				}
				if len(vals) != width || len(slices.Compact(slices.Clone(vals))) != 1 {
					errs <- fmt.Errorf("a reader saw a mix of batches: %q", vals)
					return
				}
			}
		}()
	}
	deadline := time.Now().Add(2 * time.Second)
	for gen := 1; gen <= 200 && time.Now().Before(deadline); gen++ {
		if err := write(gen); err != nil {
			t.Error(err)
			break
		}
	}
	done.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func testMismatch(t *testing.T, d Driver) {
	s := open(t, d)
	if err := s.Commit(bs("xa", "xb"), bs("1")); err == nil {
		t.Fatal("Commit of 2 keys and 1 value succeeded")
	}
	if got := get(t, s, "xa"); got[0] != nil {
		t.Fatalf("a refused batch wrote xa = %q", got[0])
	}
}

func testLimits(t *testing.T, d Driver) {
	s := open(t, d)
	count, size := s.Limits()
	if count < 1000 || size < 1<<20 {
		t.Fatalf("Limits() = %d entries, %d bytes; the ledger needs at least 1000 entries and 1 MiB per commit", count, size)
	}
	ks, vs := make([][]byte, count+1), make([][]byte, count+1)
	for i := range ks {
		ks[i], vs[i] = fmt.Appendf(nil, "xbig-%08d", i), []byte("x")
	}
	if err := s.Commit(ks, vs); err == nil {
		t.Fatalf("Commit of %d entries (limit %d) succeeded", len(ks), count)
	}
	if got, err := s.Get(ks[0], ks[count]); err != nil || got[0] != nil || got[1] != nil {
		t.Fatalf("after a refused batch beyond the limits Get = %q, %v; want nothing written", got, err)
	}
	// A batch at the count limit commits.
	if err := s.Commit(ks[:count], vs[:count]); err != nil {
		t.Fatalf("Commit of %d entries (the limit): %v", count, err)
	}
}

func testReopen(t *testing.T, d Driver) {
	if d.Reopen == nil {
		t.Skip("the driver has no Reopen")
	}
	s := d.Open(t)
	commit(t, s, "xa", "1", "xb", "")
	commit(t, s, "xa", "2")
	s = d.Reopen(t, s)
	defer s.Close()
	got := get(t, s, "xa", "xb", "xc")
	if string(got[0]) != "2" || got[1] == nil || got[2] != nil {
		t.Fatalf("after reopening Get = %q, want [2, empty, nil]", got)
	}
	if ks := scanKeys(t, s, nil, nil); !slices.Equal(ks, []string{"xa", "xb"}) {
		t.Fatalf("after reopening Scan = %q, want [xa xb]", ks)
	}
}
