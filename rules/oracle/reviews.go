package oracle

import (
	"slices"
	"time"
)

// reviews runs rules 35-38 of docs/rules.md (reviews of everything in
// scope, and stale secrets), reporting through add.
func (c *chain) reviews(add func(rule string, w window, idx ...uint64)) {
	typ := func(e Entry) string { return e.Event.GetType() }
	p := c.p
	isDecision := func(e Entry) bool { return typ(e) == "review.certified" || typ(e) == "review.revoked" }
	// signedOff: a decision of a campaign with a sign-off at or after it.
	signedOff := func(d Entry) bool {
		k := d.Event.GetRefs().GetReview()
		if k == "" {
			return false
		}
		for _, s := range c.es {
			if typ(s) == "review.signed_off" && s.Event.GetRefs().GetReview() == k && !tm(s).Before(tm(d)) {
				return true
			}
		}
		return false
	}
	aboutGrant := func(d Entry, g string) bool { return d.Event.GetRefs().GetGrant() == g }
	aboutAccount := func(d Entry, sys string) bool {
		return d.Event.GetRefs().GetGrant() == "" && d.Event.GetEntitlement().GetResource() == sys
	}
	// firstDisableAfter: the first account.disabled of sys after a in chain order.
	firstDisableAfter := func(a Entry, sys string) *Entry {
		for i, y := range c.es {
			if typ(y) == "account.disabled" && y.Event.GetEntitlement().GetResource() == sys && before(a, y) {
				return &c.es[i]
			}
		}
		return nil
	}

	for _, x := range c.es {
		ev := x.Event
		// 35 access-review-missing
		switch {
		case typ(x) == "grant.assigned" && ev.GetRefs().GetGrant() != "":
			g := ev.GetRefs().GetGrant()
			var anchors []Entry
			for _, d := range c.es {
				if isDecision(d) && aboutGrant(d, g) && signedOff(d) {
					anchors = append(anchors, d)
				}
			}
			if w, ok := c.lapseOf(x, c.firstEnd(g), anchors, p.AccessReviewInterval); ok {
				add("access-review-missing", w, x.Index)
			}
		case typ(x) == "account.created" && ev.GetEntitlement().GetResource() != "":
			sys := ev.GetEntitlement().GetResource()
			var anchors []Entry
			for _, d := range c.es {
				if isDecision(d) && aboutAccount(d, sys) && signedOff(d) {
					anchors = append(anchors, d)
				}
			}
			if w, ok := c.lapseOf(x, firstDisableAfter(x, sys), anchors, p.AccessReviewInterval); ok {
				add("access-review-missing", w, x.Index)
			}
		}
		// 36 review-campaign-incomplete
		if typ(x) == "review.opened" && ev.GetRefs().GetReview() != "" {
			k := ev.GetRefs().GetReview()
			d := tm(x).Add(p.ReviewCampaignWithin)
			if ev.GetExpiresAt() != nil {
				d = ev.GetExpiresAt().AsTime()
			}
			for _, y := range c.es {
				if typ(y) == "review.closed" && y.Event.GetRefs().GetReview() == k && !tm(y).Before(tm(x)) {
					if tm(y).Before(d) {
						d = tm(y)
					}
					break
				}
			}
			var s *Entry
			for i, y := range c.es {
				if typ(y) == "review.signed_off" && y.Event.GetRefs().GetReview() == k && !tm(y).Before(tm(x)) && !tm(y).After(d) {
					s = &c.es[i]
					break
				}
			}
			if s == nil {
				if c.now.After(d) {
					w := window{opened: d}
					for i, y := range c.es {
						if typ(y) == "review.signed_off" && y.Event.GetRefs().GetReview() == k && tm(y).After(d) {
							w.closing = &c.es[i]
							break
						}
					}
					add("review-campaign-incomplete", w, x.Index)
				}
			} else {
				scope := ev.GetEntitlement().GetResource()
				decided := func(about func(Entry) bool) bool {
					for _, y := range c.es {
						if isDecision(y) && y.Event.GetRefs().GetReview() == k && !tm(y).Before(tm(x)) && !tm(y).After(tm(*s)) && about(y) {
							return true
						}
					}
					return false
				}
				var undecided *Entry
				for i, g := range c.es {
					if typ(g) != "grant.assigned" || g.Event.GetRefs().GetGrant() == "" || !c.inForce(g, tm(x)) {
						continue
					}
					if scope != "" && g.Event.GetEntitlement().GetResource() != scope {
						continue
					}
					if !decided(func(y Entry) bool { return aboutGrant(y, g.Event.GetRefs().GetGrant()) }) {
						undecided = &c.es[i]
						break
					}
				}
				if undecided == nil {
					for i, a := range c.es {
						sys := a.Event.GetEntitlement().GetResource()
						if typ(a) != "account.created" || sys == "" || tm(a).After(tm(x)) || (scope != "" && sys != scope) {
							continue
						}
						gone := false
						for _, y := range c.es {
							if typ(y) == "account.disabled" && y.Event.GetEntitlement().GetResource() == sys && !tm(y).Before(tm(a)) && !tm(y).After(tm(x)) {
								gone = true
							}
						}
						if !gone && !decided(func(y Entry) bool { return aboutAccount(y, sys) }) {
							undecided = &c.es[i]
							break
						}
					}
				}
				if undecided != nil {
					add("review-campaign-incomplete", window{opened: tm(*s), point: true}, x.Index, s.Index, undecided.Index)
				}
			}
		}
		// 37 review-account-revocation-not-enforced
		if typ(x) == "review.revoked" && ev.GetRefs().GetGrant() == "" && ev.GetEntitlement().GetResource() != "" {
			sys := ev.GetEntitlement().GetResource()
			deadline := tm(x).Add(p.DeprovisionSLA)
			if c.now.After(deadline) {
				var first *Entry
				for i, y := range c.es {
					if typ(y) == "account.disabled" && y.Event.GetEntitlement().GetResource() == sys && !tm(y).Before(tm(x)) {
						first = &c.es[i]
						break
					}
				}
				if first == nil || tm(*first).After(deadline) {
					add("review-account-revocation-not-enforced", window{opened: deadline, closing: first, exposure: true}, x.Index)
				}
			}
		}
	}

	// 38 secret-old-and-unused: per credential, from its first creation.
	if !slices.Contains(nonHuman, c.kind()) {
		return
	}
	done := map[string]bool{}
	for _, f := range c.es {
		cred := f.Event.GetRefs().GetCredential()
		if typ(f) != "credential.created" || cred == "" || done[cred] {
			continue
		}
		done[cred] = true
		var anchors []Entry
		var end *Entry
		for i, y := range c.es {
			if y.Event.GetRefs().GetCredential() != cred {
				continue
			}
			switch typ(y) {
			case "credential.created", "credential.rotated", "credential.checked_out", "auth.succeeded", "session.started":
				anchors = append(anchors, y)
			case "credential.revoked":
				if end == nil && before(f, y) {
					end = &c.es[i]
				}
			}
		}
		if w, ok := c.lapseOf(f, end, anchors, p.MaxCredentialAge); ok {
			add("secret-old-and-unused", w, f.Index)
		}
	}
}

// lapseOf is lapse for an item that starts at the entry start and is in
// force until end (nil: never ended): the latest stretch meeting
// [from, now] in which neither start nor an anchor at or after it lay
// within d before.
func (c *chain) lapseOf(start Entry, end *Entry, anchors []Entry, d time.Duration) (window, bool) {
	xs := []Entry{start}
	for _, a := range anchors {
		if !tm(a).Before(tm(start)) && a.Index != start.Index {
			xs = append(xs, a)
		}
	}
	xs = sorted(xs)
	var best window
	found := false
	for i, x := range xs {
		opened := tm(x).Add(d)
		if !opened.Before(c.now) {
			continue
		}
		var closing *Entry
		if i+1 < len(xs) {
			closing = &xs[i+1]
		}
		if end != nil && (closing == nil || tm(*end).Before(tm(*closing))) {
			closing = end
		}
		if closing != nil && (!tm(*closing).After(opened) || !tm(*closing).After(c.from)) {
			continue
		}
		best, found = window{opened: opened, closing: closing}, true
	}
	return best, found
}
