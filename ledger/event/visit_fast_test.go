package event

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"unicode/utf8"
)

// TestVisitLeafAgreesOnMutatedLeaves: VisitLeaf's one-byte fast path in
// nextField (a one-byte tag followed by a one-byte length or varint) must
// accept and refuse exactly what the general path, and proto.Unmarshal, do.
// Leaves are mutated at random where the fast path decides: tags, lengths
// just past the end, field number 0, multi-byte varints, truncations.
func TestVisitLeafAgreesOnMutatedLeaves(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 7))
	var leaves [][]byte
	for _, ev := range sampleEvents() {
		leaf, err := EncodeLeaf(ev, observedAt)
		if err != nil {
			t.Fatal(err)
		}
		leaves = append(leaves, leaf)
	}
	special := []byte{0x00, 0x07, 0x08, 0x0a, 0x0d, 0x0e, 0x7f, 0x80, 0x81, 0xff, 0x12, 0x1a, 0x22, 0x6a}
	for range 20_000 {
		leaf := append([]byte(nil), leaves[rng.IntN(len(leaves))]...)
		for range 1 + rng.IntN(3) {
			if len(leaf) == 0 {
				break
			}
			i := rng.IntN(len(leaf))
			switch rng.IntN(5) {
			case 0:
				leaf[i] = special[rng.IntN(len(special))]
			case 1:
				leaf[i] = byte(rng.IntN(256))
			case 2:
				leaf[i] += byte(1 + rng.IntN(3)) // a length just past the end
			case 3:
				leaf = leaf[:i]
			case 4:
				leaf = append(leaf[:i:i], append([]byte{special[rng.IntN(len(special))]}, leaf[i:]...)...)
			}
		}
		checkAgree(t, leaf)
	}
}

// TestValidUTF8IsUTF8Valid: validUTF8's inline ASCII check gives
// utf8.Valid's answer for strings of every length up to 40 with a non-ASCII
// byte (valid or not) at every position, and on random bytes.
func TestValidUTF8IsUTF8Valid(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 9))
	for n := range 41 {
		b := bytes.Repeat([]byte{'a'}, n)
		if validUTF8(b) != utf8.Valid(b) {
			t.Fatalf("validUTF8(%q) != utf8.Valid", b)
		}
		for pos := range n {
			for _, ins := range [][]byte{{0xff}, {0x80}, {0xc3, 0xa9}, {0xe2, 0x82}, {0xf0, 0x9f, 0x98, 0x80}} {
				c := append(append(append([]byte(nil), b[:pos]...), ins...), b[pos:]...)
				if validUTF8(c) != utf8.Valid(c) {
					t.Fatalf("validUTF8(%q) = %v, utf8.Valid %v", c, validUTF8(c), utf8.Valid(c))
				}
			}
		}
	}
	for range 20_000 {
		b := make([]byte, rng.IntN(48))
		for i := range b {
			b[i] = byte(rng.IntN(256))
			if rng.IntN(4) > 0 {
				b[i] &= 0x7f
			}
		}
		if validUTF8(b) != utf8.Valid(b) {
			t.Fatalf("validUTF8(%q) = %v, utf8.Valid %v", b, validUTF8(b), utf8.Valid(b))
		}
	}
}
