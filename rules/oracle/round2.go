package oracle

import (
	"slices"
	"sort"
	"time"
)

// closing reports whether e is a closing event (docs/rules.md "Closing events"): an end
// event of a grant (with refs.grant), access.revoked, access.expired,
// session.ended, session.revoked, credential.rotated or credential.revoked.
func closing(e Entry) bool {
	switch e.Event.GetType() {
	case "access.revoked", "access.expired", "session.ended", "session.revoked",
		"credential.rotated", "credential.revoked":
		return true
	case "grant.deactivated", "grant.removed", "grant.expired":
		return e.Event.GetRefs().GetGrant() != ""
	}
	return false
}

// opening is the earliest event of the chain (in chain order) that opened
// what the closing event x closes; an empty ref opens nothing.
func (c *chain) opening(x Entry) (Entry, bool) {
	r := x.Event.GetRefs()
	var want []string
	var id string
	switch x.Event.GetType() {
	case "access.revoked", "access.expired":
		want, id = []string{"access.approved"}, r.GetRequest()
	case "session.ended", "session.revoked":
		want, id = []string{"session.started"}, r.GetSession()
	case "credential.rotated", "credential.revoked":
		want, id = []string{"credential.created", "credential.checked_out"}, r.GetCredential()
	default:
		want, id = []string{"grant.assigned", "grant.activated"}, r.GetGrant()
	}
	if id == "" {
		return Entry{}, false
	}
	for _, e := range c.es {
		if !slices.Contains(want, e.Event.GetType()) {
			continue
		}
		er := e.Event.GetRefs()
		var eid string
		switch want[0] {
		case "access.approved":
			eid = er.GetRequest()
		case "session.started":
			eid = er.GetSession()
		case "credential.created":
			eid = er.GetCredential()
		default:
			eid = er.GetGrant()
		}
		if eid == id {
			return e, true
		}
	}
	return Entry{}, false
}

var nonHuman = []string{"service_account", "workload", "bot", "system"}

// kind is the latest non-empty subject.kind of the chain.
func (c *chain) kind() string {
	k := ""
	for _, e := range c.es {
		if x := e.Event.GetSubject().GetKind(); x != "" {
			k = x
		}
	}
	return k
}

