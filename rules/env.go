package rules

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/common/types/traits"
	"github.com/google/cel-go/ext"
	"github.com/google/cel-go/interpreter"

	"github.com/grantline/grantline/verify/format"
)

// CEL types of the views.
var (
	eventType      = cel.ObjectType("rules.Event")
	grantType      = cel.ObjectType("rules.Grant")
	sessionType    = cel.ObjectType("rules.Session")
	approvalType   = cel.ObjectType("rules.Approval")
	credentialType = cel.ObjectType("rules.Credential")
	subjectType    = cel.ObjectType("rules.Subject")
	ownerType      = cel.ObjectType("rules.Owner")
	// findingType is what rule expressions build with finding(); a rule
	// yields list(grantline.Finding).
	findingType  = cel.OpaqueType("grantline.Finding")
	findingsType = cel.ListType(findingType)
	// windowType is when a finding was open: window(), exposure(deadline,
	// late), instant(), lapses() and overlap() make one.
	windowType = cel.OpaqueType("grantline.Window")
)

// variables are the per-subject variables every rule may read, besides
// params.NAME.
var variables = []struct {
	name string
	typ  *cel.Type
}{
	{"subject", subjectType},
	{"events", cel.ListType(eventType)},
	{"activity", cel.ListType(eventType)},
	{"now", cel.TimestampType},
	{"from", cel.TimestampType},
	{"grants", cel.ListType(grantType)},
	{"grant_by_id", cel.MapType(cel.StringType, grantType)},
	{"grant_ends", cel.MapType(cel.StringType, eventType)},
	{"sessions", cel.ListType(sessionType)},
	{"approvals", cel.ListType(approvalType)},
	{"credentials", cel.ListType(credentialType)},
	{"terminations", cel.ListType(eventType)},
	{"offboardings", cel.ListType(eventType)},
	{"enablements", cel.ListType(eventType)},
	{"moves", cel.ListType(eventType)},
	{"reviews", cel.ListType(eventType)},
	{"breakglass", cel.ListType(eventType)},
	{"breakglass_reviews", cel.ListType(eventType)},
	{"owner", ownerType},
	{"closings", cel.ListType(eventType)},
	{"logins", cel.ListType(eventType)},
	{"uses", cel.ListType(eventType)},
	{"accounts", cel.ListType(eventType)},
	{"account_disables", cel.MapType(cel.StringType, cel.ListType(eventType))},
	{"requests_by_id", cel.MapType(cel.StringType, cel.ListType(eventType))},
	{"grant_events_by_request", cel.MapType(cel.StringType, cel.ListType(eventType))},
	{"approval_by_request", cel.MapType(cel.StringType, eventType)},
	{"approval_by_entitlement", cel.MapType(cel.StringType, eventType)},
	{"access_windows", cel.ListType(eventType)},
	{"leavings", cel.ListType(eventType)},
	{"credential_by_id", cel.MapType(cel.StringType, credentialType)},
	{"holder_leavings", cel.MapType(cel.StringType, cel.ListType(eventType))},
	{"campaigns", cel.ListType(eventType)},
	{"campaign_events", cel.MapType(cel.StringType, cel.ListType(eventType))},
	{"signed_decisions_by_grant", cel.MapType(cel.StringType, cel.ListType(eventType))},
	{"signed_decisions_by_account", cel.MapType(cel.StringType, cel.ListType(eventType))},
	{"credential_uses", cel.MapType(cel.StringType, cel.ListType(eventType))},
}

// findingVal is the CEL value finding() returns.
type findingVal struct {
	primary  *Event
	others   []*Event
	message  string
	exposure time.Duration
	// window, when the rule gave one, is when the finding was open.
	window *windowVal
}

// windowVal is when a finding was open (docs/rules.md "Periods"): from
// opened until the closing event's time, or still open at now when there is
// none. A point window is an occurrence: open and closed at opened. An
// exposure window is also the interval in which privilege outlived its
// purpose.
type windowVal struct {
	opened   time.Time
	closing  *Event // nil: open at now (or a point)
	point    bool
	exposure bool
}

