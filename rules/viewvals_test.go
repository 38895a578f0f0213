package rules

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/common/types/traits"
)

// TestViewListsBehaveAsCELLists: the cached view lists answer every list
// operation as cel-go's own lists do.
func TestViewListsBehaveAsCELLists(t *testing.T) {
	env, vals := aliceVals(t, oneEventChain+strings.ReplaceAll(oneEventChain, `"a1"`, `"a2"`))
	act := &activation{vals: vals}
	for _, tc := range []struct {
		expr, want string
	}{
		{`size(events)`, "2"},
		{`events[1].id`, "a2"},
		{`events.map(e, e.id)`, "[a1 a2]"},
		{`size(events + grants.map(g, g.event))`, "4"},
		{`events == events`, "true"},
		{`events[0] in events`, "true"},
		{`events.exists(e, e.refs.grant == "g1") && grants[0].event == events[0]`, "true"},
		{`lastBefore(events, events[1].time + duration("1s"))[0].id`, "a2"},
		{`events[2]`, "index out of bounds"},
	} {
		ast, iss := env.Compile(tc.expr)
		if iss.Err() != nil {
			t.Fatalf("%s: %v", tc.expr, iss.Err())
		}
		prg, err := env.Program(ast)
		if err != nil {
			t.Fatal(err)
		}
		out, _, err := prg.Eval(act)
		got := ""
		if err != nil {
			got = err.Error()
		} else {
			got = strings.Trim(strings.ReplaceAll(fmtVal(out), `"`, ""), " ")
		}
		if !strings.Contains(got, tc.want) {
			t.Errorf("%s = %s, want %s", tc.expr, got, tc.want)
		}
	}
}

// aliceVals builds alice's views of a JSON-lines chain and returns the base
// environment with her CEL variables; the views are released at cleanup.
func aliceVals(t *testing.T, chain string) (*cel.Env, map[string]ref.Val) {
	t.Helper()
	entries, _ := parseChain(t, []byte(chain)).Chain(t.Context(), "alice")
	v, err := buildViews("alice", entries, time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.release)
	env, err := baseEnv()
	if err != nil {
		t.Fatal(err)
	}
	return env, subjectVals(env.CELTypeAdapter(), v, time.Now(), time.Now())
}

func fmtVal(v interface{ Value() any }) string {
	if l, ok := v.Value().([]ref.Val); ok {
		parts := make([]string, len(l))
		for i, e := range l {
			parts[i] = fmt.Sprint(e.Value())
		}
		return "[" + strings.Join(parts, " ") + "]"
	}
	return fmt.Sprint(v.Value())
}

// TestViewMapsBehaveAsCELMaps: the view maps (viewMap) answer every map
// operation as cel-go's own map over the same Go map does: lookups, misses,
// presence tests, optional lookups, iteration, equality, bad keys.
func TestViewMapsBehaveAsCELMaps(t *testing.T) {
	chain := `{"id":"q1","type":"access.requested","time":"2026-01-01T00:00:00Z","subject":{"id":"alice","kind":"human"},"actor":{"id":"bob"},"entitlement":{"id":"prod-admin","privileged":true},"refs":{"request":"r1"}}
{"id":"a1","type":"grant.activated","time":"2026-01-01T01:00:00Z","subject":{"id":"alice","kind":"human"},"entitlement":{"id":"prod-admin","privileged":true},"refs":{"grant":"g1","request":"r1"}}
{"id":"a2","type":"grant.assigned","time":"2026-01-01T02:00:00Z","subject":{"id":"alice","kind":"human"},"entitlement":{"id":"db-admin"},"refs":{"grant":"g2"}}
{"id":"d1","type":"grant.deactivated","time":"2026-01-01T03:00:00Z","subject":{"id":"alice","kind":"human"},"refs":{"grant":"g1"}}
`
	env, vals := aliceVals(t, chain)
	adapter := env.CELTypeAdapter()
	// The reference: the same Go maps as cel-go's own maps.
	std := map[string]ref.Val{}
	maps := 0
	for k, x := range vals {
		std[k] = x
		if _, ok := x.(traits.Mapper); ok {
			std[k] = adapter.NativeToValue(x.Value())
			if _, own := std[k].(interface{ base() traits.Mapper }); own {
				t.Fatalf("%s: the reference is a view map", k)
			}
			maps++
		}
	}
	if maps < 10 {
		t.Fatalf("%d maps among the variables, want every map variable", maps)
	}
	for _, expr := range []string{
		`"g1" in grant_by_id`,
		`"nope" in grant_by_id`,
		`grant_by_id["g1"].id + " " + grant_by_id["g1"].event.id`,
		`grant_by_id["nope"]`,
		`grant_by_id[dyn(1)]`,
		`dyn(1) in grant_by_id`,
		`size(grant_by_id)`,
		`size(account_disables)`,
		`grant_by_id.exists(k, k == "g2") && grant_by_id.all(k, k in ["g1", "g2"]) && size(grant_by_id.map(k, k)) == 2`,
		`grant_by_id == grant_by_id`,
		`dyn(grant_by_id) == dyn(grant_ends)`,
		`has(grant_by_id.g2)`,
		`has(grant_by_id.g3)`,
		`grant_by_id[?"g2"].hasValue()`,
		`grant_by_id[?"g3"].hasValue()`,
		`grant_ends["g1"].id`,
		`grant_events_by_request["r1"].map(e, e.id)`,
		`requests_by_id["r1"][0].actor.id`,
		`requests_by_id["r2"]`,
		`"r1" in requests_by_id && size(requests_by_id["r1"]) == 1`,
		`grant_events_by_request["r1"][0] == grant_by_id["g1"].event`,
		`grant_events_by_request["r1"] == grant_events_by_request["r1"]`,
		`account_disables["x"]`,
		`"x" in credential_by_id`,
	} {
		ast, iss := env.Compile(expr)
		if iss.Err() != nil {
			t.Fatalf("%s: %v", expr, iss.Err())
		}
		prg, err := env.Program(ast)
		if err != nil {
			t.Fatal(err)
		}
		eval := func(vals map[string]ref.Val) string {
			out, _, err := prg.Eval(&activation{vals: vals})
			if err != nil {
				return "error: " + err.Error()
			}
			return fmtVal(out)
		}
		got, want := eval(vals), eval(std)
		if got != want {
			t.Errorf("%s = %s, cel-go's map gives %s", expr, got, want)
		}
	}
}
