package rulecheck

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/grantline/grantline/internal/synth"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/rules"
	"github.com/grantline/grantline/rules/oracle"
)

// chains is an in-memory ChainSource built from events in ledger order.
type chains struct {
	by    map[string][]rules.Entry
	order []string
}

func newChains(evs []*pb.Event) *chains {
	c := &chains{by: map[string][]rules.Entry{}}
	for i, e := range evs {
		s := e.GetSubject().GetId()
		if _, ok := c.by[s]; !ok {
			c.order = append(c.order, s)
		}
		c.by[s] = append(c.by[s], rules.Entry{Index: uint64(i), Event: e})
	}
	sort.Strings(c.order)
	return c
}

func (c *chains) Chain(_ context.Context, subject string) ([]rules.Entry, error) {
	return c.by[subject], nil
}

func (c *chains) oracleChain(subject string) []oracle.Entry {
	var out []oracle.Entry
	for _, e := range c.by[subject] {
		out = append(out, oracle.Entry{Index: e.Index, Event: e.Event})
	}
	return out
}

// finding is what the tests compare: (rule, subject, primary event id).
type finding struct{ rule, subject, event string }

func (f finding) String() string { return f.rule + " " + f.subject + " " + f.event }

func sorted(fs []finding) []finding {
	slices.SortFunc(fs, func(a, b finding) int {
		return cmp.Or(cmp.Compare(a.rule, b.rule), cmp.Compare(a.subject, b.subject), cmp.Compare(a.event, b.event))
	})
	return slices.Compact(fs)
}

// evaluate runs the CEL catalog and the oracle over evs and returns both
// findings lists.
func evaluate(t *testing.T, evs []*pb.Event, now time.Time, sod [][2]string) (cel, orc []finding) {
	t.Helper()
	src := newChains(evs)
	var p rules.Params
	if len(sod) > 0 {
		var b strings.Builder
		b.WriteString("sod_pairs:\n")
		for _, x := range sod {
			fmt.Fprintf(&b, "  - [%q, %q]\n", x[0], x[1])
		}
		var err error
		if p, err = rules.ParseParams("params.yaml", []byte(b.String())); err != nil {
			t.Fatalf("ParseParams: %v", err)
		}
	}
	builtin, err := rules.Builtin()
	if err != nil {
		t.Fatalf("rules.Builtin: %v", err)
	}
	set, err := rules.NewSet(builtin, p)
	if err != nil {
		t.Fatalf("rules.NewSet: %v", err)
	}
	res, err := set.Evaluate(t.Context(), src.order, src, now)
	if err != nil {
		t.Fatalf("Evaluate: %v", err)
	}
	for _, e := range res.Errors {
		t.Errorf("rule error: %s %s: %s", e.Rule, e.Subject, e.Message)
	}
	for _, f := range res.Findings {
		cel = append(cel, finding{f.Rule, f.Subject, f.Entries[0].EventID})
	}
	op := oracle.Defaults()
	op.SoDPairs = sod
	var log []oracle.Entry
	for _, s := range src.order {
		log = append(log, src.oracleChain(s)...)
	}
	for _, f := range oracle.EvaluateLog(log, now, op) {
		orc = append(orc, finding{f.Rule, f.Subject, evs[f.Entries[0]].GetId()})
	}
	return sorted(cel), sorted(orc)
}

func planted(o *synth.Org) []finding {
	var out []finding
	for _, p := range o.Planted {
		out = append(out, finding{p.Rule, p.Subject, p.EventID})
	}
	return sorted(out)
}

// diff reports findings present in got but not in want.
func missing(want, got []finding) []finding {
	var out []finding
	for _, w := range want {
		if _, ok := slices.BinarySearchFunc(got, w, func(a, b finding) int {
			return cmp.Or(cmp.Compare(a.rule, b.rule), cmp.Compare(a.subject, b.subject), cmp.Compare(a.event, b.event))
		}); !ok {
			out = append(out, w)
		}
	}
	return out
}

func TestGeneratedOrgFindsExactlyThePlants(t *testing.T) {
	for _, cfg := range []synth.Config{
		synth.DefaultConfig(),
		{Seed: 7, Identities: 120, Months: 4, FailureRate: 0.1},
		{Seed: 99, Identities: 400, Months: 9, FailureRate: 0.02, Start: time.Date(2025, 11, 17, 0, 0, 0, 0, time.UTC)},
	} {
		t.Run(fmt.Sprintf("seed=%d/identities=%d/months=%d", cfg.Seed, cfg.Identities, cfg.Months), func(t *testing.T) {
			o, err := synth.Generate(cfg)
			if err != nil {
				t.Fatal(err)
			}
			want := planted(o)
			cel, orc := evaluate(t, o.Events, o.AsOf, o.SoDPairs)
			t.Logf("%d events, %d planted, %d CEL findings, %d oracle findings", len(o.Events), len(want), len(cel), len(orc))
			if len(cel) == 0 || len(orc) == 0 {
				t.Fatalf("no findings at all")
			}
			for name, got := range map[string][]finding{"CEL catalog": cel, "oracle": orc} {
				for _, f := range missing(want, got) {
					t.Errorf("%s: planted finding not found: %s", name, f)
				}
				for _, f := range missing(got, want) {
					t.Errorf("%s: finding that was not planted: %s", name, f)
				}
			}
			rulesHit := map[string]bool{}
			for _, f := range want {
				rulesHit[f.rule] = true
			}
			for _, r := range synth.Rules {
				if !rulesHit[r] && o.Plantable(r) {
					t.Errorf("rule %s has no plant", r)
				}
			}
		})
	}
}

func TestCleanOrgHasNoFindings(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			cfg := synth.DefaultConfig()
			cfg.Seed, cfg.FailureRate = seed, 0
			o, err := synth.Generate(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if len(o.Planted) != 0 {
				t.Fatalf("clean org has %d plants", len(o.Planted))
			}
			cel, orc := evaluate(t, o.Events, o.AsOf, o.SoDPairs)
			for _, f := range cel {
				t.Errorf("CEL catalog: finding in a clean org: %s", f)
			}
			for _, f := range orc {
				t.Errorf("oracle: finding in a clean org: %s", f)
			}
		})
	}
}

func generateDefault(t *testing.T) *synth.Org {
	t.Helper()
	o, err := synth.Generate(synth.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	return o
}
