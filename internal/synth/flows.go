package synth

import (
	"slices"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// grant is one grant event and what becomes of it.
type grant struct {
	id       string
	ent      *pb.Entitlement
	ev       *pb.Event
	start    time.Time
	expires  time.Time // zero: standing
	req      string
	end      time.Time // zero: in force at as-of
	endType  string    // grant.removed or grant.expired
	endWhy   string
	revokeAt time.Time // a review.revoked before end
	baseline bool      // the department's birthright group
	noCert   time.Time // certify only before this (review-overdue plant)
	sessTo   time.Time // sessions only before this (dormant plant)
	sessions bool      // privileged standing grant used through PAM sessions
}

func (gr *grant) inForce(t time.Time) bool {
	return !gr.start.After(t) && (gr.end.IsZero() || gr.end.After(t))
}

func ts(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t.Truncate(time.Second)) }

func tr(b bool) *bool { return &b }

// human emits everything about one person, in an order that lets later
// steps see how earlier grants end.
func (g *gen) human(h *human) {
	e := g.ev(SourceHR, "identity.created", h.created, h.ident)
	e.Attributes = map[string]string{"department": h.dept.name, "location": h.location, "title": h.title}
	if h.manager != nil {
		e.Attributes["manager"] = h.manager.id()
	}
	if !h.joiner {
		e.Reason = "initial load of existing workers"
	} else {
		e.Reason = "new hire"
	}
	if h == g.ceo || h.head && h.dept.jit == nil {
		return
	}
	// Birthright group, assigned by the IGA.
	gr := g.assign(h, h.created.Add(g.dur(time.Hour, 3*time.Hour)), ent("ad:grp-"+h.dept.name, "ad:corp.acme.example", false), "", time.Time{})
	gr.baseline = true
	if h.head {
		g.lifecycle(h)
		g.endGrants(h)
		return
	}
	// Separation-of-duties entitlements: one side only, unless planted.
	if d := h.dept; h.plant == rSoD {
		a := g.requested(h, g.at(h.created.Add(2*day), g.asOf.Add(-30*day)), d.sod[0])
		g.requested(h, g.at(h.created.Add(2*day), g.asOf.Add(-30*day)), d.sod[1])
		g.plant(rSoD, h.id(), a.ev)
	} else if d.sod[0] != nil && g.chance(0.5) {
		g.requested(h, h.created.Add(g.dur(2*day, 20*day)), d.sod[g.r.IntN(2)])
	}
	// Time-bound project access.
	if g.chance(0.2) || h.plant == rOverstayed {
		t := g.freeTime(h, h.created.Add(3*day), g.asOf.Add(-50*day), day)
		if !t.IsZero() {
			exp := t.Add(g.dur(20*day, 40*day))
			gr := g.requested(h, t, ent("sharepoint:project-"+pick(g, []string{"atlas", "borealis", "cobalt", "delta"}), "sharepoint:acme", false))
			gr.expires = exp
			gr.ev.ExpiresAt = ts(exp)
			if h.plant == rOverstayed {
				g.plant(rOverstayed, h.id(), gr.ev)
				if g.chance(0.5) {
					gr.end, gr.endType, gr.endWhy = exp.Add(g.dur(2*day, 9*day)), "grant.expired", "expiry job ran late"
				}
			} else {
				gr.end, gr.endType, gr.endWhy = exp.Add(g.dur(0, 10*time.Minute)), "grant.expired", "project access ended"
			}
		}
	}
	if h.priv {
		if g.chance(0.5) {
			t := g.freeTime(h, h.created.Add(day), h.created.Add(25*day), day)
			if !t.IsZero() {
				gr := g.standing(h, pick(g, h.dept.standing), t)
				if h.life != lifeLeaver && g.chance(0.1) {
					for _, c := range g.campaigns {
						if c.After(t.Add(7 * day)) {
							gr.revokeAt = c.Add(g.dur(0, 7*day))
							gr.end, gr.endType, gr.endWhy = gr.revokeAt.Add(g.dur(time.Hour, 6*time.Hour)), "grant.removed", "revoked in access review"
							break
						}
					}
				}
			}
		}
		g.privPlants(h)
	}
	g.lifecycle(h)
	g.endGrants(h)
	for _, gr := range h.grants {
		if gr.sessions {
			g.standingSessions(h, gr)
		}
	}
	g.certify(h)
	switch {
	case h.priv:
		g.jitLoop(h)
	case h.plant == rActivityAfterOff:
		g.jitPlant(h, h.leaveAt.Add(g.dur(day, 4*day)))
	}
}

