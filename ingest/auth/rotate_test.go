package auth

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// clock is a settable time source for a Store.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestRotate(t *testing.T) {
	tests := []struct {
		name        string
		revokeAfter time.Duration
		advance     time.Duration // then the old token is...
		oldWorks    bool
	}{
		{"no expiry: old works until revoked", 0, 1000 * time.Hour, true},
		{"before the expiry", time.Hour, 59 * time.Minute, true},
		{"at the expiry", time.Hour, time.Hour, false},
		{"after the expiry", time.Hour, 2 * time.Hour, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			c := &clock{t: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
			s := openStore(t, dir)
			s.now = c.now
			old, err := s.Add("okta", RoleSource)
			if err != nil {
				t.Fatal(err)
			}
			tok, id, err := s.Rotate("okta", tt.revokeAfter)
			if err != nil {
				t.Fatal(err)
			}
			if h := sha256.Sum256([]byte(tok)); id != hex.EncodeToString(h[:])[:12] {
				t.Fatalf("id %s is not the first 12 hex digits of the token's hash", id)
			}
			// Another Store on the file (the running server) sees both at once.
			srv := openStore(t, dir)
			srv.now = c.now
			for _, tk := range []string{old, tok} {
				if p, err := srv.Authenticate(tk); err != nil || p.Name != "okta" {
					t.Fatalf("right after Rotate: Authenticate = %+v, %v; want okta", p, err)
				}
			}
			c.t = c.t.Add(tt.advance)
			_, err = srv.Authenticate(old)
			if tt.oldWorks != (err == nil) {
				t.Fatalf("old token after %s: err = %v, want works=%v", tt.advance, err, tt.oldWorks)
			}
			if err != nil && (!errors.Is(err, ErrUnauthenticated) || !strings.Contains(err.Error(), "expired")) {
				t.Fatalf("old token: %v, want ErrUnauthenticated saying expired", err)
			}
			if _, err := srv.Authenticate(tok); err != nil {
				t.Fatalf("new token: %v", err)
			}
			ps := srv.List()
			if len(ps) != 1 || len(ps[0].Tokens) != 2 || ps[0].Tokens[1].ID != id || ps[0].Tokens[1].Active(c.t) != true {
				t.Fatalf("List = %+v, want okta with two tokens, the new one %s active", ps, id)
			}
		})
	}
}

func TestRevokeToken(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	old, err := s.Add("okta", RoleSource)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := s.Rotate("okta", 0)
	if err != nil {
		t.Fatal(err)
	}
	oldID := s.List()[0].Tokens[0].ID
	srv := openStore(t, dir)
	if name, err := s.RevokeToken(oldID); err != nil || name != "okta" {
		t.Fatalf("RevokeToken = %q, %v", name, err)
	}
	if _, err := srv.Authenticate(old); !errors.Is(err, ErrUnauthenticated) || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("old token after RevokeToken: %v, want ErrUnauthenticated saying revoked", err)
	}
	if _, err := srv.Authenticate(tok); err != nil {
		t.Fatalf("new token after revoking the old one: %v", err)
	}
	if _, err := s.RevokeToken(oldID); err != nil {
		t.Fatalf("revoking twice: %v, want no error", err)
	}
	if _, err := s.RevokeToken("0123456789ab"); !errors.Is(err, ErrUnknownToken) {
		t.Fatalf("RevokeToken(unknown) = %v, want ErrUnknownToken", err)
	}
	// Revoking the principal ends every token.
	if err := s.Revoke("okta"); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Authenticate(tok); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("new token after revoking the principal: %v", err)
	}
	if _, _, err := s.Rotate("okta", 0); !errors.Is(err, ErrUnknownPrincipal) {
		t.Fatalf("Rotate of a revoked principal = %v, want ErrUnknownPrincipal", err)
	}
}

// A version 1 file (one token_sha256 per principal) is read, and rewritten
// as version 2 on the next change.
func TestReadVersion1(t *testing.T) {
	dir := t.TempDir()
	tok, hash := newToken()
	v1 := `{"version":1,"principals":[{"name":"okta","role":"source","token_sha256":"` + hex.EncodeToString(hash[:]) + `","created":"2026-01-01T00:00:00Z"}]}`
	if err := os.WriteFile(filepath.Join(dir, tokensFile), []byte(v1), 0o600); err != nil {
		t.Fatal(err)
	}
	s := openStore(t, dir)
	if p, err := s.Authenticate(tok); err != nil || p.Name != "okta" || len(p.Tokens) != 1 || p.Tokens[0].ID != tokenID(hash) {
		t.Fatalf("Authenticate on a version 1 file = %+v, %v", p, err)
	}
	if _, _, err := s.Rotate("okta", 0); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, tokensFile))
	if !strings.Contains(string(b), `"version": 2`) || strings.Contains(string(b), "token_sha256") {
		t.Fatalf("rewritten file:\n%s\nwant version 2 without token_sha256", b)
	}
	if _, err := openStore(t, dir).Authenticate(tok); err != nil {
		t.Fatalf("old token after the rewrite: %v", err)
	}
}

// A crash between writing admin.token and the principal (standing in: the
// hook fails) leaves no principal; the next Bootstrap writes a new token
// that works. Before the fix, the principal was written first, and a crash
// left a principal whose token nobody had.
func TestBootstrapCrashWindow(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, adminTokenFile)
	crash := errors.New("crash")
	bootstrapHook = func() error { return crash }
	_, err := openStore(t, dir).Bootstrap(path)
	bootstrapHook = func() error { return nil }
	if !errors.Is(err, crash) {
		t.Fatalf("Bootstrap with a crash = %v", err)
	}
	if ps := openStore(t, dir).List(); len(ps) != 0 {
		t.Fatalf("after the crash: principals %+v, want none", ps)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("after the crash: %v; the token file comes first", err)
	}
	created, err := openStore(t, dir).Bootstrap(path)
	if err != nil || !created {
		t.Fatalf("Bootstrap after the crash = %v, %v", created, err)
	}
	b, _ := os.ReadFile(path)
	if p, err := openStore(t, dir).Authenticate(strings.TrimSpace(string(b))); err != nil || p.Role != RoleAdmin {
		t.Fatalf("admin.token after recovery: %+v, %v", p, err)
	}
}
