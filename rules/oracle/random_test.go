package oracle_test

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/rules"
	"github.com/grantline/grantline/rules/oracle"
)

var vocabulary = []string{
	"identity.created", "identity.moved", "identity.disabled", "identity.enabled", "identity.terminated",
	"access.requested", "access.approved", "access.denied", "access.revoked", "access.expired",
	"review.certified", "review.revoked",
	"grant.assigned", "grant.activated", "grant.deactivated", "grant.removed", "grant.expired",
	"session.started", "session.ended", "session.revoked",
	"credential.created", "credential.checked_out", "credential.checked_in", "credential.rotated", "credential.revoked",
	"breakglass.invoked", "breakglass.reviewed",
	"auth.succeeded", "account.created", "account.disabled",
	"review.opened", "review.signed_off", "review.closed",
}

// randomChains builds small adversarial chains: refs drawn from tiny pools so
// that events link in every way docs/rules.md allows, times on a coarse grid so
// ties happen, and owners that are other subjects of the same draw.
func randomChains(r *rand.Rand, base time.Time) (map[string][]rules.Entry, map[string][]oracle.Entry, []string) {
	subjects := []string{"alice", "bob", "svc-a", "svc-b"}
	pick := func(pool ...string) string { return pool[r.IntN(len(pool))] }
	when := func() time.Time { return base.Add(time.Duration(r.IntN(200)) * 12 * time.Hour) }
	chains := map[string][]rules.Entry{}
	ochains := map[string][]oracle.Entry{}
	var idx uint64
	for _, s := range subjects {
		kind, owner := pick("human", "human", "vendor", "contractor"), ""
		if s[:3] == "svc" {
			kind = pick("service_account", "workload", "bot", "")
			owner = pick("alice", "bob", "")
		}
		n := 5 + r.IntN(30)
		for range n {
			ev := &pb.Event{
				Id:     fmt.Sprintf("e%d", idx),
				Type:   pick(vocabulary...),
				Time:   timestamppb.New(when()),
				Source: &pb.Source{System: pick("t", "t", "u", "v", "pim")},
				Subject: &pb.Identity{Id: s, Kind: kind,
					OwnerId: owner},
				Actor:       &pb.Identity{Id: pick("alice", "bob", "carol", s), Kind: pick("human", "", "system")},
				Entitlement: &pb.Entitlement{Id: pick("ent-a", "ent-b", "ent-c"), Privileged: r.IntN(3) > 0, Resource: pick("", "sys-1", "sys-2")},
				Refs: &pb.Refs{
					Request:    pick("", "r1", "r2", "r3"),
					Grant:      pick("", "g1", "g2", "g3"),
					Session:    pick("", "s1", "s2"),
					Credential: pick("", "c1", "c2"),
					Ticket:     pick("", "", "T-1"),
					Review:     pick("", "K1", "K2"),
				},
				Breakglass: r.IntN(4) == 0,
			}
			if r.IntN(2) == 0 {
				ev.ExpiresAt = timestamppb.New(when())
			}
			switch r.IntN(3) {
			case 0:
				b := true
				ev.Mfa = &b
			case 1:
				b := false
				ev.Mfa = &b
			}
			if r.IntN(5) == 0 {
				ev.Subject.OwnerId = pick("alice", "bob")
			}
			chains[s] = append(chains[s], rules.Entry{Index: idx, Event: ev})
			ochains[s] = append(ochains[s], oracle.Entry{Index: idx, Event: ev})
			idx++
		}
	}
	return chains, ochains, subjects
}