func (w *windowVal) ConvertToNative(reflect.Type) (any, error) {
	return nil, fmt.Errorf("a window cannot be converted")
}
func (w *windowVal) ConvertToType(t ref.Type) ref.Val {
	if t == types.TypeType {
		return windowType
	}
	return types.NewErr("a window cannot be converted to %s", t.TypeName())
}
func (w *windowVal) Equal(other ref.Val) ref.Val {
	o, ok := other.(*windowVal)
	return types.Bool(ok && o == w)
}
func (w *windowVal) Type() ref.Type { return windowType }
func (w *windowVal) Value() any     { return w }

// listElem is the element of the CEL list l (over gs) that holds g, so that
// later field access sees the list's own cached value.
func listElem(l traits.Lister, gs []*Grant, g *Grant) ref.Val {
	return l.Get(types.Int(slices.Index(gs, g)))
}

// earliest is the first of evs in chain order, or nil.
func earliest(evs []*Event) *Event {
	var best *Event
	for _, e := range evs {
		if best == nil || chainOrder(e, best) < 0 {
			best = e
		}
	}
	return best
}

// lapse is the latest interval, intersecting [from, now], in which grant g
// was in force and no anchor (nor the grant event itself) lay within d
// before: (x + d, next) where x is the grant event's time or an anchor's at
// or after it, next the following anchor or g's first end, whichever comes
// first. nil when there is none.
func lapse(g *Grant, anchors []*Event, d time.Duration, from, now time.Time) *windowVal {
	var end *Event
	if g.HasEnd {
		end = g.End
	}
	return lapseOf(g.Event, end, anchors, d, from, now)
}

// lapseOf is lapse for an item that starts at the event start and is in
// force until end (nil: never ended).
func lapseOf(start, end *Event, anchors []*Event, d time.Duration, from, now time.Time) *windowVal {
	xs := []*Event{start}
	for _, a := range anchors {
		if !a.Time.Before(start.Time) && !a.Time.After(now) {
			xs = append(xs, a)
		}
	}
	slices.SortStableFunc(xs, chainOrder)
	var best *windowVal
	for i, x := range xs {
		opened := x.Time.Add(d)
		if !opened.Before(now) {
			continue
		}
		var closing *Event
		if i+1 < len(xs) {
			closing = xs[i+1]
		}
		if end != nil && !end.Time.After(now) && (closing == nil || end.Time.Before(closing.Time)) {
			closing = end
		}
		if closing != nil && (!closing.Time.After(opened) || !closing.Time.After(from)) {
			continue
		}
		best = &windowVal{opened: opened, closing: closing}
	}
	return best
}

// overlapIn reports whether grants g and h were both in force at some
// instant of [from, to]: each is in force from its grant event until its
// first end event.
func overlapIn(g, h *Grant, from, to time.Time) bool {
	start := g.Event.Time
	if h.Event.Time.After(start) {
		start = h.Event.Time
	}
	if from.After(start) {
		start = from
	}
	if start.After(to) {
		return false
	}
	for _, x := range []*Grant{g, h} {
		if x.HasEnd && !x.End.Time.After(start) {
			return false
		}
	}
	return true
}

// sodConflict finds, among grants (in chain order), the latest grant of
// entitlement a that was in force together with a grant of entitlement b at
// some instant of [from, to], and the latest such grant of b; nil, nil when
// there is none. O(|a grants| x |b grants|) plain comparisons.
func sodConflict(grants []*Grant, a, b string, from, to time.Time) (*Grant, *Grant) {
	var as, bs []*Grant
	for _, g := range grants {
		switch g.Entitlement {
		case a:
			as = append(as, g)
		case b:
			bs = append(bs, g)
		}
	}
	for i := len(as) - 1; i >= 0; i-- {
		for j := len(bs) - 1; j >= 0; j-- {
			if overlapIn(as[i], bs[j], from, to) {
				return as[i], bs[j]
			}
		}
	}
	return nil, nil
}

// overlap is the window in which g and h were both in force: from the later
// grant event until the earlier first end.
func overlap(g, h *Grant) *windowVal {
	w := &windowVal{opened: g.Event.Time}
	if h.Event.Time.After(w.opened) {
		w.opened = h.Event.Time
	}
	var ends []*Event
	for _, x := range []*Grant{g, h} {
		if x.HasEnd {
			ends = append(ends, x.End)
		}
	}
	w.closing = earliest(ends)
	return w
}

