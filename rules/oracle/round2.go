package oracle

import (
	"slices"
	"sort"
	"time"
)

// closing reports whether e is a closing event (RULES.md round 2): an end
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

// round2 runs the rules added in round 2 that read only this chain,
// reporting through add (evaluate's, which applies the window).
func (c *chain) round2(add func(rule string, w window, idx ...uint64)) {
	instant := func(e Entry) window { return window{opened: tm(e), point: true} }
	for _, x := range c.es {
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
