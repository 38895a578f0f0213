package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/grantline/grantline/internal/server"
	"github.com/grantline/grantline/internal/witnesstest"
	"github.com/grantline/grantline/ledger/checkpoint"
	"github.com/grantline/grantline/ledger/witness"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/proto/gen/grantline/v1/grantlinev1connect"
)

// lockedBuffer collects a server's log lines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestWitnessedCheckpointSurvivesRestart: a server witnessed by a real
// litewitness keeps its newest witnessed checkpoint in the data directory;
// restarted while the witness is down, it serves that checkpoint at once
// (GET /checkpoint, GetCheckpoint witnessed, evidence anchor) instead of
// 503. A stored note that was tampered with is refused with a log line, and
// the server witnesses afresh once the witness is back.
func TestWitnessedCheckpointSurvivesRestart(t *testing.T) {
	lw := witnesstest.Start(t, "witness1.test")
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	policyPath := filepath.Join(dir, "w.policy")
	if err := os.WriteFile(policyPath, []byte("witness one "+lw.VKey+" "+lw.URL+"\nquorum 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	start := func() (*server.Server, *lockedBuffer) {
		t.Helper()
		logs := &lockedBuffer{}
		srv, err := server.Start(t.Context(), server.Config{DataDir: data, Listen: "127.0.0.1:0", WitnessPolicy: policyPath,
			Logger:     slog.New(slog.NewTextHandler(logs, nil)),
			Witnessing: witness.Config{MinInterval: 50 * time.Millisecond, RetryBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}})
		if err != nil {
			t.Fatal(err)
		}
		return srv, logs
	}
	stop := func(srv *server.Server) {
		t.Helper()
		if err := srv.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	get := func(srv *server.Server) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/checkpoint", nil)
		req.Header.Set("Authorization", "Bearer "+srv.AdminToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	stateFile := filepath.Join(data, server.WitnessedFile)

	a, _ := start()
	lw.AddLog(t, witnesstest.Log{Origin: a.Origin, VKey: a.VerifierKey})
	feed, _ := writeJSONL(t, "restart", 40)
	if code, out, errs := runCmd(t, "", "append", "--server", a.URL, "--token", a.AdminToken, feed); code != 0 {
		t.Fatalf("append = %d\n%s%s", code, out, errs)
	}
	size := a.Ledger().Latest().Size
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	wd, err := a.Witnesser().Wait(ctx, size)
	if err != nil {
		t.Fatalf("not witnessed: %v; %+v", err, a.Witnesser().Status())
	}
	witnesstest.WaitFor(t, func() bool { b, _ := os.ReadFile(stateFile); return bytes.Equal(b, wd.Note) },
		"the witnessed checkpoint in "+stateFile, func() string { b, _ := os.ReadFile(stateFile); return string(b) })
	stop(a)
	lw.Stop()

	// Restarted with the witness down: the stored checkpoint is served.
	b, logs := start()
	code, body := get(b)
	if code != http.StatusOK || body != string(wd.Note) {
		t.Fatalf("GET /checkpoint after restart = %d %q, want the stored witnessed note\nlog:\n%s", code, body, logs)
	}
	logV, err := checkpoint.NewNoteVerifier(b.VerifierKey)
	if err != nil {
		t.Fatal(err)
	}
	policy, err := witness.LoadPolicy(policyPath)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := witness.VerifyQuorum([]byte(body), logV, policy); err != nil || v.Checkpoint.Size != size {
		t.Fatalf("VerifyQuorum(restored) = %+v, %v", v, err)
	}
	checkCosigned(t, body, lw)
	lc := grantlinev1connect.NewLogServiceClient(h2cClient(), b.URL)
	req := connect.NewRequest(&pb.GetCheckpointRequest{Witnessed: true})
	req.Header().Set("Authorization", "Bearer "+b.AdminToken)
	resp, err := lc.GetCheckpoint(t.Context(), req)
	if err != nil || resp.Msg.GetCheckpoint() != string(wd.Note) || resp.Msg.GetTreeSize() != size {
		t.Fatalf("GetCheckpoint(witnessed) after restart = %v, %v; want the stored note of size %d", resp, err, size)
	}
	otherPolicy := filepath.Join(dir, "other.policy")
	if err := os.WriteFile(otherPolicy, []byte("witness two "+witnesstest.VKey("witness1.test", make([]byte, 32))+" https://other.example\nquorum 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cpCases := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  string
		wantErr  string
	}{
		{"witnessed", []string{"--witnessed"}, 0, string(wd.Note), "not verified"},
		{"under the policy", []string{"--log-key", b.VerifierKeyPath, "--witness-policy", policyPath}, 0, string(wd.Note), "cosigned by 1 of 1 witnesses (quorum 1): one at "},
		{"under another policy", []string{"--log-key", b.VerifierKeyPath, "--witness-policy", otherPolicy}, 1, "", "is not cosigned by a quorum"},
		{"a policy without the log key", []string{"--witness-policy", policyPath}, 2, "", "needs --log-key"},
	}
	for _, tc := range cpCases {
		code, out, errs := runCmd(t, "", append([]string{"checkpoint", "--server", b.URL, "--token", b.AdminToken}, tc.args...)...)
		if code != tc.wantCode || !strings.Contains(out, tc.wantOut) || !strings.Contains(errs, tc.wantErr) {
			t.Errorf("checkpoint %s (%v) = %d\n%s%s\nwant %d, stderr containing %q", tc.name, tc.args, code, out, errs, tc.wantCode, tc.wantErr)
		}
	}
	pkg := filepath.Join(dir, "pkg")
	if code, out, errs := runCmd(t, "", "evidence", "export", "--server", b.URL, "--token", b.AdminToken, "--out", pkg, "--all"); code != 0 {
		t.Fatalf("evidence export after restart = %d\n%s%s", code, out, errs)
	}
	if cp, _ := os.ReadFile(filepath.Join(pkg, "checkpoint")); !bytes.Equal(cp, wd.Note) {
		t.Errorf("package checkpoint after restart = %q, want the stored witnessed note", cp)
	}
	stop(b)

	// A tampered note is refused; the server says so and serves none.
	text, sigs, _ := strings.Cut(string(wd.Note), "\n\n")
	lines := strings.SplitAfter(sigs, "\n")
	cosig := lines[len(lines)-2]            // the last line is empty after the final newline
	i := strings.LastIndex(cosig, " ") + 20 // inside the signature, past the key hash
	flip := "A"
	if cosig[i] == 'A' {
		flip = "B"
	}
	forged := text + "\n\n" + strings.Replace(sigs, cosig, cosig[:i]+flip+cosig[i+1:], 1)
	if err := os.WriteFile(stateFile, []byte(forged), 0o644); err != nil {
		t.Fatal(err)
	}
	c, logs := start()
	defer stop(c)
	if code, body := get(c); code != http.StatusServiceUnavailable {
		t.Errorf("GET /checkpoint with a tampered state file = %d %q, want 503", code, body)
	}
	if l := logs.String(); !strings.Contains(l, "ignoring the stored witnessed checkpoint") || !strings.Contains(l, "invalid witness cosignature") {
		t.Errorf("no log line about the refused state file:\n%s", logs)
	}
	lw.Restart(t)
	if _, err := c.Witnesser().Wait(ctx, size); err != nil {
		t.Fatalf("not witnessed again after the witness returned: %v; %+v", err, c.Witnesser().Status())
	}
	witnesstest.WaitFor(t, func() bool {
		n, _ := os.ReadFile(stateFile)
		_, err := witness.VerifyQuorum(n, logV, policy)
		return err == nil
	}, "a valid witnessed checkpoint stored again", func() string { b, _ := os.ReadFile(stateFile); return string(b) })
}
