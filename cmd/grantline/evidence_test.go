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
