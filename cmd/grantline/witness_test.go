package main

import (
	"context"
	"crypto/ed25519"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/grantline/grantline/internal/server"
	"github.com/grantline/grantline/internal/witnesstest"
	"github.com/grantline/grantline/ledger/checkpoint"
	"github.com/grantline/grantline/ledger/witness"
)

// TestWitnessedServeExportVerify is the auditor's view of witnessing: a log
// witnessed by a real litewitness serves a cosigned /checkpoint, anchors
// evidence to it, and verify --witness-policy accepts the package under the
// witness's policy and refuses it under a policy naming another witness.
func TestWitnessedServeExportVerify(t *testing.T) {
	lw := witnesstest.Start(t, "witness1.test") // knows no log yet
	dir := t.TempDir()
	writeFile := func(name, text string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := writeFile("good.policy", "# the test witness\nwitness one "+lw.VKey+" "+lw.URL+"\nquorum 1\n")
	otherKey := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	other := writeFile("other.policy", "witness two "+witnesstest.VKey("witness1.test", otherKey.Public().(ed25519.PublicKey))+" https://other.example\nquorum 1\n")

	srv := startTestServer(t, server.Config{DataDir: filepath.Join(dir, "data"), WitnessPolicy: good,
		Witnessing: witness.Config{MinInterval: 50 * time.Millisecond, RetryBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}})
	get := func() (int, string, http.Header) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/checkpoint", nil)
		req.Header.Set("Authorization", "Bearer "+srv.AdminToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header
	}

	// The witness does not know the log yet: nothing is witnessed.
	witnesstest.WaitFor(t, func() bool { return strings.Contains(srv.Witnesser().Status()[0].LastError, "403 Forbidden") },
		"the witness to refuse the unknown log", func() string { return lw.Log() })
	if code, body, h := get(); code != http.StatusServiceUnavailable || h.Get("Retry-After") == "" || !strings.Contains(body, "quorum") {
		t.Errorf("GET /checkpoint before any witnessing = %d %q (Retry-After %q), want 503 with Retry-After", code, body, h.Get("Retry-After"))
	}

	lw.AddLog(t, witnesstest.Log{Origin: srv.Origin, VKey: srv.VerifierKey})
	feed, _ := writeJSONL(t, "witnessed", 300)
	if code, out, errs := runCmd(t, "", "append", "--server", srv.URL, "--token", srv.AdminToken, feed); code != 0 {
		t.Fatalf("append = %d\n%s%s", code, out, errs)
	}
	size := srv.Ledger().Latest().Size
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := srv.Witnesser().Wait(ctx, size); err != nil {
		t.Fatalf("the acknowledged appends were not witnessed within 10 s: %v; %+v", err, srv.Witnesser().Status())
	}

	code, body, _ := get()
	if code != http.StatusOK {
		t.Fatalf("GET /checkpoint = %d %q", code, body)
	}
	logV, err := checkpoint.NewNoteVerifier(srv.VerifierKey)
	if err != nil {
		t.Fatal(err)
	}
	goodPolicy, err := witness.LoadPolicy(good)
	if err != nil {
		t.Fatal(err)
	}
	v, err := witness.VerifyQuorum([]byte(body), logV, goodPolicy)
	if err != nil || v.Checkpoint.Size != size {
		t.Fatalf("VerifyQuorum(GET /checkpoint) = %+v, %v; want size %d", v, err, size)
	}
	checkCosigned(t, body, lw)

	// Evidence is anchored to the witnessed checkpoint.
	pkg := filepath.Join(dir, "pkg")
	if code, out, errs := runCmd(t, "", "evidence", "export", "--server", srv.URL, "--token", srv.AdminToken, "--out", pkg, "--all"); code != 0 {
		t.Fatalf("evidence export = %d\n%s%s", code, out, errs)
	}
	cp, err := os.ReadFile(filepath.Join(pkg, "checkpoint"))
	if err != nil {
		t.Fatal(err)
	}
	checkCosigned(t, string(cp), lw)

	verifyArgs := []string{"verify", pkg, "--log-key", srv.VerifierKeyPath, "--evidence-key", srv.EvidenceKeyPath}
	tests := []struct {
		name     string
		extra    []string
		wantCode int
		want     string
	}{
		{"without a policy", nil, 0, "checks passed"},
		{"the witness's policy", []string{"--witness-policy", good}, 0, "ok    checkpoint               witness quorum         cosigned by 1 of 1 witnesses (quorum 1): one at "},
		{"a policy naming another witness", []string{"--witness-policy", other}, 1, "FAIL  checkpoint               witness quorum         checkpoint is not cosigned by a quorum"},
		{"a broken policy", []string{"--witness-policy", writeFile("broken.policy", "witness one\nquorum 1\n")}, 2, "broken.policy:1: a witness line has 1 field(s)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := runCmd(t, "", append(verifyArgs, tt.extra...)...)
			if code != tt.wantCode || !strings.Contains(out+errs, tt.want) {
				t.Errorf("verify %v = %d\n%s%s\nwant %d and %q", tt.extra, code, out, errs, tt.wantCode, tt.want)
			}
		})
	}

	// serve refuses a broken policy before it touches the data directory.
	code, _, errs := runCmd(t, "", "serve", "--data", filepath.Join(dir, "data2"), "--listen", "127.0.0.1:0", "--witness-policy", filepath.Join(dir, "broken.policy"))
	if code != 2 || !strings.Contains(errs, "broken.policy:1:") {
		t.Errorf("serve --witness-policy broken = %d %q, want 2 naming the line", code, errs)
	}
	if _, err := os.Stat(filepath.Join(dir, "data2")); !os.IsNotExist(err) {
		t.Errorf("serve with a broken policy created its data directory: %v", err)
	}
}

// checkCosigned checks with the spec-written verifier that a note carries the
// witness's cosignature over its checkpoint text.
func checkCosigned(t *testing.T, n string, lw *witnesstest.Litewitness) {
	t.Helper()
	text, sigs, ok := strings.Cut(n, "\n\n")
	if !ok {
		t.Fatalf("%q is not a signed note", n)
	}
	for _, line := range strings.SplitAfter(sigs, "\n") {
		if strings.HasPrefix(line, "— "+lw.Name+" ") {
			if _, err := witnesstest.Verify(text+"\n", line, lw.Name, lw.Pub); err != nil {
				t.Fatalf("the witness's cosignature does not verify: %v\n%s", err, n)
			}
			return
		}
	}
	t.Fatalf("no cosignature by %s in\n%s", lw.Name, n)
}
