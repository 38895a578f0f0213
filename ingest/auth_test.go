package ingest

import (
	"context"
	"net/http"
	"testing"

	"connectrpc.com/connect"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

func TestAuthMatrix(t *testing.T) {
	type call func(ctx context.Context, c clientSet) error
	appendOkta := func(ctx context.Context, c clientSet) error {
		_, err := c.ingest.Append(ctx, connect.NewRequest(&pb.AppendRequest{Events: []*pb.Event{
			newEvent("okta", "a1", "access.approved", "alice"),
			newEvent("okta", "a2", "access.approved", "bob"),
		}}))
		return err
	}
	appendMixed := func(ctx context.Context, c clientSet) error {
		_, err := c.ingest.Append(ctx, connect.NewRequest(&pb.AppendRequest{Events: []*pb.Event{
			newEvent("okta", "m1", "access.approved", "alice"),
			newEvent("cyberark", "m2", "session.started", "alice"),
		}}))
		return err
	}
	read := func(ctx context.Context, c clientSet) error {
		_, err := c.log.GetCheckpoint(ctx, connect.NewRequest(&pb.GetCheckpointRequest{}))
		return err
	}
	evaluate := func(ctx context.Context, c clientSet) error {
		_, err := c.evidence.Evaluate(ctx, connect.NewRequest(&pb.EvaluateRequest{}))
		return err
	}
	tests := []struct {
		name     string
		token    string
		call     call
		code     connect.Code // 0 for success
		fragment string
		stored   int
	}{
		{"no token", "", read, connect.CodeUnauthenticated, "no bearer token", 0},
		{"unknown token", "tok-nope", read, connect.CodeUnauthenticated, "unknown or revoked token", 0},
		{"no token append", "", appendOkta, connect.CodeUnauthenticated, "Authorization", 0},
		{"auditor appends", auditorTok, appendOkta, connect.CodePermissionDenied, "auditor", 0},
		{"source appends own", oktaTok, appendOkta, 0, "", 2},
		{"source appends another system's event", oktaTok, appendMixed, connect.CodePermissionDenied, "events[1].source.system", 0},
		{"source reads", oktaTok, read, connect.CodePermissionDenied, "GetCheckpoint", 0},
		{"source evaluates", oktaTok, evaluate, connect.CodePermissionDenied, "Evaluate", 0},
		{"auditor reads", auditorTok, read, 0, "", 0},
		{"admin appends any system", adminTok, appendMixed, 0, "", 2},
		{"admin reads", adminTok, read, 0, "", 0},
	}
	for _, p := range protocols {
		for _, tt := range tests {
			t.Run(p.name+"/"+tt.name, func(t *testing.T) {
				e := newEnv(t)
				err := tt.call(t.Context(), e.clients(p, tt.token))
				if tt.code == 0 {
					if err != nil {
						t.Fatalf("err = %v, want success", err)
					}
				} else {
					wantCode(t, err, tt.code, tt.fragment)
				}
				if got := e.ledger.size(); got != tt.stored {
					t.Errorf("ledger holds %d entries, want %d", got, tt.stored)
				}
			})
		}
	}
}

func TestRevokedTokenStopsAtOnce(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			e := newEnv(t)
			c := e.clients(p, auditorTok)
			if _, err := c.log.GetCheckpoint(t.Context(), connect.NewRequest(&pb.GetCheckpointRequest{})); err != nil {
				t.Fatal(err)
			}
			e.auth.revoke(auditorTok)
			_, err := c.log.GetCheckpoint(t.Context(), connect.NewRequest(&pb.GetCheckpointRequest{}))
			wantCode(t, err, connect.CodeUnauthenticated, "revoked")
		})
	}
}

func TestMalformedAuthorizationHeader(t *testing.T) {
	e := newEnv(t)
	for _, h := range []string{"Basic abc", "Bearer", "Bearer    ", auditorTok} {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, e.url+"/checkpoint", nil)
		req.Header.Set("Authorization", h)
		resp, err := e.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("Authorization %q: status %d, want 401", h, resp.StatusCode)
		}
	}
}
