package rules

import (
	"cmp"
	"slices"
	"sync"
	"time"

	"github.com/google/cel-go/common/types/ref"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// The types in this file are what rule expressions see. They are plain Go
// structs exposed to CEL with ext.NativeTypes; the `cel` tags are the field
// names rules use. Every list is in chain order: event time, then ledger
// index. A pointer field that may be missing has a has_* companion, because
// CEL reads a nil pointer as an empty struct.

// Identity is a subject or actor as CEL sees it.
type Identity struct {
	ID      string `cel:"id"`
	Kind    string `cel:"kind"`
	Display string `cel:"display"`
	OwnerID string `cel:"owner_id"`
}

// Entitlement is the access an event is about.
type Entitlement struct {
	ID         string `cel:"id"`
	Resource   string `cel:"resource"`
	Privileged bool   `cel:"privileged"`
}

// Refs are the ids that chain events.
type Refs struct {
	Request    string `cel:"request"`
	Grant      string `cel:"grant"`
	Session    string `cel:"session"`
	Credential string `cel:"credential"`
	Review     string `cel:"review"`
	Ticket     string `cel:"ticket"`
}

// Event is one ledger entry of the chain, with the fields of pb.Event plus
// its ledger index and two derived fields.
type Event struct {
	Index       int64             `cel:"index"`
	ID          string            `cel:"id"`
	Type        string            `cel:"type"`
	Time        time.Time         `cel:"time"`
	System      string            `cel:"system"` // source.system
	Subject     Identity          `cel:"subject"`
	Actor       Identity          `cel:"actor"`
	Entitlement Entitlement       `cel:"entitlement"`
	Refs        Refs              `cel:"refs"`
	ExpiresAt   time.Time         `cel:"expires_at"`
	HasExpiry   bool              `cel:"has_expiry"`
	Reason      string            `cel:"reason"`
	MFA         bool              `cel:"mfa"`
	MFARecorded bool              `cel:"mfa_recorded"`
	Breakglass  bool              `cel:"breakglass"`
	Attributes  map[string]string `cel:"attributes"`
	// Privileged is entitlement.privileged, or, for an event with
	// refs.grant, whether any grant event of that grant is privileged.
	Privileged bool `cel:"privileged"`
	// Approvals are the access.approved events this event is under
	// (docs/rules.md, "approval of request r"), in chain order, whatever their time.
	Approvals []*Event `cel:"approvals"`
	// BreakglassReviews, for a break-glass use (see views.breakglass), are
	// the breakglass.reviewed events with the same non-empty refs.request.
	BreakglassReviews []*Event `cel:"breakglass_reviews"`
	// ObservedTime is when the ledger received the entry (Entry's
	// observed_time); HasObservedTime is false when the chain was handed
	// over without it.
	ObservedTime    time.Time `cel:"observed_time"`
	HasObservedTime bool      `cel:"has_observed_time"`
	// Opening, for a closing event (views.closings), is the event in the
	// same chain that opened what it closes (docs/rules.md "Closing
	// events"); HasOpening is false when the chain has none.
	Opening    *Event `cel:"opening"`
	HasOpening bool   `cel:"has_opening"`

	// src answers newerFromSource for this evaluation (nil: no rule asks).
	src *sourceIndex

	// CEL values, made on first use (see viewvals.go).
	celVal, subjectVal, actorVal, entitlementVal, refsVal ref.Val
	// The CEL values of the fields rules read most, made on first read
	// (fields.go): a string or timestamp handed to CEL is boxed, one
	// allocation per read otherwise.
	typeVal, timeVal, systemVal, expiresVal ref.Val
}

// Session is a session.started with its first end.
type Session struct {
	ID         string `cel:"id"`
	Grant      string `cel:"grant"`
	Start      *Event `cel:"start"`
	HasEnd     bool   `cel:"has_end"`
	End        *Event `cel:"end"` // first session.ended or session.revoked
	Privileged bool   `cel:"privileged"`

	celVal ref.Val // made on first use (see viewvals.go)
}

// Grant is one grant event (grant.assigned or grant.activated with
// refs.grant) with what hangs off its grant id.
type Grant struct {
	ID          string     `cel:"id"`
	Type        string     `cel:"type"`
	Event       *Event     `cel:"event"`
	Time        time.Time  `cel:"time"`
	Entitlement string     `cel:"entitlement"`
	Privileged  bool       `cel:"privileged"` // the grant event's own entitlement.privileged
	HasExpiry   bool       `cel:"has_expiry"`
	ExpiresAt   time.Time  `cel:"expires_at"`
	HasEnd      bool       `cel:"has_end"`
	End         *Event     `cel:"end"`  // the first end event of the grant id
	Ends        []*Event   `cel:"ends"` // every end event of the grant id
	Request     string     `cel:"request"`
	Approvals   []*Event   `cel:"approvals"` // approvals the grant event is under
	Sessions    []*Session `cel:"sessions"`  // sessions that belong to the grant id
	// HasSessionEnd and SessionEnd: the earliest end among its sessions.
	HasSessionEnd  bool     `cel:"has_session_end"`
	SessionEnd     *Event   `cel:"session_end"`
	Certifications []*Event `cel:"certifications"` // review.certified with refs.grant
	Revocations    []*Event `cel:"revocations"`    // review.revoked with refs.grant
	celVal         ref.Val  // made on first use (see viewvals.go)
}

// Approval is an access.approved with the events that close it.
type Approval struct {
	Request string `cel:"request"`
	Event   *Event `cel:"event"`
	// Closings are access.revoked/access.expired with the request, and end
	// events of grants under the approval, with time >= the approval's.
	Closings []*Event `cel:"closings"`
	// Uses are the session.started and grant.activated events under the
	// approval, whatever their time.
	Uses   []*Event `cel:"uses"`
	celVal ref.Val  // made on first use (see viewvals.go)
}

// Checkout is a credential.checked_out with the first rotation or
// revocation of the same credential strictly after it.
type Checkout struct {
	Event       *Event  `cel:"event"`
	HasRotation bool    `cel:"has_rotation"`
	Rotation    *Event  `cel:"rotation"`
	celVal      ref.Val // made on first use (see viewvals.go)
}

// Credential gathers the events of one refs.credential.
type Credential struct {
	ID         string      `cel:"id"`
	HasLatest  bool        `cel:"has_latest"`
	Latest     *Event      `cel:"latest"` // latest credential.created or credential.rotated
	Revoked    bool        `cel:"revoked"`
	Revocation *Event      `cel:"revocation"` // first credential.revoked
	Checkouts  []*Checkout `cel:"checkouts"`
	// Issues are its credential.created and credential.rotated events.
	Issues []*Event `cel:"issues"`
	// Rotations are its credential.rotated and credential.revoked events.
	Rotations []*Event `cel:"rotations"`
	celVal    ref.Val  // made on first use (see viewvals.go)
}

// Subject is the identity being evaluated.
type Subject struct {
	ID       string `cel:"id"`
	Kind     string `cel:"kind"`  // latest non-empty subject.kind
	Owner    string `cel:"owner"` // owner_id on the latest event that has one
	HasOwner bool   `cel:"has_owner"`
}

// Owner is the current owner's chain summary (orphaned-nhi).
type Owner struct {
	ID           string   `cel:"id"`
	Known        bool     `cel:"known"` // the subject is non-human and has an owner whose chain was read
	Terminations []*Event `cel:"terminations"`
	// Moves are the owner's identity.moved events.
	Moves []*Event `cel:"moves"`
	// Stated is the subject's latest event carrying subject.owner_id (the
	// one that names this owner); empty when the subject has none.
	Stated *Event `cel:"stated"`
}

// views is everything derived from one subject's chain.
type views struct {
	events       []*Event
	activity     []*Event // session.started, grant.assigned, grant.activated, credential.checked_out
	grants       []*Grant
	grantByID    map[string]*Grant
	grantEnds    map[string]*Event
	sessions     []*Session
	approvals    []*Approval
	credentials  []*Credential
	terminations []*Event
	offboardings []*Event
	enablements  []*Event
	moves        []*Event
	reviews      []*Event
	breakglass   []*Event // breakglass.invoked, and session.started/grant.activated with breakglass
	bgReviews    []*Event // breakglass.reviewed
	closings     []*Event // closing events (isClosingEvent)
	r2           round2Views
	subject      Subject
	owner        Owner
	ownerBound   uint64 // chainSizeBound of the owner's chain, if read
	slabs        []*eventSlab
}

func isGrantEvent(e *Event) bool {
	return (e.Type == "grant.assigned" || e.Type == "grant.activated") && e.Refs.Grant != ""
}

func isEndEvent(e *Event) bool {
	switch e.Type {
	case "grant.deactivated", "grant.removed", "grant.expired":
		return e.Refs.Grant != ""
	}
	return false
}

// isClosingEvent reports whether e is a closing event: an end event of a
// grant, access.revoked, access.expired, session.ended, session.revoked,
// credential.rotated or credential.revoked.
func isClosingEvent(e *Event) bool {
	switch e.Type {
	case "access.revoked", "access.expired", "session.ended", "session.revoked",
		"credential.rotated", "credential.revoked":
		return true
	}
	return isEndEvent(e)
}

func toTime(ts interface{ AsTime() time.Time }, ok bool) time.Time {
	if !ok {
		return time.Time{}
	}
	return ts.AsTime()
}

func identity(i *pb.Identity) Identity {
	return Identity{ID: i.GetId(), Kind: i.GetKind(), Display: i.GetDisplay(), OwnerID: i.GetOwnerId()}
}

// fillEvent sets every field of e (which may hold a previous subject's
// event) from en, field by field: no temporary copy of the whole struct.
func fillEvent(e *Event, en Entry) {
	ev := en.Event
	e.Index = int64(en.Index)
	e.ID = ev.GetId()
	e.Type = ev.GetType()
	e.Time = toTime(ev.GetTime(), ev.GetTime() != nil)
	e.System = ev.GetSource().GetSystem()
	e.Subject = identity(ev.GetSubject())
	e.Actor = identity(ev.GetActor())
	ent := ev.GetEntitlement()
	e.Entitlement = Entitlement{ID: ent.GetId(), Resource: ent.GetResource(), Privileged: ent.GetPrivileged()}
	refs := ev.GetRefs()
	e.Refs = Refs{
		Request:    refs.GetRequest(),
		Grant:      refs.GetGrant(),
		Session:    refs.GetSession(),
		Credential: refs.GetCredential(),
		Review:     refs.GetReview(),
		Ticket:     refs.GetTicket(),
	}
	e.ExpiresAt = toTime(ev.GetExpiresAt(), ev.GetExpiresAt() != nil)
	e.HasExpiry = ev.GetExpiresAt() != nil
	e.Reason = ev.GetReason()
	e.MFA = ev.GetMfa()
	e.MFARecorded = ev.Mfa != nil
	e.Breakglass = ev.GetBreakglass()
	e.Attributes = ev.GetAttributes()
	e.Privileged = e.Entitlement.Privileged
	e.Approvals, e.BreakglassReviews = nil, nil
	e.ObservedTime, e.HasObservedTime = en.Observed, !en.Observed.IsZero()
	e.Opening, e.HasOpening, e.src = nil, false, nil
	e.celVal, e.subjectVal, e.actorVal, e.entitlementVal, e.refsVal = nil, nil, nil, nil, nil
	e.typeVal, e.timeVal, e.systemVal, e.expiresVal = nil, nil, nil, nil
}

// chainOrder sorts events by time, then ledger index.
func chainOrder(a, b *Event) int {
	if c := a.Time.Compare(b.Time); c != 0 {
		return c
	}
	return cmp.Compare(a.Index, b.Index)
}

// eventSlab is the storage of one chain's events, reused across subjects
// through slabPool: evaluating a subject allocates no per-event memory for
// its events.
type eventSlab struct {
	events []Event
	ptrs   []*Event
	// decode, with its interner, decodes leaves into events; it keeps the
	// strings of the chains decoded through this slab before.
	decode leafVisitor
	intern interner
	// The subject's grants, sessions and approvals (buildViews), likewise
	// reused: each is overwritten whole when handed out again.
	grants    chunks[Grant]
	sessions  chunks[Session]
	approvals chunks[Approval]
	// Likewise the credentials and checkouts, and the maps buildViews uses
	// while it builds, which no view holds (cleared when reused).
	credentials chunks[Credential]
	checkouts   chunks[Checkout]
	aggs        chunks[grantAgg]
	scratch     viewScratch
	// lists are the backing arrays of the view lists of the chain last
	// built in this slab (keepLists), reused by the next one.
	lists keptLists
}

// keptLists are the backing arrays of a views' lists.
type keptLists struct {
	events      [numEventLists][]*Event
	grants      []*Grant
	sessions    []*Session
	approvals   []*Approval
	credentials []*Credential
}

const numEventLists = 15

// eventLists are v's lists of events that buildViews appends to.
func (v *views) eventLists() [numEventLists]*[]*Event {
	r := &v.r2
	return [...]*[]*Event{&v.activity, &v.terminations, &v.offboardings, &v.enablements, &v.moves,
		&v.reviews, &v.breakglass, &v.bgReviews, &v.closings, &r.logins, &r.uses, &r.accounts,
		&r.windows, &r.leavings, &r.campaigns}
}

// reuseLists makes v's lists (all empty) append into k's arrays.
func (v *views) reuseLists(k *keptLists) {
	for i, l := range v.eventLists() {
		*l = k.events[i][:0]
	}
	v.grants, v.sessions, v.approvals, v.credentials = k.grants[:0], k.sessions[:0], k.approvals[:0], k.credentials[:0]
}

// keepLists records v's lists' arrays in k for the next chain, and makes
// every empty list nil, as it was before arrays were reused: nothing can
// tell a list built in a kept array from one built anew.
func (v *views) keepLists(k *keptLists) {
	for i, l := range v.eventLists() {
		k.events[i] = (*l)[:0]
		if len(*l) == 0 {
			*l = nil
		}
	}
	k.grants, k.sessions, k.approvals, k.credentials = v.grants[:0], v.sessions[:0], v.approvals[:0], v.credentials[:0]
	v.grants, v.sessions, v.approvals, v.credentials = nilIfEmpty(v.grants), nilIfEmpty(v.sessions), nilIfEmpty(v.approvals), nilIfEmpty(v.credentials)
}

func nilIfEmpty[T any](s []T) []T {
	if len(s) == 0 {
		return nil
	}
	return s
}

// viewScratch are the maps buildViews and linkClosings look entries up in
// while building one chain's views; kept with the slab so that each
// subject does not make them anew.
type viewScratch struct {
	byGrant        map[string]*grantAgg
	approvalsByReq map[string][]*Approval
	sessionsByID   map[string][]*Session
	credByID       map[string]*Credential
	rotations      map[string][]*Event
	approvalOf     map[*Event]*Approval
	closersByReq   map[string][]*Event
	openings       [4]map[string]*Event // linkClosings: grants, approvals, sessions, credentials
}

// maxReusedMap is the most entries a scratch map may have had for it to be
// cleared and reused: clearing costs as much as the map's capacity, so a
// map grown by a long chain is dropped instead.
const maxReusedMap = 256

// reuse returns *m emptied, or a new map when it is nil or was large.
func reuse[K comparable, V any](m *map[K]V) map[K]V {
	if *m == nil || len(*m) > maxReusedMap {
		*m = make(map[K]V)
	} else {
		clear(*m)
	}
	return *m
}

// chunks hands out values from fixed-size arrays kept across uses, so that
// the pointers handed out stay valid while more are taken.
type chunks[T any] struct {
	all  [][]T
	next int // values handed out since reset
}

const chunkLen = 32

// take returns a value to overwrite.
func (c *chunks[T]) take() *T {
	i, j := c.next/chunkLen, c.next%chunkLen
	if i == len(c.all) {
		c.all = append(c.all, make([]T, chunkLen))
	}
	c.next++
	return &c.all[i][j]
}

func (c *chunks[T]) reset() { c.next = 0 }

var slabPool = sync.Pool{New: func() any { return new(eventSlab) }}

// getSlab takes a slab from slabPool (a variable for tests, which compare
// views built in reused slabs with views built in new ones).
var getSlab = func() *eventSlab { return slabPool.Get().(*eventSlab) }

// sortedEvents converts a chain and orders it by time, then index. The
// events live in a pooled slab, recorded in v for release.
func (v *views) sortedEvents(chain []Entry) ([]*Event, error) {
	sl := getSlab()
	v.slabs = append(v.slabs, sl)
	if cap(sl.events) < len(chain) {
		sl.events = make([]Event, len(chain))
		sl.ptrs = make([]*Event, len(chain))
	}
	slab, evs := sl.events[:len(chain)], sl.ptrs[:len(chain)]
	sl.grants.reset()
	sl.sessions.reset()
	sl.approvals.reset()
	sl.credentials.reset()
	sl.checkouts.reset()
	sl.aggs.reset()
	sl.decode.in = &sl.intern
	for i, en := range chain {
		if en.Event == nil && en.Leaf != nil {
			if err := decodeLeafWith(&sl.decode, &slab[i], en.Index, en.Leaf); err != nil {
				return nil, err
			}
		} else {
			fillEvent(&slab[i], en)
		}
		evs[i] = &slab[i]
	}
	if !slices.IsSortedFunc(evs, chainOrder) {
		slices.SortStableFunc(evs, chainOrder)
	}
	return evs, nil
}

// release returns the views' event storage to the pool. Nothing may use v,
// or any view object or CEL value made from it, afterwards.
func (v *views) release() {
	for _, sl := range v.slabs {
		if cap(sl.events) > maxPooledSlab {
			continue // let a rare huge chain's storage go
		}
		slabPool.Put(sl)
	}
	v.slabs = nil
}

// maxPooledSlab is the largest chain whose storage is pooled.
const maxPooledSlab = 1 << 16

// grantAgg gathers, while building views, what hangs off one grant id.
type grantAgg struct {
	grantEvents int      // grant events with the id
	requests    []string // refs.request of its grant events
	privileged  bool     // some grant event is privileged
	ends        []*Event // end events
	certs       []*Event // review.certified
	revocations []*Event // review.revoked
	sessions    []*Session
}

// asOfPrefix is the part of evs (in chain order) dated at or before now:
// an entry whose time is after the as-of time is in no chain.
func asOfPrefix(evs []*Event, now time.Time) []*Event {
	return evs[:searchTime(evs, now, true)]
}

// buildViews derives every view from one subject's chain, limited to the
// entries dated at or before now, in O(n log n). src, when not nil, answers
// newerFromSource. On an error (a leaf that does not decode) nothing is left
// to release.
func buildViews(subject string, chain []Entry, now time.Time, src *sourceIndex) (*views, error) {
	v := &views{subject: Subject{ID: subject}}
	evs, err := v.sortedEvents(chain)
	if err != nil {
		v.release()
		return nil, err
	}
	evs = asOfPrefix(evs, now)
	v.events = evs
	sl := v.slabs[0] // this chain's storage: grants, sessions, approvals, credentials, checkouts, lists and scratch maps

	sc := &sl.scratch
	v.reuseLists(&sl.lists)
	byGrant := reuse(&sc.byGrant) // grant id -> what hangs off it
	grant := func(id string) *grantAgg {
		a := byGrant[id]
		if a == nil {
			a = sl.aggs.take()
			*a = grantAgg{}
			byGrant[id] = a
		}
		return a
	}
	approvalsByReq := reuse(&sc.approvalsByReq) // request -> approvals
	sessionsByID := reuse(&sc.sessionsByID)     // session id -> sessions
	credByID := reuse(&sc.credByID)             // credential id -> credential
	rotations := reuse(&sc.rotations)           // credential id -> rotated/revoked events
	credential := func(id string) *Credential {
		c := credByID[id]
		if c == nil {
			c = sl.credentials.take()
			*c = Credential{ID: id}
			credByID[id] = c
			v.credentials = append(v.credentials, c)
		}
		return c
	}

	for _, e := range evs {
		if e.Subject.Kind != "" {
			v.subject.Kind = e.Subject.Kind
		}
		if e.Subject.OwnerID != "" {
			v.subject.Owner = e.Subject.OwnerID
			v.subject.HasOwner = true
		}
		switch e.Type {
		case "session.started", "grant.assigned", "grant.activated", "credential.checked_out":
			v.activity = append(v.activity, e)
		}
		switch e.Type {
		case "grant.assigned", "grant.activated":
			if e.Refs.Grant == "" {
				break
			}
			g := sl.grants.take()
			*g = Grant{ID: e.Refs.Grant, Type: e.Type, Event: e, Time: e.Time,
				Entitlement: e.Entitlement.ID, Privileged: e.Entitlement.Privileged,
				HasExpiry: e.HasExpiry, ExpiresAt: e.ExpiresAt, Request: e.Refs.Request}
			v.grants = append(v.grants, g)
			ga := grant(g.ID)
			ga.grantEvents++
			if e.Refs.Request != "" {
				ga.requests = append(ga.requests, e.Refs.Request)
			}
			if e.Entitlement.Privileged {
				ga.privileged = true
			}
		case "grant.deactivated", "grant.removed", "grant.expired":
			if e.Refs.Grant != "" {
				ga := grant(e.Refs.Grant)
				ga.ends = append(ga.ends, e)
			}
		case "session.started":
			s := sl.sessions.take()
			*s = Session{ID: e.Refs.Session, Grant: e.Refs.Grant, Start: e}
			v.sessions = append(v.sessions, s)
			if s.ID != "" {
				sessionsByID[s.ID] = append(sessionsByID[s.ID], s)
			}
		case "session.ended", "session.revoked":
			for _, s := range sessionsByID[e.Refs.Session] {
				if !s.HasEnd {
					s.HasEnd, s.End = true, e
				}
			}
		case "access.approved":
			a := sl.approvals.take()
			*a = Approval{Request: e.Refs.Request, Event: e}
			v.approvals = append(v.approvals, a)
			if a.Request != "" {
				approvalsByReq[a.Request] = append(approvalsByReq[a.Request], a)
			}
		case "credential.created", "credential.rotated":
			c := credential(e.Refs.Credential)
			c.HasLatest, c.Latest = true, e
			c.Issues = append(c.Issues, e)
			if e.Type == "credential.rotated" {
				rotations[c.ID] = append(rotations[c.ID], e)
			}
		case "credential.revoked":
			c := credential(e.Refs.Credential)
			if !c.Revoked {
				c.Revoked, c.Revocation = true, e
			}
			rotations[c.ID] = append(rotations[c.ID], e)
		case "credential.checked_out":
			c := credential(e.Refs.Credential)
			k := sl.checkouts.take()
			*k = Checkout{Event: e}
			c.Checkouts = append(c.Checkouts, k)
		case "identity.terminated":
			v.terminations = append(v.terminations, e)
			v.offboardings = append(v.offboardings, e)
		case "identity.disabled":
			v.offboardings = append(v.offboardings, e)
		case "identity.enabled":
			v.enablements = append(v.enablements, e)
		case "identity.moved":
			v.moves = append(v.moves, e)
		case "review.certified", "review.revoked":
			v.reviews = append(v.reviews, e)
			if e.Refs.Grant != "" {
				if e.Type == "review.certified" {
					ga := grant(e.Refs.Grant)
					ga.certs = append(ga.certs, e)
				} else {
					ga := grant(e.Refs.Grant)
					ga.revocations = append(ga.revocations, e)
				}
			}
		case "breakglass.reviewed":
			v.bgReviews = append(v.bgReviews, e)
		}
		if e.Type == "breakglass.invoked" || (e.Breakglass && (e.Type == "session.started" || e.Type == "grant.activated")) {
			v.breakglass = append(v.breakglass, e)
		}
	}

	// Session ends and grant links.
	for _, s := range v.sessions {
		ga := byGrant[s.Grant]
		s.Privileged = s.Start.Entitlement.Privileged || (ga != nil && ga.privileged)
		if s.Grant != "" {
			ga := grant(s.Grant)
			ga.sessions = append(ga.sessions, s)
		}
	}
	nGrants, nEnded := 0, 0
	for _, ga := range byGrant {
		if ga.grantEvents > 0 {
			nGrants++
		}
		if len(ga.ends) > 0 {
			nEnded++
		}
	}
	v.grantByID = make(map[string]*Grant, nGrants)
	v.grantEnds = make(map[string]*Event, nEnded)
	for id, ga := range byGrant {
		if len(ga.ends) > 0 {
			v.grantEnds[id] = ga.ends[0]
		}
	}
	for _, g := range v.grants {
		v.grantByID[g.ID] = g // the latest grant event wins
		ga := byGrant[g.ID]   // every grant has one
		if ends := ga.ends; len(ends) > 0 {
			g.HasEnd, g.End, g.Ends = true, ends[0], ends
		}
		g.Sessions = ga.sessions
		for _, s := range g.Sessions {
			if s.HasEnd && (!g.HasSessionEnd || chainOrder(s.End, g.SessionEnd) < 0) {
				g.HasSessionEnd, g.SessionEnd = true, s.End
			}
		}
		g.Certifications = ga.certs
		g.Revocations = ga.revocations
	}

	// Derived event fields: privileged through the grant, approvals it is under.
	approvalOf := reuse(&sc.approvalOf)
	for _, a := range v.approvals {
		approvalOf[a.Event] = a
	}
	for _, e := range evs {
		var ga *grantAgg
		if e.Refs.Grant != "" {
			ga = byGrant[e.Refs.Grant]
		}
		if ga != nil && ga.privileged {
			e.Privileged = true
		}
		e.Approvals = approvalsUnder(e, approvalsByReq, ga)
		if len(e.Approvals) > 0 && (e.Type == "session.started" || e.Type == "grant.activated") {
			for _, a := range e.Approvals {
				approvalOf[a].Uses = append(approvalOf[a].Uses, e)
			}
		}
	}
	for _, g := range v.grants {
		g.Approvals = g.Event.Approvals
	}

	// Closing events of approvals: revocations/expiries of the request and
	// end events of grants under it, with time >= the approval's time.
	if len(v.approvals) > 0 {
		closersByReq := reuse(&sc.closersByReq)
		for _, e := range evs {
			var reqs []string
			switch {
			case e.Type == "access.revoked" || e.Type == "access.expired":
				if e.Refs.Request != "" {
					reqs = []string{e.Refs.Request}
				}
			case isEndEvent(e):
				if ga := byGrant[e.Refs.Grant]; ga != nil {
					reqs = ga.requests
				}
			}
			for i, r := range reqs {
				if slices.Contains(reqs[:i], r) {
					continue
				}
				closersByReq[r] = append(closersByReq[r], e)
			}
		}
		for _, a := range v.approvals {
			cs := closersByReq[a.Request]
			i, _ := slices.BinarySearchFunc(cs, a.Event.Time, func(e *Event, t time.Time) int {
				if e.Time.Before(t) {
					return -1
				}
				return 1
			})
			if i < len(cs) {
				a.Closings = cs[i:]
			}
		}
	}

	// Checkouts: the first rotation or revocation strictly after each.
	for _, c := range v.credentials {
		rs := rotations[c.ID]
		for _, k := range c.Checkouts {
			i, _ := slices.BinarySearchFunc(rs, k.Event.Time, func(e *Event, t time.Time) int {
				if e.Time.After(t) {
					return 1
				}
				return -1
			})
			if i < len(rs) {
				k.HasRotation, k.Rotation = true, rs[i]
			}
		}
	}
	if len(v.breakglass) > 0 && len(v.bgReviews) > 0 {
		byReq := map[string][]*Event{}
		for _, r := range v.bgReviews {
			if r.Refs.Request != "" {
				byReq[r.Refs.Request] = append(byReq[r.Refs.Request], r)
			}
		}
		for _, b := range v.breakglass {
			if b.Refs.Request != "" {
				b.BreakglassReviews = byReq[b.Refs.Request]
			}
		}
	}
	v.linkClosings(src, &sc.openings)
	v.buildRound2(rotations)
	v.keepLists(&sl.lists)
	v.owner.ID = v.subject.Owner
	return v, nil
}

// round2Views are the views the rules of round 2 read (docs/rules.md "The
// built-in catalog"), so that each rule walks a short list or looks up a
// map instead of scanning the chain.
type round2Views struct {
	logins        []*Event            // auth.succeeded
	uses          []*Event            // auth.succeeded and session.started
	accounts      []*Event            // account.created
	accountOff    map[string][]*Event // entitlement.resource -> account.disabled
	requestsByID  map[string][]*Event // refs.request -> access.requested
	grantsByReq   map[string][]*Event // refs.request -> grant events
	approvalByReq map[string]*Event   // refs.request -> earliest access.approved
	approvalByEnt map[string]*Event   // entitlement.id -> earliest access.approved
	windows       []*Event            // identity.created/identity.enabled with expires_at
	leavings      []*Event            // identity.terminated and identity.moved
	credByID      map[string]*Credential
	// Access-review campaigns (docs/rules.md rules 35-38).
	campaigns       []*Event            // review.opened with refs.review
	campaignEvents  map[string][]*Event // refs.review -> its review.* events
	signedByGrant   map[string][]*Event // refs.grant -> signed-off decisions about it
	signedByAccount map[string][]*Event // entitlement.resource -> signed-off account decisions
	credUses        map[string][]*Event // refs.credential -> checkouts, logins, sessions with it
	// holderLeavings: holder id -> the holder's identity.terminated and
	// identity.moved events (the subject's own under its id); filled for
	// the holders of the subject's checkouts when a rule reads it.
	holderLeavings map[string][]*Event
}

// holder is who holds a checked-out credential: the checkout's actor, or
// the subject when the actor is not recorded.
func holder(k *Event) string {
	if k.Actor.ID != "" {
		return k.Actor.ID
	}
	return k.Subject.ID
}

// holders are the holders of the subject's checkouts other than the
// subject itself, each once, in chain order of their first checkout; the
// subject's own leavings are recorded under its id.
func (v *views) holders() []string {
	var out []string
	for _, c := range v.credentials {
		for _, k := range c.Checkouts {
			h := holder(k.Event)
			if h != v.subject.ID && !slices.Contains(out, h) {
				out = append(out, h)
			}
		}
	}
	if v.r2.holderLeavings == nil {
		v.r2.holderLeavings = map[string][]*Event{v.subject.ID: v.r2.leavings}
	}
	return out
}

// RelatedChainEvent reports whether an event of type typ in the chain of
// an owner or a credential holder is one the rules see when they evaluate
// the subjects that read that chain (owner.terminations, owner.moves,
// holder_leavings): events of other types there change no finding of those
// subjects. The views read only these (setOwner, setHolder), and the
// incremental evaluation (docs/design.md "Incremental evaluation") relies
// on it to decide which subjects a related chain's new entries affect.
func RelatedChainEvent(typ string) bool {
	return typ == "identity.terminated" || typ == "identity.moved"
}

// setHolder records the leavings in a holder's chain (already read).
func (v *views) setHolder(id string, chain []Entry, now time.Time) error {
	evs, err := v.sortedEvents(chain)
	if err != nil {
		return err
	}
	evs = asOfPrefix(evs, now)
	v.ownerBound = max(v.ownerBound, chainSizeBound("", evs))
	var ls []*Event
	for _, e := range evs {
		if RelatedChainEvent(e.Type) {
			ls = append(ls, e)
		}
	}
	v.r2.holderLeavings[id] = ls
	return nil
}

func appendTo(m *map[string][]*Event, k string, e *Event) {
	if *m == nil {
		*m = map[string][]*Event{}
	}
	(*m)[k] = append((*m)[k], e)
}

func firstOf(m *map[string]*Event, k string, e *Event) {
	if *m == nil {
		*m = map[string]*Event{}
	}
	if _, ok := (*m)[k]; !ok {
		(*m)[k] = e
	}
}

// buildRound2 fills v.r2 in one pass over the chain; rotations are the
// credential.rotated/revoked events by credential id.
func (v *views) buildRound2(rotations map[string][]*Event) {
	r := &v.r2
	for _, e := range v.events {
		switch e.Type {
		case "auth.succeeded":
			r.logins = append(r.logins, e)
			r.uses = append(r.uses, e)
		case "session.started":
			r.uses = append(r.uses, e)
		case "account.created":
			r.accounts = append(r.accounts, e)
		case "account.disabled":
			if e.Entitlement.Resource != "" {
				appendTo(&r.accountOff, e.Entitlement.Resource, e)
			}
		case "access.requested":
			if e.Refs.Request != "" {
				appendTo(&r.requestsByID, e.Refs.Request, e)
			}
		case "access.approved":
			if e.Refs.Request != "" {
				firstOf(&r.approvalByReq, e.Refs.Request, e)
			}
			if e.Entitlement.ID != "" {
				firstOf(&r.approvalByEnt, e.Entitlement.ID, e)
			}
		case "identity.created", "identity.enabled":
			if e.HasExpiry {
				r.windows = append(r.windows, e)
			}
		case "identity.terminated", "identity.moved":
			r.leavings = append(r.leavings, e)
		}
		if isGrantEvent(e) && e.Refs.Request != "" {
			appendTo(&r.grantsByReq, e.Refs.Request, e)
		}
		switch e.Type {
		case "review.opened", "review.certified", "review.revoked", "review.signed_off", "review.closed":
			if e.Refs.Review != "" {
				appendTo(&r.campaignEvents, e.Refs.Review, e)
				if e.Type == "review.opened" {
					r.campaigns = append(r.campaigns, e)
				}
			}
		case "credential.checked_out", "auth.succeeded", "session.started":
			if e.Refs.Credential != "" {
				appendTo(&r.credUses, e.Refs.Credential, e)
			}
		}
		if e.Subject.OwnerID != "" {
			v.owner.Stated = e
		}
	}
	// A decision is signed off when its campaign has a review.signed_off
	// at or after it: its campaign's latest sign-off is late enough.
	for _, es := range r.campaignEvents {
		var last *Event
		for _, e := range es {
			if e.Type == "review.signed_off" {
				last = e
			}
		}
		if last == nil {
			continue
		}
		for _, e := range es {
			if (e.Type != "review.certified" && e.Type != "review.revoked") || e.Time.After(last.Time) {
				continue
			}
			switch {
			case e.Refs.Grant != "":
				appendTo(&r.signedByGrant, e.Refs.Grant, e)
			case e.Entitlement.Resource != "":
				appendTo(&r.signedByAccount, e.Entitlement.Resource, e)
			}
		}
	}
	for _, m := range []map[string][]*Event{r.signedByGrant, r.signedByAccount} {
		for _, es := range m {
			slices.SortStableFunc(es, chainOrder)
		}
	}
	if len(v.credentials) > 0 {
		r.credByID = make(map[string]*Credential, len(v.credentials))
		for _, c := range v.credentials {
			r.credByID[c.ID] = c
			c.Rotations = rotations[c.ID]
		}
	}
}

// linkClosings gathers the closing events and links each to its opening
// event in the chain: for an end event of a grant the grant's earliest grant
// event; for access.revoked/access.expired the earliest access.approved of
// its request; for session.ended/session.revoked the earliest
// session.started of its session; for credential.rotated/credential.revoked
// the earliest credential.created or credential.checked_out of its
// credential. An empty ref links nothing. Its four lookup maps are kept in
// maps (the slab's scratch) from one chain to the next.
func (v *views) linkClosings(src *sourceIndex, maps *[4]map[string]*Event) {
	for i := range maps {
		reuse(&maps[i])
	}
	grants, approvals, sessions, creds := maps[0], maps[1], maps[2], maps[3]
	first := func(m *map[string]*Event, id string, e *Event) {
		if id == "" {
			return
		}
		if _, ok := (*m)[id]; !ok {
			(*m)[id] = e
		}
	}
	for _, e := range v.events {
		e.src = src
		switch {
		case isGrantEvent(e):
			first(&grants, e.Refs.Grant, e)
		case e.Type == "access.approved":
			first(&approvals, e.Refs.Request, e)
		case e.Type == "session.started":
			first(&sessions, e.Refs.Session, e)
		case e.Type == "credential.created" || e.Type == "credential.checked_out":
			first(&creds, e.Refs.Credential, e)
		}
		if isClosingEvent(e) {
			v.closings = append(v.closings, e)
		}
	}
	for _, c := range v.closings {
		var o *Event
		switch c.Type {
		case "access.revoked", "access.expired":
			o = approvals[c.Refs.Request]
		case "session.ended", "session.revoked":
			o = sessions[c.Refs.Session]
		case "credential.rotated", "credential.revoked":
			o = creds[c.Refs.Credential]
		default:
			o = grants[c.Refs.Grant]
		}
		if o != nil {
			c.Opening, c.HasOpening = o, true
		}
	}
}

// approvalsUnder returns the approvals e is under: those of its
// refs.request, and those of the requests of its refs.grant's grant events.
func approvalsUnder(e *Event, byReq map[string][]*Approval, ga *grantAgg) []*Event {
	var buf [4]string // on the stack for the usual one or two requests
	reqs := buf[:0]
	if e.Refs.Request != "" {
		reqs = append(reqs, e.Refs.Request)
	}
	if ga != nil {
		for _, r := range ga.requests {
			if !slices.Contains(reqs, r) {
				reqs = append(reqs, r)
			}
		}
	}
	var out []*Event
	for _, r := range reqs {
		for _, a := range byReq[r] {
			out = append(out, a.Event)
		}
	}
	if len(reqs) > 1 {
		slices.SortFunc(out, chainOrder)
	}
	return out
}

// setOwner records the owner's chain (already read through the ChainSource).
func (v *views) setOwner(chain []Entry, now time.Time) error {
	v.owner.Known = true
	evs, err := v.sortedEvents(chain)
	if err != nil {
		return err
	}
	evs = asOfPrefix(evs, now)
	v.ownerBound = chainSizeBound("", evs)
	for _, e := range evs {
		switch e.Type { // the types RelatedChainEvent names; the rest no rule sees
		case "identity.terminated":
			v.owner.Terminations = append(v.owner.Terminations, e)
		case "identity.moved":
			v.owner.Moves = append(v.owner.Moves, e)
		}
	}
	return nil
}
