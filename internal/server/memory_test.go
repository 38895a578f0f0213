package server

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"net/http"
	"runtime/debug"
	"testing"
	"time"

	"github.com/grantline/grantline/ingest/auth"
	"github.com/grantline/grantline/internal/datadir"
)

// TestPprofNeedsAdmin: the profiles are served to admin tokens only; no
// token, a wrong one and an auditor's are refused.
func TestPprofNeedsAdmin(t *testing.T) {
	t.Setenv("GOMEMLIMIT", "")
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	dir := t.TempDir()
	rs, err := Start(t.Context(), Config{DataDir: dir, Listen: "127.0.0.1:0", MemoryBudget: 256 << 20, MaxMappedBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := rs.Close(ctx); err != nil {
			t.Error(err)
		}
	}()
	if got, want := debug.SetMemoryLimit(-1), GoMemoryLimit(256<<20); got != want {
		t.Errorf("Go memory limit = %d, want %d from the budget", got, want)
	}
	tokens, err := datadir.OpenTokens(dir)
	if err != nil {
		t.Fatal(err)
	}
	auditor, err := tokens.Add("auditor-1", auth.RoleAuditor)
	if err != nil {
		t.Fatal(err)
	}
	get := func(t *testing.T, path, token string) (int, []byte) {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, rs.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, body
	}
	for _, tt := range []struct {
		name, path, token string
		want              int
	}{
		{"no token", "/debug/pprof/heap", "", http.StatusUnauthorized},
		{"unknown token", "/debug/pprof/heap", "not-a-token", http.StatusUnauthorized},
		{"auditor", "/debug/pprof/heap", auditor, http.StatusForbidden},
		{"auditor, index", "/debug/pprof/", auditor, http.StatusForbidden},
		{"no token, cmdline", "/debug/pprof/cmdline", "", http.StatusUnauthorized},
		{"admin", "/debug/pprof/heap", rs.AdminToken, http.StatusOK},
		{"admin, index", "/debug/pprof/", rs.AdminToken, http.StatusOK},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, body := get(t, tt.path, tt.token)
			if code != tt.want {
				t.Fatalf("GET %s = %d %q, want %d", tt.path, code, body, tt.want)
			}
			if code == http.StatusOK && tt.path == "/debug/pprof/heap" {
				// A heap profile is a gzipped protobuf.
				if _, err := gzip.NewReader(bytes.NewReader(body)); err != nil {
					t.Fatalf("GET %s: not a profile (%d bytes): %v", tt.path, len(body), err)
				}
			}
		})
	}
	// The other routes still answer: the tiles path to the auditor.
	if code, body := get(t, "/checkpoint", auditor); code != http.StatusOK {
		t.Fatalf("GET /checkpoint = %d %q", code, body)
	}
}

// TestMemoryBudgetNegative is refused as a configuration error.
func TestMemoryBudgetNegative(t *testing.T) {
	_, err := Start(t.Context(), Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", MemoryBudget: -1})
	if !errors.Is(err, ErrConfig) {
		t.Fatalf("Start with a negative memory budget = %v, want ErrConfig", err)
	}
}
