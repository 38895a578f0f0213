package auth

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// The file names a data directory uses (internal/datadir).
const (
	tokensFile     = "tokens.json"
	adminTokenFile = "admin.token"
)

func openStore(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(filepath.Join(dir, tokensFile))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestValidateName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"okta", true}, {"Sail.Point_2-prod", true}, {strings.Repeat("a", 64), true},
		{"", false}, {strings.Repeat("a", 65), false}, {"has space", false}, {"a/b", false},
		{"ünicode", false}, {"tab\t", false}, {"a+b", false},
	}
	for _, tt := range tests {
		err := ValidateName(tt.name)
		if (err == nil) != tt.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateName(%q) = %v, want ErrInvalidName", tt.name, err)
		}
	}
	// An invisible character is named by its code point, not shown raw
	// (nor as the first byte of its UTF-8 encoding).
	for name, want := range map[string]string{"okta\u200b": "U+200B at offset 4", "\u202eokta": "U+202E at offset 0", "ok\u2028": "U+2028 at offset 2"} {
		if err := ValidateName(name); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ValidateName(%q) = %v, want it to say %q", name, err, want)
		}
	}
}

func TestParseRole(t *testing.T) {
	for _, r := range []string{"source", "auditor", "admin"} {
		if got, err := ParseRole(r); err != nil || string(got) != r {
			t.Errorf("ParseRole(%q) = %q, %v", r, got, err)
		}
	}
	for _, r := range []string{"", "Admin", "root"} {
		if _, err := ParseRole(r); err == nil {
			t.Errorf("ParseRole(%q) succeeded, want error", r)
		}
	}
}

func TestAddAuthenticateRevoke(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	if _, err := s.Authenticate("glt_nothing"); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("Authenticate on empty store = %v, want ErrUnauthenticated", err)
	}
	tok, err := s.Add("okta", RoleSource)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(tok, TokenPrefix))
	if !strings.HasPrefix(tok, TokenPrefix) || err != nil || len(raw) != 32 {
		t.Fatalf("token %q: want glt_ + base64url of 32 bytes (decode err %v, %d bytes)", tok, err, len(raw))
	}
	p, err := s.Authenticate(tok)
	if err != nil || p.Name != "okta" || p.Role != RoleSource || !p.Active() {
		t.Fatalf("Authenticate = %+v, %v; want active source okta", p, err)
	}
	if time.Since(p.Created) > time.Minute || p.Created.Location() != time.UTC {
		t.Errorf("Created = %v, want about now in UTC", p.Created)
	}

	// The file holds the hash, never the token, and is private.
	data, err := os.ReadFile(filepath.Join(dir, tokensFile))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(tok))
	if strings.Contains(string(data), strings.TrimPrefix(tok, TokenPrefix)) || !strings.Contains(string(data), hex.EncodeToString(sum[:])) {
		t.Errorf("tokens.json = %s; want the token's sha256 and not the token", data)
	}
	checkMode(t, filepath.Join(dir, tokensFile), 0o600)

	// Near misses are refused.
	for _, bad := range []string{"", tok[:len(tok)-1], tok + "x", strings.ToUpper(tok), hex.EncodeToString(sum[:])} {
		if _, err := s.Authenticate(bad); !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("Authenticate(%q) = %v, want ErrUnauthenticated", bad, err)
		}
	}

	if _, err := s.Add("okta", RoleAdmin); !errors.Is(err, ErrExists) {
		t.Errorf("Add of an existing name = %v, want ErrExists", err)
	}
	if _, err := s.Add("bad name", RoleSource); !errors.Is(err, ErrInvalidName) {
		t.Errorf("Add(bad name) = %v, want ErrInvalidName", err)
	}
	if _, err := s.Add("x", Role("root")); err == nil {
		t.Error("Add with unknown role succeeded")
	}
	if err := s.Revoke("nobody"); !errors.Is(err, ErrUnknownPrincipal) {
		t.Errorf("Revoke(nobody) = %v, want ErrUnknownPrincipal", err)
	}

	if err := s.Revoke("okta"); err != nil {
		t.Fatal(err)
	}
	_, err = s.Authenticate(tok)
	if !errors.Is(err, ErrUnauthenticated) || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("Authenticate(revoked) = %v, want ErrUnauthenticated saying revoked", err)
	}
	if err != nil && strings.Contains(err.Error(), tok) {
		t.Errorf("error %q contains the token", err)
	}
	if err := s.Revoke("okta"); err != nil {
		t.Errorf("second Revoke = %v, want nil (idempotent)", err)
	}

	// A revoked name can be issued again; the old token stays dead.
	tok2, err := s.Add("okta", RoleSource)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(tok2); err != nil {
		t.Errorf("Authenticate(new token) = %v", err)
	}
	if _, err := s.Authenticate(tok); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("Authenticate(old token) after re-add = %v", err)
	}
	list := s.List()
	if len(list) != 2 || list[0].Active() || !list[1].Active() || list[0].Name != "okta" {
		t.Errorf("List = %+v, want revoked okta then active okta", list)
	}
}

