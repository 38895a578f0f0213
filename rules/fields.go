package rules

import (
	"sync/atomic"
	"unsafe"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
)

// fastProvider wraps the ext.NativeTypes provider: type checking is the
// same, but reading a field of a view struct goes through a direct Go
// accessor instead of reflection, which is several times cheaper and is
// where rules spend most of their time. Fields missing from getters fall
// back to the reflective accessor.
type fastProvider struct {
	types.Provider
	adapter types.Adapter
}

type getter func(a types.Adapter, obj any) ref.Val

var getters = map[string]map[string]getter{
	"rules.Event": {
		"index": func(_ types.Adapter, o any) ref.Val { return types.Int(o.(*Event).Index) },
		"id":    func(_ types.Adapter, o any) ref.Val { return types.String(o.(*Event).ID) },
		// The fields rules read most keep their CEL value (see Event).
		"type": cachedEventField(func(e *Event) *ref.Val { return &e.typeVal },
			func(e *Event) ref.Val { return types.String(e.Type) }),
		"time": cachedEventField(func(e *Event) *ref.Val { return &e.timeVal },
			func(e *Event) ref.Val { return types.Timestamp{Time: e.Time} }),
		"expires_at": cachedEventField(func(e *Event) *ref.Val { return &e.expiresVal },
			func(e *Event) ref.Val { return types.Timestamp{Time: e.ExpiresAt} }),
		"has_expiry": func(_ types.Adapter, o any) ref.Val { return types.Bool(o.(*Event).HasExpiry) },
		"reason":     func(_ types.Adapter, o any) ref.Val { return types.String(o.(*Event).Reason) },
		"privileged": func(_ types.Adapter, o any) ref.Val { return types.Bool(o.(*Event).Privileged) },
		"mfa":        func(_ types.Adapter, o any) ref.Val { return types.Bool(o.(*Event).MFA) },
		"mfa_recorded": func(_ types.Adapter, o any) ref.Val {
			return types.Bool(o.(*Event).MFARecorded)
		},
		"breakglass": func(_ types.Adapter, o any) ref.Val { return types.Bool(o.(*Event).Breakglass) },
		"observed_time": func(_ types.Adapter, o any) ref.Val {
			return types.Timestamp{Time: o.(*Event).ObservedTime}
		},
		"has_observed_time": func(_ types.Adapter, o any) ref.Val {
			return types.Bool(o.(*Event).HasObservedTime)
		},
		"opening":     func(a types.Adapter, o any) ref.Val { return objVal(a, orEmpty(o.(*Event).Opening)) },
		"has_opening": func(_ types.Adapter, o any) ref.Val { return types.Bool(o.(*Event).HasOpening) },
		"system": cachedEventField(func(e *Event) *ref.Val { return &e.systemVal },
			func(e *Event) ref.Val { return types.String(e.System) }),
		"approvals": func(a types.Adapter, o any) ref.Val { return newViewList(a, o.(*Event).Approvals) },
		"breakglass_reviews": func(a types.Adapter, o any) ref.Val {
			return newViewList(a, o.(*Event).BreakglassReviews)
		},
		"subject": func(a types.Adapter, o any) ref.Val {
			return eventSub(a, o.(*Event), func(e *Event) (*ref.Val, any) { return &e.subjectVal, &e.Subject })
		},
		"actor": func(a types.Adapter, o any) ref.Val {
			return eventSub(a, o.(*Event), func(e *Event) (*ref.Val, any) { return &e.actorVal, &e.Actor })
		},
		"entitlement": func(a types.Adapter, o any) ref.Val {
			return eventSub(a, o.(*Event), func(e *Event) (*ref.Val, any) { return &e.entitlementVal, &e.Entitlement })
		},
		"refs": func(a types.Adapter, o any) ref.Val {
			return eventSub(a, o.(*Event), func(e *Event) (*ref.Val, any) { return &e.refsVal, &e.Refs })
		},
	},
	"rules.Refs": {
		"request":    func(_ types.Adapter, o any) ref.Val { return boxStr(o.(*Refs).Request) },
		"grant":      func(_ types.Adapter, o any) ref.Val { return boxStr(o.(*Refs).Grant) },
		"session":    func(_ types.Adapter, o any) ref.Val { return boxStr(o.(*Refs).Session) },
		"credential": func(_ types.Adapter, o any) ref.Val { return boxStr(o.(*Refs).Credential) },
		"review":     func(_ types.Adapter, o any) ref.Val { return boxStr(o.(*Refs).Review) },
		"ticket":     func(_ types.Adapter, o any) ref.Val { return boxStr(o.(*Refs).Ticket) },
	},
	"rules.Identity": {
		"id":       func(_ types.Adapter, o any) ref.Val { return boxStr(o.(*Identity).ID) },
		"kind":     func(_ types.Adapter, o any) ref.Val { return boxStr(o.(*Identity).Kind) },
		"display":  func(_ types.Adapter, o any) ref.Val { return boxStr(o.(*Identity).Display) },
		"owner_id": func(_ types.Adapter, o any) ref.Val { return boxStr(o.(*Identity).OwnerID) },
	},
	"rules.Entitlement": {
		"id":         func(_ types.Adapter, o any) ref.Val { return boxStr(o.(*Entitlement).ID) },
		"resource":   func(_ types.Adapter, o any) ref.Val { return boxStr(o.(*Entitlement).Resource) },
		"privileged": func(_ types.Adapter, o any) ref.Val { return types.Bool(o.(*Entitlement).Privileged) },
	},
	// The subject and its owner are read by many rules once per element
	// they walk (subject.id in a message or a comparison).
	"rules.Subject": {
		"id":        func(_ types.Adapter, o any) ref.Val { return boxStr(o.(*Subject).ID) },
		"kind":      func(_ types.Adapter, o any) ref.Val { return boxStr(o.(*Subject).Kind) },
		"owner":     func(_ types.Adapter, o any) ref.Val { return boxStr(o.(*Subject).Owner) },
		"has_owner": func(_ types.Adapter, o any) ref.Val { return types.Bool(o.(*Subject).HasOwner) },
	},
	"rules.Owner": {
		"id":           func(_ types.Adapter, o any) ref.Val { return boxStr(o.(*Owner).ID) },
		"known":        func(_ types.Adapter, o any) ref.Val { return types.Bool(o.(*Owner).Known) },
		"terminations": func(a types.Adapter, o any) ref.Val { return newViewList(a, o.(*Owner).Terminations) },
		"moves":        func(a types.Adapter, o any) ref.Val { return newViewList(a, o.(*Owner).Moves) },
		"stated":       func(a types.Adapter, o any) ref.Val { return objVal(a, orEmpty(o.(*Owner).Stated)) },
	},
	"rules.Grant": {
		"id":              func(_ types.Adapter, o any) ref.Val { return boxStr(o.(*Grant).ID) },
		"type":            func(_ types.Adapter, o any) ref.Val { return boxStr(o.(*Grant).Type) },
		"event":           func(a types.Adapter, o any) ref.Val { return objVal(a, o.(*Grant).Event) },
		"time":            func(_ types.Adapter, o any) ref.Val { return types.Timestamp{Time: o.(*Grant).Time} },
		"entitlement":     func(_ types.Adapter, o any) ref.Val { return boxStr(o.(*Grant).Entitlement) },
		"privileged":      func(_ types.Adapter, o any) ref.Val { return types.Bool(o.(*Grant).Privileged) },
		"has_expiry":      func(_ types.Adapter, o any) ref.Val { return types.Bool(o.(*Grant).HasExpiry) },
		"expires_at":      func(_ types.Adapter, o any) ref.Val { return types.Timestamp{Time: o.(*Grant).ExpiresAt} },
		"has_end":         func(_ types.Adapter, o any) ref.Val { return types.Bool(o.(*Grant).HasEnd) },
		"end":             func(a types.Adapter, o any) ref.Val { return objVal(a, orEmpty(o.(*Grant).End)) },
		"ends":            func(a types.Adapter, o any) ref.Val { return newViewList(a, o.(*Grant).Ends) },
		"request":         func(_ types.Adapter, o any) ref.Val { return boxStr(o.(*Grant).Request) },
		"approvals":       func(a types.Adapter, o any) ref.Val { return newViewList(a, o.(*Grant).Approvals) },
		"sessions":        func(a types.Adapter, o any) ref.Val { return newViewList(a, o.(*Grant).Sessions) },
		"has_session_end": func(_ types.Adapter, o any) ref.Val { return types.Bool(o.(*Grant).HasSessionEnd) },
		"session_end": func(a types.Adapter, o any) ref.Val {
			return objVal(a, orEmpty(o.(*Grant).SessionEnd))
		},
		"certifications": func(a types.Adapter, o any) ref.Val { return newViewList(a, o.(*Grant).Certifications) },
		"revocations":    func(a types.Adapter, o any) ref.Val { return newViewList(a, o.(*Grant).Revocations) },
	},
	"rules.Session": {
		"id":         func(_ types.Adapter, o any) ref.Val { return boxStr(o.(*Session).ID) },
		"grant":      func(_ types.Adapter, o any) ref.Val { return boxStr(o.(*Session).Grant) },
		"start":      func(a types.Adapter, o any) ref.Val { return objVal(a, o.(*Session).Start) },
		"has_end":    func(_ types.Adapter, o any) ref.Val { return types.Bool(o.(*Session).HasEnd) },
		"end":        func(a types.Adapter, o any) ref.Val { return objVal(a, orEmpty(o.(*Session).End)) },
		"privileged": func(_ types.Adapter, o any) ref.Val { return types.Bool(o.(*Session).Privileged) },
	},
	"rules.Approval": {
		"request":  func(_ types.Adapter, o any) ref.Val { return boxStr(o.(*Approval).Request) },
		"event":    func(a types.Adapter, o any) ref.Val { return objVal(a, o.(*Approval).Event) },
		"closings": func(a types.Adapter, o any) ref.Val { return newViewList(a, o.(*Approval).Closings) },
		"uses":     func(a types.Adapter, o any) ref.Val { return newViewList(a, o.(*Approval).Uses) },
	},
	"rules.Checkout": {
		"event":        func(a types.Adapter, o any) ref.Val { return objVal(a, o.(*Checkout).Event) },
		"has_rotation": func(_ types.Adapter, o any) ref.Val { return types.Bool(o.(*Checkout).HasRotation) },
		"rotation": func(a types.Adapter, o any) ref.Val {
			return objVal(a, orEmpty(o.(*Checkout).Rotation))
		},
	},
	"rules.Credential": {
		"id":         func(_ types.Adapter, o any) ref.Val { return boxStr(o.(*Credential).ID) },
		"has_latest": func(_ types.Adapter, o any) ref.Val { return types.Bool(o.(*Credential).HasLatest) },
		"latest": func(a types.Adapter, o any) ref.Val {
			return objVal(a, orEmpty(o.(*Credential).Latest))
		},
		"revoked": func(_ types.Adapter, o any) ref.Val { return types.Bool(o.(*Credential).Revoked) },
		"issues":  func(a types.Adapter, o any) ref.Val { return newViewList(a, o.(*Credential).Issues) },
		"revocation": func(a types.Adapter, o any) ref.Val {
			return objVal(a, orEmpty(o.(*Credential).Revocation))
		},
		"checkouts": func(a types.Adapter, o any) ref.Val { return newViewList(a, o.(*Credential).Checkouts) },
		"rotations": func(a types.Adapter, o any) ref.Val { return newViewList(a, o.(*Credential).Rotations) },
	},
}

