package witness

import (
	"crypto"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"filippo.io/torchwood"
	"golang.org/x/mod/sumdb/note"
)

// Signed-note key algorithm identifiers (https://c2sp.org/signed-note).
const (
	algEd25519       = 0x01
	algCosignatureV1 = 0x04
)

// ErrBadKey is wrapped by every error about a witness verifier key that is
// not a well-formed cosignature/v1 key.
var ErrBadKey = errors.New("bad witness verifier key")

// newCosignatureVerifier parses a signed-note verifier key
// "name+hexid+base64(0x04 || Ed25519 public key)" of a cosignature/v1 witness
// key and returns a note.Verifier for its cosignatures. The cosignature
// framing (the signed message "cosignature/v1\ntime T\n" + checkpoint, and
// the signature encoding timestamp || Ed25519 signature) is
// filippo.io/torchwood's; this function only checks the key text and its
// key id. The verifier is safe for concurrent use.
func newCosignatureVerifier(vkey string) (note.Verifier, error) {
	parts := strings.SplitN(vkey, "+", 3)
	if len(parts) != 3 {
		return nil, fmt.Errorf("%w: %q is not name+keyid+base64key", ErrBadKey, vkey)
	}
	name, id, key64 := parts[0], parts[1], parts[2]
	if !validKeyName(name) {
		return nil, fmt.Errorf("%w: key name %q must be non-empty UTF-8 without spaces or '+'", ErrBadKey, name)
	}
	hash, err := strconv.ParseUint(id, 16, 32)
	if err != nil || len(id) != 8 {
		return nil, fmt.Errorf("%w: key id %q of %q is not 8 hex digits", ErrBadKey, id, name)
	}
	raw, err := base64.StdEncoding.DecodeString(key64)
	if err != nil || len(raw) == 0 {
		return nil, fmt.Errorf("%w: the key of %q is not valid base64", ErrBadKey, name)
	}
	switch {
	case raw[0] == algEd25519:
		return nil, fmt.Errorf("%w: %q is a plain Ed25519 signed-note key (algorithm 0x01); a witness cosigns with a cosignature/v1 key (algorithm 0x04), the one the witness prints (litewitness logs it as \"verifier key\" at start-up)", ErrBadKey, name)
	case raw[0] != algCosignatureV1:
		return nil, fmt.Errorf("%w: %q has signed-note algorithm 0x%02x; want 0x04 (cosignature/v1, Ed25519)", ErrBadKey, name, raw[0])
	case len(raw) != 1+ed25519.PublicKeySize:
		return nil, fmt.Errorf("%w: the Ed25519 key of %q is %d bytes, want %d (truncated?)", ErrBadKey, name, len(raw)-1, ed25519.PublicKeySize)
	}
	s, err := torchwood.NewCosignatureSigner(name, verifyOnly{ed25519.PublicKey(raw[1:])})
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %w", ErrBadKey, name, err)
	}
	v := s.Verifier()
	if v.KeyHash() != uint32(hash) {
		return nil, fmt.Errorf("%w: key id %s of %q does not match its key (want %08x): the key was mistyped or edited", ErrBadKey, id, name, v.KeyHash())
	}
	return v, nil
}

// verifyOnly is a crypto.Signer that holds only a public key, so that
// torchwood.NewCosignatureSigner can build the matching CosignatureVerifier.
// It can never sign.
type verifyOnly struct{ pub ed25519.PublicKey }

func (k verifyOnly) Public() crypto.PublicKey { return k.pub }

func (verifyOnly) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("witness: a verifier key cannot sign")
}

func validKeyName(name string) bool {
	return name != "" && utf8.ValidString(name) && strings.IndexFunc(name, unicode.IsSpace) < 0 && !strings.Contains(name, "+")
}

// cosignatureTime returns the time a cosignature/v1 signature says the
// witness signed at.
func cosignatureTime(sig note.Signature) (time.Time, error) {
	ts, err := torchwood.CosignatureTimestamp(sig)
	if err != nil {
		return time.Time{}, err
	}
	return time.Unix(ts, 0).UTC(), nil
}

// signatureLine formats a note signature as its line in a signed note,
// newline included.
func signatureLine(s note.Signature) string {
	return "— " + s.Name + " " + s.Base64 + "\n"
}
