// Package ssf receives OpenID Shared Signals: Security Event Tokens (RFC
// 8417) delivered by push (RFC 8935), each a JWS signed by a transmitter
// whose issuer, audience and JSON Web Key Set are configured. Receive
// checks the signature (go-jose, with an allow-list of algorithms), the
// issuer, the audience and the claims, and Map turns the CAEP and RISC
// events Grantline understands into events (docs/sources.md, "Shared
// Signals"). Errors carry the RFC 8935 error codes. Keys come inline, from
// a file, or from a jwks_uri (cached, refreshed, fetched early for an
// unknown kid); RunPolls fetches SETs from transmitters that offer poll
// delivery (RFC 8936) and acknowledges each once it is stored. Replay of a
// jti is caught by the ledger: the event id is the jti, so a replayed SET
// is a duplicate, which the push handler in package ingest refuses and a
// poller acknowledges again (a redelivery after a lost acknowledgement).
package ssf

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
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
	// The transmitter's public keys, exactly one of: JWKS inline, JWKSFile
	// a file holding them (relative to the configuration file), or JWKSURI
	// where they are fetched (https; http only for a loopback host), kept
	// for JWKSRefresh (DefaultJWKSRefresh when zero, at least
	// MinJWKSRefresh) and fetched again early for an unknown kid.
	JWKS        *jose.JSONWebKeySet `json:"jwks,omitempty"`
	JWKSFile    string              `json:"jwks_file,omitempty"`
	JWKSURI     string              `json:"jwks_uri,omitempty"`
	JWKSRefresh Duration            `json:"jwks_refresh,omitempty"`
	// Poll, when set, makes Grantline fetch this transmitter's SETs from
	// its poll endpoint (RFC 8936) besides accepting pushes.
	Poll *Poll `json:"poll,omitempty"`

	keys *keySet
}

// Poll configures poll delivery (RFC 8936) from one transmitter.
type Poll struct {
	// URL is the transmitter's poll endpoint (https; http only for a
	// loopback host).
	URL string `json:"url"`
	// TokenFile, relative to the configuration file, holds the bearer
	// token the endpoint requires; Token is that token (set from TokenFile
	// by LoadTransmitters, never read from JSON).
	TokenFile string `json:"token_file,omitempty"`
	Token     string `json:"-"`
	// Interval is the wait after a poll that returned nothing or failed
	// (DefaultPollInterval when zero; at least MinPollInterval).
	Interval Duration `json:"interval,omitempty"`
	// MaxEvents is the most SETs asked for at once (DefaultPollMaxEvents
	// when zero; at most MaxPollMaxEvents).
	MaxEvents int `json:"max_events,omitempty"`
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
		return nil, fmt.Errorf("%s: %w (want {\"transmitters\": [{\"issuer\", \"audience\", \"system\", \"jwks\", \"jwks_file\" or \"jwks_uri\"}]})", path, err)
	}
	for i := range doc.Transmitters {
		t := &doc.Transmitters[i]
		if p := t.Poll; p != nil && p.TokenFile != "" {
			f := p.TokenFile
			if !filepath.IsAbs(f) {
				f = filepath.Join(filepath.Dir(path), f)
			}
			b, err := os.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("%s: transmitters[%d].poll.token_file: %w", path, i, err)
			}
			if p.Token = strings.TrimSpace(string(b)); p.Token == "" {
				return nil, fmt.Errorf("%s: transmitters[%d].poll.token_file %s is empty; put the poll endpoint's bearer token in it", path, i, f)
			}
		}
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

// Receiver checks SETs against the configured transmitters and polls those
// configured for poll delivery; safe for concurrent use.
type Receiver struct {
	byIssuer map[string]*Transmitter
	ts       []*Transmitter // in configuration order
	opts     Options
	hc       *http.Client
}

