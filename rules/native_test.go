package rules

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// nativeVocabulary is every event type the views read.
var nativeVocabulary = []string{
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

// nativeChains draws small adversarial chains (as rules/oracle's random
// test does: refs from tiny pools so that events link every way, times on
// a coarse grid so that they tie), and, when extreme, some events dated at
// the ends of CEL's timestamp range, where timestamp arithmetic overflows
// and a rule fails: the native comprehensions must then fail the same way.
func nativeChains(r *rand.Rand, base time.Time, extreme bool) (*memSource, []string) {
	subjects := []string{"alice", "bob", "svc-a", "svc-b"}
	pick := func(pool ...string) string { return pool[r.IntN(len(pool))] }
	when := func() time.Time {
		if extreme && r.IntN(15) == 0 {
			if r.IntN(2) == 0 {
				return time.Date(9999, 12, 30, 0, 0, 0, 0, time.UTC)
			}
			return time.Date(1, 1, 2, 0, 0, 0, 0, time.UTC)
		}
		return base.Add(time.Duration(r.IntN(200)) * 12 * time.Hour)
	}
	m := &memSource{chains: map[string][]Entry{}}
	var idx uint64
	for _, s := range subjects {
		kind, owner := pick("human", "human", "vendor", "contractor"), ""
		if strings.HasPrefix(s, "svc") {
			kind = pick("service_account", "workload", "bot", "")
			owner = pick("alice", "bob", "")
		}
		for range 5 + r.IntN(30) {
			ev := &pb.Event{
				Id:          fmt.Sprintf("e%d", idx),
				Type:        pick(nativeVocabulary...),
				Time:        timestamppb.New(when()),
				Source:      &pb.Source{System: pick("t", "t", "u", "v", "pim")},
				Subject:     &pb.Identity{Id: s, Kind: kind, OwnerId: owner},
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
			m.chains[s] = append(m.chains[s], Entry{Index: idx, Event: ev})
			idx++
		}
	}
	return m, subjects
}

// nativePair is the same catalog twice: with native comprehensions and
// with cel-go's plan only. Every chain longer than one entry runs the
// untracked program, the one native.go decorates.
func nativePair(t *testing.T, params Params) (native, plain *Set) {
	t.Helper()
	o := Options{CostTrackedEntries: 1, Workers: 2}
	native = catalogSet(t, params, o, nil)
	o.plainCEL = true
	plain = catalogSet(t, params, o, nil)
	return native, plain
}

// sameResult fails t unless a and b are identical: findings (entries,
// messages, windows, exposure) and rule errors, message for message.
func sameResult(t *testing.T, what string, a, b *Result) {
	t.Helper()
	if reflect.DeepEqual(a, b) {
		return
	}
	t.Errorf("%s: native and cel-go results differ", what)
	for i := range max(len(a.Findings), len(b.Findings)) {
		var x, y Finding
		if i < len(a.Findings) {
			x = a.Findings[i]
		}
		if i < len(b.Findings) {
			y = b.Findings[i]
		}
		if !reflect.DeepEqual(x, y) {
			t.Errorf("first differing finding %d:\n native %+v\n cel-go %+v", i, x, y)
			break
		}
	}
	if !reflect.DeepEqual(a.Errors, b.Errors) {
		t.Errorf("errors:\n native %v\n cel-go %v", a.Errors, b.Errors)
	}
}

func evalBoth(t *testing.T, native, plain *Set, subjects []string, src ChainSource, from, now time.Time, period bool) (*Result, *Result) {
	t.Helper()
	run := func(s *Set) *Result {
		var (
			res *Result
			err error
		)
		if period {
			res, err = s.EvaluatePeriod(t.Context(), subjects, src, from, now)
		} else {
			res, err = s.Evaluate(t.Context(), subjects, src, now)
		}
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	return run(native), run(plain)
}

// TestNativeMatchesCEL runs every rule of the catalog with and without
// native comprehensions over adversarial random chains (some with
// timestamps at the ends of CEL's range, and params large enough to
// overflow there), the synthetic organisation and every story feed, at
// instants and over periods, and demands identical results, rule errors
// included.
func TestNativeMatchesCEL(t *testing.T) {
	params := mustParams(t, "sod_pairs: [[ent-a, ent-b]]\nclosing_authorities: {t: [u], u: []}\nexpiry_enforced_by: [pim]\n"+
		"access_review_interval: 720h\nreview_campaign_within: 240h\nmax_credential_age: 720h\n")
	extremeParams := mustParams(t, "sod_pairs: [[ent-a, ent-b]]\nrevoke_grace: 2000000h\ndeprovision_sla: 2000000h\n"+
		"breakglass_remove_within: 2000000h\nmax_credential_age: 2000000h\ninactive_after: 2000000h\n")
	native, plain := nativePair(t, params)
	nativeX, plainX := nativePair(t, extremeParams)
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	draws := 90
	if testing.Short() {
		draws = 40
	}
	errs, findings := 0, 0
	for i := range draws {
		r := rand.New(rand.NewPCG(uint64(i), 7))
		extreme := i%3 == 2
		src, subjects := nativeChains(r, base, extreme)
		now := base.Add(time.Duration(r.IntN(260)) * 12 * time.Hour)
		from := now
		period := i%2 == 1
		if period {
			from = now.Add(-time.Duration(1+r.IntN(119)) * 12 * time.Hour)
		}
		n, p := native, plain
		if extreme && i%2 == 0 {
			n, p = nativeX, plainX
		}
		a, b := evalBoth(t, n, p, subjects, src, from, now, period)
		sameResult(t, fmt.Sprintf("draw %d (extreme %v, period %v)", i, extreme, period), a, b)
		errs += len(a.Errors)
		findings += len(a.Findings)
	}
	// The draws must reach both: findings, and errors that the fallback
	// has to reproduce.
	if findings == 0 || errs == 0 {
		t.Errorf("random draws gave %d findings and %d rule errors: want some of each", findings, errs)
	}
	t.Logf("random: %d findings, %d rule errors, identical", findings, errs)

	t.Run("synthetic", func(t *testing.T) {
		leaves, subjects, params, asOf := synthOrg(t, 80)
		native, plain := nativePair(t, params)
		a, b := evalBoth(t, native, plain, subjects, leaves, asOf, asOf, false)
		sameResult(t, "synthetic, as of", a, b)
		a, b = evalBoth(t, native, plain, subjects, leaves, asOf.Add(-90*24*time.Hour), asOf, true)
		sameResult(t, "synthetic, period", a, b)
		if len(a.Findings) == 0 {
			t.Error("no findings on the synthetic organisation")
		}
	})
	t.Run("feeds", func(t *testing.T) {
		files, err := filepath.Glob(filepath.Join("..", "testdata", "feeds", "*.jsonl"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no story feeds: %v", err)
		}
		native, plain := nativePair(t, mustParams(t, sodParams))
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			src := parseChain(t, data)
			subjects := src.subjects()
			for _, now := range []time.Time{time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC), time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)} {
				a, b := evalBoth(t, native, plain, subjects, src, now, now, false)
				sameResult(t, filepath.Base(f), a, b)
				a, b = evalBoth(t, native, plain, subjects, src, now.AddDate(0, -6, 0), now, true)
				sameResult(t, filepath.Base(f)+" period", a, b)
			}
		}
	})
}

// TestNativeFallback: rules whose comprehensions are native but fail on
// some elements (a missing map key, an index out of range, timestamp
// overflow, a failing element before a true one in exists) give exactly
// what cel-go gives, value or error.
func TestNativeFallback(t *testing.T) {
	chain := strings.Join([]string{
		`{"id":"a1","type":"access.approved","time":"2026-01-01T00:00:00Z","subject":{"id":"alice","kind":"human"},"actor":{"id":"bob"},"entitlement":{"id":"prod-admin","privileged":true},"refs":{"request":"r1"}}`,
		`{"id":"g1","type":"grant.assigned","time":"2026-01-02T00:00:00Z","subject":{"id":"alice","kind":"human"},"entitlement":{"id":"prod-admin","privileged":true},"refs":{"grant":"g1","request":"r1"}}`,
		`{"id":"g2","type":"grant.assigned","time":"2026-01-03T00:00:00Z","subject":{"id":"alice","kind":"human"},"entitlement":{"id":"db-admin","privileged":true},"refs":{"grant":"g2","request":"r9"}}`,
		`{"id":"g3","type":"grant.assigned","time":"0001-01-02T00:00:00Z","subject":{"id":"alice","kind":"human"},"entitlement":{"id":"db-admin","privileged":true},"refs":{"grant":"g3","request":"r1"}}`,
		`{"id":"s1","type":"session.started","time":"2026-01-04T00:00:00Z","subject":{"id":"alice","kind":"human"},"entitlement":{"id":"prod-admin","privileged":true},"refs":{"session":"s1","grant":"g1"}}`,
	}, "\n")
	src := parseChain(t, []byte(chain))
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name, expr string
		natives    int    // comprehensions that must be native
		wantErr    string // "" wants no error
	}{
		{"missing key", `grants.filter(g, approval_by_request[g.request].time <= g.time).map(g, finding(g.event, [], g.id))`, 2, "no such key"},
		{"guarded key", `grants.filter(g, g.request in approval_by_request && approval_by_request[g.request].time <= g.time).map(g, finding(g.event, [], g.id))`, 2, ""},
		{"index out of range", `sessions.filter(s, s.start.approvals[3].time <= now).map(s, finding(s.start, [], s.id))`, 2, "index"},
		{"overflow", `grants.filter(g, g.time - duration("87600h") < now).map(g, finding(g.event, [], g.id))`, 2, "overflow"},
		{"overflow in a param", `grants.filter(g, g.time - params.revoke_grace < now).map(g, finding(g.event, [], g.id))`, 2, "overflow"},
		{"error then true in exists", `[subject].filter(x, grants.exists(g, approval_by_request[g.request].time <= g.time)).map(x, finding(events[0], [], x.id))`, 3, ""},
		{"map transform fails", `grants.map(g, g.privileged, finding(approval_by_request[g.request], [], g.id))`, 1, "no such key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			text := fmt.Sprintf("id: t\ntitle: T\nseverity: low\ncontrols: [PR.AA-05]\nparams:\n  revoke_grace: 87600h\nexpression: |\n  %s\n", tc.expr)
			r := mustRule(t, "t.yaml", text)
			var res [2]*Result
			for i, plainCEL := range []bool{false, true} {
				s, err := NewSetWithOptions([]*Rule{r}, Params{}, Options{CostTrackedEntries: 1, plainCEL: plainCEL})
				if err != nil {
					t.Fatal(err)
				}
				// At least tc.natives of the comprehensions are native.
				if !plainCEL && s.rules[0].natives < tc.natives {
					t.Fatalf("%s: %d comprehensions made native, want %d", tc.expr, s.rules[0].natives, tc.natives)
				}
				if res[i], err = s.Evaluate(t.Context(), []string{"alice"}, src, now); err != nil {
					t.Fatal(err)
				}
			}
			sameResult(t, tc.name, res[0], res[1])
			switch {
			case tc.wantErr == "" && len(res[0].Errors) > 0:
				t.Errorf("unexpected errors: %v", res[0].Errors)
			case tc.wantErr != "" && (len(res[0].Errors) != 1 || !strings.Contains(res[0].Errors[0].Message, tc.wantErr)):
				t.Errorf("errors %v, want one containing %q", res[0].Errors, tc.wantErr)
			}
		})
	}
}