func (f *findingVal) ConvertToNative(reflect.Type) (any, error) {
	return nil, fmt.Errorf("a finding cannot be converted")
}
func (f *findingVal) ConvertToType(t ref.Type) ref.Val {
	if t == types.TypeType {
		return findingType
	}
	return types.NewErr("a finding cannot be converted to %s", t.TypeName())
}
func (f *findingVal) Equal(other ref.Val) ref.Val {
	o, ok := other.(*findingVal)
	return types.Bool(ok && o == f)
}
func (f *findingVal) Type() ref.Type { return findingType }
func (f *findingVal) Value() any     { return f }

// asEvent unwraps a CEL value holding a *Event.
func asEvent(v ref.Val) (*Event, bool) {
	e, ok := v.Value().(*Event)
	return e, ok && e != nil
}

// asEvents unwraps a CEL list of events.
func asEvents(v ref.Val) ([]*Event, bool) {
	if evs, ok := v.Value().([]*Event); ok {
		return evs, true
	}
	l, ok := v.(traits.Lister)
	if !ok {
		return nil, false
	}
	n := int(l.Size().(types.Int))
	out := make([]*Event, 0, n)
	for i := range n {
		e, ok := asEvent(l.Get(types.Int(i)))
		if !ok {
			return nil, false
		}
		out = append(out, e)
	}
	return out, true
}

// asGrants unwraps a CEL list of grants.
func asGrants(v ref.Val) ([]*Grant, bool) {
	if gs, ok := v.Value().([]*Grant); ok {
		return gs, true
	}
	l, ok := v.(traits.Lister)
	if !ok {
		return nil, false
	}
	n := int(l.Size().(types.Int))
	out := make([]*Grant, 0, n)
	for i := range n {
		g, ok := asGrant(l.Get(types.Int(i)))
		if !ok {
			return nil, false
		}
		out = append(out, g)
	}
	return out, true
}

func asGrant(v ref.Val) (*Grant, bool) {
	g, ok := v.Value().(*Grant)
	return g, ok && g != nil
}

func newFinding(args ...ref.Val) ref.Val {
	primary, ok := asEvent(args[0])
	if !ok {
		return types.NewErr("finding: the primary entry must be an event, got %s", args[0].Type().TypeName())
	}
	others, ok := asEvents(args[1])
	if !ok {
		return types.NewErr("finding: the cited entries must be a list of events")
	}
	msg, ok := args[2].(types.String)
	if !ok {
		return types.NewErr("finding: the message must be a string")
	}
	f := &findingVal{primary: primary, others: others, message: string(msg)}
	if len(args) == 4 {
		switch x := args[3].(type) {
		case types.Duration:
			f.exposure = max(x.Duration, 0)
		case *windowVal:
			f.window = x
		default:
			return types.NewErr("finding: the fourth argument must be a duration (exposure) or a window")
		}
	}
	return f
}

func asTimestamp(v ref.Val) (time.Time, bool) {
	t, ok := v.(types.Timestamp)
	return t.Time, ok
}

// endedBy reports whether g has an end event with time <= t.
func endedBy(g *Grant, t time.Time) bool { return g.HasEnd && !g.End.Time.After(t) }

// inForceAt reports whether g's grant event has time <= t and g is not ended by t.
func inForceAt(g *Grant, t time.Time) bool { return !g.Event.Time.After(t) && !endedBy(g, t) }

func grantTimeFunc(name string, f func(*Grant, time.Time) bool) cel.EnvOption {
	return cel.Function(name,
		cel.Overload(name+"_grant_timestamp", []*cel.Type{grantType, cel.TimestampType}, cel.BoolType,
			cel.BinaryBinding(func(a, b ref.Val) ref.Val {
				g, ok := asGrant(a)
				if !ok {
					return types.NewErr("%s: want a grant", name)
				}
				t, ok := b.(types.Timestamp)
				if !ok {
					return types.NewErr("%s: want a timestamp", name)
				}
				return types.Bool(f(g, t.Time))
			})))
}

// exposure is how long privilege outlived deadline: to the first late
// event if there is one, otherwise to now; never negative.
func exposure(deadline time.Time, late []*Event, now time.Time) time.Duration {
	end := now
	if len(late) > 0 {
		end = late[0].Time
	}
	return max(end.Sub(deadline), 0)
}