// Options tunes a Receiver; zero fields take the defaults.
type Options struct {
	// HTTPClient fetches jwks_uri and polls (http.DefaultClient when nil;
	// redirects are limited and checked whatever it says).
	HTTPClient *http.Client
	Logger     *slog.Logger     // nil discards
	Now        func() time.Time // time.Now when nil
}

// NewReceiver is NewReceiverWith(ts, Options{}).
func NewReceiver(ts []Transmitter) (*Receiver, error) { return NewReceiverWith(ts, Options{}) }

// NewReceiverWith checks the configuration: every transmitter has an
// issuer, an audience, a system and exactly one source of public keys (a
// non-empty jwks or jwks_file, or a jwks_uri), issuers are unique, URLs are
// https (or http to a loopback host). Keys at a jwks_uri are fetched when
// the first SET needs them, not here.
func NewReceiverWith(ts []Transmitter, o Options) (*Receiver, error) {
	if o.HTTPClient == nil {
		o.HTTPClient = http.DefaultClient
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	r := &Receiver{byIssuer: map[string]*Transmitter{}, opts: o, hc: fetchClient(o.HTTPClient)}
	for i := range ts {
		t := ts[i]
		switch {
		case t.Issuer == "" || t.Audience == "" || t.System == "":
			return nil, fmt.Errorf("transmitters[%d]: issuer, audience and system are required", i)
		case t.JWKSURI != "" && t.JWKS != nil:
			return nil, fmt.Errorf("transmitters[%d] (%s): give one of jwks, jwks_file and jwks_uri", i, t.Issuer)
		case t.JWKSURI == "" && (t.JWKS == nil || len(t.JWKS.Keys) == 0):
			return nil, fmt.Errorf("transmitters[%d] (%s): no keys: give jwks, jwks_file or jwks_uri", i, t.Issuer)
		case t.JWKSURI == "" && t.JWKSRefresh != 0:
			return nil, fmt.Errorf("transmitters[%d] (%s): jwks_refresh applies to jwks_uri only", i, t.Issuer)
		case r.byIssuer[t.Issuer] != nil:
			return nil, fmt.Errorf("transmitters[%d]: issuer %s configured twice", i, t.Issuer)
		}
		if t.JWKSURI != "" {
			if _, err := checkFetchURL(t.JWKSURI); err != nil {
				return nil, fmt.Errorf("transmitters[%d] (%s): jwks_uri %w", i, t.Issuer, err)
			}
			refresh := time.Duration(t.JWKSRefresh)
			switch {
			case refresh == 0:
				refresh = DefaultJWKSRefresh
			case refresh < MinJWKSRefresh:
				return nil, fmt.Errorf("transmitters[%d] (%s): jwks_refresh %v is shorter than %v", i, t.Issuer, refresh, MinJWKSRefresh)
			}
			t.keys = &keySet{uri: t.JWKSURI, refresh: refresh, hc: r.hc, now: o.Now}
		} else {
			for _, k := range t.JWKS.Keys {
				if !k.IsPublic() {
					return nil, fmt.Errorf("transmitters[%d] (%s): key %q is not a public key; configure the transmitter's public JWKS only", i, t.Issuer, k.KeyID)
				}
			}
			t.keys = &keySet{fixed: t.JWKS}
		}
		if t.Poll != nil {
			p := *t.Poll
			if err := p.check(); err != nil {
				return nil, fmt.Errorf("transmitters[%d] (%s): poll.%w", i, t.Issuer, err)
			}
			t.Poll = &p
		}
		r.byIssuer[t.Issuer] = &t
		r.ts = append(r.ts, &t)
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

// Receive verifies one compact-serialized SET. A refusal is an *Error;
// ErrKeysUnavailable (wrapped) when the transmitter's keys could not be
// fetched, which is neither an acceptance nor a refusal.
func (r *Receiver) Receive(ctx context.Context, token []byte) (*SET, error) {
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
	keys, err := t.keys.get(ctx, hdr.KeyID)
	if err != nil {
		return nil, err
	}
	payload, err := verify(jws, keys, hdr.KeyID)
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
