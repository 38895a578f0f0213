package ingest

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/ingest/auth"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/proto/gen/grantline/v1/grantlinev1connect"
)

// Tokens of the test principals.
const (
	adminTok   = "tok-admin-5e1f"
	auditorTok = "tok-auditor-77aa"
	oktaTok    = "tok-source-okta-91c3"
	pamTok     = "tok-source-cyberark-0b2d"
)

// syncBuffer collects log output from concurrent handlers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type testEnv struct {
	ledger *fakeLedger
	auth   *fakeAuth
	srv    *Server
	url    string
	hc     *http.Client
	logs   *syncBuffer
}

// newEnv starts a Server over h2c on loopback, as grantline serve does.
func newEnv(t *testing.T, edit ...func(*Config)) *testEnv {
	t.Helper()
	e := &testEnv{ledger: newFakeLedger(t), logs: &syncBuffer{}}
	e.auth = &fakeAuth{tokens: map[string]auth.Principal{
		adminTok:   {Name: "root", Role: auth.RoleAdmin},
		auditorTok: {Name: "audit", Role: auth.RoleAuditor},
		oktaTok:    {Name: "okta", Role: auth.RoleSource},
		pamTok:     {Name: "cyberark", Role: auth.RoleSource},
	}}
	cfg := Config{
		Ledger: e.ledger, Auth: e.auth,
		Logger: slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, f := range edit {
		f(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	hs := httptest.NewUnstartedServer(srv.Handler())
	hs.Config.Protocols = new(http.Protocols)
	hs.Config.Protocols.SetHTTP1(true)
	hs.Config.Protocols.SetUnencryptedHTTP2(true)
	hs.Config.HTTP2 = HTTP2Config()
	hs.Start()
	t.Cleanup(hs.Close)
	e.url = hs.URL
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	e.hc = &http.Client{Transport: tr}
	t.Cleanup(tr.CloseIdleConnections)
	t.Cleanup(func() {
		for _, tok := range []string{adminTok, auditorTok, oktaTok, pamTok} {
			if strings.Contains(e.logs.String(), tok) {
				t.Errorf("a token appears in the server log")
			}
		}
	})
	return e
}

// protocol is one wire protocol a client may speak.
type protocol struct {
	name string
	opts []connect.ClientOption
}

var protocols = []protocol{
	{"connect", nil},
	{"connect-json", []connect.ClientOption{connect.WithProtoJSON()}},
	{"grpc", []connect.ClientOption{connect.WithGRPC()}},
}

type clientSet struct {
	ingest   grantlinev1connect.IngestServiceClient
	log      grantlinev1connect.LogServiceClient
	evidence grantlinev1connect.EvidenceServiceClient
}

func (e *testEnv) clients(p protocol, token string) clientSet {
	opts := append([]connect.ClientOption{connect.WithInterceptors(bearerAuth(token))}, p.opts...)
	return clientSet{
		ingest:   grantlinev1connect.NewIngestServiceClient(e.hc, e.url, opts...),
		log:      grantlinev1connect.NewLogServiceClient(e.hc, e.url, opts...),
		evidence: grantlinev1connect.NewEvidenceServiceClient(e.hc, e.url, opts...),
	}
}

// bearerAuth sets the Authorization header on every client call; "" sends none.
type bearerAuth string

func (b bearerAuth) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if b != "" {
			req.Header().Set("Authorization", "Bearer "+string(b))
		}
		return next(ctx, req)
	}
}

func (b bearerAuth) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		if b != "" {
			conn.RequestHeader().Set("Authorization", "Bearer "+string(b))
		}
		return conn
	}
}

func (b bearerAuth) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// newEvent returns a valid event of source system sys.
func newEvent(sys, id, typ, subject string) *pb.Event {
	return &pb.Event{
		Id: id, Type: typ, Time: timestamppb.New(time.Now().Add(-time.Hour).Truncate(time.Second)),
		Source:      &pb.Source{System: sys, Product: "test"},
		Subject:     &pb.Identity{Id: subject, Kind: "human"},
		Actor:       &pb.Identity{Id: "approver-1", Kind: "human"},
		Entitlement: &pb.Entitlement{Id: "role/admin", Resource: "aws:prod", Privileged: true},
		Refs:        &pb.Refs{Request: "req-" + id},
		Reason:      "ticket CHG-1",
		Attributes:  map[string]string{"region": "eu"},
	}
}

func wantCode(t *testing.T, err error, code connect.Code, fragment string) {
	t.Helper()
	if err == nil {
		t.Fatalf("err = nil, want %v containing %q", code, fragment)
	}
	if got := connect.CodeOf(err); got != code {
		t.Fatalf("code = %v (%v), want %v", got, err, code)
	}
	if !strings.Contains(err.Error(), fragment) {
		t.Fatalf("error %q does not name %q", err, fragment)
	}
}

func timestampOf(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }
