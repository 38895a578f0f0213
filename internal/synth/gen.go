package synth

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

const (
	day  = 24 * time.Hour
	year = 365 * day
)

// Rule ids of the built-in catalog, as planted.
const (
	rApprovalNoRevocation = "approval-without-revocation"
	rStanding             = "standing-privilege"
	rOverstayed           = "grant-overstayed-expiry"
	rJITOutlived          = "jit-outlived-session"
	rActivityAfterOff     = "activity-after-offboarding"
	rLeaverRetained       = "leaver-access-retained"
	rSessionNoApproval    = "session-without-approval"
	rApprovalAfterExpiry  = "approval-used-after-expiry"
	rSelfApproval         = "self-approval"
	rSoD                  = "sod-conflict"
	rBreakglass           = "breakglass-unreviewed"
	rRotationOverdue      = "credential-rotation-overdue"
	rCheckoutNotRotated   = "checkout-not-rotated"
	rNoMFA                = "privileged-session-without-mfa"
	rReviewOverdue        = "review-overdue"
	rReviewNotEnforced    = "review-revocation-not-enforced"
	rDormant              = "dormant-privilege"
	rMoverRetained        = "mover-access-retained"
	rOrphanedNHI          = "orphaned-nhi"
)

// Rules lists the rule ids the generator plants, in catalog order.
var Rules = []string{rApprovalNoRevocation, rStanding, rOverstayed, rJITOutlived, rActivityAfterOff,
	rLeaverRetained, rSessionNoApproval, rApprovalAfterExpiry, rSelfApproval, rSoD, rBreakglass,
	rRotationOverdue, rCheckoutNotRotated, rNoMFA, rReviewOverdue, rReviewNotEnforced, rDormant,
	rMoverRetained, rOrphanedNHI, rBackdated, rForeign, rGrantNoApproval, rNotIndependent, rInactive,
	rAccountRetained, rSharedCred, rNHIInteractive, rBreakglassRetained, rBreakglassCred,
	rThirdParty, rMFAUnrecorded, rNHINoOwner, rNHIOwnerMoved, rSecretNoExpiry,
	rAccessReview, rCampaign, rAccountRevoke, rSecretOldUnused}

// Generate builds the organisation described by cfg. It fails only for an
// invalid Config (ErrConfig, naming the field and the accepted range). It is
// safe for concurrent use: it shares no state between calls.
func Generate(cfg Config) (*Org, error) {
	cfg, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	g := &gen{
		cfg:   cfg,
		r:     rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x6772616e746c696e)),
		start: cfg.Start,
		asOf:  cfg.Start.AddDate(0, cfg.Months, 0),
		ids:   map[string]int{},
	}
	for c := g.start.Add(45 * day); c.Add(8 * day).Before(g.asOf); c = c.Add(60 * day) {
		g.campaigns = append(g.campaigns, c)
	}
	g.people()
	g.plan()
	for _, h := range g.humans {
		g.human(h)
	}
	for _, n := range g.nhis {
		g.nonHuman(n)
	}
	for _, v := range g.vaulted {
		g.vault(v)
	}
	g.accessReviews()
	g.round2Plants()
	return g.finish()
}

type gen struct {
	cfg         Config
	r           *rand.Rand
	start, asOf time.Time
	campaigns   []time.Time

	evs    []*pb.Event
	late   []*pb.Event // reported after every other event (backdated-closure plants)
	plants []plant
	ids    map[string]int // ref counters by prefix

	humans  []*human
	heads   map[string]*human
	ceo     *human
	nhis    []*nhi
	vaulted []*nhi
	names   map[string]bool
}

type plant struct {
	rule string
	subj string
	ev   *pb.Event
}

func (g *gen) plant(rule, subj string, evs ...*pb.Event) {
	for _, e := range evs {
		g.plants = append(g.plants, plant{rule, subj, e})
	}
}

// --- randomness helpers -----------------------------------------------------

func (g *gen) dur(lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(g.r.Int64N(int64(hi-lo)/int64(time.Second)))*time.Second
}

func (g *gen) at(lo, hi time.Time) time.Time { return lo.Add(g.dur(0, hi.Sub(lo))) }

func (g *gen) chance(p float64) bool { return g.r.Float64() < p }

func pick[T any](g *gen, xs []T) T { return xs[g.r.IntN(len(xs))] }

func (g *gen) ref(prefix string) string {
	g.ids[prefix]++
	return fmt.Sprintf("%s-%06d", prefix, g.ids[prefix])
}

// --- events -----------------------------------------------------------------

var products = map[string]string{
	SourceHR:  "Workday HCM",
	SourceIGA: "SailPoint Identity Security Cloud",
	SourcePAM: "CyberArk Privilege Cloud",
}

var idPrefix = map[string]string{SourceHR: "wd", SourceIGA: "sp", SourcePAM: "ca"}

var systemActor = map[string]*pb.Identity{
	SourceHR:  {Id: SourceHR, Kind: "system", Display: "Workday HCM"},
	SourceIGA: {Id: SourceIGA, Kind: "system", Display: "SailPoint IGA"},
	SourcePAM: {Id: SourcePAM, Kind: "system", Display: "CyberArk PAM"},
}

