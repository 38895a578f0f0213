package main

// End-to-end tests of the data directory against the real binary: a damaged
// or missing store is refused (never a new log under the old key), a taken
// port writes nothing, and token rotation works on a running server.

import (
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// status is the HTTP status of GET path with token.
func (s *e2eServer) status(t *testing.T, path, token string) int {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, s.url+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// serveOnce runs serve on a free port until it exits or 20 s pass (then it is
// killed: it started, which the callers here treat as a failure).
func serveOnce(t *testing.T, args ...string) (code int, out string) {
	t.Helper()
	var b strings.Builder
	cmd := exec.CommandContext(t.Context(), grantlineBin, append([]string{"serve", "--listen", freeAddr(t)}, args...)...)
	cmd.Stdout, cmd.Stderr = &b, &b
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("serve %v kept running; output:\n%s", args, b.String())
	}
	return cmd.ProcessState.ExitCode(), b.String()
}

// TestServeRefusesDamagedStore: with the store's MANIFEST deleted or
// emptied, a table truncated, or the ledger removed, serve refuses to start
// and says to restore from a backup (or use --init where that makes sense);
// fsck fails. Before, serve started a new size-0 log under the same key (and
// badger deleted the tables), or panicked on the truncated table, and fsck
// said ok.
func TestServeRefusesDamagedStore(t *testing.T) {
	requireBinary(t)
	base := t.TempDir()
	orig := filepath.Join(base, "orig")
	s := startE2EServer(t, orig)
	src := mustToken(t, orig, "hr", "source")
	p, _ := writeJSONL(t, "dmg", 300)
	if code, out, errs := runBin(t, "append", "--server", s.url, "--token", src, p); code != 0 {
		t.Fatalf("append = %d %s %s", code, out, errs)
	}
	s.stop(t)

	tests := []struct {
		name   string
		damage func(t *testing.T, ledger string)
		want   string
	}{
		{"MANIFEST deleted", func(t *testing.T, l string) { must(t, os.Remove(filepath.Join(l, "MANIFEST"))) }, "MANIFEST is missing"},
		{"MANIFEST emptied", func(t *testing.T, l string) { must(t, os.Truncate(filepath.Join(l, "MANIFEST"), 0)) }, "MANIFEST is empty"},
		{"table truncated", func(t *testing.T, l string) {
			m, _ := filepath.Glob(filepath.Join(l, "*.sst"))
			if len(m) == 0 {
				t.Fatal("no table in the store")
			}
			fi, _ := os.Stat(m[0])
			must(t, os.Truncate(m[0], fi.Size()/2))
		}, "truncated"},
		{"ledger removed", func(t *testing.T, l string) { must(t, os.RemoveAll(l)) }, "holds no log"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			must(t, os.CopyFS(dir, os.DirFS(orig)))
			ldir := filepath.Join(dir, "ledger")
			tt.damage(t, ldir)
			before, _ := os.ReadDir(ldir)
			code, out := serveOnce(t, "--data", dir)
			if code != 1 || !strings.Contains(out, "store damaged or missing") || !strings.Contains(out, tt.want) ||
				!strings.Contains(out, "restore") || strings.Contains(out, "panic") {
				t.Fatalf("serve = exit %d, output:\n%s\nwant exit 1, %q, a hint to restore, no panic", code, out, tt.want)
			}
			if after, _ := os.ReadDir(ldir); len(after) != len(before) {
				t.Errorf("serve changed the damaged store: %d files before, %d after", len(before), len(after))
			}
			if code, out, errs := runBin(t, "fsck", "--data", dir); code == 0 || strings.Contains(out, ": ok") {
				t.Errorf("fsck = exit %d, %q, %q; want a failure", code, out, errs)
			}
		})
	}

	// --init starts a new log under the kept keys when the store is gone,
	// and only then.
	dir := filepath.Join(t.TempDir(), "data")
	must(t, os.CopyFS(dir, os.DirFS(orig)))
	must(t, os.RemoveAll(filepath.Join(dir, "ledger")))
	s = startE2EServerAt(t, dir, freeAddr(t), "--init")
	if body := s.get(t, "/checkpoint"); !strings.Contains(string(body), "\n0\n") {
		t.Fatalf("checkpoint after --init:\n%s\nwant size 0", body)
	}
}

