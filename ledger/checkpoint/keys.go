package checkpoint

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/grantline/grantline/internal/atomicfile"

	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"golang.org/x/mod/sumdb/note"
)

// Algorithm names a signing algorithm for log and evidence keys.
type Algorithm string

const (
	// Ed25519 is the default: signed-note algorithm 0x01, verifiable by
	// golang.org/x/mod/sumdb/note.
	Ed25519 Algorithm = "ed25519"
	// ECDSAP256 is ECDSA over NIST P-256 with SHA-256, signed-note
	// algorithm 0x02 as github.com/transparency-dev/formats/note verifies it.
	ECDSAP256 Algorithm = "ecdsa-p256"
)

// ErrUnsupportedKey is returned for keys of an algorithm this package does not
// sign or verify with (anything but Ed25519 and ECDSA P-256).
var ErrUnsupportedKey = errors.New("unsupported key type")

// ParseAlgorithm parses an algorithm name as given on a command line; the
// empty string means Ed25519.
func ParseAlgorithm(s string) (Algorithm, error) {
	switch Algorithm(s) {
	case "", Ed25519:
		return Ed25519, nil
	case ECDSAP256:
		return ECDSAP256, nil
	}
	return "", fmt.Errorf("unknown key algorithm %q: want %q or %q", s, Ed25519, ECDSAP256)
}

// GenerateKey returns a new private key for alg (the empty Algorithm means
// Ed25519), from crypto/rand.
func GenerateKey(alg Algorithm) (crypto.Signer, error) {
	a, err := ParseAlgorithm(string(alg))
	if err != nil {
		return nil, err
	}
	switch a {
	case ECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		return priv, err
	}
}

// AlgorithmOf reports the algorithm of a public or private key, or
// ErrUnsupportedKey.
func AlgorithmOf(key any) (Algorithm, error) {
	if s, ok := key.(crypto.Signer); ok {
		key = s.Public()
	}
	switch k := key.(type) {
	case ed25519.PublicKey:
		if len(k) == ed25519.PublicKeySize {
			return Ed25519, nil
		}
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() {
			return ECDSAP256, nil
		}
		return "", fmt.Errorf("%w: ECDSA curve %s (want P-256)", ErrUnsupportedKey, k.Curve.Params().Name)
	}
	return "", fmt.Errorf("%w: %T (want Ed25519 or ECDSA P-256)", ErrUnsupportedKey, key)
}

// MarshalPrivateKeyPEM encodes an Ed25519 or ECDSA P-256 private key as a
// PKCS#8 "PRIVATE KEY" PEM block.
func MarshalPrivateKeyPEM(key crypto.PrivateKey) ([]byte, error) {
	if _, err := AlgorithmOf(key); err != nil {
		return nil, err
	}
	return cryptoutils.MarshalPrivateKeyToPEM(key)
}

// ParsePrivateKeyPEM decodes a PKCS#8 "PRIVATE KEY" PEM block holding an
// Ed25519 or ECDSA P-256 key.
func ParsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block found: want a PKCS#8 \"PRIVATE KEY\" block")
	}
	if block.Type != string(cryptoutils.PrivateKeyPEMType) {
		return nil, fmt.Errorf("PEM block is %q: want a PKCS#8 \"PRIVATE KEY\" block (convert with openssl pkcs8 -topk8 -nocrypt)", block.Type)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing PKCS#8 private key: %w", err)
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: %T", ErrUnsupportedKey, key)
	}
	if _, err := AlgorithmOf(s); err != nil {
		return nil, err
	}
	return s, nil
}

// MarshalPublicKeyPEM encodes a public key as a PKIX "PUBLIC KEY" PEM block.
func MarshalPublicKeyPEM(pub crypto.PublicKey) ([]byte, error) {
	if _, err := AlgorithmOf(pub); err != nil {
		return nil, err
	}
	return cryptoutils.MarshalPublicKeyToPEM(pub)
}

// ParsePublicKeyPEM decodes a PKIX "PUBLIC KEY" PEM block holding an Ed25519
// or ECDSA P-256 key.
func ParsePublicKeyPEM(data []byte) (crypto.PublicKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block found: want a PKIX \"PUBLIC KEY\" block")
	}
	if block.Type != string(cryptoutils.PublicKeyPEMType) {
		return nil, fmt.Errorf("PEM block is %q: want a PKIX \"PUBLIC KEY\" block", block.Type)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing PKIX public key: %w", err)
	}
	if _, err := AlgorithmOf(pub); err != nil {
		return nil, err
	}
	return pub, nil
}

// ReadPrivateKeyFile reads a PEM private key written by WritePrivateKeyFile.
func ReadPrivateKeyFile(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading private key: %w", err)
	}
	key, err := ParsePrivateKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return key, nil
}

// ReadPublicKeyFile reads a PEM public key.
func ReadPublicKeyFile(path string) (crypto.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading public key: %w", err)
	}
	pub, err := ParsePublicKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return pub, nil
}

// WritePrivateKeyFile writes key as PEM PKCS#8 to path with mode 0600. It
// never replaces an existing file: if path exists it fails with an error
// matching fs.ErrExist. The file appears atomically and is synced.
func WritePrivateKeyFile(path string, key crypto.PrivateKey) error {
	data, err := MarshalPrivateKeyPEM(key)
	if err != nil {
		return err
	}
	return writeNew(path, data, 0o600)
}

// WritePublicKeyFile writes pub as PEM PKIX to path with mode 0644, never
// replacing an existing file (fs.ErrExist).
func WritePublicKeyFile(path string, pub crypto.PublicKey) error {
	data, err := MarshalPublicKeyPEM(pub)
	if err != nil {
		return err
	}
	return writeNew(path, data, 0o644)
}

// WriteVerifierKeyFile writes a verifier key line (see VerifierKey),
// newline-terminated, to path with mode 0644, never replacing an existing
// file (fs.ErrExist).
func WriteVerifierKeyFile(path, vkey string) error {
	if _, _, err := ParseVerifierKey(vkey); err != nil {
		return err
	}
	return writeNew(path, []byte(vkey+"\n"), 0o644)
}

// ReadVerifierKeyFile reads a log.vkey file (one verifier-key line; surrounding
// white space is ignored) and returns the note verifier and the key line.
func ReadVerifierKeyFile(path string) (note.Verifier, string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, "", fmt.Errorf("reading verifier key %s: %w", path, err)
	}
	vkey := strings.TrimSpace(string(data))
	if strings.ContainsAny(vkey, "\n\r") {
		return nil, "", fmt.Errorf("%s: want one verifier-key line (origin+hexid+base64key), found several lines", path)
	}
	if _, _, err := ParseVerifierKey(vkey); err != nil {
		return nil, "", fmt.Errorf("%s: %w", path, err)
	}
	v, err := NewNoteVerifier(vkey)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", path, err)
	}
	return v, vkey, nil
}

// writeNew creates path holding data, atomically and without clobbering,
// so that a reader (or a second process racing to create the same key) sees
// either no file or the whole file.
func writeNew(path string, data []byte, mode fs.FileMode) error {
	return atomicfile.WriteNew(path, data, mode)
}
