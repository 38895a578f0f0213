package ssf

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

func TestLoadTransmitters(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pub, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1"}}})
	priv, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key, KeyID: "k1"}}})
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("pub.json", string(pub))
	write("priv.json", string(priv))
	write("tok", "s3cret\n")
	write("empty", "\n")
	for _, tc := range []struct{ name, conf, wantErr string }{
		{"jwks file", `{"transmitters": [{"issuer": "https://idp", "audience": "https://gl", "system": "idp", "jwks_file": "pub.json"}]}`, ""},
		{"inline", `{"transmitters": [{"issuer": "https://idp", "audience": "https://gl", "system": "idp", "jwks": ` + string(pub) + `}]}`, ""},
		{"private key", `{"transmitters": [{"issuer": "https://idp", "audience": "https://gl", "system": "idp", "jwks_file": "priv.json"}]}`, "not a public key"},
		{"no keys", `{"transmitters": [{"issuer": "https://idp", "audience": "https://gl", "system": "idp"}]}`, "no keys"},
		{"no system", `{"transmitters": [{"issuer": "https://idp", "audience": "https://gl", "jwks_file": "pub.json"}]}`, "system are required"},
		{"twice", `{"transmitters": [{"issuer": "https://idp", "audience": "a", "system": "s", "jwks_file": "pub.json"}, {"issuer": "https://idp", "audience": "a", "system": "s", "jwks_file": "pub.json"}]}`, "configured twice"},
		{"unknown field", `{"transmitters": [{"issuer": "https://idp", "jwks_url": "https://idp/jwks"}]}`, `unknown field "jwks_url"`},
		{"poll token file", `{"transmitters": [{"issuer": "https://idp", "audience": "a", "system": "s", "jwks_file": "pub.json", "poll": {"url": "https://idp/poll", "token_file": "tok"}}]}`, ""},
		{"poll token file missing", `{"transmitters": [{"issuer": "https://idp", "audience": "a", "system": "s", "jwks_file": "pub.json", "poll": {"url": "https://idp/poll", "token_file": "nope"}}]}`, "poll.token_file"},
		{"poll token file empty", `{"transmitters": [{"issuer": "https://idp", "audience": "a", "system": "s", "jwks_file": "pub.json", "poll": {"url": "https://idp/poll", "token_file": "empty"}}]}`, "is empty"},
		{"bad duration", `{"transmitters": [{"issuer": "https://idp", "audience": "a", "system": "s", "jwks_uri": "https://idp/k", "jwks_refresh": "soon"}]}`, "want a duration"},
		{"missing file", `{"transmitters": [{"issuer": "https://idp", "audience": "a", "system": "s", "jwks_file": "nope.json"}]}`, "jwks_file"},
	} {
		ts, err := LoadTransmitters(write("conf.json", tc.conf))
		if err == nil {
			_, err = NewReceiver(ts)
		}
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%s: %v, want error %q", tc.name, err, tc.wantErr)
		}
	}
}

// TestMapSubjects: the subject formats of RFC 9493 and CAEP's complex
// subject (user plus session) name the identity and the session.
func TestMapSubjects(t *testing.T) {
	for _, tc := range []struct {
		sub, wantUser, wantSession string
	}{
		{`{"format": "email", "email": "a@example.com"}`, "a@example.com", ""},
		{`{"format": "iss_sub", "iss": "https://idp", "sub": "00u1"}`, "00u1", ""},
		{`{"format": "opaque", "id": "u-7"}`, "u-7", ""},
		{`{"format": "account", "uri": "acct:b@example.com"}`, "b@example.com", ""},
		{`{"format": "complex", "user": {"format": "email", "email": "c@example.com"}, "session": {"format": "opaque", "id": "s-9"}}`, "c@example.com", "s-9"},
	} {
		set := &SET{JTI: "j", System: "idp", IssuedAt: time.Unix(1_790_000_000, 0),
			Events: map[string]json.RawMessage{CAEPSessionRevoked: json.RawMessage(`{"subject": ` + tc.sub + `}`)}}
		evs, err := Map(set)
		if err != nil || len(evs) != 1 {
			t.Fatalf("Map(%s) = %v, %v", tc.sub, evs, err)
		}
		if evs[0].GetSubject().GetId() != tc.wantUser || evs[0].GetRefs().GetSession() != tc.wantSession {
			t.Errorf("Map(%s) subject %q session %q, want %q %q", tc.sub, evs[0].GetSubject().GetId(), evs[0].GetRefs().GetSession(), tc.wantUser, tc.wantSession)
		}
	}
	// Two mapped events in one SET get distinct ids.
	set := &SET{JTI: "j2", System: "idp", IssuedAt: time.Unix(1_790_000_000, 0), SubID: json.RawMessage(`{"format": "email", "email": "d@example.com"}`),
		Events: map[string]json.RawMessage{RISCAccountDisabled: json.RawMessage(`{}`), RISCSessionsRevoked: json.RawMessage(`{}`)}}
	evs, err := Map(set)
	if err != nil || len(evs) != 2 || evs[0].GetId() == evs[1].GetId() {
		t.Errorf("Map(two events) = %v, %v; want two events with distinct ids", evs, err)
	}
}

// FuzzReceive: any body is refused with an *Error or verified; neither
// Receive nor Map panics, and Map's errors are *Error too.
func FuzzReceive(f *testing.F) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	rcv, err := NewReceiver([]Transmitter{{Issuer: "https://idp", Audience: "https://gl", System: "idp",
		JWKS: &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1"}}}}})
	if err != nil {
		f.Fatal(err)
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: "k1"}}, nil)
	if err != nil {
		f.Fatal(err)
	}
	for _, claims := range []string{
		`{"iss":"https://idp","aud":"https://gl","iat":1790000000,"jti":"a","events":{"` + CAEPSessionRevoked + `":{"subject":{"format":"email","email":"a@b"}}}}`,
		`{"iss":"https://idp","aud":["https://gl"],"iat":1790000000,"jti":"b","sub_id":{"format":"opaque","id":"u"},"events":{"` + CAEPCredentialChange + `":{"change_type":"create","credential_type":"password"}}}`,
	} {
		obj, err := sig.Sign([]byte(claims))
		if err != nil {
			f.Fatal(err)
		}
		s, _ := obj.CompactSerialize()
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		set, err := rcv.Receive(t.Context(), body)
		if err != nil {
			var e *Error
			if !errorsAs(err, &e) {
				t.Fatalf("Receive error %T %v is not an *Error", err, err)
			}
			return
		}
		if _, err := Map(set); err != nil {
			var e *Error
			if !errorsAs(err, &e) {
				t.Fatalf("Map error %T %v is not an *Error", err, err)
			}
		}
	})
}

func errorsAs(err error, e **Error) bool { return errors.As(err, e) }