// requested is a request, approval and IGA provisioning of a non-privileged
// standing entitlement.
func (g *gen) requested(h *human, t time.Time, en *pb.Entitlement) *grant {
	req := g.ref("REQ")
	e := g.ev(SourceIGA, "access.requested", t, h.ident)
	e.Entitlement, e.Refs.Request, e.Reason = proto.Clone(en).(*pb.Entitlement), req, "needed for my role"
	ta := t.Add(g.dur(10*time.Minute, 20*time.Hour))
	a := g.ev(SourceIGA, "access.approved", ta, h.ident)
	a.Entitlement, a.Refs.Request, a.Actor = proto.Clone(en).(*pb.Entitlement), req, h.managerAt(ta).ident
	return g.assign(h, ta.Add(g.dur(5*time.Minute, 2*time.Hour)), en, req, time.Time{})
}

func (g *gen) assign(h *human, t time.Time, en *pb.Entitlement, req string, exp time.Time) *grant {
	gr := &grant{id: g.ref("GRT"), ent: en, start: t, req: req, expires: exp}
	e := g.ev(SourceIGA, "grant.assigned", t, h.ident)
	e.Entitlement, e.Refs.Grant, e.Refs.Request = proto.Clone(en).(*pb.Entitlement), gr.id, req
	if !exp.IsZero() {
		e.ExpiresAt = ts(exp)
	}
	gr.ev = e
	h.grants = append(h.grants, gr)
	return gr
}

// standing is a privileged standing grant: requested, approved for a year
// by the manager, provisioned with a one-year term, used through PAM
// sessions and certified in every access review campaign.
func (g *gen) standing(h *human, en *pb.Entitlement, t time.Time) *grant {
	req := g.ref("REQ")
	e := g.ev(SourceIGA, "access.requested", t, h.ident)
	e.Entitlement, e.Refs.Request, e.Reason = proto.Clone(en).(*pb.Entitlement), req, "on-call administration duties"
	e.Refs.Ticket = g.ref("CHG")
	ta := t.Add(g.dur(10*time.Minute, 20*time.Hour))
	a := g.ev(SourceIGA, "access.approved", ta, h.ident)
	a.Entitlement, a.Refs.Request, a.Actor = proto.Clone(en).(*pb.Entitlement), req, h.managerAt(ta).ident
	a.ExpiresAt = ts(ta.Add(year))
	tg := ta.Add(g.dur(5*time.Minute, 2*time.Hour))
	gr := g.assign(h, tg, en, req, tg.Add(year))
	gr.sessions = true
	return gr
}

// freeTime picks a time in [lo, hi) when h is active for d, or zero.
func (g *gen) freeTime(h *human, lo, hi time.Time, d time.Duration) time.Time {
	if !lo.Before(hi) {
		return time.Time{}
	}
	for range 50 {
		t := g.at(lo, hi)
		if h.active(g, t, d) {
			return t
		}
	}
	return time.Time{}
}

// privPlants adds the failures that live on a privileged stayer.
func (g *gen) privPlants(h *human) {
	recent := func(d time.Duration) time.Time { return g.freeTime(h, g.asOf.Add(-60*day), g.asOf.Add(-5*day), d) }
	en := pick(g, h.dept.jit)
	switch h.plant {
	case rApprovalNoRevocation:
		// Approved for eight hours, never used, and the IGA never recorded
		// the approval's end; or a standing approval with no term at all.
		t := recent(day)
		req := g.ref("REQ")
		e := g.ev(SourceIGA, "access.requested", t, h.ident)
		e.Entitlement, e.Refs.Request, e.Reason = proto.Clone(en).(*pb.Entitlement), req, "maintenance window"
		a := g.ev(SourceIGA, "access.approved", t.Add(g.dur(5*time.Minute, time.Hour)), h.ident)
		a.Entitlement, a.Refs.Request, a.Actor = proto.Clone(en).(*pb.Entitlement), req, h.managerAt(t).ident
		if g.chance(0.6) {
			a.ExpiresAt = ts(a.Time.AsTime().Add(8 * time.Hour))
		}
		g.plant(rApprovalNoRevocation, h.id(), a)
	case rStanding:
		t := g.freeTime(h, g.asOf.Add(-80*day), g.asOf.Add(-10*day), day)
		if t.IsZero() {
			return
		}
		gr := g.standing(h, pick(g, h.dept.standing), t)
		gr.expires = time.Time{}
		gr.ev.ExpiresAt = nil
		gr.ev.Reason = "provisioned without an end date"
		g.plant(rStanding, h.id(), gr.ev)
	case rReviewOverdue:
		t := g.freeTime(h, g.start.Add(3*day), g.start.Add(20*day), day)
		if t.IsZero() {
			return
		}
		gr := g.standing(h, pick(g, h.dept.standing), t)
		gr.noCert = g.asOf.Add(-95 * day)
		g.plant(rReviewOverdue, h.id(), gr.ev)
	case rDormant:
		t := g.freeTime(h, g.start.Add(3*day), g.start.Add(20*day), day)
		if t.IsZero() {
			return
		}
		gr := g.standing(h, pick(g, h.dept.standing), t)
		gr.sessTo = g.asOf.Add(-100 * day)
		g.plant(rDormant, h.id(), gr.ev)
	case rReviewNotEnforced:
		t := g.freeTime(h, g.start.Add(3*day), g.asOf.Add(-70*day), day)
		if t.IsZero() {
			return
		}
		var gr *grant
		if g.chance(0.5) {
			gr = g.standing(h, pick(g, h.dept.standing), t)
			gr.revokeAt = g.at(t.Add(20*day), t.Add(40*day))
			gr.end, gr.endType, gr.endWhy = gr.revokeAt.Add(g.dur(3*day, 12*day)), "grant.removed", "removed after a reminder"
		} else {
			gr = g.requested(h, t, ent("sharepoint:board-minutes", "sharepoint:acme", false))
			gr.revokeAt = g.at(t.Add(20*day), t.Add(40*day))
		}
		gr.noCert = gr.revokeAt // marks the planted revocation; see endGrants
	case rBreakglass:
		t := g.freeTime(h, g.start.Add(10*day), g.asOf.Add(-8*day), day)
		if t.IsZero() {
			return
		}
		mode := reviewNever
		if g.chance(0.3) {
			mode = reviewLate
		}
		bs := g.breakglass(h, t, en, mode)
		g.plant(rBreakglass, h.id(), bs...)
	}
}