// TestCatalogMatchesOracleRandom is a differential test on adversarial
// random chains: every disagreement is a misreading of docs/rules.md on one
// side (its catalog section, or "Periods"). Each draw is evaluated at an
// instant and over a period, comparing the cited entries, exposure and
// when each finding opened and closed.
func TestCatalogMatchesOracleRandom(t *testing.T) {
	builtin, err := rules.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	params, err := rules.ParseParams("sod.yaml", []byte("sod_pairs: [[ent-a, ent-b]]\nclosing_authorities: {t: [u], u: []}\nexpiry_enforced_by: [pim]\n"+
		"access_review_interval: 720h\nreview_campaign_within: 240h\nmax_credential_age: 720h\n"))
	if err != nil {
		t.Fatal(err)
	}
	set, err := rules.NewSet(builtin, params)
	if err != nil {
		t.Fatal(err)
	}
	pp := oracle.Defaults()
	pp.SoDPairs = [][2]string{{"ent-a", "ent-b"}}
	pp.ClosingAuthorities = map[string][]string{"t": {"u"}, "u": {}}
	pp.ExpiryEnforcedBy = []string{"pim"}
	pp.AccessReviewInterval, pp.ReviewCampaignWithin, pp.MaxCredentialAge = 720*time.Hour, 240*time.Hour, 720*time.Hour
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	draws := 300
	if testing.Short() {
		draws = 50
	}
	perRule := map[string]int{}
	for _, period := range []bool{false, true} {
		name := "instant"
		if period {
			name = "period"
		}
		t.Run(name, func(t *testing.T) {
			failures, closed, open := 0, 0, 0
			for i := range draws {
				r := rand.New(rand.NewPCG(uint64(i), 99))
				chains, ochains, subjects := randomChains(r, base)
				now := base.Add(time.Duration(r.IntN(260)) * 12 * time.Hour)
				from := now
				var res *rules.Result
				if period {
					from = now.Add(-time.Duration(1+r.IntN(119)) * 12 * time.Hour) // a period ends after it starts
					res, err = set.EvaluatePeriod(t.Context(), subjects, memChains(chains), from, now)
				} else {
					res, err = set.Evaluate(t.Context(), subjects, memChains(chains), now)
				}
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range res.Errors {
					t.Errorf("draw %d: rule error: %v", i, e)
				}
				var got, want []string
				for _, f := range res.Findings {
					got = append(got, key(f.Rule, f.Subject, refs(f.Entries), f.ExposureSeconds)+when(f.OpenedAt, f.ClosedAt))
					perRule[f.Rule]++
					// A message reads as a sentence whatever the chain leaves
					// out: an empty id shows as "(no id)", never as a gap.
					if strings.Contains(f.Message, "  ") || strings.TrimSpace(f.Message) != f.Message || f.Message == "" {
						t.Errorf("draw %d: rule %s: message %q has an empty part", i, f.Rule, f.Message)
					}
					if f.Open() {
						open++
					} else {
						closed++
					}
				}
				var log []oracle.Entry
				for _, s := range subjects {
					log = append(log, ochains[s]...)
				}
				var fs []oracle.Finding
				if period {
					fs = oracle.EvaluateLogPeriod(log, from, now, pp)
				} else {
					fs = oracle.EvaluateLog(log, now, pp)
				}
				for _, f := range fs {
					want = append(want, key(f.Rule, f.Subject, f.Entries, f.Exposure)+when(f.Opened, f.Closed))
				}
				sort.Strings(got)
				sort.Strings(want)
				if fmt.Sprint(got) != fmt.Sprint(want) {
					failures++
					if failures <= 5 {
						t.Errorf("draw %d (from %s, now %s): catalog and oracle disagree\n%s", i,
							from.Format(time.RFC3339), now.Format(time.RFC3339), diff(got, want))
					}
				}
			}
			if failures > 5 {
				t.Errorf("%d draws of %d disagree in all", failures, draws)
			}
			// The draws must exercise both kinds, or the test proves little.
			if closed == 0 || open == 0 {
				t.Errorf("findings closed %d, open %d: want both", closed, open)
			}

		})
	}
	// The generator must exercise every rule, or agreement proves little.
	for _, r := range builtin {
		if perRule[r.ID] == 0 {
			t.Errorf("no draw yields a %s finding: extend randomChains", r.ID)
		}
	}
	t.Logf("findings per rule: %v", perRule)
}

func when(opened, closed time.Time) string {
	c := "open"
	if !closed.IsZero() {
		c = closed.Format(time.RFC3339)
	}
	return " opened=" + opened.Format(time.RFC3339) + " closed=" + c
}

func diff(got, want []string) string {
	g, w := map[string]bool{}, map[string]bool{}
	for _, x := range got {
		g[x] = true
	}
	for _, x := range want {
		w[x] = true
	}
	out := ""
	for _, x := range got {
		if !w[x] {
			out += "  catalog only: " + x + "\n"
		}
	}
	for _, x := range want {
		if !g[x] {
			out += "  oracle only:  " + x + "\n"
		}
	}
	return out
}
