package rules

import (
	"slices"
	"strings"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/checker"
	celast "github.com/google/cel-go/common/ast"
	"github.com/google/cel-go/common/overloads"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/common/types/traits"
)

// Static cost bounds.
//
// cel-go's runtime cost tracker is the single largest cost of evaluating
// short chains (it observes every step and keeps a value stack). It only
// matters when a rule could exceed its cost limit, and for most subjects
// that can be ruled out before evaluating: cel-go's static estimator
// (checker.Cost) gives an upper bound of the runtime cost when told an upper
// bound of the size of every input list, map and string. Every view list
// and map holds at most one element per entry of the subject's or the
// owner's chain, and every string field is a string of one of those events,
// so one number per subject (chainSizeBound) bounds them all. At compile time
// each rule records the largest such number whose estimate stays within the
// cost limit (costFreeUpTo); a subject at or under it runs without the
// tracker, with the same result, because the limit provably cannot be hit.
// The deadline still applies.
//
// The untracked program runs some comprehensions natively (native.go). The
// estimate stays an upper bound for it: it is computed from the rule's CEL
// text, which the native loops do not change, and a native loop visits the
// same elements as cel-go's fold or fewer (a comprehension that falls back
// to cel-go's node does its work at most twice). The tracked program is
// never made native, so the runtime tracker measures exactly cel-go's cost.

// uniformSizes is a checker.CostEstimator in which every list, map and
// string reachable from a declared variable has at most n elements. It
// answers nothing for values built by the expression itself (call results,
// cel.bind of a call), which the checker then treats as unbounded.
//
// A field of a view struct is bounded too, wherever the struct came from
// (an element of a filtered list, say): costFreeUpTo only trusts this for
// expressions that construct no struct, so every view struct a rule can
// reach is one built by buildViews.
//
// flatElems, when set, bounds the size of each element of a list that
// flatten() is called on, for a target the checker has no path for (a
// map() result): see flattenElemBound.
type uniformSizes struct {
	n         uint64
	checked   *celast.AST
	flatElems *uint64
}

// declaredRoots are the variables the estimator bounds.
var declaredRoots = func() map[string]bool {
	m := map[string]bool{}
	for _, v := range variables {
		m[v.name] = true
	}
	return m
}()

func (u uniformSizes) EstimateSize(node checker.AstNode) *checker.SizeEstimate {
	bounded := &checker.SizeEstimate{Min: 0, Max: u.n}
	if node.Expr() == nil && u.flatElems != nil && slices.Equal(node.Path(), []string{"@items"}) {
		// Only ext's flatten estimator asks about a bare "@items": an
		// element of a flatten target that has no path.
		return &checker.SizeEstimate{Min: 0, Max: *u.flatElems}
	}
	if p := node.Path(); len(p) > 0 && (declaredRoots[p[0]] || strings.HasPrefix(p[0], "params.")) {
		return bounded
	}
	if e := node.Expr(); e != nil && e.Kind() == celast.SelectKind {
		op := u.checked.GetType(e.AsSelect().Operand().ID())
		if op.Kind() == types.StructKind && strings.HasPrefix(op.TypeName(), "rules.") {
			return bounded
		}
	}
	return nil
}

// maxConvertedLen bounds the length of string(timestamp) (RFC 3339 with
// nanoseconds, years 0001-9999: 30 characters), string(duration)
// (seconds with up to 9 decimals, at most about 23 characters) and
// string(int) or string(uint) (at most 20 characters), and durationText
// (two units, e.g. "106751d 23h" at most).
const maxConvertedLen = 64

func (u uniformSizes) EstimateCallCost(function, overloadID string, target *checker.AstNode, args []checker.AstNode) *checker.CallEstimate {
	one := checker.CostEstimate{Min: 1, Max: 1} // what the runtime tracker charges for these calls
	switch overloadID {
	case overloads.TimestampToString, overloads.DurationToString, overloads.IntToString, overloads.UintToString, "durationText_duration":
		return &checker.CallEstimate{CostEstimate: one, ResultSize: &checker.SizeEstimate{Min: 0, Max: maxConvertedLen}}
	}
	switch function {
	case "firstAfter", "firstAtOrAfter", "lastBefore", "newerFromSource", "lapses", "nextAfter":
		// A list of 0 or 1 element (newerFromSource: an entry of another
		// chain, whose strings chainSizeBound covers through the source
		// index's bound).
		return &checker.CallEstimate{CostEstimate: one, ResultSize: &checker.SizeEstimate{Min: 0, Max: 1}}
	case "sodConflict":
		// [] or [ga, gb]: grants of the subject's views.
		return &checker.CallEstimate{CostEstimate: one, ResultSize: &checker.SizeEstimate{Min: 0, Max: 2}}
	case "finding", "endedBy", "inForceAt", "anyBetween", "exposure", "window", "instant", "overlapIn", "overlap":
		return &checker.CallEstimate{CostEstimate: one}
	}
	return nil
}