// lifecycle emits moves, leaves of absence and terminations and decides how
// the grants in force end.
func (g *gen) lifecycle(h *human) {
	switch h.life {
	case lifeMover:
		m := g.ev(SourceHR, "identity.moved", h.moveAt, h.ident)
		m.Attributes = map[string]string{"from_department": h.dept.name, "to_department": h.newDept.name, "manager": h.newMgr.id()}
		m.Actor = h.newMgr.ident
		for _, gr := range slices.Clone(h.grants) {
			if !gr.inForce(h.moveAt) {
				continue
			}
			switch {
			case gr.baseline && h.plant == rMoverRetained:
				g.plant(rMoverRetained, h.id(), gr.ev)
			case gr.baseline:
				gr.end, gr.endType, gr.endWhy = h.moveAt.Add(g.dur(2*time.Hour, 3*day)), "grant.removed", "mover: old department group"
			case !gr.end.IsZero() && gr.end.Before(h.moveAt.Add(20*day)):
			default:
				c := g.ev(SourceIGA, "review.certified", h.moveAt.Add(g.dur(3*day, 20*day)), h.ident)
				c.Entitlement, c.Refs.Grant, c.Refs.Review, c.Actor = proto.Clone(gr.ent).(*pb.Entitlement), gr.id, g.ref("REV"), h.newMgr.ident
				c.Reason = "mover access review: still needed in " + h.newDept.name
			}
		}
		nb := g.assign(h, h.moveAt.Add(g.dur(time.Hour, 2*day)), ent("ad:grp-"+h.newDept.name, "ad:corp.acme.example", false), "", time.Time{})
		nb.baseline = true
	case lifeLeave:
		d := g.ev(SourceHR, "identity.disabled", h.disFrom, h.ident)
		d.Reason = "leave of absence"
		g.ev(SourceHR, "identity.enabled", h.disTo, h.ident).Reason = "returned from leave"
	case lifeLeaver:
		t := g.ev(SourceHR, "identity.terminated", h.leaveAt, h.ident)
		t.Reason = pick(g, []string{"resignation", "end of contract", "redundancy"})
		for _, gr := range h.grants {
			if !gr.inForce(h.leaveAt) || (!gr.end.IsZero() && gr.end.Before(h.leaveAt.Add(12*time.Hour))) {
				continue
			}
			if gr.baseline && h.plant == rLeaverRetained {
				g.plant(rLeaverRetained, h.id(), gr.ev)
				if g.chance(0.5) {
					gr.end, gr.endType, gr.endWhy = h.leaveAt.Add(g.dur(2*day, 4*day)), "grant.removed", "leaver: found in reconciliation"
				} else {
					gr.end = time.Time{}
				}
				continue
			}
			gr.end, gr.endType, gr.endWhy = h.leaveAt.Add(g.dur(time.Hour, 8*time.Hour)), "grant.removed", "leaver"
		}
	}
}

