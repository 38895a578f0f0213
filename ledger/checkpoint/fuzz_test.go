package checkpoint

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"testing"

	"github.com/grantline/grantline/ledger"
)

// fuzzKey is a fixed Ed25519 key so the committed corpus stays valid.
var fuzzKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))

const fuzzOrigin = "fuzz.example/log"

// FuzzOpen checks that Open never panics, that every error is one of the
// sentinels, and that whatever it accepts re-encodes to the same body.
func FuzzOpen(f *testing.F) {
	s, err := NewNoteSigner(fuzzOrigin, fuzzKey)
	if err != nil {
		f.Fatal(err)
	}
	vkey, err := VerifierKey(fuzzOrigin, fuzzKey.Public())
	if err != nil {
		f.Fatal(err)
	}
	v, err := NewNoteVerifier(vkey)
	if err != nil {
		f.Fatal(err)
	}
	for _, size := range []uint64{0, 1, 255, 1 << 20} {
		msg, err := sign(s, size, bytes.Repeat([]byte{byte(size)}, 32))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(msg)
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		c, err := ledger.OpenCheckpoint(msg, v)
		if err != nil {
			for _, e := range []error{ledger.ErrMalformed, ledger.ErrMissingSignature, ledger.ErrUnknownKey, ledger.ErrInvalidSignature, ledger.ErrOriginMismatch} {
				if errors.Is(err, e) {
					return
				}
			}
			t.Fatalf("Open(%q) = %v, not one of the sentinel errors", msg, err)
		}
		body := bodyOf(c.Origin, c.Size, c.Root[:])
		if !bytes.HasPrefix(msg, body) {
			t.Fatalf("Open(%q) = %+v, but its body %q is not the note's prefix", msg, c, body)
		}
	})
}
