package rules

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/txtar"
	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

var update = flag.Bool("update", false, "rewrite the want sections of testdata/rules cases from the current output (review the diff!)")

// memSource is an in-memory ChainSource. It enforces the contract: unknown
// subjects are empty, and it records which subjects were read.
type memSource struct {
	chains map[string][]Entry
	fail   string // subject whose read fails
}

func (m *memSource) Chain(ctx context.Context, subject string) ([]Entry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if subject == m.fail && subject != "" {
		return nil, fmt.Errorf("injected read failure for %s", subject)
	}
	return m.chains[subject], nil
}

func (m *memSource) subjects() []string {
	var ss []string
	for s := range m.chains {
		ss = append(ss, s)
	}
	sort.Strings(ss)
	return ss
}

// parseChain reads protojson lines; an entry's index is its line's position
// among the event lines (blank lines and # comments skipped).
func parseChain(t testing.TB, data []byte) *memSource {
	t.Helper()
	m := &memSource{chains: map[string][]Entry{}}
	sc := bufio.NewScanner(bytes.NewReader(data))
	line, index := 0, uint64(0)
	for sc.Scan() {
		line++
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		ev := &pb.Event{}
		if err := protojson.Unmarshal([]byte(s), ev); err != nil {
			t.Fatalf("chain.jsonl line %d: %v", line, err)
		}
		sub := ev.GetSubject().GetId()
		m.chains[sub] = append(m.chains[sub], Entry{Index: index, Event: ev})
		index++
	}
	return m
}

// formatFindings renders findings one per line, the golden form:
// rule subject entries=I[,J...] exposure=S
func formatFindings(fs []Finding) string {
	var b strings.Builder
	for _, f := range fs {
		idx := make([]string, len(f.Entries))
		for i, e := range f.Entries {
			idx[i] = fmt.Sprint(e.Index)
		}
		fmt.Fprintf(&b, "%s %s entries=%s exposure=%d\n", f.Rule, f.Subject, strings.Join(idx, ","), f.ExposureSeconds)
	}
	return b.String()
}

func builtinByID(t testing.TB) map[string]*Rule {
	t.Helper()
	rs, err := Builtin()
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]*Rule{}
	for _, r := range rs {
		m[r.ID] = r
	}
	return m
}

// TestCatalogCases runs testdata/rules/<rule-id>/*.txtar: each archive has
// "now" (RFC 3339), "chain.jsonl" (protojson events of any subjects; the
// entry index is the event's position), an optional "params.yaml", and
// "want": the expected findings of that rule, written from docs/rules.md.
func TestCatalogCases(t *testing.T) {
	builtin := builtinByID(t)
	dirs, err := filepath.Glob("../testdata/rules/*")
	if err != nil {
		t.Fatal(err)
	}
	covered := map[string]bool{}
	for _, dir := range dirs {
		id := filepath.Base(dir)
		if id == "bad" {
			continue
		}
		r, ok := builtin[id]
		if !ok {
			t.Errorf("%s: no built-in rule %q", dir, id)
			continue
		}
		files, _ := filepath.Glob(filepath.Join(dir, "*.txtar"))
		var yields, misses int
		for _, file := range files {
			t.Run(id+"/"+strings.TrimSuffix(filepath.Base(file), ".txtar"), func(t *testing.T) {
				ar, err := txtar.ParseFile(file)
				if err != nil {
					t.Fatal(err)
				}
				sec := map[string][]byte{}
				for _, f := range ar.Files {
					sec[f.Name] = f.Data
				}
				now, err := time.Parse(time.RFC3339, strings.TrimSpace(string(sec["now"])))
				if err != nil {
					t.Fatalf("now: %v", err)
				}
				var params Params
				if p, ok := sec["params.yaml"]; ok {
					if params, err = ParseParams("params.yaml", p); err != nil {
						t.Fatal(err)
					}
				}
				set, err := NewSet([]*Rule{r}, params)
				if err != nil {
					t.Fatal(err)
				}
				src := parseChain(t, sec["chain.jsonl"])
				res, err := set.Evaluate(t.Context(), src.subjects(), src, now)
				if err != nil {
					t.Fatal(err)
				}
				if len(res.Errors) > 0 {
					t.Fatalf("rule errors: %v", res.Errors)
				}
				got := formatFindings(res.Findings)
				want := string(sec["want"])
				if got != want {
					if *update {
						for i, f := range ar.Files {
							if f.Name == "want" {
								ar.Files[i].Data = []byte(got)
							}
						}
						if err := os.WriteFile(file, txtar.Format(ar), 0o644); err != nil {
							t.Fatal(err)
						}
						return
					}
					t.Errorf("%s at %s:\ngot findings:\n%swant:\n%s", id, now.Format(time.RFC3339), got, want)
				}
				if want == "" {
					misses++
				} else {
					yields++
				}
			})
		}
		covered[id] = true
		if yields == 0 || misses == 0 {
			t.Errorf("%s: want at least one case that yields a finding (%d) and one near miss (%d)", id, yields, misses)
		}
	}
	for id := range builtin {
		if !covered[id] {
			t.Errorf("rule %s has no testdata/rules/%s cases", id, id)
		}
	}
}