// endGrants emits review revocations and the end event of every grant that ends.
func (g *gen) endGrants(h *human) {
	for _, gr := range h.grants {
		if !gr.revokeAt.IsZero() {
			r := g.ev(SourceIGA, "review.revoked", gr.revokeAt, h.ident)
			r.Entitlement, r.Refs.Grant, r.Refs.Review = proto.Clone(gr.ent).(*pb.Entitlement), gr.id, g.ref("REV")
			r.Actor = h.managerAt(gr.revokeAt).ident
			r.Reason = "no longer needed"
			if h.plant == rReviewNotEnforced && gr.noCert.Equal(gr.revokeAt) {
				g.plant(rReviewNotEnforced, h.id(), r)
			}
		}
		if gr.end.IsZero() {
			continue
		}
		e := g.ev(SourceIGA, gr.endType, gr.end, h.ident)
		e.Entitlement, e.Refs.Grant, e.Refs.Request, e.Reason = proto.Clone(gr.ent).(*pb.Entitlement), gr.id, gr.req, gr.endWhy
	}
}

// standingSessions uses a privileged standing grant every one to four weeks.
func (g *gen) standingSessions(h *human, gr *grant) {
	until := g.asOf
	if !gr.end.IsZero() {
		until = gr.end
	}
	if !gr.revokeAt.IsZero() && gr.revokeAt.Before(until) {
		until = gr.revokeAt
	}
	if !gr.sessTo.IsZero() && gr.sessTo.Before(until) {
		until = gr.sessTo
	}
	until = until.Add(-day)
	for t := gr.start.Add(g.dur(day, 5*day)); t.Before(until); {
		if !h.active(g, t, 4*time.Hour) {
			t = t.Add(day)
			continue
		}
		g.session(h, t, gr.id, gr.req, gr.ent, g.mfa(), false)
		t = t.Add(g.dur(7*day, 25*day))
	}
}

func (g *gen) mfa() *bool {
	// The connector records MFA on every session: an unrecorded one is a
	// finding (privileged-session-mfa-unrecorded), planted on its own. The
	// draw is kept so that the rest of the organisation stays the same.
	_ = g.chance(0.2)
	return tr(true)
}

func (g *gen) session(h *human, t time.Time, grantID, req string, en *pb.Entitlement, mfa *bool, bg bool) (start, end *pb.Event) {
	s := g.ref("SES")
	start = g.ev(SourcePAM, "session.started", t, h.ident)
	start.Entitlement, start.Refs.Grant, start.Refs.Session, start.Refs.Request = proto.Clone(en).(*pb.Entitlement), grantID, s, req
	start.Mfa, start.Breakglass = mfa, bg
	start.Attributes = map[string]string{"target": en.Resource, "client": pick(g, []string{"psm-rdp", "psm-ssh", "psm-web"})}
	typ := "session.ended"
	if g.chance(0.03) {
		typ = "session.revoked"
	}
	end = g.ev(SourcePAM, typ, t.Add(g.dur(15*time.Minute, 150*time.Minute)), h.ident)
	end.Entitlement, end.Refs.Grant, end.Refs.Session = proto.Clone(en).(*pb.Entitlement), grantID, s
	if typ == "session.revoked" {
		end.Reason = "terminated by PAM policy: idle timeout"
	}
	return start, end
}

// certify runs the access review campaigns over h's privileged standing grants.
func (g *gen) certify(h *human) {
	for _, c := range g.campaigns {
		for _, gr := range h.grants {
			if !gr.sessions || !gr.start.Before(c.Add(-7*day)) || (!gr.end.IsZero() && !gr.end.After(c.Add(8*day))) {
				continue
			}
			if !gr.revokeAt.IsZero() && !gr.revokeAt.After(c.Add(8*day)) {
				continue
			}
			t := c.Add(g.dur(0, 7*day))
			if !gr.noCert.IsZero() && !t.Before(gr.noCert) {
				continue
			}
			e := g.ev(SourceIGA, "review.certified", t, h.ident)
			e.Entitlement, e.Refs.Grant, e.Refs.Review = proto.Clone(gr.ent).(*pb.Entitlement), gr.id, g.ref("REV")
			e.Actor = h.managerAt(t).ident
			e.Attributes = map[string]string{"campaign": c.Format("2006-01") + " privileged access review"}
		}
	}
}