var baseEnv = sync.OnceValues(func() (*cel.Env, error) {
	// adapter, set once the environment is built, makes CEL values of
	// events a function creates (newerFromSource).
	var adapter types.Adapter
	opts := []cel.EnvOption{
		ext.NativeTypes(
			reflect.TypeFor[*Event](), reflect.TypeFor[*Grant](), reflect.TypeFor[*Session](),
			reflect.TypeFor[*Approval](), reflect.TypeFor[*Credential](), reflect.TypeFor[*Checkout](),
			reflect.TypeFor[*Subject](), reflect.TypeFor[*Owner](),
			ext.ParseStructTags(true)),
		ext.Lists(),
		ext.Strings(),
		ext.Bindings(),
		cel.OptionalTypes(),
		cel.Function("finding",
			cel.Overload("finding_event_list_string", []*cel.Type{eventType, cel.ListType(eventType), cel.StringType}, findingType,
				cel.FunctionBinding(newFinding)),
			cel.Overload("finding_event_list_string_duration", []*cel.Type{eventType, cel.ListType(eventType), cel.StringType, cel.DurationType}, findingType,
				cel.FunctionBinding(newFinding)),
			cel.Overload("finding_event_list_string_window", []*cel.Type{eventType, cel.ListType(eventType), cel.StringType, windowType}, findingType,
				cel.FunctionBinding(newFinding))),
		cel.Function("window",
			cel.Overload("window_timestamp_list", []*cel.Type{cel.TimestampType, cel.ListType(eventType)}, windowType,
				cel.BinaryBinding(func(a, b ref.Val) ref.Val {
					t, ok1 := asTimestamp(a)
					evs, ok2 := asEvents(b)
					if !ok1 || !ok2 {
						return types.NewErr("window: want (timestamp, list of events)")
					}
					return &windowVal{opened: t, closing: earliest(evs)}
				}))),
		cel.Function("durationText",
			cel.Overload("durationText_duration", []*cel.Type{cel.DurationType}, cel.StringType,
				cel.UnaryBinding(func(a ref.Val) ref.Val {
					d, ok := a.(types.Duration)
					if !ok {
						return types.NewErr("durationText: want a duration")
					}
					return types.String(format.Duration(int64(d.Duration / time.Second)))
				}))),
		cel.Function("instant",
			cel.Overload("instant_event", []*cel.Type{eventType}, windowType,
				cel.UnaryBinding(func(a ref.Val) ref.Val {
					e, ok := asEvent(a)
					if !ok {
						return types.NewErr("instant: want an event")
					}
					return &windowVal{opened: e.Time, point: true}
				}))),
		cel.Function("after",
			cel.Overload("after_list_event", []*cel.Type{cel.ListType(eventType), eventType}, cel.ListType(eventType),
				cel.BinaryBinding(func(a, b ref.Val) ref.Val {
					evs, ok1 := asEvents(a)
					e, ok2 := asEvent(b)
					if !ok1 || !ok2 {
						return types.NewErr("after: want (list of events, event)")
					}
					var out []ref.Val
					for i, x := range evs {
						if chainOrder(x, e) > 0 {
							out = append(out, a.(traits.Lister).Get(types.Int(i)))
						}
					}
					return listOf(out)
				}))),
		cel.Function("nextAfter",
			cel.Overload("nextAfter_list_event", []*cel.Type{cel.ListType(eventType), eventType}, cel.ListType(eventType),
				cel.BinaryBinding(func(a, b ref.Val) ref.Val {
					evs, ok1 := asEvents(a)
					e, ok2 := asEvent(b)
					if !ok1 || !ok2 {
						return types.NewErr("nextAfter: want (list of events, event)")
					}
					// The list is in chain order: binary search.
					i, _ := slices.BinarySearchFunc(evs, e, func(x, e *Event) int {
						if chainOrder(x, e) > 0 {
							return 1
						}
						return -1
					})
					if i >= len(evs) {
						return emptyList
					}
					return types.NewDynamicList(types.DefaultTypeAdapter, []ref.Val{a.(traits.Lister).Get(types.Int(i))})
				}))),
		cel.Function("lapses",
			cel.Overload("lapses_grant_list_duration_timestamp_timestamp",
				[]*cel.Type{grantType, cel.ListType(eventType), cel.DurationType, cel.TimestampType, cel.TimestampType}, cel.ListType(windowType),
				cel.FunctionBinding(func(args ...ref.Val) ref.Val {
					g, ok1 := asGrant(args[0])
					anchors, ok2 := asEvents(args[1])
					d, ok3 := args[2].(types.Duration)
					from, ok4 := asTimestamp(args[3])
					now, ok5 := asTimestamp(args[4])
					if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 {
						return types.NewErr("lapses: want (grant, list of events, duration, timestamp, timestamp)")
					}
					var out []ref.Val
					if w := lapse(g, anchors, d.Duration, from, now); w != nil {
						out = append(out, w)
					}
					return listOf(out)
				})),
			// An item that is an event, in force until the first of ends
			// after it in chain order (docs/rules.md rules 35 and 38).
			cel.Overload("lapses_event_list_list_duration_timestamp_timestamp",
				[]*cel.Type{eventType, cel.ListType(eventType), cel.ListType(eventType), cel.DurationType, cel.TimestampType, cel.TimestampType}, cel.ListType(windowType),
				cel.FunctionBinding(func(args ...ref.Val) ref.Val {
					start, ok1 := asEvent(args[0])
					ends, ok2 := asEvents(args[1])
					anchors, ok3 := asEvents(args[2])
					d, ok4 := args[3].(types.Duration)
					from, ok5 := asTimestamp(args[4])
					now, ok6 := asTimestamp(args[5])
					if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 || !ok6 {
						return types.NewErr("lapses: want (event, list of events, list of events, duration, timestamp, timestamp)")
					}
					var end *Event
					for _, e := range ends {
						if chainOrder(e, start) > 0 && (end == nil || chainOrder(e, end) < 0) {
							end = e
						}
					}
					var out []ref.Val
					if w := lapseOf(start, end, anchors, d.Duration, from, now); w != nil {
						out = append(out, w)
					}
					return listOf(out)
				}))),
		cel.Function("sodConflict",
			cel.Overload("sodConflict_list_string_string_timestamp_timestamp",
				[]*cel.Type{cel.ListType(grantType), cel.StringType, cel.StringType, cel.TimestampType, cel.TimestampType}, cel.ListType(grantType),
				cel.FunctionBinding(func(args ...ref.Val) ref.Val {
					gs, ok1 := asGrants(args[0])
					a, ok2 := args[1].(types.String)
					b, ok3 := args[2].(types.String)
					from, ok4 := asTimestamp(args[3])
					to, ok5 := asTimestamp(args[4])
					if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 {
						return types.NewErr("sodConflict: want (grants, string, string, timestamp, timestamp)")
					}
					g, h := sodConflict(gs, string(a), string(b), from, to)
					if g == nil {
						return emptyList
					}
					l := args[0].(traits.Lister)
					return types.NewDynamicList(types.DefaultTypeAdapter, []ref.Val{listElem(l, gs, g), listElem(l, gs, h)})
				}))),
		cel.Function("overlapIn",
			cel.Overload("overlapIn_grant_grant_timestamp_timestamp", []*cel.Type{grantType, grantType, cel.TimestampType, cel.TimestampType}, cel.BoolType,
				cel.FunctionBinding(func(args ...ref.Val) ref.Val {
					g, ok1 := asGrant(args[0])
					h, ok2 := asGrant(args[1])
					from, ok3 := asTimestamp(args[2])
					to, ok4 := asTimestamp(args[3])
					if !ok1 || !ok2 || !ok3 || !ok4 {
						return types.NewErr("overlapIn: want (grant, grant, timestamp, timestamp)")
					}
					return types.Bool(overlapIn(g, h, from, to))
				}))),
		cel.Function("overlap",
			cel.Overload("overlap_grant_grant", []*cel.Type{grantType, grantType}, windowType,
				cel.BinaryBinding(func(a, b ref.Val) ref.Val {
					g, ok1 := asGrant(a)
					h, ok2 := asGrant(b)
					if !ok1 || !ok2 {
						return types.NewErr("overlap: want (grant, grant)")
					}
					return overlap(g, h)
				}))),
		grantTimeFunc("endedBy", endedBy),
		grantTimeFunc("inForceAt", inForceAt),
		// The lists these read are in chain order, so sorted by time.
		eventNearFunc("firstAfter", func(evs []*Event, t time.Time) int { return searchTime(evs, t, true) }),
		eventNearFunc("firstAtOrAfter", func(evs []*Event, t time.Time) int { return searchTime(evs, t, false) }),
		eventNearFunc("lastBefore", func(evs []*Event, t time.Time) int { return searchTime(evs, t, false) - 1 }),
		cel.Function("anyBetween",
			cel.Overload("anyBetween_list_timestamp_timestamp", []*cel.Type{cel.ListType(eventType), cel.TimestampType, cel.TimestampType}, cel.BoolType,
				cel.FunctionBinding(func(args ...ref.Val) ref.Val {
					evs, ok1 := asEvents(args[0])
					from, ok2 := args[1].(types.Timestamp)
					to, ok3 := args[2].(types.Timestamp)
					if !ok1 || !ok2 || !ok3 {
						return types.NewErr("anyBetween: want (list of events, timestamp, timestamp)")
					}
					i := searchTime(evs, from.Time, true) // first strictly after from
					return types.Bool(i < len(evs) && evs[i].Time.Before(to.Time))
				}))),
		cel.Function("newerFromSource",
			cel.Overload("newerFromSource_event_timestamp", []*cel.Type{eventType, cel.TimestampType}, cel.ListType(eventType),
				cel.BinaryBinding(func(a, b ref.Val) ref.Val {
					e, ok := asEvent(a)
					t, ok2 := b.(types.Timestamp)
					if !ok || !ok2 {
						return types.NewErr("newerFromSource: want an event and a timestamp")
					}
					rec, err := e.src.newerFromSource(e, t.Time)
					if err != nil {
						return types.WrapErr(fmt.Errorf("newerFromSource: %w", err))
					}
					if rec == nil {
						return emptyList
					}
					// rec is new: this subject's own CEL value caches in it.
					return types.NewDynamicList(types.DefaultTypeAdapter, []ref.Val{objVal(adapter, rec)})
				}))),
		cel.Function("exposure",
			cel.Overload("exposure_timestamp_list_timestamp", []*cel.Type{cel.TimestampType, cel.ListType(eventType), cel.TimestampType}, cel.DurationType,
				cel.FunctionBinding(func(args ...ref.Val) ref.Val {
					d, ok1 := args[0].(types.Timestamp)
					late, ok2 := asEvents(args[1])
					now, ok3 := args[2].(types.Timestamp)
					if !ok1 || !ok2 || !ok3 {
						return types.NewErr("exposure: want (timestamp, list of events, timestamp)")
					}
					return types.Duration{Duration: exposure(d.Time, late, now.Time)}
				})),
			cel.Overload("exposure_timestamp_list", []*cel.Type{cel.TimestampType, cel.ListType(eventType)}, windowType,
				cel.BinaryBinding(func(a, b ref.Val) ref.Val {
					d, ok1 := asTimestamp(a)
					late, ok2 := asEvents(b)
					if !ok1 || !ok2 {
						return types.NewErr("exposure: want (timestamp, list of events)")
					}
					return &windowVal{opened: d, closing: earliest(late), exposure: true}
				}))),
	}
	for _, v := range variables {
		opts = append(opts, cel.Variable(v.name, v.typ))
	}
	for _, name := range globalParamNames {
		opts = append(opts, cel.Variable("params."+name, globalParams[name].typ))
	}
	opts = append(opts, fastFields()) // last: it wraps the final provider
	env, err := cel.NewEnv(opts...)
	if err != nil {
		return nil, err
	}
	adapter = env.CELTypeAdapter()
	return env, nil
})

