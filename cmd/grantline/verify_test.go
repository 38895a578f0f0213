package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/grantline/grantline/verify"
)

const evidenceTestdata = "../../testdata/evidence"

func sampleArgs(pkg string, extra ...string) []string {
	return append([]string{"verify", pkg,
		"--log-key", filepath.Join(evidenceTestdata, "log.vkey"),
		"--evidence-key", filepath.Join(evidenceTestdata, "evidence.pub")}, extra...)
}

// copySample copies the committed sample package to a temporary folder.
func copySample(t *testing.T) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "pkg")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(evidenceTestdata, "sample")
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// tarSample writes the sample package as a .tar.gz.
func tarSample(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pkg.tar.gz")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sink := verify.NewTarGzSink(f, time.Unix(0, 0))
	src := filepath.Join(evidenceTestdata, "sample")
	ents, _ := os.ReadDir(src)
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(src, e.Name()))
		w, err := sink.Create(e.Name())
		if err != nil {
			t.Fatal(err)
		}
		w.Write(b)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestVerifyCommand(t *testing.T) {
	for _, tc := range []struct {
		name     string
		args     func(t *testing.T) []string
		wantCode int
		wantOut  []string // in stdout
		wantErr  []string // in stderr
	}{
		{"sample folder", func(t *testing.T) []string { return sampleArgs(filepath.Join(evidenceTestdata, "sample")) }, 0,
			[]string{"ok    statement.dsse.json", "DSSE signature", "inclusion proofs", "findings reproduced", "verified "}, nil},
		{"sample tar.gz", func(t *testing.T) []string { return sampleArgs(tarSample(t)) }, 0, []string{"verified "}, nil},
		{"since an older checkpoint", func(t *testing.T) []string {
			return sampleArgs(filepath.Join(evidenceTestdata, "sample"), "--since", filepath.Join(evidenceTestdata, "checkpoint-100"))
		}, 0, []string{"consistency proof", "verified "}, nil},
		{"quiet", func(t *testing.T) []string { return sampleArgs(filepath.Join(evidenceTestdata, "sample"), "--quiet") }, 0, []string{"verified "}, nil},
		{"kind of a selective package", func(t *testing.T) []string { return sampleArgs(filepath.Join(evidenceTestdata, "sample"), "--quiet") }, 0,
			[]string{"package: selected entries without a completeness claim\n"}, nil},
		{"require-complete on a selective package", func(t *testing.T) []string {
			return sampleArgs(filepath.Join(evidenceTestdata, "sample"), "--require-complete")
		}, 1, []string{"FAIL  findings.json", "completeness required", "selected entries without a completeness claim", "--all"},
			[]string{"completeness required failed"}},
		{"altered byte", func(t *testing.T) []string {
			dir := copySample(t)
			p := filepath.Join(dir, "entries.jsonl")
			b, _ := os.ReadFile(p)
			b[100] ^= 1
			os.WriteFile(p, b, 0o644)
			return sampleArgs(dir)
		}, 1, []string{"FAIL  entries.jsonl", "sha256 digest"}, []string{"entries.jsonl: sha256 digest failed"}},
		{"file removed", func(t *testing.T) []string {
			dir := copySample(t)
			os.Remove(filepath.Join(dir, "findings.csv"))
			return sampleArgs(dir)
		}, 1, []string{"FAIL  findings.csv"}, []string{"findings.csv: required file present failed"}},
		{"wrong evidence key", func(t *testing.T) []string {
			return []string{"verify", filepath.Join(evidenceTestdata, "sample"), "--log-key", filepath.Join(evidenceTestdata, "log.vkey"), "--evidence-key", writeOtherPub(t)}
		}, 1, []string{"FAIL  statement.dsse.json"}, []string{"DSSE signature failed"}},
		{"missing keys", func(t *testing.T) []string { return []string{"verify", filepath.Join(evidenceTestdata, "sample")} }, 2, nil, []string{"--log-key is required"}},
		{"no package", func(t *testing.T) []string { return []string{"verify", "--log-key", "x", "--evidence-key", "y"} }, 2, nil, []string{"want one package"}},
		{"package missing", func(t *testing.T) []string { return sampleArgs(filepath.Join(t.TempDir(), "nope")) }, 1, nil, []string{"no such file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCmd(t, "", tc.args(t)...)
			if code != tc.wantCode {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.wantCode, out, errOut)
			}
			for _, w := range tc.wantOut {
				if !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errOut)
				}
			}
		})
	}
}

func writeOtherPub(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "other.pub")
	// An Ed25519 public key that is not the sample's.
	pem := "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n"
	if err := os.WriteFile(p, []byte(pem), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