// jitLoop is the ordinary just-in-time use of privilege, every one to three
// weeks, plus the JIT-shaped plants.
func (g *gen) jitLoop(h *human) {
	plantAt := time.Time{}
	switch h.plant {
	case rJITOutlived, rSessionNoApproval, rApprovalAfterExpiry, rSelfApproval, rNoMFA:
		plantAt = g.freeTime(h, g.start.Add(10*day), g.asOf.Add(-6*day), 4*day)
	case rActivityAfterOff:
		plantAt = h.leaveAt.Add(g.dur(day, 4*day))
	}
	for t := h.created.Add(g.dur(2*day, 14*day)); t.Before(g.asOf.Add(-2 * day)); t = t.Add(g.dur(5*day, 21*day)) {
		if !h.active(g, t, 4*day) {
			continue
		}
		if !plantAt.IsZero() && t.After(plantAt) {
			g.jitPlant(h, plantAt)
			plantAt = time.Time{}
		}
		en := pick(g, h.deptAt(t).jit)
		switch x := g.r.Float64(); {
		case x < 0.05:
			g.denied(h, t, en)
		case x < 0.09:
			g.unused(h, t, en)
		case x < 0.14 && (h.deptAt(t).name == "it-operations" || h.deptAt(t).name == "security"):
			g.breakglass(h, t, en, reviewOnTime)
		default:
			g.jit(h, t, en, jitOpt{})
		}
	}
	if !plantAt.IsZero() {
		g.jitPlant(h, plantAt)
	}
}

func (g *gen) jitPlant(h *human, t time.Time) {
	en := pick(g, h.deptAt(t).jit)
	var o jitOpt
	switch h.plant {
	case rJITOutlived:
		o.lateEnd = true
	case rSessionNoApproval:
		o.noApproval = true
	case rApprovalAfterExpiry:
		o.afterExpiry = true
	case rSelfApproval:
		o.self = true
	case rNoMFA:
		o.mfa = tr(false)
	}
	f := g.jit(h, t, en, o)
	switch h.plant {
	case rJITOutlived:
		g.plant(h.plant, h.id(), f.act)
	case rSessionNoApproval, rNoMFA:
		g.plant(h.plant, h.id(), f.sess)
	case rApprovalAfterExpiry:
		g.plant(h.plant, h.id(), f.act, f.sess)
	case rSelfApproval:
		g.plant(h.plant, h.id(), f.approval)
	case rActivityAfterOff:
		g.plant(h.plant, h.id(), f.act, f.sess)
	}
}

type jitOpt struct {
	noApproval  bool
	self        bool
	afterExpiry bool
	lateEnd     bool
	mfa         *bool
}

type jitFlow struct{ approval, act, sess *pb.Event }

// jit is request → approval → activation → one session → deactivation.
func (g *gen) jit(h *human, t time.Time, en *pb.Entitlement, o jitOpt) jitFlow {
	var f jitFlow
	req := ""
	ticket := g.ref("INC")
	tAct := t
	if !o.noApproval {
		req = g.ref("REQ")
		r := g.ev(SourceIGA, "access.requested", t, h.ident)
		r.Entitlement, r.Refs.Request, r.Refs.Ticket = proto.Clone(en).(*pb.Entitlement), req, ticket
		r.Reason = ticket + ": " + pick(g, []string{"patch production hosts", "investigate failed deployment", "rotate TLS certificates", "restore a backup", "change firewall rule", "quarterly maintenance"})
		ta := t.Add(g.dur(3*time.Minute, 45*time.Minute))
		a := g.ev(SourceIGA, "access.approved", ta, h.ident)
		a.Entitlement, a.Refs.Request, a.Refs.Ticket = proto.Clone(en).(*pb.Entitlement), req, ticket
		a.Actor = h.managerAt(ta).ident
		if o.self {
			a.Actor = h.ident
			a.Reason = "approved by requester (delegated approver)"
		}
		a.ExpiresAt = ts(ta.Add(8 * time.Hour))
		f.approval = a
		tAct = ta.Add(g.dur(2*time.Minute, 30*time.Minute))
		if o.afterExpiry {
			x := g.ev(SourceIGA, "access.expired", ta.Add(8*time.Hour), h.ident)
			x.Entitlement, x.Refs.Request = proto.Clone(en).(*pb.Entitlement), req
			tAct = ta.Add(g.dur(26*time.Hour, 60*time.Hour))
		}
	}
	grantID := g.ref("JIT")
	act := g.ev(SourcePAM, "grant.activated", tAct, h.ident)
	act.Entitlement, act.Refs.Grant, act.Refs.Request, act.Refs.Ticket = proto.Clone(en).(*pb.Entitlement), grantID, req, ticket
	act.ExpiresAt = ts(tAct.Add(4 * time.Hour))
	f.act = act
	mfa := o.mfa
	if mfa == nil {
		mfa = g.mfa()
	}
	start := tAct.Add(g.dur(time.Minute, 5*time.Minute))
	s := g.ref("SES")
	f.sess = g.ev(SourcePAM, "session.started", start, h.ident)
	f.sess.Entitlement, f.sess.Refs.Grant, f.sess.Refs.Session, f.sess.Refs.Request = proto.Clone(en).(*pb.Entitlement), grantID, s, req
	f.sess.Mfa = mfa
	f.sess.Attributes = map[string]string{"target": en.Resource, "client": pick(g, []string{"psm-rdp", "psm-ssh", "psm-web"})}
	endType := "session.ended"
	if !o.lateEnd && g.chance(0.03) {
		endType = "session.revoked"
	}
	length := g.dur(15*time.Minute, 150*time.Minute)
	if o.lateEnd {
		length = g.dur(15*time.Minute, 60*time.Minute)
	}
	se := g.ev(SourcePAM, endType, start.Add(length), h.ident)
	se.Entitlement, se.Refs.Grant, se.Refs.Session = proto.Clone(en).(*pb.Entitlement), grantID, s
	endT, endTyp := start.Add(length).Add(g.dur(time.Minute, 10*time.Minute)), "grant.deactivated"
	if o.lateEnd {
		if g.chance(0.5) {
			endT, endTyp = tAct.Add(4*time.Hour), "grant.expired"
		} else {
			endT = start.Add(length).Add(g.dur(30*time.Minute, 2*time.Hour))
		}
	}
	d := g.ev(SourcePAM, endTyp, endT, h.ident)
	d.Entitlement, d.Refs.Grant, d.Refs.Request = proto.Clone(en).(*pb.Entitlement), grantID, req
	return f
}

