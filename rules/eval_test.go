package rules

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func mustRule(t *testing.T, name, text string) *Rule {
	t.Helper()
	r, err := ParseRule(name, []byte(text))
	if err != nil {
		t.Fatalf("ParseRule(%s): %v", name, err)
	}
	return r
}

const oneEventChain = `{"id":"a1","type":"grant.assigned","time":"2026-01-01T00:00:00Z","subject":{"id":"alice","kind":"human"},"entitlement":{"id":"prod-admin","privileged":true},"refs":{"grant":"g1"}}
`

// TestRuleErrorsAreReported: a rule over its cost limit, past its deadline,
// or failing at runtime is a RuleError for that subject, and the other
// rules' findings are still there.
func TestRuleErrorsAreReported(t *testing.T) {
	heavy := mustRule(t, "heavy.yaml", `id: heavy
title: Heavy
severity: low
controls: [PR.AA-05]
expression: lists.range(200000).filter(i, i < 0).map(i, finding(events[0], [], "never"))
`)
	broken := mustRule(t, "broken.yaml", `id: broken
title: Index out of range at runtime
severity: low
controls: [PR.AA-05]
expression: '[finding(events[5], [], "x")]'
`)
	builtin := builtinByID(t)
	src := parseChain(t, []byte(oneEventChain))
	now := time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		opts Options
		want map[string]string // rule -> error substring
	}{
		{"cost limit", Options{CostLimit: 10_000, CostTrackedEntries: -1},
			map[string]string{"heavy": "cost limit exceeded", "broken": "index"}},
		{"deadline", Options{SubjectTimeout: time.Nanosecond, CostTrackedEntries: -1},
			map[string]string{"heavy": "deadline exceeded"}},
		// Untracked, the cheap rules would run with Eval (uncheckedCost);
		// past the deadline they run with ContextEval as the rest do.
		{"deadline, untracked", Options{SubjectTimeout: time.Nanosecond},
			map[string]string{"heavy": "deadline exceeded"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set, err := NewSetWithOptions([]*Rule{builtin["standing-privilege"], heavy, broken}, Params{}, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			res, err := set.Evaluate(t.Context(), []string{"alice"}, src, now)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, e := range res.Errors {
				if e.Subject != "alice" {
					t.Errorf("error for subject %q, want alice", e.Subject)
				}
				got[e.Rule] = e.Message
			}
			for rule, want := range tc.want {
				if !strings.Contains(got[rule], want) {
					t.Errorf("rule %s error = %q, want it to mention %q (all: %v)", rule, got[rule], want, res.Errors)
				}
			}
			if tc.name != "deadline" && (len(res.Findings) != 1 || res.Findings[0].Rule != "standing-privilege") {
				t.Errorf("findings = %v, want the one standing-privilege finding", res.Findings)
			}
		})
	}
}

func TestChainSourceErrorAborts(t *testing.T) {
	set, err := NewSet([]*Rule{builtinByID(t)["standing-privilege"]}, Params{})
	if err != nil {
		t.Fatal(err)
	}
	src := parseChain(t, []byte(oneEventChain))
	src.fail = "alice"
	_, err = set.Evaluate(t.Context(), []string{"alice", "bob"}, src, time.Now())
	if err == nil || !strings.Contains(err.Error(), `subject "alice"`) {
		t.Errorf("Evaluate with a failing source = %v, want an error naming subject \"alice\"", err)
	}
}

// TestDeterministic: the same inputs give the same findings whatever the
// number of workers, sorted by (rule, subject, primary index).
func TestDeterministic(t *testing.T) {
	src, subjects := genOrg(60, 80)
	rs, err := Builtin()
	if err != nil {
		t.Fatal(err)
	}
	now := benchStart.Add(150 * 24 * time.Hour)
	var first *Result
	for _, workers := range []int{1, 2, 7} {
		set, err := NewSetWithOptions(rs, Params{}, Options{Workers: workers})
		if err != nil {
			t.Fatal(err)
		}
		res, err := set.Evaluate(t.Context(), subjects, src, now)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Findings) == 0 {
			t.Fatal("no findings: the generated organisation should break some rules")
		}
		for i := 1; i < len(res.Findings); i++ {
			a, b := res.Findings[i-1], res.Findings[i]
			if a.Rule > b.Rule || (a.Rule == b.Rule && (a.Subject > b.Subject ||
				(a.Subject == b.Subject && a.Entries[0].Index >= b.Entries[0].Index))) {
				t.Fatalf("findings %d and %d out of order or duplicated: %v / %v", i-1, i, a, b)
			}
		}
		if first == nil {
			first = res
		} else if !reflect.DeepEqual(first, res) {
			t.Errorf("workers=%d gave a different result", workers)
		}
	}
}