// A Store sees another Store's (another process's) changes at once.
func TestTwoStoresSeeChangesAtOnce(t *testing.T) {
	dir := t.TempDir()
	server := openStore(t, dir)
	cli := openStore(t, dir)
	if _, err := server.Authenticate("glt_x"); !errors.Is(err, ErrUnauthenticated) {
		t.Fatal(err)
	}
	for i := range 5 {
		name := fmt.Sprintf("src%d", i)
		tok, err := cli.Add(name, RoleSource)
		if err != nil {
			t.Fatal(err)
		}
		if p, err := server.Authenticate(tok); err != nil || p.Name != name {
			t.Fatalf("server.Authenticate(token of %s) right after add = %+v, %v", name, p, err)
		}
		if err := cli.Revoke(name); err != nil {
			t.Fatal(err)
		}
		if _, err := server.Authenticate(tok); !errors.Is(err, ErrUnauthenticated) {
			t.Fatalf("server.Authenticate(token of %s) right after revoke = %v, want ErrUnauthenticated", name, err)
		}
	}
	if got := len(server.List()); got != 5 {
		t.Errorf("server.List() has %d principals, want 5", got)
	}
}

// Writers in two Stores never lose each other's updates, and a reader
// running alongside never sees a torn file.
func TestConcurrentWritersAndReader(t *testing.T) {
	dir := t.TempDir()
	w1, w2, r := openStore(t, dir), openStore(t, dir), openStore(t, dir)
	const n = 15
	tokens := make(chan string, 2*n)
	var wg sync.WaitGroup
	for wi, w := range []*Store{w1, w2} {
		wg.Go(func() {
			for i := range n {
				tok, err := w.Add(fmt.Sprintf("w%d-%d", wi, i), RoleAuditor)
				if err != nil {
					t.Error(err)
					return
				}
				tokens <- tok
			}
		})
	}
	done := make(chan struct{})
	var readErr error
	go func() {
		defer close(done)
		for tok := range tokens {
			if _, err := r.Authenticate(tok); err != nil {
				readErr = err
			}
		}
	}()
	wg.Wait()
	close(tokens)
	<-done
	if readErr != nil {
		t.Errorf("reader: %v", readErr)
	}
	for _, s := range []*Store{w1, w2, r, openStore(t, dir)} {
		if got := len(s.List()); got != 2*n {
			t.Errorf("List() has %d principals, want %d", got, 2*n)
		}
	}
}