func (g *gen) denied(h *human, t time.Time, en *pb.Entitlement) {
	req := g.ref("REQ")
	r := g.ev(SourceIGA, "access.requested", t, h.ident)
	r.Entitlement, r.Refs.Request, r.Reason = proto.Clone(en).(*pb.Entitlement), req, "want to look around production"
	d := g.ev(SourceIGA, "access.denied", t.Add(g.dur(10*time.Minute, 4*time.Hour)), h.ident)
	d.Entitlement, d.Refs.Request, d.Actor, d.Reason = proto.Clone(en).(*pb.Entitlement), req, h.managerAt(t).ident, "no ticket; use read-only access"
}

// unused is an approval that was never used: it expires, or the manager
// withdraws it.
func (g *gen) unused(h *human, t time.Time, en *pb.Entitlement) {
	req := g.ref("REQ")
	r := g.ev(SourceIGA, "access.requested", t, h.ident)
	r.Entitlement, r.Refs.Request, r.Reason = proto.Clone(en).(*pb.Entitlement), req, "standby for release night"
	ta := t.Add(g.dur(5*time.Minute, time.Hour))
	a := g.ev(SourceIGA, "access.approved", ta, h.ident)
	a.Entitlement, a.Refs.Request, a.Actor = proto.Clone(en).(*pb.Entitlement), req, h.managerAt(ta).ident
	a.ExpiresAt = ts(ta.Add(8 * time.Hour))
	if g.chance(0.5) {
		x := g.ev(SourceIGA, "access.expired", ta.Add(8*time.Hour), h.ident)
		x.Entitlement, x.Refs.Request = proto.Clone(en).(*pb.Entitlement), req
	} else {
		x := g.ev(SourceIGA, "access.revoked", ta.Add(g.dur(time.Hour, 6*time.Hour)), h.ident)
		x.Entitlement, x.Refs.Request, x.Actor, x.Reason = proto.Clone(en).(*pb.Entitlement), req, h.managerAt(ta).ident, "release postponed"
	}
}

// breakglass is an emergency elevation: invoked, auto-approved by the PAM's
// firecall policy, one session, ended, and reviewed by security within a
// day or two (or late, or never, when planted). It returns the events that
// need the review.
const (
	reviewOnTime = iota
	reviewLate
	reviewNever
)

