package rules

import (
	"strings"
	"testing"
	"time"
)

// TestStaticCostBoundHolds checks what lets a subject run without cel-go's
// runtime cost tracker: for every built-in rule and every subject of a
// generated organisation (owners included), the runtime cost measured by
// the tracker is at most the static estimate for that subject's size bound.
func TestStaticCostBoundHolds(t *testing.T) {
	src, subjects := genOrg(60, 150)
	set := catalogSet(t, mustParams(t, sodParams), Options{}, nil)
	adapter := set.rules[0].rule.env.CELTypeAdapter()
	for _, days := range []int{30, 200} {
		now := benchStart.Add(time.Duration(days) * 24 * time.Hour)
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
			act := &activation{vals: subjectVals(adapter, v, now, now)}
			for _, c := range set.rules {
				act.params = c.params
				n := max(bound, c.paramBound)
				est, err := c.rule.env.EstimateCost(c.rule.ast, sizesFor(c.rule.ast.NativeRep(), n))
				if err != nil {
					t.Fatalf("%s: estimating: %v", c.rule.ID, err)
				}
				_, det, err := c.prg.ContextEval(t.Context(), act)
				if err != nil {
					t.Fatalf("%s over %s: %v", c.rule.ID, subject, err)
				}
				if got := *det.ActualCost(); got > est.Max {
					t.Errorf("%s over %s (size bound %d): runtime cost %d > static estimate %d", c.rule.ID, subject, n, got, est.Max)
				}
			}
			v.release()
		}
	}
}

// TestCostFreeUpTo: the bound is the largest size whose estimate fits the
// limit, it is -1 for an expression whose cost does not depend on the
// chain but exceeds the limit, and for one that constructs a struct.
func TestCostFreeUpTo(t *testing.T) {
	b := builtinByID(t)
	r := b["standing-privilege"]
	const limit = 1_000_000
	n := costFreeUpTo(r.env, r.ast, limit)
	if n <= 0 || n >= maxBoundProbe {
		t.Fatalf("costFreeUpTo(standing-privilege, %d) = %d, want a bound in (0, %d)", limit, n, maxBoundProbe)
	}
	for _, tc := range []struct {
		n    uint64
		fits bool
	}{{uint64(n), true}, {uint64(n) + 1, false}} {
		est, err := r.env.EstimateCost(r.ast, sizesFor(r.ast.NativeRep(), tc.n))
		if err != nil {
			t.Fatal(err)
		}
		if fits := est.Max <= limit; fits != tc.fits {
			t.Errorf("estimate at size %d = %d, fits limit %d = %v, want %v", tc.n, est.Max, limit, fits, tc.fits)
		}
	}
	for name, expr := range map[string]string{
		"range":     `lists.range(200000).filter(i, i < 0).map(i, finding(events[0], [], "never"))`,
		"construct": `[rules.Event{id: "x"}].map(e, finding(e, [], e.id))`,
	} {
		heavy := mustRule(t, name+".yaml", "id: "+name+"\ntitle: T\nseverity: low\ncontrols: [PR.AA-05]\nexpression: '"+strings.ReplaceAll(expr, "'", "''")+"'\n")
		if got := costFreeUpTo(heavy.env, heavy.ast, 10_000); got != -1 {
			t.Errorf("costFreeUpTo(%s, 10000) = %d, want -1", name, got)
		}
	}
}

// TestCostLimitStillEnforced: with the default CostTrackedEntries, a
// catalog rule over a subject too large for its static bound still runs
// under the tracker and reports the cost limit.
func TestCostLimitStillEnforced(t *testing.T) {
	src, subjects := genOrg(1, 200)
	set, err := NewSetWithOptions([]*Rule{builtinByID(t)["standing-privilege"]}, Params{}, Options{CostLimit: 100})
	if err != nil {
		t.Fatal(err)
	}
	res, err := set.Evaluate(t.Context(), subjects, src, benchStart.Add(200*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Errors) != 1 || !strings.Contains(res.Errors[0].Message, "cost limit exceeded") {
		t.Errorf("errors = %v, want one cost limit error", res.Errors)
	}
}

// TestFlattenElemBound: flatten targets built by map() over view lists are
// bounded by the size bound; any other target leaves the estimate unbounded.
func TestFlattenElemBound(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want uint64
		ok   bool
	}{
		{`grants.map(g, g.sessions.map(s, finding(s.start, [], "x"))).flatten()`, 7, true},
		{`moves.map(m, m.time > now ? [] : grants.filter(g, g.privileged).map(g, finding(g.event, [m], "x"))).flatten()`, 7, true},
		{`grants.map(g, [finding(g.event, [], "a"), finding(g.event, [], "b")]).flatten()`, 2, true},
		{`grants.map(g, firstAfter(g.ends, now).map(e, finding(e, [], "x"))).flatten()`, 1, true},
		{`cel.bind(x, grants.map(g, [finding(g.event, [], "x")]), x).flatten()`, 0, false},
		{`lists.range(3).map(i, lists.range(1000).map(j, finding(events[0], [], "x"))).flatten()`, 0, false},
		{`cel.bind(grants, [[finding(events[0], [], "x")]], grants.map(g, g).flatten())`, 0, false},
	} {
		r := mustRule(t, "f.yaml", "id: f\ntitle: T\nseverity: low\ncontrols: [PR.AA-05]\nexpression: '"+strings.ReplaceAll(tc.expr, "'", "''")+"'\n")
		got, ok := flattenElemBound(r.ast.NativeRep(), 7)
		if got != tc.want || ok != tc.ok {
			t.Errorf("flattenElemBound(%s, 7) = %d, %v, want %d, %v", tc.expr, got, ok, tc.want, tc.ok)
		}
	}
}