// round2 runs the rules added in round 2 that read only this chain,
// reporting through add (evaluate's, which applies the window).
func (c *chain) round2(add func(rule string, w window, idx ...uint64), owner Owner) {
	instant := func(e Entry) window { return window{opened: tm(e), point: true} }
	typ := func(e Entry) string { return e.Event.GetType() }
	kind := c.kind()
	p := c.p
	now := c.now
	for _, x := range c.es {
		ev := x.Event
		// 22 grant-without-approval
		if isGrantEvent(x) && ev.GetEntitlement().GetPrivileged() && !ev.GetBreakglass() {
			approved := false
			for _, a := range c.es {
				if typ(a) != "access.approved" || tm(a).After(tm(x)) {
					continue
				}
				r, ent := ev.GetRefs().GetRequest(), ev.GetEntitlement().GetId()
				if (r != "" && a.Event.GetRefs().GetRequest() == r) || (ent != "" && a.Event.GetEntitlement().GetId() == ent) {
					approved = true
				}
			}
			if !approved {
				add("grant-without-approval", instant(x), x.Index)
			}
		}
		// 23 not-independent
		actor := ev.GetActor().GetId()
		switch typ(x) {
		case "access.approved":
			r := ev.GetRefs().GetRequest()
			if r == "" || actor == "" || ev.GetActor().GetKind() == "system" {
				break
			}
			done := false
			for _, g := range c.es {
				if isGrantEvent(g) && g.Event.GetRefs().GetRequest() == r && g.Event.GetActor().GetId() == actor {
					add("not-independent", instant(x), x.Index, g.Index)
					done = true
					break
				}
			}
			if done {
				break
			}
			for _, q := range c.es {
				if typ(q) == "access.requested" && q.Event.GetRefs().GetRequest() == r &&
					q.Event.GetActor().GetId() == actor && actor != c.subject {
					add("not-independent", instant(x), x.Index, q.Index)
					break
				}
			}
		case "review.certified", "breakglass.reviewed":
			if actor != "" && actor == c.subject {
				add("not-independent", instant(x), x.Index)
			}
		}
		// 25 leaver-account-not-disabled
		if typ(x) == "account.created" && ev.GetEntitlement().GetResource() != "" {
			res := ev.GetEntitlement().GetResource()
			var term Entry
			hasTerm := false
			for _, t := range c.es {
				if typ(t) == "identity.terminated" && !tm(t).Before(tm(x)) {
					term, hasTerm = t, true
					break
				}
			}
			if hasTerm {
				deadline := tm(term).Add(p.DeprovisionSLA)
				var d Entry
				hasD := false
				for _, y := range c.es {
					if typ(y) == "account.disabled" && y.Event.GetEntitlement().GetResource() == res && !tm(y).Before(tm(x)) {
						d, hasD = y, true
						break
					}
				}
				if now.After(deadline) && (!hasD || tm(d).After(deadline)) {
					w := window{opened: deadline, exposure: true}
					if hasD {
						w.closing = &d
					}
					add("leaver-account-not-disabled", w, x.Index, term.Index)
				}
			}
		}
		// 26 shared-credential-not-rotated
		if typ(x) == "credential.checked_out" && ev.GetRefs().GetCredential() != "" {
			cred := ev.GetRefs().GetCredential()
			// The holder: the checkout's actor, or the subject when none.
			holderChain := c.es
			if h := ev.GetActor().GetId(); h != "" && h != c.subject {
				holderChain = nil
				if owner != nil {
					holderChain = sorted(owner(h))
				}
			}
			var l Entry
			hasL := false
			for _, y := range holderChain {
				if (typ(y) == "identity.terminated" || typ(y) == "identity.moved") && tm(y).After(tm(x)) {
					l, hasL = y, true
					break
				}
			}
			if hasL {
				deadline := tm(l).Add(p.DeprovisionSLA)
				var r Entry
				hasR := false
				for _, y := range c.es {
					if (typ(y) == "credential.rotated" || typ(y) == "credential.revoked") && y.Event.GetRefs().GetCredential() == cred && tm(y).After(tm(x)) {
						r, hasR = y, true
						break
					}
				}
				if now.After(deadline) && (!hasR || tm(r).After(deadline)) {
					w := window{opened: deadline, exposure: true}
					if hasR {
						w.closing = &r
					}
					add("shared-credential-not-rotated", w, x.Index, l.Index)
				}
			}
		}
		// 27 nhi-interactive-session, 31 privileged-session-mfa-unrecorded
		if typ(x) == "session.started" {
			if slices.Contains(nonHuman, kind) && ev.GetActor().GetKind() == "human" {
				var a Entry
				hasA := false
				for _, y := range c.es {
					if typ(y) == "access.approved" && !tm(y).After(tm(x)) && c.under(x, y.Event.GetRefs().GetRequest()) {
						a, hasA = y, true // the latest in chain order
					}
				}
				switch {
				case !hasA && ev.GetRefs().GetTicket() == "":
					add("nhi-interactive-session", instant(x), x.Index)
				case hasA && a.Event.GetExpiresAt() != nil && !a.Event.GetExpiresAt().AsTime().After(tm(x)):
					add("nhi-interactive-session", instant(x), x.Index, a.Index)
				}
			}
			if c.privileged(x) && ev.Mfa == nil {
				add("privileged-session-mfa-unrecorded", instant(x), x.Index)
			}
		}
		// 28 breakglass-access-retained
		if isGrantEvent(x) && ev.GetBreakglass() {
			deadline := tm(x).Add(p.BreakglassRemoveWithin)
			g := ev.GetRefs().GetGrant()
			if now.After(deadline) && !c.endedBy(g, deadline) {
				late, ok := c.lateEnd(g, deadline)
				w := window{opened: deadline, exposure: true}
				if ok {
					w.closing = &late
				}
				add("breakglass-access-retained", w, x.Index)
			}
		}
		// 29 breakglass-credential-not-rotated
		if (typ(x) == "breakglass.invoked" || ((typ(x) == "session.started" || typ(x) == "grant.activated") && ev.GetBreakglass())) &&
			ev.GetRefs().GetCredential() != "" {
			deadline := tm(x).Add(p.BreakglassRemoveWithin)
			var r Entry
			hasR := false
			for _, y := range c.es {
				if (typ(y) == "credential.rotated" || typ(y) == "credential.revoked") && y.Event.GetRefs().GetCredential() == ev.GetRefs().GetCredential() && tm(y).After(tm(x)) {
					r, hasR = y, true
					break
				}
			}
			if now.After(deadline) && (!hasR || tm(r).After(deadline)) {
				w := window{opened: deadline}
				if hasR {
					w.closing = &r
				}
				add("breakglass-credential-not-rotated", w, x.Index)
			}
		}
		// 30 third-party-outside-window
		switch typ(x) {
		case "session.started", "grant.assigned", "grant.activated", "credential.checked_out", "auth.succeeded":
			if kind != "vendor" && kind != "contractor" {
				break
			}
			inside := false
			var last Entry
			hasLast := false
			for _, w := range c.es {
				if (typ(w) != "identity.created" && typ(w) != "identity.enabled") || w.Event.GetExpiresAt() == nil {
					continue
				}
				if !tm(w).After(tm(x)) && !tm(x).After(w.Event.GetExpiresAt().AsTime()) {
					inside = true
				}
				if tm(w).Before(tm(x)) {
					last, hasLast = w, true
				}
			}
			if !inside {
				if hasLast {
					add("third-party-outside-window", instant(x), x.Index, last.Index)
				} else {
					add("third-party-outside-window", instant(x), x.Index)
				}
			}
		}
		// 34 secret-without-expiry
		if typ(x) == "credential.created" && ev.GetExpiresAt() == nil && slices.Contains(nonHuman, kind) {
			add("secret-without-expiry", instant(x), x.Index)
		}
		// 21 foreign-closure
		if closing(x) {
			if o, ok := c.opening(x); ok {
				cs, os := x.Event.GetSource().GetSystem(), o.Event.GetSource().GetSystem()
				if cs != os && !slices.Contains(c.p.ClosingAuthorities[cs], os) {
					add("foreign-closure", instant(x), x.Index, o.Index)
				}
			}
		}
	}

	// 24 account-inactive
	var lastUse, lastOff, lastOn Entry
	hasUse, hasOff, hasOn := false, false, false
	for _, e := range c.es {
		switch typ(e) {
		case "auth.succeeded", "session.started":
			lastUse, hasUse = e, true
		case "identity.terminated", "identity.disabled":
			lastOff, hasOff = e, true
		case "identity.enabled":
			lastOn, hasOn = e, true
		}
	}
	active := !hasOff || (hasOn && before(lastOff, lastOn))
	if hasUse && active && now.Sub(tm(lastUse)) > p.InactiveAfter {
		add("account-inactive", window{opened: tm(lastUse).Add(p.InactiveAfter)}, lastUse.Index)
	}

	// 32 nhi-without-owner, 33 nhi-owner-moved
	if slices.Contains(nonHuman, kind) && len(c.es) > 0 {
		var stated Entry
		hasStated := false
		for _, e := range c.es {
			if e.Event.GetSubject().GetOwnerId() != "" {
				stated, hasStated = e, true
			}
		}
		if !hasStated {
			add("nhi-without-owner", window{opened: tm(c.es[0])}, c.es[0].Index)
		} else if owner != nil {
			o := stated.Event.GetSubject().GetOwnerId()
			if o != c.subject {
				for _, m := range sorted(owner(o)) {
					if m.Event.GetType() == "identity.moved" && tm(m).After(tm(stated)) {
						add("nhi-owner-moved", window{opened: tm(m)}, stated.Index, m.Index)
						break
					}
				}
			}
		}
	}
}

