package ledger

import (
	"context"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"
)

func TestDedupeKeyIsSHA256OfSystemZeroID(t *testing.T) {
	long := strings.Repeat("s", 300) // longer than DedupeKey's stack buffer
	for _, tt := range []struct{ system, id string }{
		{"iga-0", "ev-1"},
		{"", ""},
		{long, "x"},
		{"a", long},
	} {
		want := sha256.Sum256([]byte(tt.system + "\x00" + tt.id))
		if got := DedupeKey(tt.system, tt.id); got != want {
			t.Errorf("DedupeKey(%.10q, %.10q) = %x, want %x", tt.system, tt.id, got, want)
		}
	}
}

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
		ev := testEvents(10, 1)[0]
		st.corrupt(dedupeKey(DedupeKey(ev.GetSource().GetSystem(), ev.GetId())), be64(nil, 3))
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
