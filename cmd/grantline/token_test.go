package main

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/grantline/grantline/ingest/auth"
	"github.com/grantline/grantline/internal/datadir"
)

var tokenRE = regexp.MustCompile(`^glt_[A-Za-z0-9_-]{43}\n$`)

func TestTokenCommands(t *testing.T) {
	data := t.TempDir()
	server, err := datadir.OpenTokens(data) // as a running server holds it
	if err != nil {
		t.Fatal(err)
	}

	code, out, errOut := runCmd(t, "", "token", "add", "--data", data, "--name", "okta", "--role", "source")
	if code != 0 || !tokenRE.MatchString(out) {
		t.Fatalf("token add = %d, stdout %q, stderr %q; want 0 and the token alone", code, out, errOut)
	}
	tok := strings.TrimSpace(out)
	if strings.Contains(errOut, tok) {
		t.Errorf("stderr %q contains the token", errOut)
	}
	p, err := server.Authenticate(tok)
	if err != nil || p.Name != "okta" || p.Role != auth.RoleSource {
		t.Fatalf("server.Authenticate(new token) = %+v, %v; want source okta", p, err)
	}
	if code, out, _ := runCmd(t, "", "token", "add", "--data", data, "--name", "alice", "--role", "auditor"); code != 0 || !tokenRE.MatchString(out) {
		t.Fatalf("token add alice = %d, %q", code, out)
	}

	code, out, errOut = runCmd(t, "", "token", "add", "--data", data, "--name", "okta", "--role", "admin")
	if code != 1 || out != "" || !strings.Contains(errOut, "already exists") {
		t.Errorf("token add of existing name = %d, %q, %q; want 1 and an 'already exists' message", code, out, errOut)
	}

	code, out, _ = runCmd(t, "", "token", "revoke", "--data", data, "--name", "okta")
	if code != 0 || out != "" {
		t.Errorf("token revoke = %d, %q", code, out)
	}
	if _, err := server.Authenticate(tok); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Errorf("server.Authenticate(revoked token) = %v, want ErrUnauthenticated", err)
	}

	code, out, _ = runCmd(t, "", "token", "list", "--data", data)
	if code != 0 {
		t.Fatalf("token list = %d", code)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "NAME") {
		t.Fatalf("token list output:\n%s\nwant a header and 2 rows", out)
	}
	okta, alice := strings.Fields(lines[1]), strings.Fields(lines[2])
	tokenID := regexp.MustCompile(`^[0-9a-f]{12}$`)
	if len(okta) != 5 || okta[0] != "okta" || okta[1] != "source" || okta[3] == "-" || !tokenID.MatchString(okta[4]) {
		t.Errorf("okta row = %q, want name, role source, created, revoked time, token id", lines[1])
	}
	if len(alice) != 5 || alice[0] != "alice" || alice[1] != "auditor" || alice[3] != "-" || !tokenID.MatchString(alice[4]) {
		t.Errorf("alice row = %q, want an active auditor with a token id", lines[2])
	}

	code, out, _ = runCmd(t, "", "token", "list", "--data", data, "--json")
	var rows []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("token list --json line %q: %v", l, err)
		}
		rows = append(rows, m)
	}
	if code != 0 || len(rows) != 2 || rows[0]["revoked"] == nil || rows[1]["revoked"] != nil || rows[1]["role"] != "auditor" {
		t.Errorf("token list --json = %d, %v", code, rows)
	}
}

func TestTokenCommandErrors(t *testing.T) {
	data := t.TempDir()
	tests := []struct {
		args    []string
		code    int
		wantErr string
	}{
		{[]string{"token"}, 2, "add, rotate, list or revoke"},
		{[]string{"token", "frob"}, 2, `unknown sub-command "frob"`},
		{[]string{"token", "add", "--data", data, "--role", "admin"}, 2, "--name is required"},
		{[]string{"token", "add", "--data", data, "--name", "x", "--role", "root"}, 2, `unknown role "root"`},
		{[]string{"token", "add", "--data", data, "--name", "x y", "--role", "admin"}, 1, "invalid principal name"},
		{[]string{"token", "add", "--data", filepath.Join(data, "missing"), "--name", "x", "--role", "admin"}, 1, "not a data directory"},
		{[]string{"token", "revoke", "--data", data, "--name", "nobody"}, 1, `unknown principal: "nobody"`},
		{[]string{"token", "list", "--data", data, "extra"}, 2, "unexpected argument"},
		{[]string{"token", "list", "--bogus"}, 2, "flag provided but not defined"},
	}
	for _, tt := range tests {
		code, out, errOut := runCmd(t, "", tt.args...)
		if code != tt.code || !strings.Contains(errOut, tt.wantErr) || out != "" {
			t.Errorf("grantline %q = %d, stdout %q, stderr %q; want %d and stderr containing %q", tt.args, code, out, errOut, tt.code, tt.wantErr)
		}
	}
	if code, _, _ := runCmd(t, "", "token", "-h"); code != 0 {
		t.Errorf("token -h = %d, want 0", code)
	}
}

func TestTokenRotateCommand(t *testing.T) {
	data := t.TempDir()
	server, err := datadir.OpenTokens(data)
	if err != nil {
		t.Fatal(err)
	}
	_, old, _ := runCmd(t, "", "token", "add", "--data", data, "--name", "okta", "--role", "source")
	tests := []struct {
		name string
		args []string
		code int
		want string // in stderr
	}{
		{"rotate unknown", []string{"rotate", "--name", "nobody"}, 1, "no active principal"},
		{"rotate without name", []string{"rotate"}, 2, "--name is required"},
		{"rotate negative", []string{"rotate", "--name", "okta", "--revoke-after", "-1h"}, 2, "--revoke-after"},
		{"revoke both", []string{"revoke", "--name", "okta", "--token-id", "abc"}, 2, "not both"},
		{"revoke neither", []string{"revoke"}, 2, "--token-id"},
		{"revoke unknown id", []string{"revoke", "--token-id", "0123456789ab"}, 1, "unknown token id"},
		{"rotate with expiry", []string{"rotate", "--name", "okta", "--revoke-after", "1h"}, 0, "stop working at"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := runCmd(t, "", append([]string{"token", tt.args[0], "--data", data}, tt.args[1:]...)...)
			if code != tt.code || !strings.Contains(errs, tt.want) {
				t.Fatalf("token %v = exit %d, %q, %q; want exit %d and %q", tt.args, code, out, errs, tt.code, tt.want)
			}
			if code == 0 && !tokenRE.MatchString(out) {
				t.Fatalf("stdout %q: want the new token alone", out)
			}
		})
	}
	// Both tokens work; list shows the old one's expiry.
	if _, err := server.Authenticate(strings.TrimSpace(old)); err != nil {
		t.Fatalf("old token within --revoke-after: %v", err)
	}
	_, out, _ := runCmd(t, "", "token", "list", "--data", data)
	if !strings.Contains(out, "TOKENS") || !strings.Contains(out, "(until ") {
		t.Fatalf("token list:\n%s\nwant a TOKENS column with the old token's expiry", out)
	}
}
