// Package ssf receives OpenID Shared Signals: Security Event Tokens (RFC
// 8417) delivered by push (RFC 8935), each a JWS signed by a transmitter
// whose issuer, audience and JSON Web Key Set are configured. Receive
// checks the signature (go-jose, with an allow-list of algorithms), the
// issuer, the audience and the claims, and Map turns the CAEP and RISC
// events Grantline understands into events (docs/sources.md, "Shared
// Signals"). Errors carry the RFC 8935 error codes. Replay of a jti is
// caught by the ledger: the event id is the jti, so a replayed SET is a
// duplicate and the HTTP handler in package ingest refuses it.
package ssf

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Transmitter is one configured sender of SETs.
type Transmitter struct {
	Issuer   string `json:"issuer"`   // the SETs' iss
	Audience string `json:"audience"` // must be in the SETs' aud
	System   string `json:"system"`   // source.system of the events made
	// JWKS is the transmitter's public keys (inline), or JWKSFile a file
	// holding them, relative to the configuration file.
	JWKS     *jose.JSONWebKeySet `json:"jwks,omitempty"`
	JWKSFile string              `json:"jwks_file,omitempty"`
}

// Error is a refusal with an RFC 8935 section 2.4 error code.
type Error struct {
	Code        string // invalid_request, invalid_key, invalid_issuer, invalid_audience
	Description string
}

func (e *Error) Error() string { return e.Code + ": " + e.Description }

// The RFC 8935 error codes used.
const (
	InvalidRequest  = "invalid_request"
	InvalidKey      = "invalid_key"
	InvalidIssuer   = "invalid_issuer"
	InvalidAudience = "invalid_audience"
)

func refuse(code, format string, args ...any) *Error {
	return &Error{Code: code, Description: fmt.Sprintf(format, args...)}
}

// LoadTransmitters reads {"transmitters": [...]} from a JSON file.
func LoadTransmitters(path string) ([]Transmitter, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading SSF transmitters: %w", err)
	}
	var doc struct {
		Transmitters []Transmitter `json:"transmitters"`
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("%s: %w (want {\"transmitters\": [{\"issuer\", \"audience\", \"system\", \"jwks\" or \"jwks_file\"}]})", path, err)
	}
	for i := range doc.Transmitters {
		t := &doc.Transmitters[i]
		if t.JWKS == nil && t.JWKSFile != "" {
			f := t.JWKSFile
			if !filepath.IsAbs(f) {
				f = filepath.Join(filepath.Dir(path), f)
			}
			b, err := os.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("%s: transmitters[%d].jwks_file: %w", path, i, err)
			}
			t.JWKS = &jose.JSONWebKeySet{}
			if err := json.Unmarshal(b, t.JWKS); err != nil {
				return nil, fmt.Errorf("%s: transmitters[%d].jwks_file %s: %w", path, i, f, err)
			}
		}
	}
	return doc.Transmitters, nil
}

// Receiver checks SETs against the configured transmitters; safe for
// concurrent use (it is read-only after NewReceiver).
type Receiver struct {
	byIssuer map[string]*Transmitter
}

// NewReceiver checks the configuration: every transmitter has an issuer,
// an audience, a system and at least one public key, and issuers are unique.
func NewReceiver(ts []Transmitter) (*Receiver, error) {
	r := &Receiver{byIssuer: map[string]*Transmitter{}}
	for i := range ts {
		t := ts[i]
		switch {
		case t.Issuer == "" || t.Audience == "" || t.System == "":
			return nil, fmt.Errorf("transmitters[%d]: issuer, audience and system are required", i)
		case t.JWKS == nil || len(t.JWKS.Keys) == 0:
			return nil, fmt.Errorf("transmitters[%d] (%s): no keys: give jwks or jwks_file", i, t.Issuer)
		case r.byIssuer[t.Issuer] != nil:
			return nil, fmt.Errorf("transmitters[%d]: issuer %s configured twice", i, t.Issuer)
		}
		for _, k := range t.JWKS.Keys {
			if !k.IsPublic() {
				return nil, fmt.Errorf("transmitters[%d] (%s): key %q is not a public key; configure the transmitter's public JWKS only", i, t.Issuer, k.KeyID)
			}
		}
		r.byIssuer[t.Issuer] = &t
	}
	return r, nil
}

