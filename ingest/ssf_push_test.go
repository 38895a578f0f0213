package ingest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/grantline/grantline/ingest/ssf"
)

const (
	ssfIssuer   = "https://idp.example.com"
	ssfAudience = "https://grantline.test/v1/ssf/events"
)

func signSET(t *testing.T, key *ecdsa.PrivateKey, kid string, claims map[string]any) string {
	t.Helper()
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: kid}},
		(&jose.SignerOptions{}).WithType("secevent+jwt"))
	if err != nil {
		t.Fatal(err)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := sig.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	s, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func postSET(t *testing.T, e *testEnv, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), "POST", e.url+SSFPath, strings.NewReader(token))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/secevent+jwt")
	resp, err := e.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestSSFPush: a SET signed by a configured transmitter is verified and
// stored; a bad signature, an unknown issuer, a wrong audience, an
// unsigned token or a replayed jti is refused with the RFC 8935 error and
// nothing is stored.
func TestSSFPush(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rcv, err := ssf.NewReceiver([]ssf.Transmitter{{Issuer: ssfIssuer, Audience: ssfAudience, System: "okta-ssf",
		JWKS: &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}}}})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(c *Config) { c.SSF = rcv })
	iat := time.Date(2026, 9, 2, 12, 0, 0, 0, time.UTC).Unix()
	set := func(jti, iss, aud, uri string, event map[string]any) map[string]any {
		return map[string]any{"iss": iss, "aud": aud, "iat": iat, "jti": jti, "txn": "8675309",
			"sub_id": map[string]any{"format": "email", "email": "lee.park@example.com"},
			"events": map[string]any{uri: event}}
	}
	revoked := signSET(t, key, "k1", set("jti-1", ssfIssuer, ssfAudience, ssf.CAEPSessionRevoked, map[string]any{
		"event_timestamp": iat - 5, "initiating_entity": "policy", "reason_admin": map[string]any{"en": "Landspeed policy violation"}}))

	if code, body := postSET(t, e, revoked); code != http.StatusAccepted {
		t.Fatalf("valid SET = %d %s, want 202", code, body)
	}
	ev := e.ledger.lastEvent(t)
	if ev.GetId() != "jti-1" || ev.GetType() != "session.revoked" || ev.GetSubject().GetId() != "lee.park@example.com" ||
		ev.GetSource().GetSystem() != "okta-ssf" || ev.GetSource().GetRawType() != ssf.CAEPSessionRevoked ||
		ev.GetReason() != "Landspeed policy violation" || ev.GetTime().AsTime().Unix() != iat-5 {
		t.Errorf("stored event = %v", ev)
	}

	cred := signSET(t, key, "k1", set("jti-2", ssfIssuer, ssfAudience, ssf.CAEPCredentialChange, map[string]any{
		"credential_type": "fido2-roaming", "change_type": "update", "fido2_aaguid": "accced6a-63f5-490a-9eea-e59bc1896cfc"}))
	if code, body := postSET(t, e, cred); code != http.StatusAccepted || e.ledger.lastEvent(t).GetType() != "credential.rotated" {
		t.Errorf("credential-change SET = %d %s, stored %v", code, body, e.ledger.lastEvent(t))
	}
	unmapped := signSET(t, key, "k1", set("jti-3", ssfIssuer, ssfAudience, "https://schemas.openid.net/secevent/caep/event-type/token-claims-change", map[string]any{"claims": map[string]any{"role": "ro-admin"}}))
	if code, body := postSET(t, e, unmapped); code != http.StatusAccepted {
		t.Errorf("unmapped SET = %d %s, want 202 (acknowledged, nothing to store)", code, body)
	}

	size := e.ledger.Latest().Size
	for _, tc := range []struct {
		name, token, code, want string
	}{
		{"replayed jti", revoked, ssf.InvalidRequest, `jti \"jti-1\" was already received`},
		{"bad signature", signSET(t, other, "k1", set("jti-4", ssfIssuer, ssfAudience, ssf.CAEPSessionRevoked, map[string]any{})), ssf.InvalidKey, "does not verify"},
		{"unknown kid", signSET(t, key, "k9", set("jti-5", ssfIssuer, ssfAudience, ssf.CAEPSessionRevoked, map[string]any{})), ssf.InvalidKey, `no key with kid \"k9\"`},
		{"unknown issuer", signSET(t, key, "k1", set("jti-6", "https://evil.example", ssfAudience, ssf.CAEPSessionRevoked, map[string]any{})), ssf.InvalidIssuer, "not a configured transmitter"},
		{"wrong audience", signSET(t, key, "k1", set("jti-7", ssfIssuer, "https://other.example", ssf.CAEPSessionRevoked, map[string]any{})), ssf.InvalidAudience, "does not include"},
		{"unsigned", "eyJhbGciOiJub25lIiwidHlwIjoic2VjZXZlbnQrand0In0.eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlLmNvbSJ9.", ssf.InvalidRequest, "accepted algorithm"},
		{"no subject", signSET(t, key, "k1", map[string]any{"iss": ssfIssuer, "aud": ssfAudience, "iat": iat, "jti": "jti-8",
			"events": map[string]any{ssf.RISCAccountDisabled: map[string]any{}}}), ssf.InvalidRequest, "no subject"},
	} {
		code, body := postSET(t, e, tc.token)
		if code != http.StatusBadRequest || !strings.Contains(body, `"err":"`+tc.code+`"`) || !strings.Contains(body, tc.want) {
			t.Errorf("%s: %d %s, want 400 %s containing %q", tc.name, code, body, tc.code, tc.want)
		}
	}
	if got := e.ledger.Latest().Size; got != size || size != 2 {
		t.Errorf("tree size %d after the refused SETs, want %d (two SETs stored)", got, size)
	}
}