func (g *gen) breakglass(h *human, t time.Time, en *pb.Entitlement, review int) []*pb.Event {
	req := g.ref("BG")
	ticket := g.ref("INC")
	b := g.ev(SourcePAM, "breakglass.invoked", t, h.ident)
	b.Entitlement, b.Refs.Request, b.Refs.Ticket, b.Breakglass = proto.Clone(en).(*pb.Entitlement), req, ticket, true
	b.Reason = ticket + ": P1 outage, approver unreachable"
	a := g.ev(SourcePAM, "access.approved", t.Add(time.Minute), h.ident)
	a.Entitlement, a.Refs.Request, a.ExpiresAt = proto.Clone(en).(*pb.Entitlement), req, ts(t.Add(2*time.Hour))
	a.Reason = "firecall policy: automatic emergency approval"
	grantID := g.ref("JIT")
	act := g.ev(SourcePAM, "grant.activated", t.Add(2*time.Minute), h.ident)
	act.Entitlement, act.Refs.Grant, act.Refs.Request, act.Breakglass = proto.Clone(en).(*pb.Entitlement), grantID, req, true
	act.ExpiresAt = ts(t.Add(2 * time.Hour))
	s, e := g.session(h, t.Add(g.dur(3*time.Minute, 5*time.Minute)), grantID, req, en, tr(true), true)
	e.Time = ts(s.Time.AsTime().Add(g.dur(20*time.Minute, 80*time.Minute)))
	if e.Type == "session.revoked" {
		e.Type, e.Reason = "session.ended", ""
	}
	d := g.ev(SourcePAM, "grant.deactivated", e.Time.AsTime().Add(g.dur(time.Minute, 5*time.Minute)), h.ident)
	d.Entitlement, d.Refs.Grant, d.Refs.Request = proto.Clone(en).(*pb.Entitlement), grantID, req
	reviewAt := e.Time.AsTime().Add(g.dur(2*time.Hour, 40*time.Hour))
	switch review {
	case reviewNever:
		reviewAt = time.Time{}
	case reviewLate:
		reviewAt = t.Add(g.dur(4*day, 6*day))
	}
	if !reviewAt.IsZero() {
		r := g.ev(SourcePAM, "breakglass.reviewed", reviewAt, h.ident)
		r.Entitlement, r.Refs.Request, r.Refs.Ticket = proto.Clone(en).(*pb.Entitlement), req, ticket
		r.Actor = g.heads["security"].ident
		r.Reason = "reviewed session recording; actions matched the incident"
	}
	return []*pb.Event{b, act, s}
}

// nonHuman emits a service account, workload or bot: created by the IGA
// with an owner, one or two standing non-privileged grants, an API
// credential rotated every three to six weeks, an ownership hand-over when
// the owner leaves, and sometimes a decommissioning.
func (g *gen) nonHuman(n *nhi) {
	owner := n.owners[0].owner
	if owner.life == lifeLeaver && n.plant != rOrphanedNHI {
		n.owners = append(n.owners, ownerSpan{g.newOwner(owner), owner.leaveAt.Add(-g.dur(day, 5*day))})
	}
	if n.plant == "" && owner.life != lifeLeaver && g.chance(0.05) {
		n.decomAt = g.at(n.created.Add(30*day), g.asOf.Add(-2*day))
	}
	c := g.ev(SourceIGA, "identity.created", n.created, n.identityAt(n.created))
	c.Actor = owner.ident
	c.Attributes = map[string]string{"application": n.app}
	roles := []string{"aws:role/" + n.app + "-reader", "k8s:ns/" + n.app + ":edit", "gcp:bigquery-" + n.app + "-viewer"}
	for i := range 1 + g.r.IntN(2) {
		t := n.created.Add(time.Duration(i+1) * time.Hour)
		gr := &grant{id: g.ref("GRT"), ent: ent(roles[i], "cloud:"+n.app, false), start: t}
		e := g.ev(SourceIGA, "grant.assigned", t, n.identityAt(t))
		e.Entitlement, e.Refs.Grant = proto.Clone(gr.ent).(*pb.Entitlement), gr.id
		gr.ev = e
		n.grants = append(n.grants, gr)
		if n.plant == rOrphanedNHI {
			g.plant(rOrphanedNHI, n.idn, e)
		}
	}
	if len(n.owners) > 1 {
		t := n.owners[1].from
		r := g.ev(SourceIGA, "review.certified", t, n.identityAt(t))
		r.Entitlement, r.Refs.Grant, r.Refs.Review = proto.Clone(n.grants[0].ent).(*pb.Entitlement), n.grants[0].id, g.ref("REV")
		r.Actor = n.owners[1].owner.ident
		r.Reason = "ownership transferred from departing owner " + owner.id()
	}
	cred := g.ref("CRED")
	t := n.created.Add(3 * time.Hour)
	last := g.ev(SourcePAM, "credential.created", t, n.identityAt(t))
	last.ExpiresAt = ts(t.Add(year))
	last.Refs.Credential = cred
	last.Attributes = map[string]string{"credential_type": pick(g, []string{"api-key", "client-secret", "ssh-key"})}
	created := last
	stop := g.asOf.Add(-time.Hour)
	if n.plant == rRotationOverdue {
		stop = g.asOf.Add(-g.dur(95*day, 130*day))
	}
	if !n.decomAt.IsZero() {
		stop = n.decomAt
	}
	for t = t.Add(g.dur(20*day, 40*day)); t.Before(stop); t = t.Add(g.dur(20*day, 40*day)) {
		last = g.ev(SourcePAM, "credential.rotated", t, n.identityAt(t))
		last.Refs.Credential = cred
	}
	if n.plant == rRotationOverdue {
		g.plant(rRotationOverdue, n.idn, last)
		// The organisation records no use of its NHIs' keys, so a key
		// left unrotated is also old and unused.
		g.plant(rSecretOldUnused, n.idn, created)
	}
	if !n.decomAt.IsZero() {
		d := n.decomAt
		x := g.ev(SourceIGA, "identity.terminated", d, n.identityAt(d))
		x.Reason = "application decommissioned"
		for _, gr := range n.grants {
			e := g.ev(SourceIGA, "grant.removed", d.Add(g.dur(30*time.Minute, 3*time.Hour)), n.identityAt(d))
			e.Entitlement, e.Refs.Grant = proto.Clone(gr.ent).(*pb.Entitlement), gr.id
		}
		r := g.ev(SourcePAM, "credential.revoked", d.Add(g.dur(10*time.Minute, time.Hour)), n.identityAt(d))
		r.Refs.Credential = cred
	}
}

