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
	set := catalogSet(t, mustParams(t, sodParams), Options{}, nil)
	// At three instants, then over three periods (from, to in days).
	for _, days := range [][2]int{{30, 30}, {120, 120}, {200, 200}, {0, 60}, {90, 120}, {150, 200}} {
		from := benchStart.Add(time.Duration(days[0]) * 24 * time.Hour)
		now := benchStart.Add(time.Duration(days[1]) * 24 * time.Hour)
		period := days[0] != days[1]
		var (
			res *Result
			err error
		)
		if period {
			res, err = set.EvaluatePeriod(t.Context(), subjects, src, from, now)
		} else {
			res, err = set.Evaluate(t.Context(), subjects, src, now)
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Errors) > 0 {
			t.Fatalf("rule errors: %v", res.Errors)
		}
		got := map[string]bool{}
		for _, f := range res.Findings {
			got[fmt.Sprintf("%s %s %v exposure=%d opened=%s closed=%s", f.Rule, f.Subject, refIndices(f.Entries), f.ExposureSeconds,
				f.OpenedAt.UTC().Format(time.RFC3339), f.ClosedAt.UTC().Format(time.RFC3339))] = true
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
		var log []oracle.Entry
		for _, s := range subjects {
			log = append(log, conv(src.chains[s])...)
		}
		fs := oracle.EvaluateLog(log, now, op)
		if period {
			fs = oracle.EvaluateLogPeriod(log, from, now, op)
		}
		for _, f := range fs {
			want[fmt.Sprintf("%s %s %v exposure=%d opened=%s closed=%s", f.Rule, f.Subject, f.Entries, f.Exposure,
				f.Opened.UTC().Format(time.RFC3339), f.Closed.UTC().Format(time.RFC3339))] = true
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
			t.Errorf("from=%s now=%s: %d findings agree; missing (oracle only) %d:\n%s\nextra (catalog only) %d:\n%s", from.Format(time.DateOnly),
				now.Format(time.DateOnly), len(got)-len(extra), len(missing), strings.Join(head(missing, 15), "\n"), len(extra), strings.Join(head(extra, 15), "\n"))
		} else {
			t.Logf("from=%s now=%s: %d findings agree", from.Format(time.DateOnly), now.Format(time.DateOnly), len(got))
		}
	}
}

func head(s []string, n int) []string { return s[:min(n, len(s))] }

func refIndices(rs []EntryRef) []uint64 {
	out := make([]uint64, len(rs))
	for i, r := range rs {
		out[i] = r.Index
	}
	return out
}
