package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"
)

// loadedFake returns a fake holding 500 events appended in batches of 100
// (so checkpoints exist at sizes 0, 100, ..., 500), its URL and its key file.
func loadedFake(t *testing.T) (*fakeLog, string, string) {
	t.Helper()
	f := newFakeLog(t)
	url := f.serve(t)
	file := writeEvents(t, 500)
	if code, _, errs := runCmd(t, "", "append", "--server", url, "--token", "test-token", "--batch", "100", "--window", "1", file); code != 0 {
		t.Fatalf("append: exit %d: %s", code, errs)
	}
	return f, url, f.writeVkey(t)
}

func otherKeyFile(t *testing.T) string {
	t.Helper()
	_, vkey, err := note.GenerateKey(rand.Reader, "fake.grantline.test/log")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "other.vkey")
	if err := os.WriteFile(p, []byte(vkey), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheckpointCommand(t *testing.T) {
	f, url, key := loadedFake(t)
	cl := []string{"--server", url, "--token", "test-token"}
	tests := []struct {
		args     []string
		wantCode int
		wantOut  string // exact stdout, when set
		wantErr  string // substring of stderr
	}{
		{args: nil, wantOut: f.ckpts[500]},
		{args: []string{"--log-key", key}, wantOut: f.ckpts[500], wantErr: "verified: checkpoint of fake.grantline.test/log, size 500"},
		{args: []string{"--log-key", key, "--size", "200"}, wantOut: f.ckpts[200], wantErr: "size 200, root"},
		{args: []string{"--log-key", otherKeyFile(t)}, wantCode: 1, wantErr: "does not verify"},
		{args: []string{"--size", "150"}, wantCode: 1, wantErr: "not_found"},
		{args: []string{"--log-key", filepath.Join(t.TempDir(), "missing")}, wantCode: 2, wantErr: "--log-key"},
	}
	for _, tt := range tests {
		code, out, errs := runCmd(t, "", append(append([]string{"checkpoint"}, cl...), tt.args...)...)
		if code != tt.wantCode || (tt.wantOut != "" && out != tt.wantOut) || !strings.Contains(errs, tt.wantErr) {
			t.Errorf("checkpoint %v = exit %d, stdout %q, stderr %q; want exit %d, stdout %q, stderr containing %q",
				tt.args, code, out, errs, tt.wantCode, tt.wantOut, tt.wantErr)
		}
	}
}

func TestProofCommand(t *testing.T) {
	f, url, key := loadedFake(t)
	cl := []string{"--server", url, "--token", "test-token", "--log-key", key}
	leaf9 := hex.EncodeToString(f.tree.LeafHash(9))
	tests := []struct {
		args     []string
		tamper   bool
		wantCode int
		want     string // substring of stdout (exit 0) or stderr
	}{
		{args: []string{"inclusion", "--index", "7"}, want: "verified: entry 7 (leaf hash " + hex.EncodeToString(f.tree.LeafHash(7)) + ") is in the tree of size 500"},
		{args: []string{"inclusion", "--index", "0", "--size", "100"}, want: "is in the tree of size 100"},
		{args: []string{"inclusion", "--leaf-hash", leaf9}, want: "verified: entry 9 "},
		{args: []string{"inclusion", "--index", "7"}, tamper: true, wantCode: 1, want: "does not verify"},
		{args: []string{"inclusion", "--index", "7", "--leaf-hash", leaf9}, wantCode: 2, want: "exactly one of"},
		{args: []string{"inclusion", "--leaf-hash", "abc"}, wantCode: 2, want: "64 hex digits"},
		{args: []string{"inclusion", "--index", "700"}, wantCode: 1, want: "out_of_range"},
		{args: []string{"consistency", "--from", "100", "--to", "300"}, want: "verified: the tree of size 100 (root " + hex.EncodeToString(f.tree.HashAt(100)) + ") is a prefix of the tree of size 300"},
		{args: []string{"consistency", "--from", "0"}, want: "is a prefix of the tree of size 500"},
		{args: []string{"consistency", "--from", "200", "--to", "400"}, tamper: true, wantCode: 1, want: "does not verify"},
		{args: []string{"bogus"}, wantCode: 2, want: "want 'proof inclusion'"},
	}
	for _, tt := range tests {
		f.mu.Lock()
		f.tamperProofs = tt.tamper
		f.mu.Unlock()
		args := append([]string{"proof", tt.args[0]}, cl...)
		args = append(args, tt.args[1:]...)
		code, out, errs := runCmd(t, "", args...)
		got := out
		if tt.wantCode != 0 {
			got = errs
		}
		if code != tt.wantCode || !strings.Contains(got, tt.want) {
			t.Errorf("proof %v (tampered %v) = exit %d, stdout %q, stderr %q; want exit %d with %q",
				tt.args, tt.tamper, code, out, errs, tt.wantCode, tt.want)
		}
	}
	// Without a key the proof is refused rather than trusted.
	if code, _, errs := runCmd(t, "", "proof", "inclusion", "--server", url, "--token", "test-token", "--index", "1"); code != 2 || !strings.Contains(errs, "--log-key is required") {
		t.Errorf("proof without --log-key = exit %d, %q; want exit 2 asking for --log-key", code, errs)
	}
}

func TestEventsCommand(t *testing.T) {
	_, url, _ := loadedFake(t)
	// user-3 has events 3, 13, ..., 493: 50 of them, over 8 pages of 7.
	code, out, errs := runCmd(t, "", "events", "user-3", "--server", url, "--token", "test-token", "--json", "--page-size", "7")
	if code != 0 {
		t.Fatalf("events --json: exit %d: %s", code, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 50 {
		t.Fatalf("events --json printed %d lines, want 50", len(lines))
	}
	for i, l := range lines {
		var e struct {
			Index string `json:"index"`
			Event struct {
				ID      string              `json:"id"`
				Subject struct{ ID string } `json:"subject"`
			} `json:"event"`
		}
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("line %d %q: %v", i+1, l, err)
		}
		wantIdx := 3 + 10*i
		if e.Index != fmt.Sprint(wantIdx) || e.Event.ID != fmt.Sprintf("ev-%06d", wantIdx) || e.Event.Subject.ID != "user-3" {
			t.Errorf("line %d = index %s id %s subject %s; want index %d, id ev-%06d, subject user-3", i+1, e.Index, e.Event.ID, e.Event.Subject.ID, wantIdx, wantIdx)
		}
	}

	code, out, errs = runCmd(t, "", "events", "--server", url, "--token", "test-token", "user-3")
	if code != 0 {
		t.Fatalf("events: exit %d: %s", code, errs)
	}
	table := strings.Split(strings.TrimSpace(out), "\n")
	if len(table) != 51 || !strings.HasPrefix(table[0], "INDEX") || !strings.Contains(table[1], "ev-000003") || !strings.Contains(table[1], "request=req-3") {
		t.Errorf("events table:\n%s\nwant a header and 50 rows, the first for ev-000003 with request=req-3", out)
	}
	if code, _, errs := runCmd(t, "", "events", "--server", url, "--token", "test-token"); code != 2 || !strings.Contains(errs, "SUBJECT") {
		t.Errorf("events without subject = exit %d, %q; want exit 2 naming SUBJECT", code, errs)
	}
}