func TestParamsOverrides(t *testing.T) {
	builtin := builtinByID(t)
	rs := []*Rule{builtin["jit-outlived-session"], builtin["sod-conflict"]}
	for _, tc := range []struct {
		yaml, wantErr string
	}{
		{"jit_grace: 30m\nsod_pairs: [[a, b]]\n", ""},
		{"jit_grace: 30m\nnot_a_param: 3\n", `params.yaml:2:1: unknown param "not_a_param"`},
		{"jit_grace: soon\n", `params.yaml:1:12: param jit_grace: "soon" is not a Go duration`},
		{"sod_pairs: [a, b]\n", "params.yaml:1:13: param sod_pairs: want a pair of entitlement ids"},
		{"- jit_grace\n", "params.yaml:1:1: want a mapping of param name to value"},
		{"expiry_enforced_by: [entra-pim, teleport]\n", ""},
		{"expiry_enforced_by: entra-pim\n", "params.yaml:1:21: param expiry_enforced_by: want a list of strings"},
		{"expiry_enforced_by: [[a]]\n", "params.yaml:1:22: param expiry_enforced_by: want a list of strings"},
	} {
		p, err := ParseParams("params.yaml", []byte(tc.yaml))
		if err == nil {
			_, err = NewSet(rs, p)
		}
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("params %q: %v", tc.yaml, err)
		case tc.wantErr != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.wantErr)):
			t.Errorf("params %q: error %v, want prefix %q", tc.yaml, err, tc.wantErr)
		}
	}
	// An override changes what the rule sees: with jit_grace 2h, the
	// outlived case of the testdata is inside the grace period.
	p, err := ParseParams("params.yaml", []byte("jit_grace: 2h\n"))
	if err != nil {
		t.Fatal(err)
	}
	set, err := NewSet(rs, p)
	if err != nil {
		t.Fatal(err)
	}
	if got := set.Rules()[0].Params["jit_grace"]; got != "2h0m0s" {
		t.Errorf("Rules()[0].Params[jit_grace] = %q, want 2h0m0s", got)
	}
	src := parseChain(t, []byte(`{"id":"a1","type":"grant.activated","time":"2026-01-01T08:00:00Z","subject":{"id":"alice"},"refs":{"grant":"g1"}}
{"id":"a2","type":"session.started","time":"2026-01-01T08:01:00Z","subject":{"id":"alice"},"refs":{"grant":"g1","session":"s1"}}
{"id":"a3","type":"session.ended","time":"2026-01-01T09:00:00Z","subject":{"id":"alice"},"refs":{"session":"s1"}}
{"id":"a4","type":"grant.deactivated","time":"2026-01-01T10:00:00Z","subject":{"id":"alice"},"refs":{"grant":"g1"}}
`))
	res, err := set.Evaluate(t.Context(), []string{"alice"}, src, time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Findings) != 0 {
		t.Errorf("with jit_grace 2h: findings %v, want none (ended 1h after the session)", res.Findings)
	}
}

// TestReplaceByID: a later rule with a built-in's id replaces it.
func TestReplaceByID(t *testing.T) {
	rs, err := Builtin()
	if err != nil {
		t.Fatal(err)
	}
	mine := mustRule(t, "mine.yaml", `id: self-approval
title: Never
severity: low
controls: [PR.AA-05]
expression: events.filter(e, false).map(e, finding(e, [], "never"))
`)
	// An untyped [] is list(dyn), and a bool is not findings: both refused.
	if _, err := ParseRule("x.yaml", []byte("id: x\ntitle: x\nseverity: low\ncontrols: [a]\nexpression: '[]'\n")); err == nil {
		t.Error("an untyped empty list was accepted")
	}
	if _, err := ParseRule("x.yaml", []byte("id: x\ntitle: x\nseverity: low\ncontrols: [a]\nexpression: 'true'\n")); err == nil {
		t.Error("a bool expression was accepted")
	}
	set, err := NewSet(append(rs, mine), Params{})
	if err != nil {
		t.Fatal(err)
	}
	infos := set.Rules()
	if len(infos) != len(rs) {
		t.Fatalf("%d rules, want %d (the built-in ids)", len(infos), len(rs))
	}
	for _, in := range infos {
		if in.ID == "self-approval" && (in.Title != "Never" || in.File != "mine.yaml") {
			t.Errorf("self-approval = %+v, want the replacement", in)
		}
	}
}

func TestRuleErrorIsError(t *testing.T) {
	var err error = RuleError{Rule: "r", Subject: "s", Message: "m"}
	var re RuleError
	if !errors.As(err, &re) || err.Error() != "rule r, subject s: m" {
		t.Errorf("RuleError = %v", err)
	}
}

// TestUncheckedEvalAgrees: the catalog gives the same findings whether the
// rules whose static cost is small run with cel-go's Eval (uncheckedCost,
// the default) or every rule runs under the cost tracker with ContextEval;
// and the generated organisation exercises both paths.
func TestUncheckedEvalAgrees(t *testing.T) {
	src, subjects := genOrg(60, 80)
	params := mustParams(t, sodParams)
	now := benchStart.Add(200 * 24 * time.Hour)
	fast := catalogSet(t, params, Options{}, nil)
	checked := catalogSet(t, params, Options{CostTrackedEntries: -1}, nil)
	unchecked := 0
	for _, c := range fast.rules {
		if c.uncheckedUpTo >= 128 {
			unchecked++
		}
	}
	if unchecked == 0 || unchecked == len(fast.rules) {
		t.Fatalf("%d of %d rules run unchecked on 128-entry chains, want some but not all", unchecked, len(fast.rules))
	}
	got, err := fast.Evaluate(t.Context(), subjects, src, now)
	if err != nil {
		t.Fatal(err)
	}
	want, err := checked.Evaluate(t.Context(), subjects, src, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Errors)+len(want.Errors) > 0 {
		t.Fatalf("rule errors: %v %v", got.Errors, want.Errors)
	}
	if len(got.Findings) == 0 || !reflect.DeepEqual(got.Findings, want.Findings) {
		t.Errorf("%d findings with Eval for cheap rules, %d all tracked; they differ", len(got.Findings), len(want.Findings))
	}
}
