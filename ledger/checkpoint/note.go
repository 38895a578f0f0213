package checkpoint

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"

	"github.com/sigstore/sigstore/pkg/signature"
	fnote "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"

	"github.com/grantline/grantline/ledger"
)

// Signed-note algorithm identifiers (https://c2sp.org/signed-note).
const (
	algEd25519         = 0x01
	algECDSAWithSHA256 = 0x02
)

// noteSigner is a note.Signer that signs through a sigstore signature.Signer.
type noteSigner struct {
	name string
	hash uint32
	s    signature.Signer
}

func (s *noteSigner) Name() string    { return s.name }
func (s *noteSigner) KeyHash() uint32 { return s.hash }

// Sign signs msg. It is safe for concurrent use.
func (s *noteSigner) Sign(msg []byte) ([]byte, error) {
	sig, err := s.s.SignMessage(bytes.NewReader(msg))
	if err != nil {
		return nil, fmt.Errorf("signing note: %w", err)
	}
	return sig, nil
}

// NewNoteSigner returns a note.Signer named origin for an Ed25519 or ECDSA
// P-256 private key. Signing goes through a sigstore signature.Signer:
// Ed25519 signs the note text itself (signed-note algorithm 0x01), ECDSA
// signs its SHA-256 digest, ASN.1-encoded (algorithm 0x02). The signer is
// safe for concurrent use.
func NewNoteSigner(origin string, key crypto.PrivateKey) (note.Signer, error) {
	if err := ledger.CheckOrigin(origin); err != nil {
		return nil, err
	}
	priv, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: %T is not a private key", ErrUnsupportedKey, key)
	}
	alg, err := AlgorithmOf(priv)
	if err != nil {
		return nil, err
	}
	pub := priv.Public()
	hash, _, err := keyHashAndBytes(origin, alg, pub)
	if err != nil {
		return nil, err
	}
	s, err := signature.LoadSigner(key, crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("loading sigstore signer: %w", err)
	}
	return &noteSigner{name: origin, hash: hash, s: s}, nil
}

// VerifierKey returns the signed-note verifier key "origin+hexid+base64key"
// for pub, without a trailing newline.
func VerifierKey(origin string, pub crypto.PublicKey) (string, error) {
	if err := ledger.CheckOrigin(origin); err != nil {
		return "", err
	}
	alg, err := AlgorithmOf(pub)
	if err != nil {
		return "", err
	}
	if alg == Ed25519 {
		return note.NewEd25519VerifierKey(origin, pub.(ed25519.PublicKey))
	}
	hash, keyBytes, err := keyHashAndBytes(origin, alg, pub)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s+%08x+%s", origin, hash, base64.StdEncoding.EncodeToString(keyBytes)), nil
}

// NewNoteVerifier parses a verifier key written by VerifierKey and returns a
// note.Verifier: golang.org/x/mod's own for Ed25519, and
// transparency-dev/formats' for ECDSA. The verifier is safe for concurrent use.
func NewNoteVerifier(vkey string) (note.Verifier, error) {
	name, alg, _, err := splitVerifierKey(vkey)
	if err != nil {
		return nil, err
	}
	var v note.Verifier
	switch alg {
	case algEd25519:
		v, err = note.NewVerifier(vkey)
	case algECDSAWithSHA256:
		v, err = fnote.NewECDSAVerifier(vkey)
	}
	if err != nil {
		return nil, fmt.Errorf("verifier key for %q: %w", name, err)
	}
	return v, nil
}

// ParseVerifierKey returns the name (origin) and public key in a verifier key.
// It checks the key hash.
func ParseVerifierKey(vkey string) (origin string, pub crypto.PublicKey, err error) {
	name, alg, key, err := splitVerifierKey(vkey)
	if err != nil {
		return "", nil, err
	}
	switch alg {
	case algEd25519:
		if len(key) != ed25519.PublicKeySize {
			return "", nil, fmt.Errorf("verifier key for %q: Ed25519 key is %d bytes, want %d", name, len(key), ed25519.PublicKeySize)
		}
		pub = ed25519.PublicKey(key)
	case algECDSAWithSHA256:
		p, err := x509.ParsePKIXPublicKey(key)
		if err != nil {
			return "", nil, fmt.Errorf("verifier key for %q: parsing ECDSA public key: %w", name, err)
		}
		pub = p
	}
	a, err := AlgorithmOf(pub)
	if err != nil {
		return "", nil, fmt.Errorf("verifier key for %q: %w", name, err)
	}
	want, err := VerifierKey(name, pub)
	if err != nil {
		return "", nil, err
	}
	if want != vkey {
		return "", nil, fmt.Errorf("verifier key for %q: key hash does not match the %s key (the key is corrupt or was edited)", name, a)
	}
	return name, pub, nil
}

// splitVerifierKey checks the shape "name+hexhash+base64(alg||key)".
func splitVerifierKey(vkey string) (name string, alg byte, key []byte, err error) {
	parts := strings.SplitN(vkey, "+", 3)
	if len(parts) != 3 {
		return "", 0, nil, fmt.Errorf("malformed verifier key %q: want name+hexid+base64key", vkey)
	}
	name = parts[0]
	if err := ledger.CheckOrigin(name); err != nil {
		return "", 0, nil, fmt.Errorf("malformed verifier key: %w", err)
	}
	if len(parts[1]) != 8 {
		return "", 0, nil, fmt.Errorf("malformed verifier key for %q: key id %q is not 8 hex digits", name, parts[1])
	}
	if _, err := strconv.ParseUint(parts[1], 16, 32); err != nil {
		return "", 0, nil, fmt.Errorf("malformed verifier key for %q: key id %q is not 8 hex digits", name, parts[1])
	}
	raw, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil || len(raw) < 2 {
		return "", 0, nil, fmt.Errorf("malformed verifier key for %q: key is not valid base64", name)
	}
	switch raw[0] {
	case algEd25519, algECDSAWithSHA256:
	default:
		return "", 0, nil, fmt.Errorf("verifier key for %q: %w: signed-note algorithm 0x%02x (want 0x01 Ed25519 or 0x02 ECDSA P-256)", name, ErrUnsupportedKey, raw[0])
	}
	return name, raw[0], raw[1:], nil
}

// keyHashAndBytes returns the signed-note key hash and the algorithm-prefixed
// key bytes. Ed25519: SHA-256(name "\n" 0x01 key)[:4]; ECDSA (as
// transparency-dev/formats computes it): SHA-256(PKIX DER)[:4].
func keyHashAndBytes(name string, alg Algorithm, pub crypto.PublicKey) (uint32, []byte, error) {
	switch alg {
	case Ed25519:
		kb := append([]byte{algEd25519}, pub.(ed25519.PublicKey)...)
		h := sha256.New()
		h.Write([]byte(name + "\n"))
		h.Write(kb)
		return binary.BigEndian.Uint32(h.Sum(nil)), kb, nil
	case ECDSAP256:
		der, err := x509.MarshalPKIXPublicKey(pub.(*ecdsa.PublicKey))
		if err != nil {
			return 0, nil, fmt.Errorf("encoding ECDSA public key: %w", err)
		}
		sum := sha256.Sum256(der)
		return binary.BigEndian.Uint32(sum[:]), append([]byte{algECDSAWithSHA256}, der...), nil
	}
	return 0, nil, fmt.Errorf("%w: %s", ErrUnsupportedKey, alg)
}