// ev appends an event; its id is assigned once all events are sorted.
func (g *gen) ev(src, typ string, t time.Time, subj *pb.Identity) *pb.Event {
	e := &pb.Event{
		Type:    typ,
		Time:    timestamppb.New(t.Truncate(time.Second)),
		Source:  &pb.Source{System: src, Product: products[src], Tenant: "acme-corp"},
		Subject: proto.Clone(subj).(*pb.Identity),
		Actor:   proto.Clone(systemActor[src]).(*pb.Identity),
		Refs:    &pb.Refs{},
	}
	switch typ {
	case "access.requested", "breakglass.invoked", "session.started", "session.ended":
		e.Actor = proto.Clone(subj).(*pb.Identity) // the person did it
	}
	g.evs = append(g.evs, e)
	return e
}

func (g *gen) finish() (*Org, error) {
	type keyed struct {
		e   *pb.Event
		seq int
	}
	ks := make([]keyed, len(g.evs))
	for i, e := range g.evs {
		ks[i] = keyed{e, i}
	}
	slices.SortStableFunc(ks, func(a, b keyed) int {
		// A late event comes after every other, whatever its time.
		if la, lb := slices.Contains(g.late, a.e), slices.Contains(g.late, b.e); la != lb {
			if la {
				return 1
			}
			return -1
		}
		if c := a.e.GetTime().AsTime().Compare(b.e.GetTime().AsTime()); c != 0 {
			return c
		}
		return cmp.Compare(a.seq, b.seq)
	})
	org := &Org{Config: g.cfg, AsOf: g.asOf, SoDPairs: slices.Clone(sodPairs)}
	counts := map[string]int{}
	subjects := map[string]bool{}
	for _, k := range ks {
		e := k.e
		if !e.GetTime().AsTime().Before(g.asOf) || e.GetTime().AsTime().Before(g.start) {
			return nil, fmt.Errorf("internal error: %s event at %s outside [%s, %s)", e.GetType(), e.GetTime().AsTime(), g.start, g.asOf)
		}
		src := e.GetSource().GetSystem()
		counts[src]++
		e.Id = fmt.Sprintf("%s-%08d", idPrefix[src], counts[src])
		e.Source.RawId = e.Id
		e.Source.RawType = rawType(src, e.GetType())
		if e.GetRefs().GetRequest() == "" && e.GetRefs().GetGrant() == "" && e.GetRefs().GetSession() == "" &&
			e.GetRefs().GetCredential() == "" && e.GetRefs().GetReview() == "" && e.GetRefs().GetTicket() == "" {
			e.Refs = nil
		}
		subjects[e.GetSubject().GetId()] = true
		org.Events = append(org.Events, e)
	}
	org.Identities = len(subjects)
	for _, p := range g.plants {
		org.Planted = append(org.Planted, Planted{Rule: p.rule, Subject: p.subj, EventID: p.ev.GetId()})
	}
	slices.SortFunc(org.Planted, func(a, b Planted) int {
		return cmp.Or(cmp.Compare(a.Rule, b.Rule), cmp.Compare(a.Subject, b.Subject), cmp.Compare(a.EventID, b.EventID))
	})
	org.Planted = slices.Compact(org.Planted)
	return org, nil
}

// rawType is what the source itself calls the event, kept for realism.
func rawType(src, typ string) string {
	switch src {
	case SourceHR:
		return map[string]string{"identity.created": "Hire", "identity.moved": "Transfer",
			"identity.disabled": "Leave_of_Absence", "identity.enabled": "Return_from_Leave",
			"identity.terminated": "Termination"}[typ]
	case SourcePAM:
		return map[string]string{"grant.activated": "ElevationStarted", "grant.deactivated": "ElevationEnded",
			"grant.expired": "ElevationExpired", "session.started": "PSMSessionStart", "session.ended": "PSMSessionEnd",
			"session.revoked": "PSMSessionTerminated", "credential.created": "AccountOnboarded",
			"credential.checked_out": "RetrievePassword", "credential.checked_in": "ReleasePassword",
			"credential.rotated": "CPMChangePassword", "credential.revoked": "AccountDeleted",
			"breakglass.invoked": "FirecallInvoked", "breakglass.reviewed": "FirecallReviewed",
			"access.approved": "DualControlApproved"}[typ]
	}
	return map[string]string{"access.requested": "ACCESS_REQUEST_CREATED", "access.approved": "ACCESS_REQUEST_APPROVED",
		"access.denied": "ACCESS_REQUEST_REJECTED", "access.revoked": "ACCESS_REQUEST_REVOKED",
		"access.expired": "ACCESS_REQUEST_EXPIRED", "review.certified": "CERTIFICATION_APPROVE",
		"review.revoked": "CERTIFICATION_REVOKE", "review.opened": "CAMPAIGN_ACTIVATED",
		"review.signed_off": "CERTIFICATION_SIGNED_OFF", "review.closed": "CAMPAIGN_COMPLETED",
		"grant.assigned": "PROVISIONING_ADD",
		"grant.removed":  "PROVISIONING_REMOVE", "grant.expired": "PROVISIONING_EXPIRE",
		"identity.created": "IDENTITY_CREATED", "identity.terminated": "IDENTITY_DELETED"}[typ]
}

// planCount is how many plants a rule gets from a pool of n candidates.
func (g *gen) planCount(weight float64, n int) int {
	if g.cfg.FailureRate == 0 || n == 0 {
		return 0
	}
	k := int(math.Round(g.cfg.FailureRate * weight * float64(n)))
	return max(1, min(k, n))
}