// maxBoundProbe is the largest size bound costFreeUpTo considers.
const maxBoundProbe = 1 << 24

// costFreeUpTo returns the largest size bound n <= maxBoundProbe for which
// the static estimate of r's cost is within limit, or -1 if there is none
// (or the estimate fails).
func costFreeUpTo(env *cel.Env, ast *cel.Ast, limit uint64) int64 {
	native := ast.NativeRep()
	constructs := false
	celast.PostOrderVisit(native.Expr(), celast.NewExprVisitor(func(e celast.Expr) {
		constructs = constructs || e.Kind() == celast.StructKind
	}))
	if constructs {
		return -1
	}
	fits := func(n uint64) bool {
		est, err := env.EstimateCost(ast, sizesFor(native, n))
		return err == nil && est.Max <= limit
	}
	if !fits(0) {
		return -1
	}
	lo, hi := uint64(0), uint64(maxBoundProbe) // fits(lo) holds
	if fits(hi) {
		return int64(hi)
	}
	for hi-lo > 1 { // invariant: fits(lo), !fits(hi); the estimate grows with n
		mid := lo + (hi-lo)/2
		if fits(mid) {
			lo = mid
		} else {
			hi = mid
		}
	}
	return int64(lo)
}

// paramsSize bounds the sizes inside a rule's param values.
func paramsSize(params map[string]ref.Val) uint64 {
	var n uint64
	for _, v := range params {
		n = max(n, valSize(v))
	}
	return n
}

func valSize(v ref.Val) uint64 {
	var n uint64
	switch t := v.(type) {
	case traits.Lister:
		n = uint64(t.Size().(types.Int))
		for it := t.Iterator(); it.HasNext() == types.True; {
			n = max(n, valSize(it.Next()))
		}
	case traits.Mapper:
		n = uint64(t.Size().(types.Int))
		for it := t.Iterator(); it.HasNext() == types.True; {
			k := it.Next()
			n = max(n, valSize(k), valSize(t.Get(k)))
		}
	case traits.Sizer:
		n = uint64(t.Size().(types.Int))
	}
	return n
}

// chainSizeBound bounds, for one subject, the size of every list, map and
// string a rule can read from the views: the number of entries of the
// subject's and the owner's chains, and the length of every string and
// attribute map of their events and the subject id.
func chainSizeBound(subject string, chains ...[]*Event) uint64 {
	n := uint64(len(subject))
	for _, evs := range chains {
		n = max(n, uint64(len(evs)))
		for _, e := range evs {
			n = max(n, eventStringBound(e))
		}
	}
	return n
}

func eventStringBound(e *Event) uint64 {
	l := max(len(e.ID), len(e.Type), len(e.System), len(e.Reason),
		len(e.Subject.ID), len(e.Subject.Kind), len(e.Subject.Display), len(e.Subject.OwnerID),
		len(e.Actor.ID), len(e.Actor.Kind), len(e.Actor.Display), len(e.Actor.OwnerID),
		len(e.Entitlement.ID), len(e.Entitlement.Resource),
		len(e.Refs.Request), len(e.Refs.Grant), len(e.Refs.Session), len(e.Refs.Credential),
		len(e.Refs.Review), len(e.Refs.Ticket), len(e.Attributes))
	for k, v := range e.Attributes {
		l = max(l, len(k), len(v))
	}
	return uint64(l)
}

// sizesFor is the estimator for size bound n.
func sizesFor(checked *celast.AST, n uint64) uniformSizes {
	u := uniformSizes{n: n, checked: checked}
	if b, ok := flattenElemBound(checked, n); ok {
		u.flatElems = &b
	}
	return u
}

