package rules

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/traits"
)

// altNames renders alternatives as "{a,b} or {c}"; "always" for a set with
// no variable, "" for none.
func altNames(w alts) string {
	var sets []string
	for _, m := range w {
		if m == 0 {
			sets = append(sets, "always")
			continue
		}
		var names []string
		for i, e := range emptiable {
			if m&(1<<i) != 0 {
				names = append(names, e.name)
			}
		}
		sets = append(sets, "{"+strings.Join(names, ",")+"}")
	}
	slices.Sort(sets)
	return strings.Join(sets, " or ")
}

// TestEmptyWhen: the analysis finds the lists whose emptiness makes an
// expression [] with no error, and nothing where an empty list does not
// settle the value or something may fail.
func TestEmptyWhen(t *testing.T) {
	const f = `finding(g.event, [], "x", instant(g.event))`
	for _, tc := range []struct{ expr, want string }{
		{"true ? [] : grants.map(g, " + f + ")", "always"},
		{"grants.filter(g, g.privileged).map(g, " + f + ")", "{grants}"},
		{"grants.map(g, " + f + ") + moves.map(m, finding(m, [], \"x\", instant(m)))", "{grants,moves}"},
		{"moves.map(m, grants.map(g, " + f + ")).flatten()", "{moves}"},
		// The predicate is false whenever terminations is empty, errors or not.
		{"grants.filter(g, g.privileged && firstAtOrAfter(terminations, g.time).exists(t, t.time > now)).map(g, " + f + ")", "{grants} or {terminations}"},
		{"grants.filter(g, size(firstAfter(terminations, g.time)) > 0).map(g, " + f + ")", "{grants} or {terminations}"},
		{"grants.filter(g, !(size(terminations) == 0 || g.privileged)).map(g, " + f + ")", "{grants} or {terminations}"},
		// An argument that may fail (arithmetic can overflow) settles nothing.
		{"grants.filter(g, firstAfter(terminations, g.time + params.jit_grace).exists(t, true)).map(g, " + f + ")", "{grants}"},
		// || needs every term false.
		{"grants.filter(g, terminations.exists(t, true) || g.privileged).map(g, " + f + ")", "{grants}"},
		{"size(moves) == 0 ? [] : grants.map(g, " + f + ")", "{grants} or {moves}"},
		{"size(moves) != 0 ? grants.map(g, " + f + ") : []", "{grants} or {moves}"},
		{"subject.kind in [\"bot\"] ? grants.map(g, " + f + ") : []", "{grants}"},
		// A condition that may fail (an index of a possibly empty list)
		// is needed to pick the branch.
		{"moves[0].time > now ? grants.map(g, " + f + ") : []", ""},
		// Either branch is [] when grants is; moves alone settles nothing.
		{"size(moves) == 0 ? grants.map(g, " + f + ") : []", "{grants}"},
		// The second branch is never provably []: only the first, taken
		// when moves is empty.
		{"size(moves) == 0 ? grants.map(g, " + f + ") : [grants[0]].map(g, " + f + ")", "{grants,moves}"},
		{"[grants[0]].map(g, " + f + ")", ""},
		{"grants.map(g, " + f + ")[0] == grants.map(g, " + f + ")[0] ? [] : grants.map(g, " + f + ")", ""},
	} {
		r := mustRule(t, "x.yaml", "id: x\ntitle: x\nseverity: low\ncontrols: [a]\nexpression: '"+strings.ReplaceAll(tc.expr, "'", "''")+"'\n")
		if got := altNames(emptyWhenOf(r.ast.NativeRep())); got != tc.want {
			t.Errorf("%s: empty when %q, want %q", tc.expr, got, tc.want)
		}
	}
}

// TestCatalogEmptyWhen pins what the analysis finds in the catalog rules
// that most subjects can skip (no terminations, moves, campaigns or
// accounts), so that a rewrite of one that loses it shows here.
func TestCatalogEmptyWhen(t *testing.T) {
	rs, err := Builtin()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"activity-after-offboarding":  "{activity} or {offboardings}",
		"leaver-access-retained":      "{grants} or {terminations}",
		"leaver-account-not-disabled": "{accounts} or {terminations}",
		"mover-access-retained":       "{moves}",
		"review-campaign-incomplete":  "{campaigns}",
		"not-independent":             "{approvals,reviews,breakglass_reviews}",
		"approval-used-after-expiry":  "{approvals}",
		"nhi-without-owner":           "",
	}
	for _, r := range rs {
		w, ok := want[r.ID]
		if !ok {
			continue
		}
		if got := altNames(emptyWhenOf(r.ast.NativeRep())); got != w {
			t.Errorf("%s: empty when %q, want %q", r.ID, got, w)
		}
	}
}

// TestSkippedRulesYieldNothing runs every catalog rule on every subject of
// a generated organisation (and the benchmark's) that skips it, and checks
// the rule indeed gives an empty list with no error; and that skipping
// happens.
func TestSkippedRulesYieldNothing(t *testing.T) {
	leaves, subjects, params, asOf := synthOrg(t, 150)
	mem, benchSubjects := genOrg(60, 100)
	for _, tc := range []struct {
		name     string
		src      ChainSource
		subjects []string
	}{{"synth", leaves, subjects}, {"bench", mem, benchSubjects}} {
		s := catalogSet(t, params, Options{}, nil)
		skipped := 0
		for _, sub := range tc.subjects {
			v, _, err := s.loadViews(t.Context(), sub, tc.src, asOf, nil)
			if err != nil {
				t.Fatal(err)
			}
			act := &activation{vals: subjectVals(s.rules[0].rule.env.CELTypeAdapter(), v, asOf, asOf)}
			nonEmpty := v.nonEmpty()
			for _, c := range s.rules {
				if !c.emptyWhen.skips(nonEmpty) {
					continue
				}
				skipped++
				act.params = c.params
				out, _, err := c.prg.Eval(act)
				if err != nil {
					t.Fatalf("%s: %s, skipped, fails: %v", sub, c.rule.ID, err)
				}
				if l, ok := out.(traits.Lister); !ok || l.Size() != types.IntZero {
					t.Fatalf("%s: %s, skipped, gives %v", sub, c.rule.ID, out)
				}
			}
			v.release()
		}
		if skipped == 0 {
			t.Errorf("%s: no rule skipped for any subject", tc.name)
		}
		t.Logf("%s: %d (rule, subject) evaluations skipped of %d", tc.name, skipped, len(s.rules)*len(tc.subjects))
	}
}