// TestBadRules loads testdata/rules/bad/*.yaml; each file's expected error
// is in the .err file beside it, as "file:line:col: message" lines.
func TestBadRules(t *testing.T) {
	files, _ := filepath.Glob("../testdata/rules/bad/*.yaml")
	if len(files) == 0 {
		t.Fatal("no bad rule cases")
	}
	for _, file := range files {
		name := filepath.Base(file)
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			wantb, err := os.ReadFile(strings.TrimSuffix(file, ".yaml") + ".err")
			if err != nil {
				t.Fatal(err)
			}
			want := strings.TrimSpace(string(wantb))
			_, err = ParseRule(name, data)
			if err == nil {
				t.Fatalf("ParseRule(%s) = nil error, want %q", name, want)
			}
			if got := err.Error(); !strings.HasPrefix(got, want) {
				t.Errorf("ParseRule(%s) error:\n got %q\nwant prefix %q", name, got, want)
			}
		})
	}
}

func TestBuiltinCatalog(t *testing.T) {
	rs, err := Builtin()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"approval-without-revocation": "high", "standing-privilege": "high", "grant-overstayed-expiry": "high",
		"jit-outlived-session": "high", "activity-after-offboarding": "critical", "leaver-access-retained": "critical",
		"session-without-approval": "high", "approval-used-after-expiry": "high", "self-approval": "high",
		"sod-conflict": "high", "breakglass-unreviewed": "high", "credential-rotation-overdue": "medium",
		"checkout-not-rotated": "medium", "privileged-session-without-mfa": "medium", "review-overdue": "medium",
		"review-revocation-not-enforced": "high", "dormant-privilege": "low", "mover-access-retained": "medium",
		"orphaned-nhi": "high",
		// Round 2.
		"backdated-closure": "high", "foreign-closure": "high",
		"grant-without-approval": "high", "not-independent": "high", "account-inactive": "medium",
		"leaver-account-not-disabled": "critical", "shared-credential-not-rotated": "high",
		"nhi-interactive-session": "high", "breakglass-access-retained": "high",
		"breakglass-credential-not-rotated": "high", "third-party-outside-window": "high",
		"privileged-session-mfa-unrecorded": "low", "nhi-without-owner": "medium",
		"nhi-owner-moved": "medium", "secret-without-expiry": "medium",
		"access-review-missing": "medium", "review-campaign-incomplete": "medium",
		"review-account-revocation-not-enforced": "high", "secret-old-and-unused": "medium",
	}
	if len(rs) != len(want) {
		t.Fatalf("Builtin() = %d rules, want %d", len(rs), len(want))
	}
	for _, r := range rs {
		if sev, ok := want[r.ID]; !ok || sev != r.Severity {
			t.Errorf("rule %s severity %q, want %q (known: %v)", r.ID, r.Severity, sev, ok)
		}
		if !slices.Contains(r.Controls, "PR.AA-05") || !slices.Contains(r.Controls, "PR.AC-4") {
			t.Errorf("rule %s controls %v lack PR.AA-05 and PR.AC-4", r.ID, r.Controls)
		}
	}
	set, err := NewSet(rs, Params{})
	if err != nil {
		t.Fatal(err)
	}
	infos := set.Rules()
	if len(infos) != len(want) || infos[0].SHA256 == "" || infos[0].Text == "" {
		t.Errorf("Rules() = %d infos, first %+v", len(infos), infos[0])
	}
}

// TestDocsExamples compiles every example rule of docs/rules.md with the
// built-in catalog.
func TestDocsExamples(t *testing.T) {
	data, err := os.ReadFile("../docs/rules.md")
	if err != nil {
		t.Fatal(err)
	}
	builtin, err := Builtin()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for i, block := range strings.Split(string(data), "```yaml\n")[1:] {
		text, _, _ := strings.Cut(block, "```")
		if !strings.Contains(text, "expression:") {
			continue
		}
		r, err := ParseRule(fmt.Sprintf("docs/rules.md example %d", i+1), []byte(text))
		if err != nil {
			t.Errorf("example %d: %v", i+1, err)
			continue
		}
		if _, err := NewSet(append(builtin, r), Params{}); err != nil {
			t.Errorf("example %d: %v", i+1, err)
		}
		n++
	}
	if n < 3 {
		t.Errorf("docs/rules.md: %d example rules compiled, want the file example and two worked examples", n)
	}
}

// sodParams are the params of the tests that run the whole catalog over a
// generated organisation: two separation-of-duties pairs it plants.
const sodParams = "sod_pairs: [[payments-create, payments-approve], [prod-admin, db-admin]]\n"

// mustParams parses params YAML for a test.
func mustParams(tb testing.TB, yaml string) Params {
	tb.Helper()
	p, err := ParseParams("params.yaml", []byte(yaml))
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// TestDurationText checks the helper messages use for durations: the two
// largest units, as reports write them, where string(d) gives seconds.
func TestDurationText(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"259200s", "3d"},
		{"2160h", "90d"},
		{"90m", "1h 30m"},
		{"26h", "1d 2h"},
		{"45s", "45s"},
		{"0s", "0s"},
		{"-5m", "0s"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			r, err := ParseRule("d.yaml", []byte("id: d\ntitle: d\nseverity: low\ncontrols: [AC-2]\nexpression: |\n"+
				"  events.map(e, finding(e, [], durationText(duration(\""+tc.in+"\")), instant(e)))\n"))
			if err != nil {
				t.Fatal(err)
			}
			set, err := NewSet([]*Rule{r}, Params{})
			if err != nil {
				t.Fatal(err)
			}
			src := parseChain(t, []byte(`{"id":"a1","type":"session.started","time":"2026-01-01T00:00:00Z","subject":{"id":"alice","kind":"human"}}`+"\n"))
			res, err := set.Evaluate(t.Context(), src.subjects(), src, time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC))
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Errors) > 0 || len(res.Findings) != 1 {
				t.Fatalf("errors %v, %d findings", res.Errors, len(res.Findings))
			}
			if got := res.Findings[0].Message; got != tc.want {
				t.Errorf("durationText(duration(%q)) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}
