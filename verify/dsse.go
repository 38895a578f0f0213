package verify

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
)

// DSSE and in-toto constants used by statement.dsse.json.
const (
	PayloadType   = "application/vnd.in-toto+json"
	StatementType = "https://in-toto.io/Statement/v1"
	PredicateType = "https://grantline.dev/evidence/v1"
)

// Envelope is a DSSE envelope (https://github.com/secure-systems-lab/dsse).
// Payload is base64 in JSON.
type Envelope struct {
	PayloadType string      `json:"payloadType"`
	Payload     []byte      `json:"payload"`
	Signatures  []Signature `json:"signatures"`
}

// Signature is one DSSE signature; Sig is base64 in JSON.
type Signature struct {
	KeyID string `json:"keyid,omitempty"`
	Sig   []byte `json:"sig"`
}

// Statement is an in-toto Statement v1.
type Statement struct {
	Type          string          `json:"_type"`
	Subject       []Subject       `json:"subject"`
	PredicateType string          `json:"predicateType"`
	Predicate     json.RawMessage `json:"predicate"`
}

// Subject is one artifact of a Statement: a package file and its digest.
type Subject struct {
	Name   string            `json:"name"`
	Digest map[string]string `json:"digest"`
}

// Predicate is the predicate of the package statement: what the package is
// anchored to.
type Predicate struct {
	Origin         string `json:"origin"`
	CheckpointSize uint64 `json:"checkpoint_size"`
	CheckpointRoot []byte `json:"checkpoint_root"`
	AsOf           string `json:"as_of"`
	Entries        uint64 `json:"entries"`
	Findings       int    `json:"findings"`
	All            bool   `json:"all"`
}

// PAE is the DSSE v1 pre-authentication encoding:
// "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body, lengths in ASCII decimal.
func PAE(payloadType string, payload []byte) []byte {
	var b bytes.Buffer
	b.WriteString("DSSEv1 ")
	b.WriteString(strconv.Itoa(len(payloadType)))
	b.WriteByte(' ')
	b.WriteString(payloadType)
	b.WriteByte(' ')
	b.WriteString(strconv.Itoa(len(payload)))
	b.WriteByte(' ')
	b.Write(payload)
	return b.Bytes()
}

// EvidenceSigner signs package statements through a sigstore signer.
type EvidenceSigner struct {
	signer signature.Signer
	keyID  string
}

// NewEvidenceSigner wraps a sigstore signer whose key is ECDSA P-256 (SHA-256,
// ASN.1 DER signatures) or Ed25519 (pure).
func NewEvidenceSigner(s signature.Signer) (*EvidenceSigner, error) {
	pub, err := s.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("evidence signer public key: %w", err)
	}
	id, err := KeyID(pub)
	if err != nil {
		return nil, err
	}
	return &EvidenceSigner{signer: s, keyID: id}, nil
}

// LoadEvidenceSigner reads a PEM private key (PKCS#8, ECDSA P-256 or Ed25519)
// and returns a signer for package statements.
func LoadEvidenceSigner(pemBytes []byte) (*EvidenceSigner, error) {
	priv, err := cryptoutils.UnmarshalPEMToPrivateKey(pemBytes, cryptoutils.SkipPassword)
	if err != nil {
		return nil, fmt.Errorf("evidence key: %w (want an unencrypted PEM private key, ECDSA P-256 or Ed25519)", err)
	}
	switch k := priv.(type) {
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("evidence key: ECDSA curve %s not supported: use P-256", k.Curve.Params().Name)
		}
	case ed25519.PrivateKey:
	default:
		return nil, fmt.Errorf("evidence key: %T not supported: use ECDSA P-256 or Ed25519", priv)
	}
	s, err := signature.LoadSigner(priv, crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("evidence key: %w", err)
	}
	return NewEvidenceSigner(s)
}

// KeyID is the SHA-256 (hex) of the signer's public key, DER-encoded.
func (s *EvidenceSigner) KeyID() string { return s.keyID }

// Sign returns the DSSE envelope over payload.
func (s *EvidenceSigner) Sign(payloadType string, payload []byte) (*Envelope, error) {
	sig, err := s.signer.SignMessage(bytes.NewReader(PAE(payloadType, payload)))
	if err != nil {
		return nil, fmt.Errorf("signing statement: %w", err)
	}
	return &Envelope{PayloadType: payloadType, Payload: payload, Signatures: []Signature{{KeyID: s.keyID, Sig: sig}}}, nil
}

// KeyID is the DSSE keyid Grantline uses: hex sha256 of the PKIX DER public key.
func KeyID(pub crypto.PublicKey) (string, error) {
	der, err := cryptoutils.MarshalPublicKeyToDER(pub)
	if err != nil {
		return "", fmt.Errorf("encoding public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// ErrBadSignature reports a DSSE envelope that no signature of the expected key verifies.
var ErrBadSignature = errors.New("signature does not verify")

// EnvelopeVerifier checks DSSE envelopes against one public key.
type EnvelopeVerifier struct {
	v signature.Verifier
}

// ParsePublicKey reads a PEM public key (ECDSA P-256 or Ed25519) for
// verifying envelopes.
func ParsePublicKey(pemBytes []byte) (*EnvelopeVerifier, error) {
	pub, err := cryptoutils.UnmarshalPEMToPublicKey(pemBytes)
	if err != nil {
		return nil, fmt.Errorf("evidence public key: %w (want a PEM \"PUBLIC KEY\" block, e.g. DATA/keys/evidence.pub)", err)
	}
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("evidence public key: ECDSA curve %s not supported: use P-256", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	default:
		return nil, fmt.Errorf("evidence public key: %T not supported: use ECDSA P-256 or Ed25519", pub)
	}
	v, err := signature.LoadVerifier(pub, crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("evidence public key: %w", err)
	}
	return &EnvelopeVerifier{v: v}, nil
}

// Verify checks that at least one signature of env verifies over the PAE of
// its payload; it returns ErrBadSignature (wrapped) otherwise.
func (ev *EnvelopeVerifier) Verify(env *Envelope) error {
	if len(env.Signatures) == 0 {
		return fmt.Errorf("%w: envelope has no signatures", ErrBadSignature)
	}
	pae := PAE(env.PayloadType, env.Payload)
	var last error
	for _, s := range env.Signatures {
		if err := ev.v.VerifySignature(bytes.NewReader(s.Sig), bytes.NewReader(pae)); err != nil {
			last = err
			continue
		}
		return nil
	}
	return fmt.Errorf("%w with the given evidence key (%v): the package was altered or signed by another key", ErrBadSignature, last)
}
