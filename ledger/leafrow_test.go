package ledger

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/grantline/grantline/ledger/event"
)

// TestLeafCheckUncachedTile: reading leaves whose level-0 tile is not in
// the tile cache checks them against the tile as stored, kept as read
// without expanding it, and a damaged or missing stored tile is ErrCorrupt
// naming it.
func TestLeafCheckUncachedTile(t *testing.T) {
	tests := []struct {
		name   string
		damage func(tile []byte) []byte // nil: leave the tile intact
		want   string                   // "": the read succeeds
	}{
		{"intact", nil, ""},
		{"missing", func([]byte) []byte { return nil }, "tile 0/1 is missing"},
		{"truncated", func(v []byte) []byte { return bytes.Clone(v[:len(v)-32]) }, "tile 0/1 holds 8160 bytes"},
		{"hash altered", func(v []byte) []byte {
			v = bytes.Clone(v)
			v[(300-tileWidth)*32] ^= 1
			return v
		}, "leaf 300 ("},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := newFakeStore()
			l := openFake(t, st)
			mustAppend(t, l, testEvents(0, 600))
			l.Close()
			st = st.clone() // a restart: an empty tile cache
			if tt.damage != nil {
				v, _ := st.Get(tileKey(0, 1))
				st.corrupt(tileKey(0, 1), tt.damage(v[0]))
			}
			l = openFake(t, st)
			defer l.Close()
			v, _ := st.Get(leafKey(300))
			en, err := event.DecodeLeaf(v[0])
			if err != nil {
				t.Fatal(err)
			}
			subject := en.GetEvent().GetSubject().GetId()
			es, err := l.SubjectEntries(t.Context(), subject, 600, 0, 0)
			if tt.want != "" {
				if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("SubjectEntries = %v, want ErrCorrupt with %q", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("SubjectEntries: %v", err)
			}
			if !slicesContainsIndex(es, 300) {
				t.Fatalf("SubjectEntries(%q) = %d entries without leaf 300", subject, len(es))
			}
			if l.cache.get(0, 1) != nil {
				t.Error("checking leaves expanded and cached tile 0/1; want only its stored leaf hashes read")
			}
			if l.rows.get(0, 1) == nil {
				t.Error("tile 0/1's leaf hashes are not kept for the next read")
			}
		})
	}
}

func slicesContainsIndex(es []Entry, i uint64) bool {
	for _, e := range es {
		if e.Index == i {
			return true
		}
	}
	return false
}
