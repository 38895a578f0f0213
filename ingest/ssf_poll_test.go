package ingest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"google.golang.org/protobuf/proto"

	"github.com/grantline/grantline/ingest/ssf"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// transmitterPeer is an SSF transmitter as a test peer: an RFC 8936 poll
// endpoint (bearer token, ack, setErrs, maxEvents, moreAvailable) and the
// JWKS at its jwks_uri, over real HTTP on loopback.
type transmitterPeer struct {
	t     *testing.T
	token string

	mu        sync.Mutex
	jwks      jose.JSONWebKeySet
	queue     map[string]string // jti -> SET, delivered until acknowledged
	acked     []string          // in the order acknowledgements arrived
	reacked   []string          // acks of SETs acknowledged before (a resent ack)
	errs      map[string]string // jti -> err code
	polls     int
	jwksGets  int
	redeliver string // a jti queued again once after its first ack (a lost ack)
	badAuth   int
}

func (p *transmitterPeer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch r.URL.Path {
	case "/jwks":
		p.jwksGets++
		w.Header().Set("Content-Type", "application/jwk-set+json")
		_ = json.NewEncoder(w).Encode(p.jwks)
		return
	case "/poll":
	default:
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
		http.Error(w, "want POST application/json", http.StatusBadRequest)
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+p.token {
		p.badAuth++
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	var req struct {
		MaxEvents         *int                         `json:"maxEvents"`
		ReturnImmediately bool                         `json:"returnImmediately"`
		Ack               []string                     `json:"ack"`
		SetErrs           map[string]map[string]string `json:"setErrs"`
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || req.MaxEvents == nil {
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]string{"err": "invalid_request", "description": fmt.Sprint("body: ", err)})
		return
	}
	p.polls++
	for _, jti := range req.Ack {
		if _, ok := p.queue[jti]; !ok {
			// A receiver that did not see the answer to a poll (its
			// request was cancelled after this peer had taken its acks,
			// as when the test stops the poller) sends those acks again,
			// as RFC 8936 lets it; an ack of a SET never delivered is the
			// receiver's error.
			if !slices.Contains(p.acked, jti) {
				p.t.Errorf("transmitter: ack of %q, which was never delivered", jti)
			}
			p.reacked = append(p.reacked, jti)
			continue
		}
		p.acked = append(p.acked, jti)
		tok := p.queue[jti]
		delete(p.queue, jti)
		if jti == p.redeliver {
			p.redeliver = ""
			p.queue[jti] = tok
		}
	}
	for jti, e := range req.SetErrs {
		p.errs[jti] = e["err"]
		if e["description"] == "" {
			p.t.Errorf("transmitter: setErrs[%s] without a description", jti)
		}
		delete(p.queue, jti)
	}
	sets := map[string]string{}
	for _, jti := range slices.Sorted(maps.Keys(p.queue)) {
		if len(sets) == *req.MaxEvents {
			break
		}
		sets[jti] = p.queue[jti]
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"sets": sets, "moreAvailable": len(p.queue) > len(sets)})
}

func (p *transmitterPeer) state() (queued int, acked []string, errs map[string]string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.queue), slices.Clone(p.acked), maps.Clone(p.errs)
}