// TestNativeCoverage: the comprehensions of the rules that cost most (docs/
// BENCHMARKS.md "Rules") are run natively; a change to the catalog or to
// native.go that silently stops that would lose the speed-up.
func TestNativeCoverage(t *testing.T) {
	set := catalogSet(t, mustParams(t, sodParams), Options{}, nil)
	plain := catalogSet(t, mustParams(t, sodParams), Options{plainCEL: true}, nil)
	got := map[string]int{}
	for _, c := range set.rules {
		got[c.rule.ID] = c.natives
	}
	for _, id := range []string{"backdated-closure", "not-independent", "approval-used-after-expiry", "access-review-missing",
		"grant-overstayed-expiry", "grant-without-approval", "approval-without-revocation", "checkout-not-rotated",
		"credential-rotation-overdue", "shared-credential-not-rotated", "jit-outlived-session", "dormant-privilege",
		"review-overdue", "session-without-approval", "foreign-closure", "activity-after-offboarding", "standing-privilege",
		"review-revocation-not-enforced", "breakglass-unreviewed"} {
		if got[id] == 0 {
			t.Errorf("%s: no comprehension runs natively", id)
		}
	}
	for _, c := range plain.rules {
		if c.natives != 0 {
			t.Errorf("%s: %d native comprehensions with plainCEL", c.rule.ID, c.natives)
		}
	}
}