// emptyList is the empty list the functions above return: CEL lists are
// immutable (a comprehension that starts from an empty list accumulates
// into a new one), so one value serves every call, with no allocation.
var emptyList = types.NewDynamicList(types.DefaultTypeAdapter, []ref.Val{})

// listOf is the CEL list of vals; emptyList when there are none.
func listOf(vals []ref.Val) ref.Val {
	if len(vals) == 0 {
		return emptyList
	}
	return types.NewDynamicList(types.DefaultTypeAdapter, vals)
}

// searchTime returns the index of the first event of evs (in chain order)
// whose time is at or after t, or strictly after t when strict.
func searchTime(evs []*Event, t time.Time, strict bool) int {
	i, _ := slices.BinarySearchFunc(evs, t, func(e *Event, t time.Time) int {
		if e.Time.Before(t) || (strict && e.Time.Equal(t)) {
			return -1
		}
		return 1
	})
	return i
}

// eventNearFunc declares name(list(Event), timestamp) -> list(Event): the
// element at the position pick finds for t (by binary search: the list is in
// chain order), or an empty list when that position is outside the list. The
// element is the list's own CEL value, so later field access sees the same
// native object.
func eventNearFunc(name string, pick func(evs []*Event, t time.Time) int) cel.EnvOption {
	return cel.Function(name,
		cel.Overload(name+"_list_timestamp", []*cel.Type{cel.ListType(eventType), cel.TimestampType}, cel.ListType(eventType),
			cel.BinaryBinding(func(a, b ref.Val) ref.Val {
				evs, ok := asEvents(a)
				t, ok2 := b.(types.Timestamp)
				if !ok || !ok2 {
					return types.NewErr("%s: want a list of events and a timestamp", name)
				}
				i := pick(evs, t.Time)
				if i < 0 || i >= len(evs) {
					return emptyList
				}
				return types.NewDynamicList(types.DefaultTypeAdapter, []ref.Val{a.(traits.Lister).Get(types.Int(i))})
			})))
}