// TestServePortTakenWritesNothing: serve on a taken port fails before it
// creates keys, tokens or a ledger in an empty data directory.
func TestServePortTakenWritesNothing(t *testing.T) {
	requireBinary(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dir := filepath.Join(t.TempDir(), "data")
	must(t, os.Mkdir(dir, 0o700))
	code, out, errs := runBin(t, "serve", "--data", dir, "--listen", ln.Addr().String())
	if code == 0 || !strings.Contains(errs, "--listen") {
		t.Fatalf("serve on a taken port = exit %d, %q, %q", code, out, errs)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("serve on a taken port wrote %v into the data directory", names)
	}
}

// TestTokenRotationOnRunningServer: a rotated token works at once on a
// running server while the old one keeps working, until it is revoked by id
// or its --revoke-after passes.
func TestTokenRotationOnRunningServer(t *testing.T) {
	requireBinary(t)
	dir := filepath.Join(t.TempDir(), "data")
	s := startE2EServer(t, dir)
	old := mustToken(t, dir, "audit", "auditor")
	if got := s.status(t, "/checkpoint", old); got != http.StatusOK {
		t.Fatalf("old token: %d", got)
	}
	code, out, errs := runBin(t, "token", "rotate", "--data", dir, "--name", "audit")
	if code != 0 || !tokenRE.MatchString(out) || strings.Contains(errs, strings.TrimSpace(out)) {
		t.Fatalf("token rotate = %d, %q, %q; want the new token alone on stdout", code, out, errs)
	}
	fresh := strings.TrimSpace(out)
	for name, tok := range map[string]string{"old": old, "new": fresh} {
		if got := s.status(t, "/checkpoint", tok); got != http.StatusOK {
			t.Fatalf("%s token right after rotate: %d, want 200", name, got)
		}
	}
	ids := regexp.MustCompile(`[0-9a-f]{12}`).FindAllString(runOK(t, "token", "list", "--data", dir), -1)
	if len(ids) < 3 { // admin's, audit's old and new
		t.Fatalf("token list shows ids %v, want three", ids)
	}
	oldID := ids[len(ids)-2]
	runOK(t, "token", "revoke", "--data", dir, "--token-id", oldID)
	if got := s.status(t, "/checkpoint", old); got != http.StatusUnauthorized {
		t.Fatalf("old token after revoke --token-id: %d, want 401", got)
	}
	if got := s.status(t, "/checkpoint", fresh); got != http.StatusOK {
		t.Fatalf("new token after revoking the old one: %d, want 200", got)
	}

	// Rotate again with an expiry: the previous token works until it passes.
	out = runOK(t, "token", "rotate", "--data", dir, "--name", "audit", "--revoke-after", "2s")
	third := strings.TrimSpace(out)
	if got := s.status(t, "/checkpoint", fresh); got != http.StatusOK {
		t.Fatalf("previous token before its expiry: %d, want 200", got)
	}
	time.Sleep(2500 * time.Millisecond)
	if got := s.status(t, "/checkpoint", fresh); got != http.StatusUnauthorized {
		t.Fatalf("previous token after --revoke-after: %d, want 401", got)
	}
	if got := s.status(t, "/checkpoint", third); got != http.StatusOK {
		t.Fatalf("newest token: %d, want 200", got)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// runOK runs the binary, which must succeed, and returns its stdout.
func runOK(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errs := runBin(t, args...)
	if code != 0 {
		t.Fatalf("grantline %v = exit %d, %q, %q", args, code, out, errs)
	}
	return out
}

// mustToken adds a principal with the binary and returns its token.
func mustToken(t *testing.T, dir, name, role string) string {
	t.Helper()
	return strings.TrimSpace(runOK(t, "token", "add", "--data", dir, "--name", name, "--role", role))
}