// TestNativeInterrupted: a native comprehension stops at a cancelled
// context as cel-go's fold does, with the same error; so does cel-go's own
// fold when the native one falls back to it (every element has a missing
// map key here), which shows its interruption flag is set.
func TestNativeInterrupted(t *testing.T) {
	var b strings.Builder
	for i := range 500 {
		fmt.Fprintf(&b, `{"id":"g%d","type":"grant.assigned","time":"2026-01-02T00:00:00Z","subject":{"id":"alice","kind":"human"},"entitlement":{"id":"e","privileged":true},"refs":{"grant":"g%d","request":"r%d"}}`+"\n", i, i, i)
	}
	src := parseChain(t, []byte(b.String()))
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	for _, expr := range []string{
		`grants.filter(g, g.privileged && g.time <= now).map(g, finding(g.event, [], g.id))`,
		`grants.filter(g, approval_by_request[g.request].time <= g.time).map(g, finding(g.event, [], g.id))`,
	} {
		r := mustRule(t, "t.yaml", "id: t\ntitle: T\nseverity: low\ncontrols: [PR.AA-05]\nexpression: |\n  "+expr+"\n")
		var msgs [2]string
		for i, plainCEL := range []bool{false, true} {
			s, err := NewSetWithOptions([]*Rule{r}, Params{}, Options{plainCEL: plainCEL})
			if err != nil {
				t.Fatal(err)
			}
			c := s.rules[0]
			if !plainCEL && c.natives == 0 {
				t.Fatal("the filter is not native")
			}
			chain, _ := src.Chain(t.Context(), "alice")
			v, err := buildViews("alice", chain, now, nil)
			if err != nil {
				t.Fatal(err)
			}
			act := &activation{vals: subjectVals(c.rule.env.CELTypeAdapter(), v, now, now), params: c.params}
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			_, _, err = c.long.ContextEval(ctx, act)
			v.release()
			if err == nil {
				t.Fatalf("%s, plainCEL=%v: no error from a cancelled evaluation", expr, plainCEL)
			}
			msgs[i] = err.Error()
		}
		if msgs[0] != msgs[1] || !strings.Contains(msgs[0], "operation interrupted") {
			t.Errorf("%s: native %q, cel-go %q: want the same interruption error", expr, msgs[0], msgs[1])
		}
	}
}