// algorithms are the signature algorithms accepted; "none" and HMAC are not.
var algorithms = []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512, jose.ES256, jose.ES384, jose.ES512, jose.EdDSA}

// SET is a verified Security Event Token.
type SET struct {
	Issuer   string
	Audience []string
	IssuedAt time.Time
	JTI      string
	TxnID    string
	SubID    json.RawMessage            // the top-level sub_id, if any
	Events   map[string]json.RawMessage // event type URI -> event claims
	System   string                     // the transmitter's configured source.system
}

// Receive verifies one compact-serialized SET. A failure is an *Error.
func (r *Receiver) Receive(token []byte) (*SET, error) {
	jws, err := jose.ParseSigned(strings.TrimSpace(string(token)), algorithms)
	if err != nil {
		return nil, refuse(InvalidRequest, "not a signed JWT with an accepted algorithm (%s): %v", algNames(), err)
	}
	if len(jws.Signatures) != 1 {
		return nil, refuse(InvalidRequest, "want exactly one signature")
	}
	hdr := jws.Signatures[0].Header
	if typ, _ := hdr.ExtraHeaders[jose.HeaderType].(string); typ != "" && !strings.EqualFold(strings.TrimPrefix(typ, "application/"), "secevent+jwt") {
		return nil, refuse(InvalidRequest, "typ %q: want secevent+jwt", typ)
	}
	var claims struct {
		Iss    string                     `json:"iss"`
		Aud    json.RawMessage            `json:"aud"`
		Iat    *float64                   `json:"iat"`
		JTI    string                     `json:"jti"`
		Txn    string                     `json:"txn"`
		SubID  json.RawMessage            `json:"sub_id"`
		Events map[string]json.RawMessage `json:"events"`
	}
	// The issuer picks the keys, so it is read before the signature is
	// checked; nothing else of the unverified payload is used.
	if err := json.Unmarshal(jws.UnsafePayloadWithoutVerification(), &claims); err != nil {
		return nil, refuse(InvalidRequest, "claims are not a JSON object: %v", err)
	}
	t := r.byIssuer[claims.Iss]
	if t == nil {
		return nil, refuse(InvalidIssuer, "issuer %q is not a configured transmitter", claims.Iss)
	}
	payload, err := verify(jws, t.JWKS, hdr.KeyID)
	if err != nil {
		return nil, refuse(InvalidKey, "signature does not verify with %s's keys: %v", t.Issuer, err)
	}
	claims.Events = nil
	if err := json.Unmarshal(payload, &claims); err != nil {
		return nil, refuse(InvalidRequest, "claims: %v", err)
	}
	aud := audiences(claims.Aud)
	if !slices.Contains(aud, t.Audience) {
		return nil, refuse(InvalidAudience, "aud %v does not include %s", aud, t.Audience)
	}
	switch {
	case claims.JTI == "":
		return nil, refuse(InvalidRequest, "jti is required")
	case claims.Iat == nil:
		return nil, refuse(InvalidRequest, "iat is required")
	case len(claims.Events) == 0:
		return nil, refuse(InvalidRequest, "events is required and holds at least one event")
	}
	iat := time.Unix(int64(*claims.Iat), 0).UTC()
	return &SET{Issuer: claims.Iss, Audience: aud, IssuedAt: iat, JTI: claims.JTI, TxnID: claims.Txn,
		SubID: claims.SubID, Events: claims.Events, System: t.System}, nil
}

func verify(jws *jose.JSONWebSignature, keys *jose.JSONWebKeySet, kid string) ([]byte, error) {
	if kid != "" {
		ks := keys.Key(kid)
		if len(ks) == 0 {
			return nil, fmt.Errorf("no key with kid %q", kid)
		}
		var last error
		for _, k := range ks {
			p, err := jws.Verify(k.Key)
			if err == nil {
				return p, nil
			}
			last = err
		}
		return nil, last
	}
	for _, k := range keys.Keys {
		if p, err := jws.Verify(k.Key); err == nil {
			return p, nil
		}
	}
	return nil, errors.New("no configured key verifies it")
}

func audiences(raw json.RawMessage) []string {
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return []string{one}
	}
	var many []string
	_ = json.Unmarshal(raw, &many)
	return many
}

func algNames() string {
	ns := make([]string, len(algorithms))
	for i, a := range algorithms {
		ns[i] = string(a)
	}
	return strings.Join(ns, ", ")
}
