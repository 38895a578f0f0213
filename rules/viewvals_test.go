package rules

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/cel-go/common/types/ref"
)

// TestViewListsBehaveAsCELLists: the cached view lists answer every list
// operation as cel-go's own lists do.
func TestViewListsBehaveAsCELLists(t *testing.T) {
	src := parseChain(t, []byte(oneEventChain+strings.ReplaceAll(oneEventChain, `"a1"`, `"a2"`)))
	chain, _ := src.Chain(t.Context(), "alice")
	v, err := buildViews("alice", chain, time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer v.release()
	env, err := baseEnv()
	if err != nil {
		t.Fatal(err)
	}
	act := &activation{vals: subjectVals(env.CELTypeAdapter(), v, time.Now(), time.Now())}
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
