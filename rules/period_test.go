package rules

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func at(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

// periodWant is one expected finding of a period: rule, subject, primary
// event id, when it opened and closed ("" for still open), its exposure
// and, when set, the rule it shares its primary entry with.
type periodWant struct {
	rule, subject, primary string
	opened, closed         string
	exposure               int64
	shares                 string
}

func periodGot(fs []Finding) []periodWant {
	var out []periodWant
	for _, f := range fs {
		w := periodWant{rule: f.Rule, subject: f.Subject, primary: f.Entries[0].EventID,
			opened: f.OpenedAt.UTC().Format(time.RFC3339), exposure: f.ExposureSeconds, shares: f.SharesPrimaryWith}
		if !f.Open() {
			w.closed = f.ClosedAt.UTC().Format(time.RFC3339)
		}
		out = append(out, w)
	}
	return out
}

// round2Rules are the rules added in round 2 (docs/rules.md); the hand
// computations here are about the periods of the 19 rules of round 1, whose
// stories the round-2 rules would add findings to.
var round2Rules = []string{"backdated-closure", "foreign-closure", "grant-without-approval", "not-independent",
	"account-inactive", "leaver-account-not-disabled", "shared-credential-not-rotated", "nhi-interactive-session",
	"breakglass-access-retained", "breakglass-credential-not-rotated", "third-party-outside-window",
	"privileged-session-mfa-unrecorded", "nhi-without-owner", "nhi-owner-moved", "secret-without-expiry"}

func builtinSet(t *testing.T) *Set {
	t.Helper()
	all, err := Builtin()
	if err != nil {
		t.Fatal(err)
	}
	var rs []*Rule
	for _, r := range all {
		if !slices.Contains(round2Rules, r.ID) {
			rs = append(rs, r)
		}
	}
	set, err := NewSet(rs, Params{})
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// TestPeriodsHandComputed checks opened/closed times, clipping and union
// exposure of periods against answers worked out by hand (in the comments)
// for the story feeds of testdata/feeds and a small chain.
func TestPeriodsHandComputed(t *testing.T) {
	const d, h, m = 86400, 3600, 60
	handChain := `
{"id":"h1","type":"grant.assigned","time":"2026-01-01T00:00:00Z","subject":{"id":"ann","kind":"human"},"entitlement":{"id":"db-admin","privileged":true},"refs":{"grant":"g1"},"expires_at":"2026-01-02T00:00:00Z"}
{"id":"h2","type":"grant.removed","time":"2026-01-05T00:15:00Z","subject":{"id":"ann","kind":"human"},"refs":{"grant":"g1"}}
{"id":"h3","type":"grant.assigned","time":"2026-01-01T00:00:00Z","subject":{"id":"ann","kind":"human"},"entitlement":{"id":"prod-admin","privileged":true},"refs":{"grant":"g2"}}
{"id":"h4","type":"grant.removed","time":"2026-01-04T00:00:00Z","subject":{"id":"ann","kind":"human"},"refs":{"grant":"g2"}}
`
	for _, tc := range []struct {
		name     string
		feeds    []string // files of testdata/feeds, or "" for handChain
		from, to string   // from "" evaluates at the instant to
		want     []periodWant
		union    map[string]int64
	}{{
		// marco.bianchi's JIT grant never ended. Deadlines: approval
		// 17:07+15m = 17:22, grant expiry 11:12+15m = 11:27, session end
		// 10:02+15m = 10:17. Union from 05-05 10:17 to 06-01 00:00 is
		// 26d 13h 43m, once, where the three rules sum to ~79 days.
		name: "jit-never-revoked at an instant", feeds: []string{"jit-never-revoked.jsonl"}, to: "2026-06-01T00:00:00Z",
		want: []periodWant{
			{"approval-without-revocation", "marco.bianchi", "jnr-2", "2026-05-05T17:22:00Z", "", 26*d + 6*h + 38*m, ""},
			{"grant-overstayed-expiry", "marco.bianchi", "jnr-3", "2026-05-05T11:27:00Z", "", 26*d + 12*h + 33*m, "jit-outlived-session"},
			{"jit-outlived-session", "marco.bianchi", "jnr-3", "2026-05-05T10:17:00Z", "", 26*d + 13*h + 43*m, ""},
		},
		union: map[string]int64{"marco.bianchi": 26*d + 13*h + 43*m},
	}, {
		// The same over May 10 to June 1: each exposure clipped to 22 days,
		// opened times unchanged, the union 22 days.
		name: "jit-never-revoked over a period", feeds: []string{"jit-never-revoked.jsonl"}, from: "2026-05-10T00:00:00Z", to: "2026-06-01T00:00:00Z",
		want: []periodWant{
			{"approval-without-revocation", "marco.bianchi", "jnr-2", "2026-05-05T17:22:00Z", "", 22 * d, ""},
			{"grant-overstayed-expiry", "marco.bianchi", "jnr-3", "2026-05-05T11:27:00Z", "", 22 * d, "jit-outlived-session"},
			{"jit-outlived-session", "marco.bianchi", "jnr-3", "2026-05-05T10:17:00Z", "", 22 * d, ""},
		},
		union: map[string]int64{"marco.bianchi": 22 * d},
	}, {
		// A period ending at 12:00 that day: the approval's deadline (17:22)
		// has not come; 10:17-12:00 and 11:27-12:00 overlap: union 1h 43m.
		name: "jit-never-revoked, period ending the same day", feeds: []string{"jit-never-revoked.jsonl"}, from: "2026-04-01T00:00:00Z", to: "2026-05-05T12:00:00Z",
		want: []periodWant{
			{"grant-overstayed-expiry", "marco.bianchi", "jnr-3", "2026-05-05T11:27:00Z", "", 33 * m, "jit-outlived-session"},
			{"jit-outlived-session", "marco.bianchi", "jnr-3", "2026-05-05T10:17:00Z", "", 1*h + 43*m, ""},
		},
		union: map[string]int64{"marco.bianchi": 1*h + 43*m},
	}, {
		// Omar's break-glass use at 05-09 02:14 was never reviewed: open from
		// the end of its 72h window, 05-12 02:14; no exposure.
		name: "breakglass-unreviewed over May", feeds: []string{"breakglass-unreviewed.jsonl", "jit-done-right.jsonl"}, from: "2026-05-01T00:00:00Z", to: "2026-06-01T00:00:00Z",
		want: []periodWant{
			{"breakglass-unreviewed", "omar.farouk", "bgu-1", "2026-05-12T02:14:00Z", "", 0, ""},
		},
		union: map[string]int64{},
	}, {
		// A period that ends before the review window closed: nothing.
		name: "breakglass-unreviewed, period before the deadline", feeds: []string{"breakglass-unreviewed.jsonl"}, from: "2026-05-01T00:00:00Z", to: "2026-05-12T02:14:00Z",
		union: map[string]int64{},
	}, {
		// g1 expired 01-02, deadline 00:15, removed 01-05 00:15: 3 days late,
		// closed. g2 (no expiry) was standing until 01-04. Over [01-03,
		// 01-10]: g1's exposure clipped to 01-03..01-05 00:15 = 2d 15m.
		name: "closed late, clipped", from: "2026-01-03T00:00:00Z", to: "2026-01-10T00:00:00Z",
		want: []periodWant{
			{"grant-overstayed-expiry", "ann", "h1", "2026-01-02T00:15:00Z", "2026-01-05T00:15:00Z", 2*d + 15*m, ""},
			{"standing-privilege", "ann", "h3", "2026-01-01T00:00:00Z", "2026-01-04T00:00:00Z", 0, ""},
		},
		union: map[string]int64{"ann": 2*d + 15*m},
	}, {
		// From 01-06 both were closed before the period: left out.
		name: "closed before from", from: "2026-01-06T00:00:00Z", to: "2026-01-10T00:00:00Z",
		union: map[string]int64{},
	}, {
		// At the instant 01-10, the late grant is still a finding (docs/rules.md),
		// closed at 01-05 00:15 with its whole 3 days; the standing grant
		// ended, so it is none.
		name: "closed late, at an instant", to: "2026-01-10T00:00:00Z",
		want: []periodWant{
			{"grant-overstayed-expiry", "ann", "h1", "2026-01-02T00:15:00Z", "2026-01-05T00:15:00Z", 3 * d, ""},
		},
		union: map[string]int64{"ann": 3 * d},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			var data []byte
			if len(tc.feeds) == 0 {
				data = []byte(handChain)
			}
			for _, f := range tc.feeds {
				b, err := os.ReadFile(filepath.Join("..", "testdata", "feeds", f))
				if err != nil {
					t.Fatal(err)
				}
				data = append(data, b...)
			}
			src := parseChain(t, data)
			set := builtinSet(t)
			var res *Result
			var err error
			if tc.from == "" {
				res, err = set.Evaluate(t.Context(), src.subjects(), src, at(tc.to))
			} else {
				res, err = set.EvaluatePeriod(t.Context(), src.subjects(), src, at(tc.from), at(tc.to))
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Errors) > 0 {
				t.Fatalf("rule errors: %v", res.Errors)
			}
			got := periodGot(res.Findings)
			if !slices.Equal(got, tc.want) {
				t.Errorf("findings:\n got %v\nwant %v", got, tc.want)
			}
			if len(res.ExposureBySubject) != len(tc.union) {
				t.Errorf("exposure_by_subject %v, want %v", res.ExposureBySubject, tc.union)
			}
			for s, n := range tc.union {
				if res.ExposureBySubject[s] != n {
					t.Errorf("exposure_by_subject[%s] = %d, want %d", s, res.ExposureBySubject[s], n)
				}
			}
		})
	}
}

// TestEvaluatePeriodRefusesReversedPeriod: a period ending before it starts,
// or empty (from == to, which population expressions would read as one
// instant while findings are a period's), is refused.
func TestEvaluatePeriodRefusesReversedPeriod(t *testing.T) {
	set := builtinSet(t)
	for _, p := range [][2]string{
		{"2026-02-01T00:00:00Z", "2026-01-01T00:00:00Z"},
		{"2026-02-01T00:00:00Z", "2026-02-01T00:00:00Z"},
	} {
		_, err := set.EvaluatePeriod(t.Context(), nil, &memSource{}, at(p[0]), at(p[1]))
		if !errors.Is(err, ErrPeriod) || !strings.Contains(err.Error(), "must end after it starts") {
			t.Errorf("EvaluatePeriod(%s, %s) = %v, want ErrPeriod", p[0], p[1], err)
		}
	}
}

func TestUnionSeconds(t *testing.T) {
	t0 := at("2026-01-01T00:00:00Z")
	iv := func(a, b int) [2]time.Time {
		return [2]time.Time{t0.Add(time.Duration(a) * time.Second), t0.Add(time.Duration(b) * time.Second)}
	}
	for _, tc := range []struct {
		ivs  [][2]time.Time
		want int64
	}{
		{nil, 0},
		{[][2]time.Time{iv(0, 10)}, 10},
		{[][2]time.Time{iv(0, 10), iv(5, 20)}, 20},
		{[][2]time.Time{iv(5, 20), iv(0, 10), iv(30, 40)}, 30},
		{[][2]time.Time{iv(0, 10), iv(10, 20)}, 20},
		{[][2]time.Time{iv(0, 100), iv(10, 20), iv(30, 40)}, 100},
		{[][2]time.Time{iv(10, 5)}, 0},
	} {
		if got := UnionSeconds(tc.ivs); got != tc.want {
			t.Errorf("UnionSeconds(%v) = %d, want %d", tc.ivs, got, tc.want)
		}
	}
}
