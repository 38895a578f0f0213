package rules

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/txtar"
)

// TestPopulationCases runs testdata/population/<rule-id>/*.txtar: each
// archive has "now" (RFC 3339), an optional "from" (then the case is a
// period [from, now]), an optional "params.yaml", "chain.jsonl" (protojson
// events of any subjects) and "want": the rule's population, one
// "SUBJECT EVENT-ID pass|fail" line per item in (subject, entry) order,
// worked out from docs/rules.md "Populations". Every rule with a
// population needs cases with a passing and a failing item, and the
// population expression must itself name every failed item (the engine
// adds a finding's primary entry when it does not, which would hide an
// expression that misses items).
func TestPopulationCases(t *testing.T) {
	builtin := builtinByID(t)
	dirs, err := filepath.Glob("../testdata/population/*")
	if err != nil {
		t.Fatal(err)
	}
	outcomes := map[string]map[string]bool{} // rule -> pass/fail seen
	for _, dir := range dirs {
		id := filepath.Base(dir)
		r, ok := builtin[id]
		if !ok {
			t.Errorf("%s: no built-in rule %q", dir, id)
			continue
		}
		if r.Population == "" {
			t.Errorf("%s: rule %s declares no population", dir, id)
			continue
		}
		outcomes[id] = map[string]bool{}
		files, _ := filepath.Glob(filepath.Join(dir, "*.txtar"))
		for _, file := range files {
			t.Run(id+"/"+strings.TrimSuffix(filepath.Base(file), ".txtar"), func(t *testing.T) {
				got := populationCase(t, r, file)
				for _, l := range strings.Split(strings.TrimSpace(got), "\n") {
					if f := strings.Fields(l); len(f) == 3 {
						outcomes[id][f[2]] = true
					}
				}
			})
		}
	}
	for id, r := range builtin {
		if r.Population == "" {
			continue
		}
		if o := outcomes[id]; !o["pass"] || !o["fail"] {
			t.Errorf("rule %s: want testdata/population/%s cases with a passing and a failing item (have %v)", id, id, o)
		}
	}
}

// populationCase evaluates one case file and compares the population with
// its want section; it returns the population as formatted.
func populationCase(t *testing.T, r *Rule, file string) string {
	t.Helper()
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
	from := now
	if b, ok := sec["from"]; ok {
		if from, err = time.Parse(time.RFC3339, strings.TrimSpace(string(b))); err != nil {
			t.Fatalf("from: %v", err)
		}
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
	var res *Result
	if _, ok := sec["from"]; ok {
		res, err = set.EvaluatePeriod(t.Context(), src.subjects(), src, from, now)
	} else {
		res, err = set.Evaluate(t.Context(), src.subjects(), src, now)
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Errors) > 0 {
		t.Fatalf("rule errors: %v", res.Errors)
	}
	var primaries []Primary
	failed := map[Primary]bool{}
	for _, f := range res.Findings {
		p := Primary{Rule: f.Rule, Subject: f.Subject, Index: f.Entries[0].Index}
		primaries = append(primaries, p)
		failed[p] = true
	}
	items, err := set.Population(t.Context(), src.subjects(), src, from, now, primaries)
	if err != nil {
		t.Fatal(err)
	}
	named, err := set.Population(t.Context(), src.subjects(), src, from, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(items, named) {
		t.Errorf("the population expression does not name every finding's primary entry:\nwith the findings' primaries: %v\nthe expression alone: %v", items, named)
	}
	var b strings.Builder
	for _, it := range items {
		res := "pass"
		if failed[Primary{Rule: it.Rule, Subject: it.Subject, Index: it.Index}] {
			res = "fail"
		}
		fmt.Fprintf(&b, "%s %s %s\n", it.Subject, it.EventID, res)
	}
	got := b.String()
	if want := string(sec["want"]); got != want {
		if *update {
			for i, f := range ar.Files {
				if f.Name == "want" {
					ar.Files[i].Data = []byte(got)
				}
			}
			if err := os.WriteFile(file, txtar.Format(ar), 0o644); err != nil {
				t.Fatal(err)
			}
			return got
		}
		t.Errorf("population of %s (from %s to %s):\ngot:\n%swant:\n%s", r.ID, from.Format(time.RFC3339), now.Format(time.RFC3339), got, want)
	}
	return got
}

// TestPopulationStaticCostBoundHolds is TestStaticCostBoundHolds for the
// population expressions: the runtime cost is at most the static estimate
// for the subject's size bound, which is what lets a population run without
// the cost tracker within that bound.
func TestPopulationStaticCostBoundHolds(t *testing.T) {
	src, subjects := genOrg(60, 150)
	set := catalogSet(t, mustParams(t, sodParams), Options{}, nil)
	adapter := set.rules[0].rule.env.CELTypeAdapter()
	checked := 0
	for _, days := range []int{30, 200} {
		now := benchStart.Add(time.Duration(days) * 24 * time.Hour)
		for _, from := range []time.Time{now, now.Add(-20 * 24 * time.Hour)} {
			for _, subject := range subjects {
				chain, _ := src.Chain(t.Context(), subject)
				v, err := buildViews(subject, chain, now, nil)
				if err != nil {
					t.Fatal(err)
				}
				if v.subject.HasOwner && v.subject.Kind != "human" {
					oc, _ := src.Chain(t.Context(), v.subject.Owner)
					if err := v.setOwner(oc, now); err != nil {
						t.Fatal(err)
					}
				}
				bound := max(chainSizeBound(subject, v.events), v.ownerBound)
				act := &activation{vals: subjectVals(adapter, v, from, now)}
				for _, c := range set.rules {
					if c.pop == nil {
						continue
					}
					act.params = c.params
					n := max(bound, c.paramBound)
					est, err := c.rule.env.EstimateCost(c.rule.popAst, sizesFor(c.rule.popAst.NativeRep(), n))
					if err != nil {
						t.Fatalf("%s population: estimating: %v", c.rule.ID, err)
					}
					_, det, err := c.pop.ContextEval(t.Context(), act)
					if err != nil {
						t.Fatalf("%s population over %s: %v", c.rule.ID, subject, err)
					}
					if got := *det.ActualCost(); got > est.Max {
						t.Errorf("%s population over %s (size bound %d): runtime cost %d > static estimate %d", c.rule.ID, subject, n, got, est.Max)
					}
					checked++
				}
				v.release()
			}
		}
	}
	if checked == 0 {
		t.Fatal("no population was checked")
	}
}
