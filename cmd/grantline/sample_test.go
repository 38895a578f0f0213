package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/grantline/grantline/verify/format"
)

// TestSampleCommand draws a sample of the committed sample package, checks
// it with verify --sample, and refuses bad flags and an edited sample.
func TestSampleCommand(t *testing.T) {
	pkg := filepath.Join(evidenceTestdata, "sample")
	out := filepath.Join(t.TempDir(), "sample.json")
	code, stdout, stderr := runCmd(t, "", "sample", pkg, "--seed", "auditor 42", "--size", "3", "--out", out)
	if code != 0 || !strings.Contains(stdout, "CONTROL") || !strings.Contains(stdout, "drew ") {
		t.Fatalf("sample = exit %d, %q, %q", code, stdout, stderr)
	}
	if code, stdout, _ := runCmd(t, "", sampleArgs(pkg, "--sample", out)...); code != 0 || !strings.Contains(stdout, "sample reproduced") {
		t.Fatalf("verify --sample = exit %d, %q; want the sample reproduced", code, stdout)
	}
	// Edited: a row the seed did not draw.
	b, _ := os.ReadFile(out)
	var s format.Sample
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	s.Seed = "operator's choice"
	b, _ = json.Marshal(s)
	edited := filepath.Join(t.TempDir(), "edited.json")
	os.WriteFile(edited, b, 0o644)
	if code, stdout, _ := runCmd(t, "", sampleArgs(pkg, "--sample", edited)...); code != 1 || !strings.Contains(stdout, "FAIL  population.jsonl") {
		t.Fatalf("verify --sample edited = exit %d, %q; want exit 1 and a FAIL", code, stdout)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"sample", pkg, "--size", "3"}, "--seed is required"},
		{[]string{"sample", pkg, "--seed", "x"}, "--size 0"},
		{[]string{"sample", pkg, "--seed", "x", "--size", "3", "--framework", "soc2-2017"}, "export the package with --framework soc2-2017"},
		{[]string{"sample", pkg, "--seed", "x", "--size", "3", "--framework", "nope"}, "unknown control framework"},
		{sampleArgs(pkg, "--sample", filepath.Join(pkg, "findings.json")), "--sample"},
	} {
		code, _, stderr := runCmd(t, "", tc.args...)
		if code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v = exit %d, %q; want exit 2 and %q", tc.args, code, stderr, tc.want)
		}
	}
}

// TestSampleTarGz draws the same sample from the package as a .tar.gz as
// from its folder, checks it with verify --sample on the .tar.gz, and
// refuses an archive verify would refuse (naming the member) or a file
// that is no archive.
func TestSampleTarGz(t *testing.T) {
	pkg := filepath.Join(evidenceTestdata, "sample")
	tmp := t.TempDir()
	tgz := filepath.Join(tmp, "evidence.tar.gz")
	if err := os.WriteFile(tgz, tarGzOf(t, nil), 0o600); err != nil {
		t.Fatal(err)
	}
	draw := func(p, out string) (int, string, string) {
		return runCmd(t, "", "sample", p, "--seed", "auditor 7", "--size", "4", "--out", out)
	}
	fromDir, fromTgz := filepath.Join(tmp, "dir.json"), filepath.Join(tmp, "tgz.json")
	if code, stdout, stderr := draw(pkg, fromDir); code != 0 {
		t.Fatalf("sample of the folder = exit %d, %q, %q", code, stdout, stderr)
	}
	code, stdout, stderr := draw(tgz, fromTgz)
	if code != 0 || !strings.Contains(stdout, "verify "+tgz) {
		t.Fatalf("sample of the .tar.gz = exit %d, %q, %q; want the sample and a verify command naming the .tar.gz", code, stdout, stderr)
	}
	a, _ := os.ReadFile(fromDir)
	b, _ := os.ReadFile(fromTgz)
	if len(a) == 0 || string(a) != string(b) {
		t.Fatalf("the .tar.gz draws\n%s\nthe folder draws\n%s", b, a)
	}
	if code, stdout, _ := runCmd(t, "", sampleArgs(tgz, "--sample", fromTgz)...); code != 0 || !strings.Contains(stdout, "sample reproduced") {
		t.Fatalf("verify --sample on the .tar.gz = exit %d, %q; want the sample reproduced", code, stdout)
	}
	hostile := filepath.Join(tmp, "hostile.tar.gz")
	if err := os.WriteFile(hostile, tarGzOf(t, map[string][]byte{"notes.txt": []byte("x")}), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ pkg, want string }{
		{hostile, "is not a file of an evidence package"},
		{filepath.Join(pkg, "checkpoint"), "not a .tar.gz file"},
	} {
		code, _, stderr := draw(tc.pkg, filepath.Join(tmp, "x.json"))
		if code != 1 || !strings.Contains(stderr, tc.want) {
			t.Errorf("sample %s = exit %d, %q; want exit 1 and %q", tc.pkg, code, stderr, tc.want)
		}
	}
	if _, err := os.Stat(filepath.Join(tmp, "x.json")); err == nil {
		t.Error("a refused package left a sample file")
	}
}
