package rules

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/grantline/grantline/rules/oracle"
)

// TestAgainstOracle runs the catalog and rules/oracle (a plain Go reading of
// docs/rules.md, written separately) over the same generated organisation and
// demands the same findings: (rule, subject, primary entry) and exposure.
func TestAgainstOracle(t *testing.T) {
	src, subjects := genOrg(150, 120)
	rs, err := Builtin()
	if err != nil {
		t.Fatal(err)
	}
	p, err := ParseParams("params.yaml", []byte("sod_pairs: [[payments-create, payments-approve], [prod-admin, db-admin]]\n"))
	if err != nil {
		t.Fatal(err)
	}
	set, err := NewSet(rs, p)
	if err != nil {
		t.Fatal(err)
	}
	for _, days := range []int{30, 120, 200} {
		now := benchStart.Add(time.Duration(days) * 24 * time.Hour)
		res, err := set.Evaluate(t.Context(), subjects, src, now)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Errors) > 0 {
			t.Fatalf("rule errors: %v", res.Errors)
		}
		got := map[string]bool{}
		for _, f := range res.Findings {
			got[fmt.Sprintf("%s %s %d exposure=%d", f.Rule, f.Subject, f.Entries[0].Index, f.ExposureSeconds)] = true
		}
		op := oracle.Defaults()
		op.SoDPairs = [][2]string{{"payments-create", "payments-approve"}, {"prod-admin", "db-admin"}}
		conv := func(es []Entry) []oracle.Entry {
			out := make([]oracle.Entry, len(es))
			for i, e := range es {
				out[i] = oracle.Entry{Index: e.Index, Event: e.Event}
			}
			return out
		}
		want := map[string]bool{}
		for _, s := range subjects {
			for _, f := range oracle.Evaluate(s, conv(src.chains[s]), now, op, func(o string) []oracle.Entry { return conv(src.chains[o]) }) {
				want[fmt.Sprintf("%s %s %d exposure=%d", f.Rule, f.Subject, f.Entries[0], f.Exposure)] = true
			}
		}
		var missing, extra []string
		for k := range want {
			if !got[k] {
				missing = append(missing, k)
			}
		}
		for k := range got {
			if !want[k] {
				extra = append(extra, k)
			}
		}
		sort.Strings(missing)
		sort.Strings(extra)
		if len(missing)+len(extra) > 0 {
			t.Errorf("now=%s: %d findings agree; missing (oracle only) %d:\n%s\nextra (catalog only) %d:\n%s", now.Format(time.DateOnly),
				len(got)-len(extra), len(missing), strings.Join(head(missing, 15), "\n"), len(extra), strings.Join(head(extra, 15), "\n"))
		} else {
			t.Logf("now=%s: %d findings agree", now.Format(time.DateOnly), len(got))
		}
	}
}

func head(s []string, n int) []string { return s[:min(n, len(s))] }