func TestBootstrap(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, adminTokenFile)
	created, err := openStore(t, dir).Bootstrap(path)
	if err != nil || !created {
		t.Fatalf("Bootstrap = %v, %v; want true", created, err)
	}
	checkMode(t, path, 0o600)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(string(data), "\n") || strings.Count(string(data), "\n") != 1 {
		t.Errorf("admin.token = %q, want one newline-terminated line", data)
	}
	p, err := openStore(t, dir).Authenticate(strings.TrimSpace(string(data)))
	if err != nil || p.Name != "admin" || p.Role != RoleAdmin {
		t.Fatalf("Authenticate(admin.token) = %+v, %v", p, err)
	}
	again, err := openStore(t, dir).Bootstrap(path)
	if err != nil || again {
		t.Errorf("second Bootstrap = %v, %v; want false, nil", again, err)
	}
	data2, _ := os.ReadFile(path)
	if string(data2) != string(data) {
		t.Error("second Bootstrap rewrote admin.token")
	}
	// Even with only revoked principals, nothing is re-created.
	dir2 := t.TempDir()
	s := openStore(t, dir2)
	if _, err := s.Add("old", RoleAdmin); err != nil {
		t.Fatal(err)
	}
	if err := s.Revoke("old"); err != nil {
		t.Fatal(err)
	}
	if created, err := s.Bootstrap(filepath.Join(dir2, adminTokenFile)); err != nil || created {
		t.Errorf("Bootstrap with existing principals = %v, %v", created, err)
	}
}

func TestCorruptFile(t *testing.T) {
	tests := []struct{ content, want string }{
		{"{", "unexpected EOF"},
		{`{"version":3,"principals":[]}`, "version 3"},
		{`{"version":2,"principals":[{"name":"a","role":"admin","token_sha256":"` + strings.Repeat("0", 64) + `","created":"2026-01-01T00:00:00Z"}]}`, "want a tokens list"},
		{`{"version":2,"principals":[{"name":"a","role":"admin","tokens":[{"id":"000000000001","sha256":"` + strings.Repeat("0", 64) + `"}],"created":"2026-01-01T00:00:00Z"}]}`, "principals[0].tokens[0].id"},
		{`{"version":2,"principals":[{"name":"a","role":"admin","tokens":[{"id":"x","sha256":"abc"}],"created":"2026-01-01T00:00:00Z"}]}`, "principals[0].tokens[0].sha256"},
		{`{"version":1,"principals":[{"name":"a b","role":"admin","token_sha256":"` + strings.Repeat("0", 64) + `","created":"2026-01-01T00:00:00Z"}]}`, "principals[0].name"},
		{`{"version":1,"principals":[{"name":"a","role":"root","token_sha256":"` + strings.Repeat("0", 64) + `","created":"2026-01-01T00:00:00Z"}]}`, "principals[0].role"},
		{`{"version":1,"principals":[{"name":"a","role":"admin","token_sha256":"abc","created":"2026-01-01T00:00:00Z"}]}`, "principals[0].token_sha256"},
		{`{"version":1,"principals":[],"extra":1}`, "unknown field"},
	}
	for _, tt := range tests {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, tokensFile), []byte(tt.content), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Open(filepath.Join(dir, tokensFile))
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), tokensFile) {
			t.Errorf("Open with tokens.json %q = %v, want error naming %s and containing %q", tt.content, err, tokensFile, tt.want)
		}
	}
}

// A store that was fine, whose file is then corrupted, fails closed.
func TestAuthenticateFailsClosed(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	tok, err := s.Add("a", RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, tokensFile), []byte("garbage!"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(tok); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("Authenticate with corrupt file = %v, want ErrUnauthenticated", err)
	}
	if err := os.Remove(filepath.Join(dir, tokensFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(tok); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("Authenticate with deleted file = %v, want ErrUnauthenticated", err)
	}
}

func checkMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("mode of %s = %v, want %v", path, got, want)
	}
}

func BenchmarkAuthenticate(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), tokensFile))
	if err != nil {
		b.Fatal(err)
	}
	var tok string
	for i := range 100 {
		if tok, err = s.Add(fmt.Sprintf("p%d", i), RoleSource); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		if _, err := s.Authenticate(tok); err != nil {
			b.Fatal(err)
		}
	}
}