// EvaluateLog runs every rule over every subject of log (all the entries of
// the tree being evaluated, in any order) at now. Entries dated after now
// are in no chain. backdated-closure, which compares an entry with the
// entries of every subject, runs only here and in EvaluateLogPeriod.
func EvaluateLog(log []Entry, now time.Time, p Params) []Finding {
	return evaluateLog(log, now, now, false, p)
}

// EvaluateLogPeriod is EvaluateLog over the period [from, to].
func EvaluateLogPeriod(log []Entry, from, to time.Time, p Params) []Finding {
	return evaluateLog(log, from, to, true, p)
}

func evaluateLog(log []Entry, from, now time.Time, period bool, p Params) []Finding {
	chains := map[string][]Entry{}
	for _, e := range log {
		s := e.Event.GetSubject().GetId()
		chains[s] = append(chains[s], e)
	}
	var subjects []string
	for s := range chains {
		subjects = append(subjects, s)
	}
	sort.Strings(subjects)
	owner := func(o string) []Entry { return chains[o] }
	var out []Finding
	for _, s := range subjects {
		out = append(out, evaluate(s, chains[s], from, now, period, p, owner)...)
	}
	// 20 backdated-closure
	in := upTo(log, now)
	for _, x := range in {
		if !closing(x) {
			continue
		}
		limit := tm(x).Add(p.MaxBackdate)
		var newer Entry
		found := false
		for _, y := range in {
			if y.Index < x.Index && y.Event.GetSource().GetSystem() == x.Event.GetSource().GetSystem() &&
				tm(y).After(limit) && (!found || y.Index < newer.Index) {
				newer, found = y, true
			}
		}
		// An occurrence: a period keeps those dated in it.
		if found && (!period || !tm(x).Before(from)) {
			out = append(out, Finding{Rule: "backdated-closure", Subject: x.Event.GetSubject().GetId(),
				Entries: []uint64{x.Index, newer.Index}, Opened: tm(x), Closed: tm(x)})
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Rule != out[j].Rule {
			return out[i].Rule < out[j].Rule
		}
		if out[i].Subject != out[j].Subject {
			return out[i].Subject < out[j].Subject
		}
		return out[i].Entries[0] < out[j].Entries[0]
	})
	return out
}