var emptyEvent = &Event{}

// orEmpty keeps the NativeTypes convention: a missing event reads as an
// empty one (check the has_* field first).
func orEmpty(e *Event) *Event {
	if e == nil {
		return emptyEvent
	}
	return e
}

func (p *fastProvider) FindStructFieldType(structType, fieldName string) (*types.FieldType, bool) {
	ft, ok := p.Provider.FindStructFieldType(structType, fieldName)
	if !ok {
		return ft, ok
	}
	if g, ok := getters[structType][fieldName]; ok {
		a := p.adapter
		slow := ft.GetFrom
		fast := *ft
		fast.GetFrom = func(obj any) (v any, err error) {
			defer func() {
				if recover() != nil { // not the pointer type the getter expects
					v, err = slow(obj)
				}
			}()
			return g(a, obj), nil
		}
		return &fast, true
	}
	return ft, true
}

// fastFields installs fastProvider over the current provider.
func fastFields() cel.EnvOption {
	return func(e *cel.Env) (*cel.Env, error) {
		return cel.CustomTypeProvider(&fastProvider{Provider: e.CELTypeProvider(), adapter: e.CELTypeAdapter()})(e)
	}
}

// boxStr is s as a CEL value. Boxing a string for CEL allocates, and
// rules read string fields once per element they walk, so the values made
// are kept in a small direct-mapped table keyed by the address of the
// string's bytes: the views' strings are interned (leaf.go), so the same
// value read again, by any rule, is usually the same bytes. A slot holds
// its string, so an equal address means an equal string. Safe for
// concurrent use (a slot is one atomic pointer; a miss replaces it).
func boxStr(s string) ref.Val {
	if s == "" {
		return types.String("")
	}
	p := unsafe.StringData(s)
	slot := &boxTab[(uintptr(unsafe.Pointer(p))>>3^uintptr(len(s)))%boxSlots]
	if e := slot.Load(); e != nil && unsafe.StringData(e.s) == p && len(e.s) == len(s) {
		return e.v
	}
	e := &boxed{s: s, v: types.String(s)}
	slot.Store(e)
	return e.v
}

type boxed struct {
	s string
	v ref.Val
}

const boxSlots = 4096

var boxTab [boxSlots]atomic.Pointer[boxed]

// cachedEventField is the getter of an event field rules read most: its
// CEL value is made once per event and kept in the slot (see Event); the
// shared emptyEvent is never cached.
func cachedEventField(slot func(*Event) *ref.Val, val func(*Event) ref.Val) getter {
	return func(_ types.Adapter, o any) ref.Val {
		e := o.(*Event)
		c := slot(e)
		if *c == nil {
			v := val(e)
			if e == emptyEvent {
				return v
			}
			*c = v
		}
		return *c
	}
}
