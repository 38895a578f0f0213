package synth

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// Rule ids of the rules added in round 2 (docs/rules.md "Rules added in
// round 2"), as planted.
const (
	rBackdated          = "backdated-closure"
	rForeign            = "foreign-closure"
	rGrantNoApproval    = "grant-without-approval"
	rNotIndependent     = "not-independent"
	rInactive           = "account-inactive"
	rAccountRetained    = "leaver-account-not-disabled"
	rSharedCred         = "shared-credential-not-rotated"
	rNHIInteractive     = "nhi-interactive-session"
	rBreakglassRetained = "breakglass-access-retained"
	rBreakglassCred     = "breakglass-credential-not-rotated"
	rThirdParty         = "third-party-outside-window"
	rMFAUnrecorded      = "privileged-session-mfa-unrecorded"
	rNHINoOwner         = "nhi-without-owner"
	rNHIOwnerMoved      = "nhi-owner-moved"
	rSecretNoExpiry     = "secret-without-expiry"
)

// round2Plants plants one failure of each round-2 rule, each on identities
// of its own (so that no plant disturbs the rest of the organisation, and
// each yields exactly its one finding). It plants nothing when the failure
// rate is 0. The stories are those of the feeds in testdata/feeds, dated
// back from the as-of time.
func (g *gen) round2Plants() {
	defer g.ownerMoves()
	if g.cfg.FailureRate == 0 {
		return
	}
	const d = day
	A := g.asOf
	person := func(id, display string) *pb.Identity {
		return &pb.Identity{Id: id, Kind: "human", Display: display}
	}
	nhi := func(id, kind, owner string) *pb.Identity {
		return &pb.Identity{Id: id, Kind: kind, OwnerId: owner}
	}
	steward := person("r2.steward", "Robin Steward") // owns the round-2 NHIs; never leaves
	wiki := &pb.Entitlement{Id: "confluence:space-ops", Resource: "confluence:acme"}
	admin := func() *pb.Entitlement {
		return &pb.Entitlement{Id: "aws:prod-admin", Resource: "aws:account/4471-prod", Privileged: true}
	}
	exp := func(t time.Time) *timestamppb.Timestamp { return ts(t) }

	// backdated-closure: the PAM reports, at the end of the log, that a
	// JIT grant ended a month ago.
	{
		h := person("r2.backdate", "Bea Dated")
		act := g.ev(SourcePAM, "grant.activated", A.Add(-31*d), h)
		act.Entitlement, act.Refs.Grant, act.ExpiresAt = wiki, g.ref("JIT"), exp(A.Add(-31*d+4*time.Hour))
		end := g.ev(SourcePAM, "grant.deactivated", A.Add(-31*d+time.Hour), h)
		end.Entitlement, end.Refs.Grant = wiki, act.Refs.Grant
		g.late = append(g.late, end)
		g.plant(rBackdated, h.Id, end)
	}
	// foreign-closure: the PAM removes a grant the IGA assigned.
	{
		h := person("r2.foreign", "Farid Oren")
		a := g.ev(SourceIGA, "grant.assigned", A.Add(-50*d), h)
		a.Entitlement, a.Refs.Grant = wiki, g.ref("GRT")
		r := g.ev(SourcePAM, "grant.removed", A.Add(-20*d), h)
		r.Entitlement, r.Refs.Grant = wiki, a.Refs.Grant
		g.plant(rForeign, h.Id, r)
	}
	// grant-without-approval: a privileged role assigned straight in the IGA.
	{
		h := person("r2.noapproval", "Nadia Kovac")
		a := g.ev(SourceIGA, "grant.assigned", A.Add(-20*d), h)
		a.Entitlement, a.Refs.Grant, a.ExpiresAt = admin(), g.ref("GRT"), exp(A.Add(300*d))
		g.plant(rGrantNoApproval, h.Id, a)
	}
	// not-independent: the approver also provisions the grant.
	{
		h, m := person("r2.indep", "Ivo Dent"), person("r2.indep-mgr", "Mara Gate")
		req := g.ref("REQ")
		r := g.ev(SourceIGA, "access.requested", A.Add(-30*d), h)
		r.Entitlement, r.Refs.Request = wiki, req
		ap := g.ev(SourceIGA, "access.approved", A.Add(-30*d+time.Hour), h)
		ap.Entitlement, ap.Refs.Request, ap.Actor = wiki, req, m
		gr := g.ev(SourceIGA, "grant.assigned", A.Add(-30*d+2*time.Hour), h)
		gr.Entitlement, gr.Refs.Request, gr.Refs.Grant, gr.Actor = wiki, req, g.ref("GRT"), m
		g.plant(rNotIndependent, h.Id, ap)
	}
	// account-inactive: last login 95 days ago.
	{
		h := person("r2.inactive", "Ola Quiet")
		l := g.ev(SourceIGA, "auth.succeeded", A.Add(-95*d), h)
		l.Entitlement, l.Mfa, l.Attributes = &pb.Entitlement{Id: h.Id, Resource: "okta:acme"}, tr(true), map[string]string{"method": "sso"}
		g.plant(rInactive, h.Id, l)
	}
	// leaver-account-not-disabled: terminated; the Jira account is disabled
	// the same day, the GitHub account never.
	{
		h := person("r2.leaver", "Lars Left")
		ac := g.ev(SourceIGA, "account.created", A.Add(-100*d), h)
		ac.Entitlement = &pb.Entitlement{Id: "lars-left", Resource: "github:acme"}
		jira := &pb.Entitlement{Id: "lars.left", Resource: "jira:acme"}
		aj := g.ev(SourceIGA, "account.created", A.Add(-100*d), h)
		aj.Entitlement = jira
		g.ev(SourceHR, "identity.terminated", A.Add(-30*d), h)
		dj := g.ev(SourceIGA, "account.disabled", A.Add(-30*d+3*time.Hour), h)
		dj.Entitlement = jira
		g.plant(rAccountRetained, h.Id, ac)
	}
	// shared-credential-not-rotated: a holder of a vaulted password leaves;
	// it is rotated only ten days later.
	{
		v := nhi("r2-vault-mssql-sa", "service_account", steward.Id)
		u := person("r2.holder", "Hana Older")
		cred := g.ref("CRED")
		cr := g.ev(SourcePAM, "credential.created", A.Add(-60*d), v)
		cr.Refs.Credential, cr.ExpiresAt = cred, exp(A.Add(300*d))
		co := g.ev(SourcePAM, "credential.checked_out", A.Add(-40*d), v)
		co.Refs.Credential, co.Actor, co.Refs.Ticket = cred, u, g.ref("CHG")
		ci := g.ev(SourcePAM, "credential.checked_in", A.Add(-40*d+2*time.Hour), v)
		ci.Refs.Credential, ci.Actor = cred, u
		g.ev(SourceHR, "identity.terminated", A.Add(-30*d), u)
		ro := g.ev(SourcePAM, "credential.rotated", A.Add(-20*d), v)
		ro.Refs.Credential = cred
		g.plant(rSharedCred, v.Id, co)
	}
	// nhi-interactive-session: a person logs in as a service account with
	// neither a ticket nor an approval.
	{
		v := nhi("r2-svc-batch", "service_account", steward.Id)
		s := g.ev(SourcePAM, "session.started", A.Add(-15*d), v)
		s.Actor, s.Refs.Session = person("r2.interactive", "Ian Teract"), g.ref("SES")
		e := g.ev(SourcePAM, "session.ended", A.Add(-15*d+time.Hour), v)
		e.Actor, e.Refs.Session = s.Actor, s.Refs.Session
		g.plant(rNHIInteractive, v.Id, s)
	}
	// breakglass-access-retained: reviewed in time, but the firecall grant
	// was ended only three days later.
	{
		h := person("r2.bgkept", "Bo Kept")
		req := g.ref("BG")
		gr := g.ev(SourcePAM, "grant.activated", A.Add(-40*d), h)
		gr.Entitlement, gr.Refs.Grant, gr.Refs.Request, gr.Breakglass = admin(), g.ref("JIT"), req, true
		rv := g.ev(SourcePAM, "breakglass.reviewed", A.Add(-40*d+8*time.Hour), h)
		rv.Refs.Request, rv.Actor = req, steward
		end := g.ev(SourcePAM, "grant.deactivated", A.Add(-37*d), h)
		end.Entitlement, end.Refs.Grant = gr.Entitlement, gr.Refs.Grant
		g.plant(rBreakglassRetained, h.Id, gr)
	}
	// breakglass-credential-not-rotated: the emergency password is never
	// rotated after the break-glass.
	{
		h := person("r2.bgcred", "Cora Dent")
		req := g.ref("BG")
		b := g.ev(SourcePAM, "breakglass.invoked", A.Add(-25*d), h)
		b.Refs.Request, b.Refs.Credential, b.Breakglass = req, g.ref("CRED"), true
		rv := g.ev(SourcePAM, "breakglass.reviewed", A.Add(-25*d+6*time.Hour), h)
		rv.Refs.Request, rv.Actor = req, steward
		g.plant(rBreakglassCred, h.Id, b)
	}
	// third-party-outside-window: a vendor logs in after its window closed.
	{
		v := &pb.Identity{Id: "r2.vendor-northwind", Kind: "vendor", Display: "Northwind support", OwnerId: steward.Id}
		w := g.ev(SourceIGA, "identity.created", A.Add(-60*d), v)
		w.ExpiresAt = exp(A.Add(-40 * d))
		l := g.ev(SourceIGA, "auth.succeeded", A.Add(-10*d), v)
		l.Entitlement, l.Mfa = &pb.Entitlement{Id: v.Id, Resource: "okta:acme"}, tr(true)
		g.plant(rThirdParty, v.Id, l)
	}
	// privileged-session-mfa-unrecorded: an approved privileged session
	// whose MFA the connector did not record.
	{
		h := person("r2.nomfa", "Milo Unset")
		req := g.ref("REQ")
		ap := g.ev(SourceIGA, "access.approved", A.Add(-12*d), h)
		ap.Entitlement, ap.Refs.Request, ap.Actor, ap.ExpiresAt = admin(), req, steward, exp(A.Add(-12*d+8*time.Hour))
		s := g.ev(SourcePAM, "session.started", A.Add(-12*d+time.Hour), h)
		s.Entitlement, s.Refs.Request, s.Refs.Session = admin(), req, g.ref("SES")
		e := g.ev(SourcePAM, "session.ended", A.Add(-12*d+2*time.Hour), h)
		e.Refs.Session = s.Refs.Session
		x := g.ev(SourceIGA, "access.expired", A.Add(-12*d+8*time.Hour), h)
		x.Entitlement, x.Refs.Request = admin(), req
		g.plant(rMFAUnrecorded, h.Id, s)
	}
	// nhi-without-owner: a bot nobody owns.
	{
		b := nhi("r2-bot-legacy-sync", "bot", "")
		c := g.ev(SourceIGA, "identity.created", A.Add(-90*d), b)
		g.plant(rNHINoOwner, b.Id, c)
	}
	// nhi-owner-moved: the owner moves to another department; ownership is
	// never restated.
	{
		o := person("r2.owner-mover", "Otto Moved")
		w := nhi("r2-wl-report-export", "workload", o.Id)
		c := g.ev(SourceIGA, "identity.created", A.Add(-80*d), w)
		m := g.ev(SourceHR, "identity.moved", A.Add(-20*d), o)
		m.Attributes = map[string]string{"from_department": "finance", "to_department": "sales"}
		g.plant(rNHIOwnerMoved, w.Id, c)
	}
	// secret-without-expiry: an API key issued with no expiry.
	{
		v := nhi("r2-svc-webhook", "service_account", steward.Id)
		c := g.ev(SourcePAM, "credential.created", A.Add(-30*d), v)
		c.Refs.Credential = g.ref("CRED")
		g.plant(rSecretNoExpiry, v.Id, c)
	}
	g.reviewPlants(steward)
}

