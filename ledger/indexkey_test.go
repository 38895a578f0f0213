package ledger

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/grantline/grantline/ledger/event"
)

// The index keys keep 16 bytes of a hash; these tests forge the truncation
// collisions that are infeasible to find and check that the confirmation on
// the leaf keeps the log from answering with the wrong entry.
func TestTruncatedIndexKeyCollisions(t *testing.T) {
	ctx := context.Background()
	st := newFakeStore()
	l := openFake(t, st)
	defer l.Close()
	res := mustAppend(t, l, testEvents(0, 10))

	t.Run("leaf hash sharing the key prefix", func(t *testing.T) {
		h := res[3].LeafHash
		h[31] ^= 1
		if got, err := l.LookupLeafHash(ctx, h[:]); !errors.Is(err, ErrNotFound) {
			t.Fatalf("LookupLeafHash(leaf 3's hash with its last byte changed) = %d, %v, want ErrNotFound", got, err)
		}
		if got, err := l.LookupLeafHash(ctx, res[3].LeafHash[:]); err != nil || got != 3 {
			t.Fatalf("LookupLeafHash(leaf 3's hash) = %d, %v, want 3", got, err)
		}
	})

	t.Run("dedupe key prefix naming another event", func(t *testing.T) {
		// A log opened on the forged record: its dedupe filter, filled
		// from the index, holds the prefix as it would a real collision's.
		forged := st.clone()
		ev := testEvents(10, 1)[0]
		forged.corrupt(dedupeKey(event.DedupeKey(ev.GetSource().GetSystem(), ev.GetId())), be64(nil, 3))
		l := openFake(t, forged)
		defer l.Close()
		_, _, err := l.Append(ctx, testEvents(10, 1))
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "another event") {
			t.Fatalf("Append of an event whose dedupe record names leaf 3 = %v, want ErrCorrupt naming another event", err)
		}
		if got := l.Latest().Size; got != 10 {
			t.Fatalf("size after the refused append = %d, want 10", got)
		}
	})

	t.Run("duplicate gets the original's index and hash", func(t *testing.T) {
		got, _, err := l.Append(ctx, testEvents(4, 1))
		if err != nil {
			t.Fatal(err)
		}
		if want := (AppendResult{Index: 4, LeafHash: res[4].LeafHash, Duplicate: true}); got[0] != want {
			t.Fatalf("Append(event 4 again) = %+v, want %+v", got[0], want)
		}
	})
}
