// Package oracle is a second, deliberately plain reading of the built-in
// catalog (docs/rules.md), written in Go without CEL, loops over the chain
// and nothing clever. It exists only
// to check the CEL catalog: tests run both on the same chains and demand the
// same findings, finding for finding. It is not used by the server.
package oracle

import (
	"slices"
	"sort"
	"time"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// Entry is one ledger entry of a chain.
type Entry struct {
	Index uint64
	Event *pb.Event
}

// Finding is what a rule yields: the cited entry indices, primary first.
type Finding struct {
	Rule     string
	Subject  string
	Entries  []uint64
	Exposure int64 // seconds; only for rules that carry exposure
	// Opened and Closed: when the finding was open (docs/rules.md
	// "Periods"); Closed is zero while open at the as-of time.
	Opened, Closed time.Time
}

// window is when a finding was open, as this reading works it out.
type window struct {
	opened   time.Time
	closing  *Entry // nil: open at now
	point    bool   // an occurrence: closed at opened
	exposure bool   // privilege outlived its purpose from opened on
}

// Params are the rule parameters of docs/rules.md.
type Params struct {
	RevokeGrace, JITGrace, DeprovisionSLA, ReviewInterval, DormantAfter      time.Duration
	MaxCredentialAge, MaxCheckout, BreakglassReviewWithin, MoverReviewWithin time.Duration
	SoDPairs                                                                 [][2]string
	// Round 2 (round2.go).
	MaxBackdate, InactiveAfter, BreakglassRemoveWithin time.Duration
	ClosingAuthorities                                 map[string][]string
	// Reviews of everything in scope (rules 35, 36; round2.go).
	AccessReviewInterval, ReviewCampaignWithin time.Duration
	// ExpiryEnforcedBy lists the source systems that end grants at
	// expires_at themselves; grant-overstayed-expiry skips their grants.
	ExpiryEnforcedBy []string
}

// Defaults are the defaults of docs/rules.md.
func Defaults() Params {
	h := time.Hour
	return Params{
		RevokeGrace: 15 * time.Minute, JITGrace: 15 * time.Minute, DeprovisionSLA: 24 * h,
		ReviewInterval: 2160 * h, DormantAfter: 2160 * h, MaxCredentialAge: 2160 * h,
		MaxCheckout: 8 * h, BreakglassReviewWithin: 72 * h, MoverReviewWithin: 720 * h,
		MaxBackdate: 24 * h, InactiveAfter: 2160 * h, BreakglassRemoveWithin: 24 * h,
		AccessReviewInterval: 4380 * h, ReviewCampaignWithin: 720 * h,
	}
}

// Owner returns the chain of another subject (for orphaned-nhi).
type Owner func(subject string) []Entry

type chain struct {
	subject string
	es      []Entry
	now     time.Time
	from    time.Time
	p       Params
}

// upTo is es without the entries dated after now: they are in no chain.
func upTo(es []Entry, now time.Time) []Entry {
	var out []Entry
	for _, e := range es {
		if !tm(e).After(now) {
			out = append(out, e)
		}
	}
	return out
}

// before reports whether a comes before b in chain order.
func before(a, b Entry) bool {
	if !tm(a).Equal(tm(b)) {
		return tm(a).Before(tm(b))
	}
	return a.Index < b.Index
}

// firstOf is the first of es in chain order.
func firstOf(es ...Entry) *Entry {
	var best *Entry
	for i := range es {
		if best == nil || before(es[i], *best) {
			best = &es[i]
		}
	}
	return best
}

// firstEnd is grant g's first end event in chain order.
func (c *chain) firstEnd(g string) *Entry {
	for i, e := range c.es {
		if isEnd(e, g) {
			return &c.es[i]
		}
	}
	return nil
}

func tm(e Entry) time.Time { return e.Event.GetTime().AsTime() }

func sorted(es []Entry) []Entry {
	out := append([]Entry(nil), es...)
	sort.SliceStable(out, func(i, j int) bool {
		ti, tj := tm(out[i]), tm(out[j])
		if !ti.Equal(tj) {
			return ti.Before(tj)
		}
		return out[i].Index < out[j].Index
	})
	return out
}

func isGrantEvent(e Entry) bool {
	t := e.Event.GetType()
	return (t == "grant.assigned" || t == "grant.activated") && e.Event.GetRefs().GetGrant() != ""
}

func isEnd(e Entry, g string) bool {
	t := e.Event.GetType()
	return (t == "grant.deactivated" || t == "grant.removed" || t == "grant.expired") && e.Event.GetRefs().GetGrant() == g
}

// endedBy reports whether grant g has an end event with time <= t.
func (c *chain) endedBy(g string, t time.Time) bool {
	for _, e := range c.es {
		if isEnd(e, g) && !tm(e).After(t) {
			return true
		}
	}
	return false
}

// lateEnd is the first end event of g strictly after t.
func (c *chain) lateEnd(g string, t time.Time) (Entry, bool) {
	for _, e := range c.es {
		if isEnd(e, g) && tm(e).After(t) {
			return e, true
		}
	}
	return Entry{}, false
}

func (c *chain) inForce(ge Entry, t time.Time) bool {
	return !tm(ge).After(t) && !c.endedBy(ge.Event.GetRefs().GetGrant(), t)
}

func (c *chain) grantPrivileged(g string) bool {
	for _, e := range c.es {
		if isGrantEvent(e) && e.Event.GetRefs().GetGrant() == g && e.Event.GetEntitlement().GetPrivileged() {
			return true
		}
	}
	return false
}

func (c *chain) privileged(e Entry) bool {
	if e.Event.GetEntitlement().GetPrivileged() {
		return true
	}
	if e.Event.GetType() == "session.started" && e.Event.GetRefs().GetGrant() != "" {
		return c.grantPrivileged(e.Event.GetRefs().GetGrant())
	}
	return false
}

// grantRequests returns the requests of the grant events of g.
func (c *chain) grantUnderRequest(g, r string) bool {
	if g == "" || r == "" {
		return false
	}
	for _, e := range c.es {
		if isGrantEvent(e) && e.Event.GetRefs().GetGrant() == g && e.Event.GetRefs().GetRequest() == r {
			return true
		}
	}
	return false
}

// under reports whether e is under the approval with request r.
func (c *chain) under(e Entry, r string) bool {
	if r == "" {
		return false
	}
	if e.Event.GetRefs().GetRequest() == r {
		return true
	}
	return c.grantUnderRequest(e.Event.GetRefs().GetGrant(), r)
}

// together reports whether grant events x and y were both in force at
// some instant of [from, now].
func (c *chain) together(x, y Entry) bool {
	t := c.from
	for _, g := range []Entry{x, y} {
		if tm(g).After(t) {
			t = tm(g)
		}
	}
	return !t.After(c.now) && c.inForce(x, t) && c.inForce(y, t)
}

// lapse is the latest stretch meeting [from, now] in which grant event
// ge's grant was in force with neither ge nor an event of type anchor for
// the grant (at or after ge) within d before: it opens d after ge or such
// an event, and closes at the next one or the grant's first end.
func (c *chain) lapse(ge Entry, anchor string, d time.Duration) (window, bool) {
	g := ge.Event.GetRefs().GetGrant()
	var anchors []Entry
	for _, x := range c.es {
		if x.Event.GetType() == anchor && x.Event.GetRefs().GetGrant() == g {
			anchors = append(anchors, x)
		}
	}
	return c.lapseOf(ge, c.firstEnd(g), anchors, d)
}

// Evaluate runs every rule that reads one chain (all but backdated-closure,
// see EvaluateLog) over one subject's chain at now.
func Evaluate(subject string, es []Entry, now time.Time, p Params, owner Owner) []Finding {
	return evaluate(subject, es, now, now, false, p, owner)
}

// EvaluatePeriod runs the same rules over [from, to]: the findings open at
// some instant of it, exposure clipped to it.
func EvaluatePeriod(subject string, es []Entry, from, to time.Time, p Params, owner Owner) []Finding {
	return evaluate(subject, es, from, to, true, p, owner)
}

func evaluate(subject string, es []Entry, from, now time.Time, period bool, p Params, owner Owner) []Finding {
	c := &chain{subject: subject, es: upTo(sorted(es), now), now: now, from: from, p: p}
	if owner != nil {
		full := owner
		owner = func(o string) []Entry { return upTo(full(o), now) }
	}
	var out []Finding
	add := func(rule string, w window, idx ...uint64) {
		f := Finding{Rule: rule, Subject: subject, Entries: idx, Opened: w.opened}
		switch {
		case w.point:
			f.Closed = w.opened
		case w.closing != nil:
			f.Closed = tm(*w.closing)
			if !f.Closed.After(w.opened) {
				return // never open
			}
			cited := false
			for _, i := range idx {
				cited = cited || i == w.closing.Index
			}
			if !cited {
				f.Entries = append(f.Entries, w.closing.Index)
			}
		}
		if period {
			if w.opened.After(now) || (w.point && w.opened.Before(from)) || (!w.point && !f.Closed.IsZero() && !f.Closed.After(from)) {
				return
			}
		}
		if w.exposure {
			start, end := w.opened, now
			if !f.Closed.IsZero() {
				end = f.Closed
			}
			if period && start.Before(from) {
				start = from
			}
			if end.After(start) {
				f.Exposure = int64(end.Sub(start) / time.Second)
			}
		}
		out = append(out, f)
	}
	exposed := func(deadline time.Time, late Entry, hasLate bool) window {
		w := window{opened: deadline, exposure: true}
		if hasLate {
			w.closing = &late
		}
		return w
	}
	instant := func(e Entry) window { return window{opened: tm(e), point: true} }
	typ := func(e Entry) string { return e.Event.GetType() }

	for _, a := range c.es {
		ev := a.Event
		switch typ(a) {
		case "access.approved":
			// 1 approval-without-revocation
			if ev.GetEntitlement().GetPrivileged() {
				r := ev.GetRefs().GetRequest()
				var closing []Entry
				for _, x := range c.es {
					if tm(x).Before(tm(a)) {
						continue
					}
					xt := typ(x)
					if (xt == "access.revoked" || xt == "access.expired") && r != "" && x.Event.GetRefs().GetRequest() == r {
						closing = append(closing, x)
					} else if (xt == "grant.deactivated" || xt == "grant.removed" || xt == "grant.expired") && c.grantUnderRequest(x.Event.GetRefs().GetGrant(), r) {
						closing = append(closing, x)
					}
				}
				if ev.GetExpiresAt() != nil {
					deadline := ev.GetExpiresAt().AsTime().Add(p.RevokeGrace)
					closedBy := false
					var late Entry
					hasLate := false
					for _, x := range closing {
						if !tm(x).After(deadline) {
							closedBy = true
						} else if !hasLate {
							late, hasLate = x, true
						}
					}
					if !closedBy && now.After(deadline) {
						if hasLate {
							add("approval-without-revocation", exposed(deadline, late, true), a.Index, late.Index)
						} else {
							add("approval-without-revocation", exposed(deadline, late, false), a.Index)
						}
					}
				} else {
					// A standing approval is open from A until its first
					// closing; one closed by from was not open in the period.
					closedByFrom := false
					for _, x := range closing {
						if !tm(x).After(c.from) {
							closedByFrom = true
						}
					}
					if !closedByFrom {
						add("approval-without-revocation", window{opened: tm(a), closing: firstOf(closing...)}, a.Index)
					}
				}
			}
			// 9 self-approval
			if ev.GetActor().GetId() != "" && ev.GetActor().GetId() == ev.GetSubject().GetId() {
				add("self-approval", instant(a), a.Index)
			}
		}

		if isGrantEvent(a) {
			g := ev.GetRefs().GetGrant()
			// 2 standing-privilege
			if ev.GetEntitlement().GetPrivileged() && ev.GetExpiresAt() == nil && !c.endedBy(g, c.from) {
				add("standing-privilege", window{opened: tm(a), closing: c.firstEnd(g)}, a.Index)
			}
			// 3 grant-overstayed-expiry
			if ev.GetExpiresAt() != nil && !slices.Contains(p.ExpiryEnforcedBy, ev.GetSource().GetSystem()) {
				deadline := ev.GetExpiresAt().AsTime().Add(p.RevokeGrace)
				if now.After(deadline) && !c.endedBy(g, deadline) {
					late, ok := c.lateEnd(g, deadline)
					if ok {
						add("grant-overstayed-expiry", exposed(deadline, late, true), a.Index, late.Index)
					} else {
						add("grant-overstayed-expiry", exposed(deadline, late, false), a.Index)
					}
				}
			}
			// 4 jit-outlived-session
			if typ(a) == "grant.activated" {
				var firstEnd Entry
				has := false
				for _, s := range c.es {
					if typ(s) != "session.started" || s.Event.GetRefs().GetGrant() != g || s.Event.GetRefs().GetSession() == "" {
						continue
					}
					if se, ok := c.sessionEnd(s); ok {
						if !has || tm(se).Before(tm(firstEnd)) || (tm(se).Equal(tm(firstEnd)) && se.Index < firstEnd.Index) {
							firstEnd, has = se, true
						}
					}
				}
				if has {
					deadline := tm(firstEnd).Add(p.JITGrace)
					if now.After(deadline) && !c.endedBy(g, deadline) {
						late, ok := c.lateEnd(g, deadline)
						add("jit-outlived-session", exposed(deadline, late, ok), a.Index, firstEnd.Index)
					}
				}
			}
			// 6 leaver-access-retained
			for _, t := range c.es {
				if typ(t) != "identity.terminated" {
					continue
				}
				if !c.inForce(a, tm(t)) {
					continue
				}
				deadline := tm(t).Add(p.DeprovisionSLA)
				if now.After(deadline) && !c.endedBy(g, deadline) {
					late, ok := c.lateEnd(g, deadline)
					add("leaver-access-retained", exposed(deadline, late, ok), a.Index, t.Index)
					break
				}
			}
			// 15 review-overdue and 17 dormant-privilege
			if typ(a) == "grant.assigned" && ev.GetEntitlement().GetPrivileged() {
				if w, ok := c.lapse(a, "review.certified", p.ReviewInterval); ok {
					add("review-overdue", w, a.Index)
				}
				if w, ok := c.lapse(a, "session.started", p.DormantAfter); ok {
					add("dormant-privilege", w, a.Index)
				}
			}
			// 18 mover-access-retained
			for _, m := range c.es {
				if typ(m) != "identity.moved" || !c.inForce(a, tm(m)) {
					continue
				}
				deadline := tm(m).Add(p.MoverReviewWithin)
				if !now.After(deadline) || c.endedBy(g, deadline) {
					continue
				}
				certified := false
				for _, r := range c.es {
					if typ(r) == "review.certified" && r.Event.GetRefs().GetGrant() == g &&
						!tm(r).Before(tm(m)) && !tm(r).After(deadline) {
						certified = true
					}
				}
				if !certified {
					// Closed by the first end or certification after the deadline.
					var closers []Entry
					for _, x := range c.es {
						if tm(x).After(deadline) && (isEnd(x, g) ||
							(typ(x) == "review.certified" && x.Event.GetRefs().GetGrant() == g)) {
							closers = append(closers, x)
						}
					}
					add("mover-access-retained", window{opened: deadline, closing: firstOf(closers...)}, a.Index, m.Index)
					break
				}
			}
		}

		switch typ(a) {
		case "session.started", "grant.assigned", "grant.activated", "credential.checked_out":
			// 5 activity-after-offboarding: the latest termination or disable
			// before a, with no enable strictly between.
			var last Entry
			found := false
			for _, t := range c.es {
				if (typ(t) == "identity.terminated" || typ(t) == "identity.disabled") && tm(t).Before(tm(a)) {
					last, found = t, true
				}
			}
			if found {
				reenabled := false
				for _, x := range c.es {
					if typ(x) == "identity.enabled" && tm(x).After(tm(last)) && tm(x).Before(tm(a)) {
						reenabled = true
					}
				}
				if !reenabled {
					add("activity-after-offboarding", instant(a), a.Index, last.Index)
				}
			}
		}

		if typ(a) == "session.started" && c.privileged(a) {
			// 7 session-without-approval
			approved := false
			for _, x := range c.es {
				if typ(x) == "access.approved" && !tm(x).After(tm(a)) && c.under(a, x.Event.GetRefs().GetRequest()) {
					approved = true
				}
			}
			if !approved {
				add("session-without-approval", instant(a), a.Index)
			}
			// 14 privileged-session-without-mfa
			if ev.Mfa != nil && !ev.GetMfa() {
				add("privileged-session-without-mfa", instant(a), a.Index)
			}
		}

		// 8 approval-used-after-expiry
		if typ(a) == "session.started" || typ(a) == "grant.activated" {
			for _, x := range c.es {
				if typ(x) == "access.approved" && x.Event.GetExpiresAt() != nil &&
					c.under(a, x.Event.GetRefs().GetRequest()) && !x.Event.GetExpiresAt().AsTime().After(tm(a)) {
					add("approval-used-after-expiry", instant(a), a.Index, x.Index)
					break
				}
			}
		}

		// 11 breakglass-unreviewed
		if typ(a) == "breakglass.invoked" || ((typ(a) == "session.started" || typ(a) == "grant.activated") && ev.GetBreakglass()) {
			end := tm(a).Add(p.BreakglassReviewWithin)
			if now.After(end) {
				r := ev.GetRefs().GetRequest()
				reviewed := false
				for _, x := range c.es {
					if typ(x) == "breakglass.reviewed" && r != "" && x.Event.GetRefs().GetRequest() == r &&
						!tm(x).Before(tm(a)) && !tm(x).After(end) {
						reviewed = true
					}
				}
				if !reviewed {
					// A late review closes it.
					var late []Entry
					for _, x := range c.es {
						if typ(x) == "breakglass.reviewed" && r != "" && x.Event.GetRefs().GetRequest() == r && tm(x).After(end) {
							late = append(late, x)
						}
					}
					add("breakglass-unreviewed", window{opened: end, closing: firstOf(late...)}, a.Index)
				}
			}
		}

		// 13 checkout-not-rotated
		if deadline := tm(a).Add(p.MaxCheckout); typ(a) == "credential.checked_out" && now.After(deadline) {
			cred := ev.GetRefs().GetCredential()
			var done []Entry
			for _, x := range c.es {
				if (typ(x) == "credential.rotated" || typ(x) == "credential.revoked") && x.Event.GetRefs().GetCredential() == cred && tm(x).After(tm(a)) {
					done = append(done, x)
				}
			}
			first := firstOf(done...)
			if first == nil || (tm(*first).After(deadline) && tm(*first).After(c.from)) {
				add("checkout-not-rotated", window{opened: deadline, closing: first}, a.Index)
			}
		}

		// 16 review-revocation-not-enforced
		if typ(a) == "review.revoked" && ev.GetRefs().GetGrant() != "" {
			g := ev.GetRefs().GetGrant()
			deadline := tm(a).Add(p.DeprovisionSLA)
			if now.After(deadline) && !c.endedBy(g, deadline) {
				late, ok := c.lateEnd(g, deadline)
				// docs/rules.md does not say which grant event of g to cite when
				// there are several: we cite the latest in the chain.
				idx := []uint64{a.Index}
				var ge Entry
				hasGE := false
				for _, x := range c.es {
					if isGrantEvent(x) && x.Event.GetRefs().GetGrant() == g {
						ge, hasGE = x, true
					}
				}
				if hasGE {
					idx = append(idx, ge.Index)
				}
				add("review-revocation-not-enforced", exposed(deadline, late, ok), idx...)
			}
		}
	}

	// 10 sod-conflict: the latest grant of a in force together with a
	// grant of b at some instant of [from, now], and the latest such grant
	// of b; open from the later grant event to the earlier first end.
	for _, pair := range p.SoDPairs {
		var ga, gb *Entry
		for i, x := range c.es {
			if !isGrantEvent(x) || x.Event.GetEntitlement().GetId() != pair[0] {
				continue
			}
			for _, y := range c.es {
				if isGrantEvent(y) && y.Event.GetEntitlement().GetId() == pair[1] && c.together(x, y) {
					ga = &c.es[i]
					break
				}
			}
		}
		if ga == nil {
			continue
		}
		for j, y := range c.es {
			if isGrantEvent(y) && y.Event.GetEntitlement().GetId() == pair[1] && c.together(*ga, y) {
				gb = &c.es[j]
			}
		}
		w := window{opened: tm(*ga)}
		if tm(*gb).After(w.opened) {
			w.opened = tm(*gb)
		}
		var ends []Entry
		for _, g := range []*Entry{ga, gb} {
			if e := c.firstEnd(g.Event.GetRefs().GetGrant()); e != nil {
				ends = append(ends, *e)
			}
		}
		w.closing = firstOf(ends...)
		add("sod-conflict", w, ga.Index, gb.Index)
	}

	// 12 credential-rotation-overdue
	creds := map[string]bool{}
	for _, e := range c.es {
		if cr := e.Event.GetRefs().GetCredential(); cr != "" {
			creds[cr] = true
		}
	}
	// Each created/rotated event L is overdue from L + max age until the
	// next created/rotated event after it or a revocation, the earlier.
	for cr := range creds {
		for i, l := range c.es {
			if l.Event.GetRefs().GetCredential() != cr || (typ(l) != "credential.created" && typ(l) != "credential.rotated") {
				continue
			}
			opened := tm(l).Add(p.MaxCredentialAge)
			if !now.After(opened) {
				continue
			}
			var closers []Entry
			for j, x := range c.es {
				if x.Event.GetRefs().GetCredential() != cr {
					continue
				}
				if typ(x) == "credential.revoked" || (j > i && (typ(x) == "credential.created" || typ(x) == "credential.rotated")) {
					closers = append(closers, x)
				}
			}
			ok := true
			for _, x := range closers {
				if !tm(x).After(opened) || !tm(x).After(c.from) {
					ok = false
				}
			}
			if ok {
				add("credential-rotation-overdue", window{opened: opened, closing: firstOf(closers...)}, l.Index)
			}
		}
	}

	// 19 orphaned-nhi
	kind, ownerID := "", ""
	for _, e := range c.es {
		if k := e.Event.GetSubject().GetKind(); k != "" {
			kind = k
		}
		if o := e.Event.GetSubject().GetOwnerId(); o != "" {
			ownerID = o
		}
	}
	// A subject with an owner but no recorded kind counts as non-human: an
	// owner is by definition the accountable human of a non-human identity.
	// Each grant is cited once, with the owner's first termination after
	// whose deadline it was still in force.
	if kind != "human" && ownerID != "" && ownerID != subject && owner != nil { // a self-owned subject has no owner chain (as the engine)
		oc := sorted(owner(ownerID))
		for _, g := range c.es {
			if !isGrantEvent(g) {
				continue
			}
			for _, term := range oc {
				if term.Event.GetType() != "identity.terminated" {
					continue
				}
				deadline := tm(term).Add(p.DeprovisionSLA)
				if now.After(deadline) && c.inForce(g, deadline) {
					late, ok := c.lateEnd(g.Event.GetRefs().GetGrant(), deadline)
					add("orphaned-nhi", exposed(deadline, late, ok), g.Index, term.Index)
					break
				}
			}
		}
	}

	c.round2(func(rule string, w window, idx ...uint64) { add(rule, w, idx...) }, owner)
	c.reviews(func(rule string, w window, idx ...uint64) { add(rule, w, idx...) })

	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Rule != out[j].Rule {
			return out[i].Rule < out[j].Rule
		}
		return out[i].Entries[0] < out[j].Entries[0]
	})
	return out
}

// sessionEnd is the first session.ended or session.revoked of the session
// that start opened, after it in chain order: an end recorded before a
// session started cannot end it.
func (c *chain) sessionEnd(start Entry) (Entry, bool) {
	s := start.Event.GetRefs().GetSession()
	seen := false
	for _, e := range c.es {
		if e.Index == start.Index {
			seen = true
			continue
		}
		if seen && (e.Event.GetType() == "session.ended" || e.Event.GetType() == "session.revoked") && e.Event.GetRefs().GetSession() == s {
			return e, true
		}
	}
	return Entry{}, false
}

// latestInForce is the latest grant event of entitlement id that is in force at now.
func (c *chain) latestInForce(id string) (Entry, bool) {
	var best Entry
	has := false
	for _, e := range c.es {
		if isGrantEvent(e) && e.Event.GetEntitlement().GetId() == id && c.inForce(e, c.now) {
			best, has = e, true
		}
	}
	return best, has
}
