package main

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"connectrpc.com/connect"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/proto/gen/grantline/v1/grantlinev1connect"
	"github.com/grantline/grantline/verify"
	"github.com/grantline/grantline/verify/format"
)

// fakeEvidence streams the committed sample package over ExportEvidence,
// in small chunks through verify.ChunkSink, with named faults.
type fakeEvidence struct {
	grantlinev1connect.UnimplementedEvidenceServiceHandler
	token string
	got   *pb.ExportEvidenceRequest
	// faults
	truncate  bool   // stop in the middle of entries.jsonl
	badName   string // send this file name first
	skipFile  string // leave this file out
	repeatOne bool   // send findings.json twice
}

func (f *fakeEvidence) ExportEvidence(ctx context.Context, req *connect.Request[pb.ExportEvidenceRequest], stream *connect.ServerStream[pb.ExportEvidenceResponse]) error {
	if req.Header().Get("Authorization") != "Bearer "+f.token {
		return connect.NewError(connect.CodeUnauthenticated, errors.New("bad token"))
	}
	f.got = req.Msg
	send := func(path string, data []byte, eof bool) error {
		return stream.Send(&pb.ExportEvidenceResponse{Path: path, Data: data, Eof: eof})
	}
	if f.badName != "" {
		return send(f.badName, []byte("x"), true)
	}
	sink := verify.ChunkSink{Send: send, Size: 4096}
	src := filepath.Join(evidenceTestdata, "sample")
	names := append([]string{}, format.RequiredFiles...)
	names = append(names, format.FileConsistency)
	if f.repeatOne {
		names = append(names, format.FileFindings)
	}
	for _, n := range names {
		if n == f.skipFile {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, n))
		if err != nil {
			return err
		}
		if f.truncate && n == format.FileEntries {
			return send(n, b[:len(b)/2], false)
		}
		w, _ := sink.Create(n)
		if _, err := w.Write(b); err != nil {
			return err
		}
		if err := w.Close(); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeEvidence) serve(t *testing.T) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(grantlinev1connect.NewEvidenceServiceHandler(f))
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestEvidenceExportCommand(t *testing.T) {
	f := &fakeEvidence{token: "tok"}
	url := f.serve(t)
	out := filepath.Join(t.TempDir(), "pkg")
	code, stdout, stderr := runCmd(t, "", "evidence", "export", "--server", url, "--token", "tok", "--out", out, "--as-of", "2026-07-02T00:00:00Z", "--size", "700", "--all")
	if code != 0 {
		t.Fatalf("evidence export: exit %d\n%s%s", code, stdout, stderr)
	}
	if f.got.GetTreeSize() != 700 || !f.got.GetAll() || f.got.GetAsOf().AsTime().Format("2006-01-02") != "2026-07-02" {
		t.Errorf("request = %v, want tree_size 700, all, as_of 2026-07-02", f.got)
	}
	if !strings.Contains(stdout, "wrote evidence package") || !strings.Contains(stdout, "grantline verify") {
		t.Errorf("stdout lacks the summary and the verify hint:\n%s", stdout)
	}
	// The written package verifies, through the verify command.
	if code, o, e := runCmd(t, "", sampleArgs(out)...); code != 0 {
		t.Fatalf("verify of the exported folder: exit %d\n%s%s", code, o, e)
	}
	// An existing package is not overwritten.
	if code, _, e := runCmd(t, "", "evidence", "export", "--server", url, "--token", "tok", "--out", out); code != 1 || !strings.Contains(e, "already holds an evidence package") {
		t.Errorf("export over an existing package: exit %d, stderr %q", code, e)
	}

	tgz := filepath.Join(t.TempDir(), "pkg")
	if code, o, e := runCmd(t, "", "evidence", "export", "--server", url, "--token", "tok", "--out", tgz, "--tar"); code != 0 {
		t.Fatalf("evidence export --tar: exit %d\n%s%s", code, o, e)
	}
	if code, o, e := runCmd(t, "", sampleArgs(tgz+".tar.gz")...); code != 0 {
		t.Fatalf("verify of the exported .tar.gz: exit %d\n%s%s", code, o, e)
	}
}

