package report

import (
	"testing"

	"github.com/grantline/grantline/verify/format"
)

func TestMFACoverage(t *testing.T) {
	row := func(rule, subject string, index uint64, result string) format.PopulationRow {
		return format.PopulationRow{Control: "IA-2(1)", Rule: rule, Subject: subject, Index: index, Result: result}
	}
	for _, tc := range []struct {
		name string
		rows []format.PopulationRow
		want *mfaCoverage
	}{
		{"no population", nil, nil},
		{"other rules only", []format.PopulationRow{row("review-overdue", "a", 1, format.Fail)}, nil},
		{"one of four sessions without MFA, one unrecorded", []format.PopulationRow{
			// Each session is an item of both rules (and may be listed under several controls).
			row("privileged-session-without-mfa", "a", 1, format.Pass), row("privileged-session-mfa-unrecorded", "a", 1, format.Pass),
			row("privileged-session-without-mfa", "a", 2, format.Fail), row("privileged-session-mfa-unrecorded", "a", 2, format.Pass),
			row("privileged-session-without-mfa", "b", 1, format.Pass), row("privileged-session-mfa-unrecorded", "b", 1, format.Fail),
			row("privileged-session-without-mfa", "b", 7, format.Pass), row("privileged-session-mfa-unrecorded", "b", 7, format.Pass),
			{Control: "PR.AA-03", Rule: "privileged-session-mfa-unrecorded", Subject: "b", Index: 7, Result: format.Pass},
		}, &mfaCoverage{Covered: 2, Total: 4, Percent: "50.0%"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := mfaCoverageOf(tc.rows)
			if (got == nil) != (tc.want == nil) || (got != nil && *got != *tc.want) {
				t.Errorf("mfaCoverageOf = %+v, want %+v", got, tc.want)
			}
		})
	}
}
