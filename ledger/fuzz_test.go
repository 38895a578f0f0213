package ledger

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/grantline/grantline/ledger/event"
)

// FuzzParseEntryBundle checks that parseEntryBundle never panics and that
// what it accepts re-encodes to the same bytes.
func FuzzParseEntryBundle(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 0})
	f.Add([]byte{0, 3, 'a', 'b', 'c', 0, 1, 'x'})
	f.Add([]byte{0, 5, 'a'})
	f.Add([]byte{0xff, 0xff})
	leaf, _ := event.EncodeLeaf(testEvent(1), testNow)
	f.Add(binary.BigEndian.AppendUint16(nil, uint16(len(leaf))))
	f.Add(append(binary.BigEndian.AppendUint16(nil, uint16(len(leaf))), leaf...))
	f.Fuzz(func(t *testing.T, data []byte) {
		leaves, err := parseEntryBundle(data)
		if err != nil {
			return
		}
		if len(leaves) == 0 || len(leaves) > 256 {
			t.Fatalf("parseEntryBundle accepted %d entries", len(leaves))
		}
		var re []byte
		for _, l := range leaves {
			re = binary.BigEndian.AppendUint16(re, uint16(len(l)))
			re = append(re, l...)
		}
		if !bytes.Equal(re, data) {
			t.Fatalf("re-encoded bundle differs from the input")
		}
	})
}

// FuzzParseTile checks that parseTile never panics, accepts exactly the
// multiples of 32 bytes up to 8192, and returns the input's hashes.
func FuzzParseTile(f *testing.F) {
	f.Add([]byte{})
	f.Add(make([]byte, 32))
	f.Add(make([]byte, 33))
	f.Add(make([]byte, 8192))
	f.Add(make([]byte, 8224))
	f.Fuzz(func(t *testing.T, data []byte) {
		hs, err := parseTile(data)
		valid := len(data) > 0 && len(data)%32 == 0 && len(data) <= 8192
		if (err == nil) != valid {
			t.Fatalf("parseTile(%d bytes) error = %v, want valid=%v", len(data), err, valid)
		}
		if err != nil {
			return
		}
		var re []byte
		for _, h := range hs {
			re = append(re, h[:]...)
		}
		if !bytes.Equal(re, data) {
			t.Fatalf("hashes differ from the input")
		}
	})
}
