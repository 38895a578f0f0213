package ledger

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// TestScanEntries: ScanEntries hands over exactly the leaves Entries
// returns, for ranges that start and end inside tiles and pages, across
// pages, clipped at the tree's end and at its partial edge tile; stops at
// fn's error and returns it as is; refuses a start past the tree.
func TestScanEntries(t *testing.T) {
	ctx := t.Context()
	l := openFake(t, newFakeStore())
	defer l.Close()
	const n = 2*scanPage + 300 // two full pages, then a partial edge tile
	for i := 0; i < n; i += 1000 {
		mustAppend(t, l, testEvents(i, min(1000, n-i)))
	}
	for _, r := range []struct{ start, end uint64 }{
		{0, n}, {0, 1}, {5, 6}, {255, 257}, {100, scanPage + 7}, {scanPage - 1, scanPage + 1},
		{scanPage, 2 * scanPage}, {2*scanPage + 250, n}, {n - 1, n}, {3000, n + 500},
	} {
		want, err := l.Entries(ctx, r.start, r.end-r.start)
		if err != nil {
			t.Fatal(err)
		}
		var got []Entry
		err = l.ScanEntries(ctx, r.start, r.end, func(e Entry) error {
			got = append(got, Entry{Index: e.Index, Leaf: bytes.Clone(e.Leaf)})
			return nil
		})
		if err != nil {
			t.Fatalf("ScanEntries(%d, %d): %v", r.start, r.end, err)
		}
		if len(got) != len(want) {
			t.Fatalf("ScanEntries(%d, %d): %d entries, Entries gives %d", r.start, r.end, len(got), len(want))
		}
		for i := range got {
			if got[i].Index != want[i].Index || !bytes.Equal(got[i].Leaf, want[i].Leaf) {
				t.Fatalf("ScanEntries(%d, %d): entry %d is leaf %d, Entries gives leaf %d (or other bytes)", r.start, r.end, i, got[i].Index, want[i].Index)
			}
		}
	}

	stop := errors.New("stop here")
	calls := 0
	err := l.ScanEntries(ctx, 0, n, func(e Entry) error {
		calls++
		if e.Index == scanPage+3 {
			return stop
		}
		return nil
	})
	if err != stop || calls != scanPage+4 {
		t.Errorf("ScanEntries with fn failing at leaf %d = %v after %d calls, want the error itself after %d", scanPage+3, err, calls, scanPage+4)
	}

	if err := l.ScanEntries(ctx, n, n+5, func(Entry) error { return nil }); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("ScanEntries past the tree = %v, want ErrOutOfRange", err)
	}
}

// TestScanEntriesMissingLeaf: a leaf missing from the store is ErrCorrupt
// naming it, never skipped.
func TestScanEntriesMissingLeaf(t *testing.T) {
	st := newFakeStore()
	l := openFake(t, st)
	defer l.Close()
	mustAppend(t, l, testEvents(0, 600))
	st.corrupt(leafKey(300), nil)
	err := l.ScanEntries(t.Context(), 0, 600, func(Entry) error { return nil })
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "leaf 300") {
		t.Errorf("ScanEntries over a missing leaf = %v, want ErrCorrupt naming leaf 300", err)
	}
}
