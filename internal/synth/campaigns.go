package synth

import (
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// Rule ids of the review-campaign and stale-secret rules (docs/rules.md
// rules 35-38), as planted.
const (
	rAccessReview     = "access-review-missing"
	rCampaign         = "review-campaign-incomplete"
	rAccountRevoke    = "review-account-revocation-not-enforced"
	rSecretOldUnused  = "secret-old-and-unused"
	campaignEvery     = 120 * day
	campaignDue       = 21 * day
	accessReviewEvery = 4380 * time.Hour // access_review_interval's default
)

// campaignReviewer signs off the organisation's access-review campaigns.
var campaignReviewer = &pb.Identity{Id: "grc.review-board", Kind: "human", Display: "Access review board"}

// accessReviews runs the organisation's all-access review campaigns (PCI
// DSS 7.2.4 and 7.2.5.1): every 120 days, for every identity that is not
// terminated, every assigned grant in force and every account is decided
// (certified) in the campaign and the review is signed off, so that
// access-review-missing and review-campaign-incomplete find nothing in a
// clean organisation. Identities that carry a plant are left out of the
// campaigns, so that no plant is disturbed; what that leaves unreviewed
// for longer than the interval is recorded as planted.
func (g *gen) accessReviews() {
	bySubject := map[string][]*pb.Event{}
	var order []string
	for _, e := range g.evs {
		s := e.GetSubject().GetId()
		if bySubject[s] == nil {
			order = append(order, s)
		}
		bySubject[s] = append(bySubject[s], e)
	}
	planted := map[string]bool{}
	for _, p := range g.plants {
		planted[p.subj] = true
	}
	ended := func(evs []*pb.Event, item *pb.Event, t time.Time) bool {
		for _, e := range evs {
			if e.GetTime().AsTime().After(t) {
				continue
			}
			switch e.GetType() {
			case "grant.deactivated", "grant.removed", "grant.expired":
				if item.GetType() == "grant.assigned" && e.GetRefs().GetGrant() == item.GetRefs().GetGrant() {
					return true
				}
			case "account.disabled":
				if item.GetType() == "account.created" && e.GetEntitlement().GetResource() == item.GetEntitlement().GetResource() &&
					!e.GetTime().AsTime().Before(item.GetTime().AsTime()) {
					return true
				}
			}
		}
		return false
	}
	items := func(evs []*pb.Event, t time.Time) []*pb.Event {
		var out []*pb.Event
		for _, e := range evs {
			isItem := (e.GetType() == "grant.assigned" && e.GetRefs().GetGrant() != "") ||
				(e.GetType() == "account.created" && e.GetEntitlement().GetResource() != "")
			if isItem && !e.GetTime().AsTime().After(t) && !ended(evs, e, t) {
				out = append(out, e)
			}
		}
		return out
	}
	offboarded := func(evs []*pb.Event, t time.Time) bool {
		for _, e := range evs {
			if e.GetType() == "identity.terminated" && !e.GetTime().AsTime().After(t) {
				return true
			}
		}
		return false
	}
	for _, s := range order {
		evs := slices.Clone(bySubject[s])
		slices.SortStableFunc(evs, func(a, b *pb.Event) int { return a.GetTime().AsTime().Compare(b.GetTime().AsTime()) })
		if planted[s] {
			// Not reviewed: an item older than the interval and still in
			// force at the as-of time is a finding, and planted as such.
			for _, it := range items(evs, g.asOf) {
				if it.GetTime().AsTime().Add(accessReviewEvery).Before(g.asOf) {
					g.plant(rAccessReview, s, it)
				}
			}
			continue
		}
		for c := g.start.Add(100 * day); c.Add(campaignDue).Before(g.asOf); c = c.Add(campaignEvery) {
			if offboarded(evs, c) {
				break
			}
			in := items(evs, c)
			if len(in) == 0 {
				continue
			}
			// The subject as its latest event before the campaign states it
			// (kind and owner included).
			var who *pb.Identity
			for _, e := range evs {
				if !e.GetTime().AsTime().After(c) {
					who = e.GetSubject()
				}
			}
			k := "CAMP-" + c.Format("2006-01-02")
			o := g.ev(SourceIGA, "review.opened", c, who)
			o.Refs.Review, o.ExpiresAt = k, ts(c.Add(campaignDue))
			for _, it := range in {
				d := g.ev(SourceIGA, "review.certified", c.Add(g.dur(time.Hour, 10*day)), who)
				d.Refs.Review, d.Actor = k, proto.Clone(campaignReviewer).(*pb.Identity)
				d.Entitlement = proto.Clone(it.GetEntitlement()).(*pb.Entitlement)
				if it.GetType() == "grant.assigned" {
					d.Refs.Grant = it.GetRefs().GetGrant()
				}
			}
			so := g.ev(SourceIGA, "review.signed_off", c.Add(11*day), who)
			so.Refs.Review, so.Actor = k, proto.Clone(campaignReviewer).(*pb.Identity)
		}
	}
}

// reviewPlants plants one failure of each of rules 35-38 on identities of
// their own, dated back from the as-of time (called from round2Plants).
func (g *gen) reviewPlants(steward *pb.Identity) {
	const d = day
	A := g.asOf
	person := func(id, display string) *pb.Identity {
		return &pb.Identity{Id: id, Kind: "human", Display: display}
	}
	reviewer := proto.Clone(campaignReviewer).(*pb.Identity)
	// access-review-missing and review-campaign-incomplete: a department
	// group held since the first day, decided in a campaign that was
	// closed without a sign-off, so it counts for nothing.
	{
		h := person("r2.unreviewed", "Uma Reviewless")
		start := g.start.Add(12 * time.Hour)
		a := g.ev(SourceIGA, "grant.assigned", start, h)
		a.Entitlement, a.Refs.Grant = &pb.Entitlement{Id: "ad:grp-ops", Resource: "ad:corp.acme.example"}, g.ref("GRT")
		if start.Add(accessReviewEvery).Before(A) {
			g.plant(rAccessReview, h.Id, a)
		}
		if c := g.start.Add(40 * d); c.Add(campaignDue).Before(A) {
			k := "CAMP-" + c.Format("2006-01-02") + "-OPS"
			o := g.ev(SourceIGA, "review.opened", c, h)
			o.Refs.Review, o.ExpiresAt = k, ts(c.Add(campaignDue))
			x := g.ev(SourceIGA, "review.certified", c.Add(2*d), h)
			x.Refs.Review, x.Refs.Grant, x.Entitlement, x.Actor = k, a.Refs.Grant, proto.Clone(a.Entitlement).(*pb.Entitlement), reviewer
			cl := g.ev(SourceIGA, "review.closed", c.Add(campaignDue-d), h)
			cl.Refs.Review, cl.Reason = k, "campaign closed by the IGA at its end date; not signed off"
			g.plant(rCampaign, h.Id, o)
		}
	}
	// review-account-revocation-not-enforced: the review revokes a GitHub
	// account; nobody disables it.
	{
		h := person("r2.revoked-account", "Rafael Kept")
		acct := &pb.Entitlement{Id: "rkept", Resource: "github:acme"}
		a := g.ev(SourceIGA, "account.created", A.Add(-60*d), h)
		a.Entitlement = acct
		k := "CAMP-" + A.Add(-40*d).Format("2006-01-02") + "-GH"
		o := g.ev(SourceIGA, "review.opened", A.Add(-40*d), h)
		o.Refs.Review, o.ExpiresAt, o.Entitlement = k, ts(A.Add(-19*d)), &pb.Entitlement{Resource: "github:acme"}
		r := g.ev(SourceIGA, "review.revoked", A.Add(-38*d), h)
		r.Refs.Review, r.Entitlement, r.Actor = k, proto.Clone(acct).(*pb.Entitlement), reviewer
		r.Reason = "no longer in engineering"
		so := g.ev(SourceIGA, "review.signed_off", A.Add(-37*d), h)
		so.Refs.Review, so.Actor = k, reviewer
		g.plant(rAccountRevoke, h.Id, r)
	}
	// secret-old-and-unused: an API key created four months ago, with an
	// expiry, never used since (also overdue for rotation).
	{
		v := &pb.Identity{Id: "r2-svc-legacy-export", Kind: "service_account", OwnerId: steward.Id}
		c := g.ev(SourceIGA, "credential.created", A.Add(-120*d), v)
		c.Refs.Credential, c.ExpiresAt = "kv/legacy-export/api-key", ts(A.Add(245*d))
		g.plant(rSecretOldUnused, v.Id, c)
		g.plant(rRotationOverdue, v.Id, c)
	}
}
