package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/grantline/grantline/ingest/client"
	"github.com/grantline/grantline/internal/synth"
	"github.com/grantline/grantline/verify"
)

// TestDemo runs the whole demo in-process on a small organisation and then
// checks what it left on disk, independently of the demo's own summary:
// the package's findings are exactly the generator's plants, and the
// verify command it printed passes.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("the demo starts a server; skipped in -short")
	}
	for _, tc := range []struct {
		name string
		args []string
		cfg  synth.Config
	}{
		{"failures", []string{"--seed", "3", "--identities", "90"}, synth.Config{Seed: 3, Identities: 90, FailureRate: synth.DefaultFailureRate}},
		{"clean", []string{"--seed", "4", "--identities", "60", "--months", "4", "--failure-rate", "0"}, synth.Config{Seed: 4, Identities: 60, Months: 4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "demo")
			var stdout, stderr bytes.Buffer
			env := &cmdEnv{stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr, getenv: func(string) string { return "" }, argv0: "bin/grantline"}
			code := runMain(t.Context(), env, append([]string{"demo", "--out", dir}, tc.args...))
			out, errOut := stdout.String(), stderr.String()
			if code != 0 {
				t.Fatalf("grantline demo exited %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
			}
			org, err := synth.Generate(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			raw, err := os.ReadFile(filepath.Join(dir, "evidence", "findings.json"))
			if err != nil {
				t.Fatal(err)
			}
			doc, err := verify.ParseFindings(raw)
			if err != nil {
				t.Fatal(err)
			}
			var got, want []string
			for _, f := range doc.Findings {
				got = append(got, f.Rule+" "+f.Subject+" "+f.Entries[0].EventID)
			}
			for _, p := range org.Planted {
				want = append(want, p.Rule+" "+p.Subject+" "+p.EventID)
			}
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("findings.json findings:\n%s\nwant the plants:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if !doc.AsOf.Equal(org.AsOf) {
				t.Errorf("evaluated as of %s, want the organisation's %s", doc.AsOf, org.AsOf)
			}
			if tc.name == "failures" {
				rules := map[string]bool{}
				for _, p := range org.Planted {
					rules[p.Rule] = true
				}
				if len(rules) != len(synth.Rules) {
					t.Errorf("%d rules planted, want all %d", len(rules), len(synth.Rules))
				}
				if !strings.Contains(out, "every one of the") {
					t.Errorf("summary does not confirm the plants were found:\n%s", out)
				}
			}
			if _, err := os.Stat(filepath.Join(dir, "evidence", "report.html")); err != nil {
				t.Errorf("no report: %v", err)
			}
			// The summary's re-check command names the binary as it was
			// invoked (make demo runs bin/grantline, not on PATH) and must
			// work as printed.
			m := regexp.MustCompile(`(?m)^re-check it:\s+bin/grantline (verify .*)$`).FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("no verify command in the summary:\n%s", out)
			}
			args := strings.Fields(m[1]) // temporary paths hold no spaces
			if code, vout, verr := runCmd(t, "", args...); code != 0 {
				t.Errorf("grantline %s exited %d\n%s%s", m[1], code, vout, verr)
			}
		})
	}
}

func TestDemoGenerateOnly(t *testing.T) {
	dir := t.TempDir()
	run := func(name string, args ...string) []byte {
		t.Helper()
		file := filepath.Join(dir, name)
		code, out, errOut := runCmd(t, "", append([]string{"demo", "--generate-only", "--out", file}, args...)...)
		if code != 0 {
			t.Fatalf("demo --generate-only %v exited %d: %s%s", args, code, out, errOut)
		}
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	a, b := run("a.jsonl", "--seed", "5"), run("b.jsonl", "--seed", "5")
	if !bytes.Equal(a, b) {
		t.Fatal("the same seed wrote different feeds")
	}
	if c := run("c.jsonl", "--seed", "6"); bytes.Equal(a, c) {
		t.Fatal("seeds 5 and 6 wrote the same feed")
	}
	org, err := synth.Generate(synth.Config{Seed: 5, FailureRate: synth.DefaultFailureRate})
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	if err := synth.WriteJSONL(&want, org.Events); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, want.Bytes()) {
		t.Error("--generate-only wrote something other than the default organisation for its seed")
	}
	// The feed is what `grantline append` reads: every line decodes and passes
	// validation (client.DecodeEventLine does both).
	for i, line := range bytes.Split(bytes.TrimSpace(a), []byte("\n")) {
		_, err := client.DecodeEventLine(line)
		if err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
	}
}

func TestDemoErrors(t *testing.T) {
	full := t.TempDir()
	os.MkdirAll(filepath.Join(full, "data", "ledger"), 0o755)
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--identities", "3"}, 2, "identities 3"},
		{[]string{"--months", "20"}, 2, "months 20"},
		{[]string{"--failure-rate", "2"}, 2, "failure rate 2"},
		{[]string{"--start", "March"}, 2, "--start"},
		{[]string{"--generate-only"}, 2, "--out"},
		{[]string{"extra"}, 2, "unexpected argument"},
		{[]string{"--out", full}, 1, "not empty"},
	} {
		code, _, errOut := runCmd(t, "", append([]string{"demo"}, tc.args...)...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("grantline demo %v = exit %d, %q; want exit %d mentioning %q", tc.args, code, errOut, tc.code, tc.want)
		}
	}
}

// TestDemoRemovesItsTemporaryFolder: without --out the demo works in a
// temporary folder and removes it at the end, saying so, instead of leaving
// about 10 MB behind on every run.
func TestDemoRemovesItsTemporaryFolder(t *testing.T) {
	if testing.Short() {
		t.Skip("the demo starts a server; skipped in -short")
	}
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	code, out, errOut := runCmd(t, "", "demo", "--seed", "4", "--identities", "60", "--months", "4", "--quiet")
	if code != 0 {
		t.Fatalf("grantline demo exited %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("the demo left %d entries in TMPDIR (%s...)", len(ents), ents[0].Name())
	}
	if !strings.Contains(out, "is removed now; run with --out DIR to keep") {
		t.Errorf("the summary does not say the folder is removed:\n%s", out)
	}
	if strings.Contains(out, "re-check it:") {
		t.Errorf("the summary prints a command for files it removed:\n%s", out)
	}
}

// TestDemoSummaryNoFindings: no "0 findings ();" and no table header when
// nothing was found.
func TestDemoSummaryNoFindings(t *testing.T) {
	var buf bytes.Buffer
	printDemoSummary(&buf, &demoSummary{org: &synth.Org{}, verified: &verify.Report{}, dir: t.TempDir()})
	out := buf.String()
	if !strings.Contains(out, "\nno findings\n") || strings.Contains(out, "()") || strings.Contains(out, "SEVERITY") {
		t.Errorf("summary without findings:\n%s\nwant 'no findings', no '()' and no table header", out)
	}
}