// TestSSFPoll: Grantline polls a transmitter (RFC 8936) whose keys it
// fetches from jwks_uri. Valid SETs are stored in iat order and
// acknowledged only once durable: while the ledger fails nothing is
// acknowledged, and the SETs come again. Bad ones are answered in setErrs
// and nothing of them is stored; a SET redelivered after a lost ack is
// acknowledged again and stored once.
func TestSSFPoll(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	peer := &transmitterPeer{t: t, token: "poll-secret", queue: map[string]string{}, errs: map[string]string{}, redeliver: "p-3",
		jwks: jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}}}
	hs := httptest.NewServer(peer)
	defer hs.Close()

	base := time.Date(2026, 9, 2, 12, 0, 0, 0, time.UTC).Unix()
	set := func(jti string, iat int64, aud string) map[string]any {
		return map[string]any{"iss": ssfIssuer, "aud": aud, "iat": iat, "jti": jti,
			"sub_id": map[string]any{"format": "email", "email": "lee.park@example.com"},
			"events": map[string]any{ssf.RISCSessionsRevoked: map[string]any{}}}
	}
	// Queued out of time order: stored in iat order.
	// The peer hands them out by jti, three at a time: p-1..p-3, then
	// p-4, p-5 (and p-3 again); within a poll they are stored by iat.
	for n, iat := range map[int]int64{1: 2, 2: 3, 3: 1, 4: 5, 5: 4} {
		peer.queue[fmt.Sprintf("p-%d", n)] = signSET(t, key, "k1", set(fmt.Sprintf("p-%d", n), base+iat, ssfAudience))
	}
	peer.queue["a-bad-sig"] = signSET(t, other, "k1", set("a-bad-sig", base, ssfAudience))
	peer.queue["a-bad-aud"] = signSET(t, key, "k1", set("a-bad-aud", base, "https://other.example"))
	peer.queue["a-mismatch"] = signSET(t, key, "k1", set("p-other-jti", base, ssfAudience))

	rcv, err := ssf.NewReceiver([]ssf.Transmitter{{Issuer: ssfIssuer, Audience: ssfAudience, System: "okta-ssf",
		JWKSURI: hs.URL + "/jwks",
		Poll:    &ssf.Poll{URL: hs.URL + "/poll", Token: "poll-secret", Interval: ssf.Duration(time.Second), MaxEvents: 3}}})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(c *Config) { c.SSF = rcv })
	e.ledger.mu.Lock()
	e.ledger.failAppend = errors.New("disk on fire")
	e.ledger.mu.Unlock()

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { e.srv.PollSSF(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				q, acked, errs := peer.state()
				t.Fatalf("timed out waiting for %s: queued %d, acked %v, errs %v\nlog:\n%s", what, q, acked, errs, e.logs)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// The ledger fails: the bad SETs are refused, the good ones are left.
	waitFor("the refusals", func() bool { _, _, errs := peer.state(); return len(errs) == 3 })
	if _, acked, _ := peer.state(); len(acked) != 0 || e.ledger.Latest().Size != 0 {
		t.Fatalf("acknowledged %v with a failing ledger (size %d); nothing may be acknowledged before it is durable", acked, e.ledger.Latest().Size)
	}
	e.ledger.mu.Lock()
	e.ledger.failAppend = nil
	e.ledger.mu.Unlock()

	waitFor("every SET answered", func() bool {
		q, acked, _ := peer.state()
		return q == 0 && len(acked) == 6 // p-3 twice
	})
	_, acked, errs := peer.state()
	if want := map[string]string{"a-bad-sig": ssf.InvalidKey, "a-bad-aud": ssf.InvalidAudience, "a-mismatch": ssf.InvalidRequest}; !maps.Equal(errs, want) {
		t.Errorf("setErrs = %v, want %v", errs, want)
	}
	if n := strings.Count(strings.Join(acked, " "), "p-3"); n != 2 {
		t.Errorf("acks %v: want p-3 acknowledged twice (redelivered after a lost ack)", acked)
	}
	var ids []string
	e.ledger.mu.Lock()
	for _, leaf := range e.ledger.leaves {
		var en pb.Entry
		if err := proto.Unmarshal(leaf, &en); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, en.GetEvent().GetId()+"/"+en.GetEvent().GetSource().GetSystem())
	}
	e.ledger.mu.Unlock()
	if got := strings.Join(ids, " "); got != "p-3/okta-ssf p-1/okta-ssf p-2/okta-ssf p-5/okta-ssf p-4/okta-ssf" {
		t.Errorf("stored %s, want p-1..p-5 once each, each poll's in iat order", got)
	}
	peer.mu.Lock()
	if peer.badAuth != 0 || peer.jwksGets != 1 {
		t.Errorf("bad bearer tokens %d, JWKS fetches %d; want 0 and 1 (cached)", peer.badAuth, peer.jwksGets)
	}
	peer.mu.Unlock()
}

// TestSSFPushKeysUnavailable: a pushed SET whose transmitter's jwks_uri
// cannot be fetched is neither accepted nor refused: 503 with Retry-After,
// so that the transmitter delivers it again, and nothing is stored.
func TestSSFPushKeysUnavailable(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "maintenance", http.StatusBadGateway)
	}))
	defer down.Close()
	rcv, err := ssf.NewReceiver([]ssf.Transmitter{{Issuer: ssfIssuer, Audience: ssfAudience, System: "okta-ssf", JWKSURI: down.URL}})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(c *Config) { c.SSF = rcv })
	tok := signSET(t, key, "k1", map[string]any{"iss": ssfIssuer, "aud": ssfAudience, "iat": time.Now().Unix(), "jti": "u-1",
		"sub_id": map[string]any{"format": "email", "email": "lee.park@example.com"},
		"events": map[string]any{ssf.RISCAccountDisabled: map[string]any{}}})
	req, _ := http.NewRequestWithContext(t.Context(), "POST", e.url+SSFPath, strings.NewReader(tok))
	req.Header.Set("Content-Type", "application/secevent+jwt")
	resp, err := e.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || e.ledger.Latest().Size != 0 {
		t.Errorf("push with the keys unavailable = %d (Retry-After %q), tree size %d; want 503 with Retry-After and nothing stored",
			resp.StatusCode, resp.Header.Get("Retry-After"), e.ledger.Latest().Size)
	}
}