// flattenElemBound bounds the size of every element of every flatten()
// target in the expression that is built by map() (a comprehension that
// adds at most one element per iteration): the bound of the mapped
// expression. It fails if any flatten target is of another form.
func flattenElemBound(checked *celast.AST, n uint64) (uint64, bool) {
	rebound := map[string]bool{} // names a comprehension or cel.bind binds
	var flattens []celast.Expr
	celast.PostOrderVisit(checked.Expr(), celast.NewExprVisitor(func(e celast.Expr) {
		switch e.Kind() {
		case celast.ComprehensionKind:
			c := e.AsComprehension()
			rebound[c.IterVar()], rebound[c.AccuVar()] = true, true
			if c.HasIterVar2() {
				rebound[c.IterVar2()] = true
			}
		case celast.CallKind:
			if c := e.AsCall(); c.FunctionName() == "flatten" && c.IsMemberFunction() {
				flattens = append(flattens, c.Target())
			}
		}
	}))
	b := listSizeBounder{checked: checked, n: n, rebound: rebound}
	var out uint64
	for _, t := range flattens {
		if t.Kind() == celast.ListKind {
			continue // a literal: ext estimates it from the literal
		}
		elem, ok := b.mapElement(t)
		if !ok {
			return 0, false
		}
		sz, ok := b.size(elem)
		if !ok {
			return 0, false
		}
		out = max(out, sz)
	}
	return out, true
}

// listSizeBounder bounds the size of list-valued expressions syntactically.
type listSizeBounder struct {
	checked *celast.AST
	n       uint64
	rebound map[string]bool
}

// mapElement returns x for a comprehension of the shape map() and
// filter() expand to: accumulator initialised to [], stepped by
// accu + [x] (or cond ? accu + [x] : accu), result accu.
func (b listSizeBounder) mapElement(e celast.Expr) (celast.Expr, bool) {
	if e.Kind() != celast.ComprehensionKind {
		return nil, false
	}
	c := e.AsComprehension()
	isAccu := func(x celast.Expr) bool { return x.Kind() == celast.IdentKind && x.AsIdent() == c.AccuVar() }
	if init := c.AccuInit(); init.Kind() != celast.ListKind || init.AsList().Size() != 0 || !isAccu(c.Result()) {
		return nil, false
	}
	step := c.LoopStep()
	if step.Kind() == celast.CallKind && step.AsCall().FunctionName() == "_?_:_" {
		args := step.AsCall().Args()
		if !isAccu(args[2]) {
			return nil, false
		}
		step = args[1]
	}
	if step.Kind() != celast.CallKind || step.AsCall().FunctionName() != "_+_" {
		return nil, false
	}
	args := step.AsCall().Args()
	if len(args) != 2 || !isAccu(args[0]) || args[1].Kind() != celast.ListKind || args[1].AsList().Size() != 1 {
		return nil, false
	}
	return args[1].AsList().Elements()[0], true
}

// size bounds the size of the list e evaluates to.
func (b listSizeBounder) size(e celast.Expr) (uint64, bool) {
	switch e.Kind() {
	case celast.IdentKind:
		if name := e.AsIdent(); declaredRoots[name] && !b.rebound[name] {
			return b.n, true
		}
	case celast.SelectKind:
		op := b.checked.GetType(e.AsSelect().Operand().ID())
		if op.Kind() == types.StructKind && strings.HasPrefix(op.TypeName(), "rules.") {
			return b.n, true
		}
	case celast.ListKind:
		return uint64(e.AsList().Size()), true
	case celast.CallKind:
		c := e.AsCall()
		switch c.FunctionName() {
		case "_?_:_":
			x, ok1 := b.size(c.Args()[1])
			y, ok2 := b.size(c.Args()[2])
			return max(x, y), ok1 && ok2
		case "firstAfter", "firstAtOrAfter", "lastBefore", "nextAfter", "newerFromSource", "lapses":
			return 1, true
		case "sodConflict":
			return 2, true
		}
	case celast.ComprehensionKind:
		c := e.AsComprehension()
		if _, ok := b.mapElement(e); ok { // at most one element per iteration
			return b.size(c.IterRange())
		}
		// cel.bind(x, init, body): no iteration, the result is body.
		if r := c.IterRange(); r.Kind() == celast.ListKind && r.AsList().Size() == 0 &&
			c.AccuVar() != c.IterVar() && !refersTo(c.Result(), c.AccuVar()) {
			return b.size(c.Result())
		}
	}
	return 0, false
}

// refersTo reports whether name occurs as an identifier in e.
func refersTo(e celast.Expr, name string) bool {
	found := false
	celast.PostOrderVisit(e, celast.NewExprVisitor(func(x celast.Expr) {
		found = found || (x.Kind() == celast.IdentKind && x.AsIdent() == name)
	}))
	return found
}
