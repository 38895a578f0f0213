package ssf

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// jwksPeer serves a JWKS over real HTTP and counts the fetches.
type jwksPeer struct {
	mu     sync.Mutex
	body   []byte
	status int
	gets   int
}

func (p *jwksPeer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.gets++
	if p.status != 0 {
		w.WriteHeader(p.status)
		return
	}
	w.Write(p.body)
}

func (p *jwksPeer) set(t *testing.T, status int, keys ...jose.JSONWebKey) {
	t.Helper()
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.body, p.status = b, status
	p.mu.Unlock()
}

func (p *jwksPeer) fetches() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.gets
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func sign(t *testing.T, key *ecdsa.PrivateKey, kid, jti string) []byte {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: kid}}, (&jose.SignerOptions{}).WithType("secevent+jwt"))
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := json.Marshal(map[string]any{"iss": "https://idp", "aud": "https://gl", "iat": 1_790_000_000, "jti": jti,
		"events": map[string]any{RISCAccountDisabled: map[string]any{}}})
	obj, err := s.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	c, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return []byte(c)
}

// TestJWKSURI: keys fetched from jwks_uri are cached, fetched again after
// the refresh interval and early for an unknown kid (a rotation, at most
// once per JWKSUnknownKidWait), kept when a later fetch fails, and a SET
// that arrives before any fetch succeeded is neither accepted nor refused.
func TestJWKSURI(t *testing.T) {
	k1, k2, k3 := newKey(t), newKey(t), newKey(t)
	pub := func(k *ecdsa.PrivateKey, kid string) jose.JSONWebKey {
		return jose.JSONWebKey{Key: &k.PublicKey, KeyID: kid, Algorithm: "ES256", Use: "sig"}
	}
	peer := &jwksPeer{}
	peer.set(t, http.StatusServiceUnavailable)
	hs := httptest.NewServer(peer)
	defer hs.Close()
	now := time.Date(2026, 9, 2, 12, 0, 0, 0, time.UTC)
	rcv, err := NewReceiverWith([]Transmitter{{Issuer: "https://idp", Audience: "https://gl", System: "idp",
		JWKSURI: hs.URL + "/jwks", JWKSRefresh: Duration(time.Hour)}}, Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	receive := func(tok []byte) error {
		_, err := rcv.Receive(t.Context(), tok)
		return err
	}

	// No keys yet: unavailable, not refused.
	if err := receive(sign(t, k1, "k1", "j0")); !errors.Is(err, ErrKeysUnavailable) || !strings.Contains(err.Error(), "503") {
		t.Fatalf("before any fetch: %v, want ErrKeysUnavailable naming the 503", err)
	}
	peer.set(t, 0, pub(k1, "k1"))
	now = now.Add(time.Second)

	steps := []struct {
		name        string
		advance     time.Duration
		publish     []jose.JSONWebKey // nil: unchanged
		failing     bool
		tok         []byte
		wantErr     string // "": accepted
		wantFetches int
	}{
		{name: "first fetch", tok: sign(t, k1, "k1", "j1"), wantFetches: 2},
		{name: "cached", tok: sign(t, k1, "k1", "j2"), wantFetches: 2},
		{name: "rotation: an unknown kid fetches again", advance: JWKSUnknownKidWait, publish: []jose.JSONWebKey{pub(k1, "k1"), pub(k2, "k2")}, tok: sign(t, k2, "k2", "j3"), wantFetches: 3},
		{name: "a forged kid soon after: no fetch", tok: sign(t, k3, "k3", "j4"), wantErr: `no key with kid "k3"`, wantFetches: 3},
		{name: "a forged kid later: one fetch", advance: JWKSUnknownKidWait, tok: sign(t, k3, "k3", "j5"), wantErr: `no key with kid "k3"`, wantFetches: 4},
		{name: "refresh due, the endpoint down: old keys kept", advance: time.Hour, failing: true, tok: sign(t, k2, "k2", "j6"), wantFetches: 5},
		{name: "a failed refresh is not retried at once", advance: 2 * time.Second, tok: sign(t, k2, "k2", "j6b"), wantFetches: 5},
		{name: "refresh retried later, key k1 retired", advance: JWKSUnknownKidWait, publish: []jose.JSONWebKey{pub(k2, "k2")}, tok: sign(t, k1, "k1", "j7"), wantErr: `no key with kid "k1"`, wantFetches: 6},
	}
	for _, st := range steps {
		now = now.Add(st.advance)
		switch {
		case st.failing:
			peer.set(t, http.StatusInternalServerError)
		case st.publish != nil:
			peer.set(t, 0, st.publish...)
		}
		err := receive(st.tok)
		var se *Error
		switch {
		case st.wantErr == "" && err != nil:
			t.Errorf("%s: %v, want accepted", st.name, err)
		case st.wantErr != "" && (!errors.As(err, &se) || se.Code != InvalidKey || !strings.Contains(err.Error(), st.wantErr)):
			t.Errorf("%s: %v, want invalid_key %q", st.name, err, st.wantErr)
		}
		if got := peer.fetches(); got != st.wantFetches {
			t.Errorf("%s: %d fetches, want %d", st.name, got, st.wantFetches)
		}
	}
}

// TestJWKSFetchLimits: what a jwks_uri may serve, and which URLs and
// settings are accepted.
func TestJWKSFetchLimits(t *testing.T) {
	k := newKey(t)
	priv, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: k, KeyID: "k1"}}})
	tests := []struct {
		name    string
		handler http.HandlerFunc
		want    string
	}{
		{"too large", func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte(`{"keys": [` + strings.Repeat(" ", MaxJWKSBytes) + `]}`))
		}, "larger than"},
		{"a private key", func(w http.ResponseWriter, r *http.Request) { w.Write(priv) }, "not a public key"},
		{"no keys", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(`{"keys": []}`)) }, "no keys"},
		{"not JSON", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(`<html>`)) }, "not a JSON Web Key Set"},
		{"redirect to plain http elsewhere", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "http://keys.example.com/jwks", http.StatusFound)
		}, "redirected"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hs := httptest.NewServer(tt.handler)
			defer hs.Close()
			rcv, err := NewReceiver([]Transmitter{{Issuer: "https://idp", Audience: "https://gl", System: "idp", JWKSURI: hs.URL}})
			if err != nil {
				t.Fatal(err)
			}
			_, err = rcv.Receive(t.Context(), sign(t, k, "k1", "j"))
			if !errors.Is(err, ErrKeysUnavailable) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Receive = %v, want ErrKeysUnavailable with %q", err, tt.want)
			}
		})
	}

	ks := &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &k.PublicKey, KeyID: "k1"}}}
	configs := []struct {
		name string
		tr   Transmitter
		want string // "": accepted
	}{
		{"https", Transmitter{JWKSURI: "https://idp.example.com/jwks"}, ""},
		{"http on loopback", Transmitter{JWKSURI: "http://127.0.0.1:8080/jwks"}, ""},
		{"http elsewhere", Transmitter{JWKSURI: "http://idp.example.com/jwks"}, "want an https URL"},
		{"credentials in the URL", Transmitter{JWKSURI: "https://u:p@idp.example.com/jwks"}, "carries credentials"},
		{"both keys and a URL", Transmitter{JWKSURI: "https://idp.example.com/jwks", JWKS: ks}, "give one of"},
		{"refresh too short", Transmitter{JWKSURI: "https://idp.example.com/jwks", JWKSRefresh: Duration(time.Second)}, "shorter than"},
		{"refresh without a URL", Transmitter{JWKS: ks, JWKSRefresh: Duration(time.Hour)}, "jwks_uri only"},
		{"poll over http elsewhere", Transmitter{JWKS: ks, Poll: &Poll{URL: "http://idp.example.com/poll"}}, "poll.url"},
		{"poll too often", Transmitter{JWKS: ks, Poll: &Poll{URL: "https://idp.example.com/poll", Interval: Duration(time.Millisecond)}}, "poll.interval"},
		{"poll too many", Transmitter{JWKS: ks, Poll: &Poll{URL: "https://idp.example.com/poll", MaxEvents: 5000}}, "poll.max_events"},
	}
	for _, c := range configs {
		c.tr.Issuer, c.tr.Audience, c.tr.System = "https://idp", "https://gl", "idp"
		_, err := NewReceiver([]Transmitter{c.tr})
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}
