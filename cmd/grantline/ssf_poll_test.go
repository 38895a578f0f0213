package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/grantline/grantline/ingest/ssf"
	"github.com/grantline/grantline/internal/server"
	"github.com/grantline/grantline/internal/witnesstest"
)

// TestServePollsSSF: `serve --ssf-transmitters` with a poll entry fetches
// the transmitter's keys from its jwks_uri, polls its endpoint, stores the
// SET and acknowledges it; the transmitter is a real HTTP peer started here.
func TestServePollsSSF(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: jose.JSONWebKey{Key: priv, KeyID: "ed1"}},
		(&jose.SignerOptions{}).WithType("secevent+jwt"))
	if err != nil {
		t.Fatal(err)
	}
	const iss, aud = "https://idp.test", "https://grantline.test/v1/ssf/events"
	claims, _ := json.Marshal(map[string]any{"iss": iss, "aud": aud, "iat": time.Now().Add(-time.Minute).Unix(), "jti": "poll-1",
		"sub_id": map[string]any{"format": "email", "email": "kim@example.com"},
		"events": map[string]any{ssf.RISCAccountDisabled: map[string]any{}}})
	obj, err := signer.Sign(claims)
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := obj.CompactSerialize()

	var mu sync.Mutex
	queued := map[string]string{"poll-1": tok}
	var acked []string
	peer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.URL.Path == "/jwks" {
			json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: pub, KeyID: "ed1", Algorithm: "EdDSA"}}})
			return
		}
		if r.Header.Get("Authorization") != "Bearer t0ken" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var req struct {
			Ack []string `json:"ack"`
		}
		json.NewDecoder(r.Body).Decode(&req)
		for _, j := range req.Ack {
			acked = append(acked, j)
			delete(queued, j)
		}
		json.NewEncoder(w).Encode(map[string]any{"sets": queued, "moreAvailable": false})
	}))
	defer peer.Close()

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "poll.token"), []byte("t0ken\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	conf, _ := json.Marshal(map[string]any{"transmitters": []any{map[string]any{
		"issuer": iss, "audience": aud, "system": "idp-ssf", "jwks_uri": peer.URL + "/jwks",
		"poll": map[string]any{"url": peer.URL + "/poll", "token_file": "poll.token", "interval": "1s"}}}})
	confPath := filepath.Join(dir, "ssf.json")
	if err := os.WriteFile(confPath, conf, 0o644); err != nil {
		t.Fatal(err)
	}
	srv := startTestServer(t, server.Config{DataDir: filepath.Join(dir, "data"), SSFTransmitters: confPath})
	witnesstest.WaitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) == 1 },
		"the polled SET acknowledged", func() string { mu.Lock(); defer mu.Unlock(); return "queued: " + jsonString(queued) })
	es, err := srv.Ledger().Entries(context.Background(), 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range es {
		ids = append(ids, string(e.Leaf))
	}
	if len(es) != 1 || !containsAll(ids[0], "poll-1", "idp-ssf", "kim@example.com") {
		t.Errorf("ledger after the poll: %d entries %q, want the one SET's event", len(es), ids)
	}
}

func jsonString(v any) string { b, _ := json.Marshal(v); return string(b) }

func containsAll(s string, subs ...string) bool {
	for _, x := range subs {
		if !strings.Contains(s, x) {
			return false
		}
	}
	return true
}