// newOwner picks the person who takes over from a leaver: the manager, or
// the head of the department.
func (g *gen) newOwner(h *human) *human {
	if m := h.managerAt(h.leaveAt); m != nil && m != g.ceo {
		return m
	}
	return g.heads[h.dept.name]
}

// vault emits a vaulted shared account: onboarded into the PAM, checked out
// by administrators for changes and rotated by the PAM on every check-in,
// and at least monthly otherwise.
func (g *gen) vault(v *nhi) {
	c := g.ev(SourcePAM, "identity.created", v.created, v.identityAt(v.created))
	c.Attributes = map[string]string{"platform": v.app, "safe": "prod-" + v.app}
	cred := g.ref("CRED")
	cr := g.ev(SourcePAM, "credential.created", v.created.Add(time.Hour), v.identityAt(v.created))
	cr.ExpiresAt = ts(v.created.Add(time.Hour + year))
	cr.Refs.Credential = cred
	lastRot := v.created.Add(time.Hour)
	users := g.filter(func(h *human) bool { return h.priv })
	for _, h := range g.humans {
		if h.priv && h.plant != "" {
			users = append(users, h)
		}
	}
	plantAt := time.Time{}
	if v.plant == rCheckoutNotRotated {
		plantAt = g.asOf.Add(-g.dur(5*day, 25*day))
	}
	rotate := func(t time.Time, why string) {
		r := g.ev(SourcePAM, "credential.rotated", t, v.identityAt(t))
		r.Refs.Credential, r.Reason = cred, why
		lastRot = t
	}
	for t := v.created.Add(g.dur(day, 10*day)); t.Before(g.asOf.Add(-day)); t = t.Add(g.dur(day, 12*day)) {
		if !plantAt.IsZero() && t.Add(4*time.Hour).After(plantAt) {
			break
		}
		for lastRot.Add(30 * day).Before(t) {
			rotate(lastRot.Add(30*day-g.dur(0, 3*day)), "scheduled rotation")
		}
		var u *human
		for range 5 {
			if x := pick(g, users); x.active(g, t, 8*time.Hour) {
				u = x
				break
			}
		}
		if u == nil {
			continue
		}
		g.checkout(v, cred, u, t, rotate)
	}
	if !plantAt.IsZero() {
		for lastRot.Add(30 * day).Before(plantAt) {
			rotate(lastRot.Add(30*day-g.dur(0, 3*day)), "scheduled rotation")
		}
		u := v.owners[0].owner
		co := g.checkout(v, cred, u, plantAt, nil)
		g.plant(rCheckoutNotRotated, v.idn, co)
		return
	}
	for lastRot.Add(30 * day).Before(g.asOf.Add(-time.Hour)) {
		rotate(lastRot.Add(30*day-g.dur(0, 3*day)), "scheduled rotation")
	}
}

func (g *gen) checkout(v *nhi, cred string, u *human, t time.Time, rotate func(time.Time, string)) *pb.Event {
	ticket := g.ref("CHG")
	co := g.ev(SourcePAM, "credential.checked_out", t, v.identityAt(t))
	co.Refs.Credential, co.Refs.Ticket, co.Actor = cred, ticket, u.ident
	co.ExpiresAt = ts(t.Add(4 * time.Hour))
	co.Reason = ticket + ": " + pick(g, []string{"emergency patch", "schema migration", "firmware upgrade", "restore from backup"})
	co.Mfa = tr(true)
	in := t.Add(g.dur(20*time.Minute, 3*time.Hour))
	ci := g.ev(SourcePAM, "credential.checked_in", in, v.identityAt(in))
	ci.Refs.Credential, ci.Refs.Ticket, ci.Actor = cred, ticket, u.ident
	if rotate != nil {
		rotate(in.Add(g.dur(time.Minute, 5*time.Minute)), "rotated after check-in")
	}
	return co
}
