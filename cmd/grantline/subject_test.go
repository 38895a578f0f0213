package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/grantline/grantline/internal/server"
)

// TestEvidenceExportSubject: against a server whose log has a subject map,
// evidence export --subject writes a package that verify
// --require-complete passes as "subjects proven complete"; a log without a
// map refuses --subject and says why; --all with --subject is a usage error.
func TestEvidenceExportSubject(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	srv := startTestServer(t, server.Config{DataDir: dir, SubjectMap: true})
	file, _ := writeJSONL(t, "subject", 300)
	if code, _, e := runCmd(t, "", "append", "--server", srv.URL, "--token", srv.AdminToken, file); code != 0 {
		t.Fatalf("append: exit %d: %s", code, e)
	}
	out := filepath.Join(t.TempDir(), "pkg")
	code, o, e := runCmd(t, "", "evidence", "export", "--server", srv.URL, "--token", srv.AdminToken, "--out", out,
		"--subject", "user-3", "--subject", "nobody")
	if code != 0 {
		t.Fatalf("evidence export --subject: exit %d: %s%s", code, o, e)
	}
	if !strings.Contains(o, "completeness.json") {
		t.Errorf("export output does not list completeness.json:\n%s", o)
	}
	verifyArgs := []string{"verify", out, "--log-key", filepath.Join(dir, "keys", "log.vkey"),
		"--evidence-key", filepath.Join(dir, "keys", "evidence.pub"), "--require-complete"}
	code, o, e = runCmd(t, "", verifyArgs...)
	if code != 0 || !strings.Contains(o+e, "subjects proven complete") {
		t.Fatalf("verify --require-complete: exit %d:\n%s%s", code, o, e)
	}

	plain := filepath.Join(t.TempDir(), "data")
	nomap := startTestServer(t, server.Config{DataDir: plain})
	if code, _, e := runCmd(t, "", "append", "--server", nomap.URL, "--token", nomap.AdminToken, file); code != 0 {
		t.Fatalf("append: exit %d: %s", code, e)
	}
	code, o, e = runCmd(t, "", "evidence", "export", "--server", nomap.URL, "--token", nomap.AdminToken,
		"--out", filepath.Join(t.TempDir(), "pkg"), "--subject", "user-3")
	if code == 0 || !strings.Contains(e, "subject map") {
		t.Fatalf("evidence export --subject from a log without a map: exit %d, want a failure naming the subject map:\n%s%s", code, o, e)
	}
	code, _, e = runCmd(t, "", "evidence", "export", "--server", srv.URL, "--token", srv.AdminToken,
		"--out", filepath.Join(t.TempDir(), "pkg"), "--subject", "user-3", "--all")
	if code != 2 || !strings.Contains(e, "exclude each other") {
		t.Fatalf("--all with --subject: exit %d, want 2 and a usage error: %s", code, e)
	}
}
