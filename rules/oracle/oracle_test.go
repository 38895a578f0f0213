package oracle_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/grantline/grantline/internal/synth"
	"github.com/grantline/grantline/rules"
	"github.com/grantline/grantline/rules/oracle"
)

// memChains is an in-memory rules.ChainSource.
type memChains map[string][]rules.Entry

func (m memChains) Chain(_ context.Context, s string) ([]rules.Entry, error) { return m[s], nil }

// TestCatalogMatchesOracle runs the CEL catalog and the plain-Go reading of
// docs/rules.md over synthetic organisations, at several as-of times, and demands
// the same findings: rule, subject, every cited entry in order, exposure.
// Both are given every entry, even those dated after the as-of time, which
// both must leave out.
func TestCatalogMatchesOracle(t *testing.T) {
	for _, tc := range []struct {
		seed uint64
		rate float64
	}{{1, 0.04}, {7, 0.2}, {11, 0}} {
		org, err := synth.Generate(synth.Config{Seed: tc.seed, Identities: 120, FailureRate: tc.rate})
		if err != nil {
			t.Fatal(err)
		}
		pp := oracle.Defaults()
		pp.SoDPairs = org.SoDPairs
		params, err := rules.ParseParams("sod.yaml", org.ParamsYAML())
		if err != nil {
			t.Fatal(err)
		}
		builtin, err := rules.Builtin()
		if err != nil {
			t.Fatal(err)
		}
		set, err := rules.NewSet(builtin, params)
		if err != nil {
			t.Fatal(err)
		}
		start := org.Config.Start
		for _, asOf := range []time.Time{org.AsOf, start.Add(40 * 24 * time.Hour), start.Add(100 * 24 * time.Hour), start.Add(150*24*time.Hour + 7*time.Hour)} {
			t.Run(fmt.Sprintf("seed%d/rate%v/%s", tc.seed, tc.rate, asOf.Format(time.RFC3339)), func(t *testing.T) {
				chains := memChains{}
				var log []oracle.Entry
				for i, ev := range org.Events {
					s := ev.GetSubject().GetId()
					chains[s] = append(chains[s], rules.Entry{Index: uint64(i), Event: ev})
					log = append(log, oracle.Entry{Index: uint64(i), Event: ev})
				}
				var subjects []string
				for s := range chains {
					subjects = append(subjects, s)
				}
				sort.Strings(subjects)
				res, err := set.Evaluate(t.Context(), subjects, chains, asOf)
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range res.Errors {
					t.Errorf("rule error: %v", e)
				}
				got := map[string]bool{}
				for _, f := range res.Findings {
					got[key(f.Rule, f.Subject, refs(f.Entries), f.ExposureSeconds)] = true
				}
				want := map[string]bool{}
				for _, f := range oracle.EvaluateLog(log, asOf, pp) {
					want[key(f.Rule, f.Subject, f.Entries, f.Exposure)] = true
				}
				for k := range want {
					if !got[k] {
						t.Errorf("catalog missed %s", k)
					}
				}
				for k := range got {
					if !want[k] {
						t.Errorf("catalog found extra %s", k)
					}
				}
				perRule := map[string]int{}
				for _, f := range res.Findings {
					perRule[f.Rule]++
				}
				t.Logf("%d findings agree: %v", len(want), perRule)
			})
		}
	}
}

func refs(rs []rules.EntryRef) []uint64 {
	out := make([]uint64, len(rs))
	for i, r := range rs {
		out[i] = r.Index
	}
	return out
}

func key(rule, subject string, idx []uint64, exposure int64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s [", rule, subject)
	for i, x := range idx {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprint(&b, x)
	}
	fmt.Fprintf(&b, "] exposure=%d", exposure)
	return b.String()
}