// activation resolves the variables of one rule for one subject.
type activation struct {
	vals   map[string]ref.Val // per subject, shared by every rule
	params map[string]ref.Val // per rule: "params.NAME" -> value
}

func (a *activation) ResolveName(name string) (any, bool) {
	if strings.HasPrefix(name, "params.") { // no variable's name has the prefix
		v, ok := a.params[name]
		return v, ok
	}
	v, ok := a.vals[name]
	return v, ok
}

func (a *activation) Parent() interpreter.Activation { return nil }

// subjectVals converts the views of one subject to CEL values once.
func subjectVals(adapter types.Adapter, v *views, from, now time.Time) map[string]ref.Val {
	sub := v.subject
	own := v.owner
	return map[string]ref.Val{
		"subject":                     adapter.NativeToValue(&sub),
		"events":                      newViewList(adapter, v.events),
		"activity":                    newViewList(adapter, v.activity),
		"now":                         types.Timestamp{Time: now},
		"from":                        types.Timestamp{Time: from},
		"grants":                      newViewList(adapter, v.grants),
		"grant_by_id":                 newObjMap(adapter, v.grantByID),
		"grant_ends":                  newObjMap(adapter, v.grantEnds),
		"sessions":                    newViewList(adapter, v.sessions),
		"approvals":                   newViewList(adapter, v.approvals),
		"credentials":                 newViewList(adapter, v.credentials),
		"terminations":                newViewList(adapter, v.terminations),
		"offboardings":                newViewList(adapter, v.offboardings),
		"enablements":                 newViewList(adapter, v.enablements),
		"moves":                       newViewList(adapter, v.moves),
		"reviews":                     newViewList(adapter, v.reviews),
		"breakglass":                  newViewList(adapter, v.breakglass),
		"breakglass_reviews":          newViewList(adapter, v.bgReviews),
		"owner":                       adapter.NativeToValue(&own),
		"closings":                    newViewList(adapter, v.closings),
		"logins":                      newViewList(adapter, v.r2.logins),
		"uses":                        newViewList(adapter, v.r2.uses),
		"accounts":                    newViewList(adapter, v.r2.accounts),
		"account_disables":            newListMap(adapter, v.r2.accountOff),
		"requests_by_id":              newListMap(adapter, v.r2.requestsByID),
		"grant_events_by_request":     newListMap(adapter, v.r2.grantsByReq),
		"approval_by_request":         newObjMap(adapter, v.r2.approvalByReq),
		"approval_by_entitlement":     newObjMap(adapter, v.r2.approvalByEnt),
		"access_windows":              newViewList(adapter, v.r2.windows),
		"leavings":                    newViewList(adapter, v.r2.leavings),
		"credential_by_id":            newObjMap(adapter, v.r2.credByID),
		"holder_leavings":             newListMap(adapter, v.r2.holderLeavings),
		"campaigns":                   newViewList(adapter, v.r2.campaigns),
		"campaign_events":             newListMap(adapter, v.r2.campaignEvents),
		"signed_decisions_by_grant":   newListMap(adapter, v.r2.signedByGrant),
		"signed_decisions_by_account": newListMap(adapter, v.r2.signedByAccount),
		"credential_uses":             newListMap(adapter, v.r2.credUses),
	}
}