// ownerMoves records, as planted, every nhi-owner-moved finding the
// organisation's own moves cause: a non-human identity whose owner moved
// after the identity's last event naming that owner. They are consequences
// of the movers the organisation has, not injected failures, so they are
// recorded whatever the failure rate.
func (g *gen) ownerMoves() {
	type at struct {
		e   *pb.Event
		seq int
	}
	later := func(a, b at) bool { // a after b in chain order (time, then generation order)
		ta, tb := a.e.GetTime().AsTime(), b.e.GetTime().AsTime()
		return ta.After(tb) || (ta.Equal(tb) && a.seq > b.seq)
	}
	stated := map[string]at{}  // non-human subject -> its latest event naming an owner
	moves := map[string][]at{} // person -> identity.moved events
	for i, e := range g.evs {
		s := e.GetSubject()
		if e.GetType() == "identity.moved" {
			moves[s.GetId()] = append(moves[s.GetId()], at{e, i})
		}
		switch s.GetKind() {
		case "service_account", "workload", "bot", "system":
		default:
			continue
		}
		if s.GetOwnerId() == "" || s.GetOwnerId() == s.GetId() {
			continue
		}
		if cur, ok := stated[s.GetId()]; !ok || later(at{e, i}, cur) {
			stated[s.GetId()] = at{e, i}
		}
	}
	for subj, st := range stated {
		for _, m := range moves[st.e.GetSubject().GetOwnerId()] {
			if m.e.GetTime().AsTime().After(st.e.GetTime().AsTime()) {
				g.plant(rNHIOwnerMoved, subj, st.e)
				break
			}
		}
	}
}