func TestEvidenceExportFailures(t *testing.T) {
	for _, tc := range []struct {
		name    string
		fake    *fakeEvidence
		args    []string
		code    int
		wantErr string
	}{
		{"truncated stream", &fakeEvidence{truncate: true}, nil, 1, "ended in the middle of entries.jsonl"},
		{"bad file name", &fakeEvidence{badName: "../../etc/passwd"}, nil, 1, "not a file of an evidence package"},
		{"missing file", &fakeEvidence{skipFile: format.FileReport}, nil, 1, "sent no report.html"},
		{"repeated file", &fakeEvidence{repeatOne: true}, nil, 1, "findings.json twice"},
		{"wrong token", &fakeEvidence{}, []string{"--token", "nope"}, 1, "nauthenticated"},
		{"bad as-of", &fakeEvidence{}, []string{"--as-of", "yesterday"}, 2, "RFC 3339"},
		{"no out", &fakeEvidence{}, []string{"--out", ""}, 2, "--out is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.fake.token = "tok"
			url := tc.fake.serve(t)
			out := filepath.Join(t.TempDir(), "pkg")
			args := append([]string{"evidence", "export", "--server", url, "--token", "tok", "--out", out}, tc.args...)
			code, stdout, stderr := runCmd(t, "", args...)
			if code != tc.code || !strings.Contains(stderr, tc.wantErr) {
				t.Fatalf("exit %d, stderr %q; want exit %d and %q\n%s", code, stderr, tc.code, tc.wantErr, stdout)
			}
			if tc.code == 1 {
				// Nothing half-written is left looking like a package.
				if ents, _ := os.ReadDir(out); len(ents) > 0 {
					t.Errorf("files left in %s: %v", out, ents)
				}
			}
		})
	}
}

// TestEvidenceExportFolders: a package is written 0600 into a new 0700
// folder (or a 0600 .tar.gz), never into a folder holding other files, and
// the printed verify command, --since included, works as printed.
func TestEvidenceExportFolders(t *testing.T) {
	f := &fakeEvidence{token: "tok"}
	url := f.serve(t)
	export := func(args ...string) (int, string, string) {
		t.Helper()
		return runCmd(t, "", append([]string{"evidence", "export", "--server", url, "--token", "tok"}, args...)...)
	}

	t.Run("non-empty folder", func(t *testing.T) {
		out := t.TempDir()
		if err := os.WriteFile(filepath.Join(out, "notes.txt"), []byte("mine"), 0o644); err != nil {
			t.Fatal(err)
		}
		code, _, stderr := export("--out", out)
		if code != 1 || !strings.Contains(stderr, "is not empty (it holds notes.txt)") || !strings.Contains(stderr, "new or empty folder") {
			t.Fatalf("export into a non-empty folder: exit %d, stderr %q; want exit 1 saying it is not empty", code, stderr)
		}
		ents, _ := os.ReadDir(out)
		if len(ents) != 1 {
			t.Errorf("the folder now holds %d entries, want only notes.txt", len(ents))
		}
	})

	t.Run("modes and the since hint", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "pkg")
		since := filepath.Join(evidenceTestdata, "checkpoint-100")
		code, stdout, stderr := export("--out", out, "--since", since)
		if code != 0 {
			t.Fatalf("export: exit %d\n%s%s", code, stdout, stderr)
		}
		if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("package folder mode %v, %v; want 0700", fi.Mode(), err)
		}
		ents, _ := os.ReadDir(out)
		for _, e := range ents {
			if fi, err := e.Info(); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("%s: mode %v, %v; want 0600", e.Name(), fi.Mode(), err)
			}
		}
		var hint string
		for _, line := range strings.Split(stdout, "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "grantline verify ") {
				hint = strings.TrimSpace(line)
			}
		}
		if !strings.Contains(hint, "--since "+since) {
			t.Fatalf("verify hint %q lacks --since %s:\n%s", hint, since, stdout)
		}
		args := strings.Fields(strings.TrimPrefix(hint, "grantline "))
		for i, a := range args {
			switch a {
			case "DATA/keys/log.vkey":
				args[i] = filepath.Join(evidenceTestdata, "log.vkey")
			case "DATA/keys/evidence.pub":
				args[i] = filepath.Join(evidenceTestdata, "evidence.pub")
			}
		}
		if code, o, e := runCmd(t, "", args...); code != 0 || !strings.Contains(o, "consistency proof") {
			t.Errorf("the printed verify command (%v): exit %d\n%s%s", args, code, o, e)
		}
	})

	t.Run("tar mode", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "pkg.tar.gz")
		if code, o, e := export("--out", out, "--tar"); code != 0 {
			t.Fatalf("export --tar: exit %d\n%s%s", code, o, e)
		}
		if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, %v; want 0600", out, fi.Mode(), err)
		}
	})
}
