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
		{[]string{"sample", filepath.Join(pkg, "checkpoint"), "--seed", "x", "--size", "3"}, "is not a folder"},
		{sampleArgs(pkg, "--sample", filepath.Join(pkg, "findings.json")), "--sample"},
	} {
		code, _, stderr := runCmd(t, "", tc.args...)
		if code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v = exit %d, %q; want exit 2 and %q", tc.args, code, stderr, tc.want)
		}
	}
}
