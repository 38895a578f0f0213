package rules

import (
	"github.com/google/cel-go/common/ast"
	"github.com/google/cel-go/common/operators"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
)

// Skipping a rule whose result is provably empty.
//
// Evaluating a rule costs about two microseconds even when it walks only
// empty lists (cel-go sets up each comprehension and its result list), and
// many subjects have no terminations, moves, campaigns or accounts. When a
// rule set is built, each rule's checked expression is analysed for the
// per-subject lists whose emptiness makes its value exactly [] — no finding
// and no error, whatever else the subject holds — and a subject with all the
// lists of one such alternative empty skips the rule. The analysis knows
// only shapes whose value is then certain (docs/rules.md "Limits"):
//
//   - a comprehension that starts from [] and yields its accumulator (filter,
//     map, and the filter-then-map of the catalog) over a list that is
//     empty, or whose step adds nothing while its predicate is false;
//   - L.flatten(), A + B, c ? A : B and the list functions (firstAfter, ...)
//     over lists that are empty;
//   - predicates that are then false: a conjunction with a false term (CEL's
//     && is false when any term is false, even if another is an error),
//     L.exists(...) and size(L) > 0 over an empty L, and their negations.
//
// Anything else (an index, arithmetic, a call of any other function) is
// never assumed empty or error-free, so a rule the analysis does not
// understand is simply always evaluated.

// emptiable are the variables whose emptiness a subject's views tell
// without evaluating anything, by bit.
var emptiable = []struct {
	name  string
	empty func(v *views) bool
}{
	{"events", func(v *views) bool { return len(v.events) == 0 }},
	{"activity", func(v *views) bool { return len(v.activity) == 0 }},
	{"grants", func(v *views) bool { return len(v.grants) == 0 }},
	{"sessions", func(v *views) bool { return len(v.sessions) == 0 }},
	{"approvals", func(v *views) bool { return len(v.approvals) == 0 }},
	{"credentials", func(v *views) bool { return len(v.credentials) == 0 }},
	{"terminations", func(v *views) bool { return len(v.terminations) == 0 }},
	{"offboardings", func(v *views) bool { return len(v.offboardings) == 0 }},
	{"enablements", func(v *views) bool { return len(v.enablements) == 0 }},
	{"moves", func(v *views) bool { return len(v.moves) == 0 }},
	{"reviews", func(v *views) bool { return len(v.reviews) == 0 }},
	{"breakglass", func(v *views) bool { return len(v.breakglass) == 0 }},
	{"breakglass_reviews", func(v *views) bool { return len(v.bgReviews) == 0 }},
	{"closings", func(v *views) bool { return len(v.closings) == 0 }},
	{"logins", func(v *views) bool { return len(v.r2.logins) == 0 }},
	{"uses", func(v *views) bool { return len(v.r2.uses) == 0 }},
	{"accounts", func(v *views) bool { return len(v.r2.accounts) == 0 }},
	{"access_windows", func(v *views) bool { return len(v.r2.windows) == 0 }},
	{"leavings", func(v *views) bool { return len(v.r2.leavings) == 0 }},
	{"campaigns", func(v *views) bool { return len(v.r2.campaigns) == 0 }},
}

// emptiableBit is the bit of each emptiable variable.
var emptiableBit = func() map[string]uint64 {
	m := make(map[string]uint64, len(emptiable))
	for i, e := range emptiable {
		m[e.name] = 1 << i
	}
	return m
}()

// nonEmpty is the set of a subject's emptiable variables that are not empty.
func (v *views) nonEmpty() uint64 {
	var bits uint64
	for i, e := range emptiable {
		if !e.empty(v) {
			bits |= 1 << i
		}
	}
	return bits
}

// alts are alternative sets of emptiable variables (bit masks): the
// property holds when every variable of one set is empty. nil: never
// provably; a zero mask: always.
type alts []uint64

// emptyAnalysis finds the conditions under which a subject's value of an
// expression of the checked AST a is exactly [] (or false, or true: see
// the methods), with no error.
type emptyAnalysis struct{ a *ast.AST }

// product: both properties hold (one set of each, joined).
func product(x, y alts) alts {
	var out alts
	for _, a := range x {
		for _, b := range y {
			out = appendAlt(out, a|b)
		}
	}
	return out
}

// union: either property holds.
func union(x, y alts) alts {
	out := append(alts(nil), x...)
	for _, b := range y {
		out = appendAlt(out, b)
	}
	return out
}

// appendAlt adds m unless a set already there is a subset of it (that one
// is then satisfied whenever m is), keeping the lists short.
func appendAlt(out alts, m uint64) alts {
	for i, o := range out {
		if o&m == o {
			return out
		}
		if o&m == m {
			out[i] = m
			return dedupeAlts(out)
		}
	}
	return append(out, m)
}

func dedupeAlts(out alts) alts {
	var keep alts
	for _, m := range out {
		keep = appendAlt(keep, m)
	}
	return keep
}

// emptyList: e is exactly [].
func (x emptyAnalysis) emptyList(e ast.Expr) alts {
	switch e.Kind() {
	case ast.ListKind:
		if len(e.AsList().Elements()) == 0 {
			return alts{0}
		}
	case ast.IdentKind:
		if bit, ok := emptiableBit[e.AsIdent()]; ok {
			return alts{bit}
		}
	case ast.CallKind:
		c := e.AsCall()
		args := c.Args()
		switch fn := c.FunctionName(); {
		case fn == operators.Add && !c.IsMemberFunction() && len(args) == 2:
			return product(x.emptyList(args[0]), x.emptyList(args[1]))
		case fn == operators.Conditional && len(args) == 3:
			out := union(product(x.isTrue(args[0]), x.emptyList(args[1])),
				product(x.isFalse(args[0]), x.emptyList(args[2])))
			if x.safeCond(args[0]) {
				out = union(out, product(x.emptyList(args[1]), x.emptyList(args[2])))
			}
			return out
		case fn == "flatten" && c.IsMemberFunction() && len(args) == 0:
			return x.emptyList(c.Target())
		case (fn == "firstAfter" || fn == "firstAtOrAfter" || fn == "lastBefore" || fn == "nextAfter" || fn == "after") &&
			!c.IsMemberFunction() && len(args) == 2 && x.safe(args[1]):
			// Each yields elements of its first argument only.
			return x.emptyList(args[0])
		}
	case ast.ComprehensionKind:
		c := e.AsComprehension()
		init := c.AccuInit()
		if init.Kind() != ast.ListKind || len(init.AsList().Elements()) != 0 || !x.isAccu(c.Result(), c.AccuVar()) ||
			!isLiteral(c.LoopCondition(), types.True) {
			return nil
		}
		out := x.emptyList(c.IterRange()) // no iteration: the accumulator stays []
		// A step `p ? accu + [...] : accu` adds nothing while p is false.
		if step := c.LoopStep(); step.Kind() == ast.CallKind && x.safe(c.IterRange()) {
			sc := step.AsCall()
			if sc.FunctionName() == operators.Conditional && len(sc.Args()) == 3 && x.isAccu(sc.Args()[2], c.AccuVar()) {
				out = union(out, x.isFalse(sc.Args()[0]))
			}
		}
		return out
	}
	return nil
}

// isFalse: e is exactly false.
func (x emptyAnalysis) isFalse(e ast.Expr) alts {
	switch e.Kind() {
	case ast.LiteralKind:
		if isLiteral(e, types.False) {
			return alts{0}
		}
	case ast.CallKind:
		c := e.AsCall()
		args := c.Args()
		switch c.FunctionName() {
		case operators.LogicalAnd: // false if any term is false, errors or not
			var out alts
			for _, a := range args {
				out = union(out, x.isFalse(a))
			}
			return out
		case operators.LogicalOr:
			out := alts{0}
			for _, a := range args {
				out = product(out, x.isFalse(a))
			}
			return out
		case operators.LogicalNot:
			if len(args) == 1 {
				return x.isTrue(args[0])
			}
		case operators.Greater, operators.NotEquals: // size(l) > 0, size(l) != 0
			if l, ok := sizeVsZero(c); ok {
				return x.emptyList(l)
			}
		}
	case ast.ComprehensionKind: // exists: starts false, yields its accumulator
		c := e.AsComprehension()
		if isLiteral(c.AccuInit(), types.False) && x.isAccu(c.Result(), c.AccuVar()) {
			return x.emptyList(c.IterRange())
		}
	}
	return nil
}

// isTrue: e is exactly true.
func (x emptyAnalysis) isTrue(e ast.Expr) alts {
	switch e.Kind() {
	case ast.LiteralKind:
		if isLiteral(e, types.True) {
			return alts{0}
		}
	case ast.CallKind:
		c := e.AsCall()
		args := c.Args()
		switch c.FunctionName() {
		case operators.LogicalOr:
			var out alts
			for _, a := range args {
				out = union(out, x.isTrue(a))
			}
			return out
		case operators.LogicalAnd:
			out := alts{0}
			for _, a := range args {
				out = product(out, x.isTrue(a))
			}
			return out
		case operators.LogicalNot:
			if len(args) == 1 {
				return x.isFalse(args[0])
			}
		case operators.Equals: // size(l) == 0
			if l, ok := sizeVsZero(c); ok {
				return x.emptyList(l)
			}
		}
	case ast.ComprehensionKind: // all: starts true, yields its accumulator
		c := e.AsComprehension()
		if isLiteral(c.AccuInit(), types.True) && x.isAccu(c.Result(), c.AccuVar()) {
			return x.emptyList(c.IterRange())
		}
	}
	return nil
}

// sizeVsZero matches size(l) OP 0 and returns l.
func sizeVsZero(c ast.CallExpr) (ast.Expr, bool) {
	args := c.Args()
	if len(args) != 2 || !isLiteral(args[1], types.IntZero) || args[0].Kind() != ast.CallKind {
		return nil, false
	}
	s := args[0].AsCall()
	switch {
	case s.FunctionName() != "size":
		return nil, false
	case !s.IsMemberFunction() && len(s.Args()) == 1:
		return s.Args()[0], true
	case s.IsMemberFunction() && len(s.Args()) == 0:
		return s.Target(), true
	}
	return nil, false
}

func isLiteral(e ast.Expr, v ref.Val) bool {
	return e.Kind() == ast.LiteralKind && e.AsLiteral() == v
}

func (x emptyAnalysis) isAccu(e ast.Expr, accu string) bool {
	return e.Kind() == ast.IdentKind && e.AsIdent() == accu
}

// safe: e evaluates without error for every subject: a variable, a
// literal, or a field of a struct (never a map's key, which may be
// missing).
func (x emptyAnalysis) safe(e ast.Expr) bool {
	switch e.Kind() {
	case ast.IdentKind, ast.LiteralKind:
		return true
	case ast.SelectKind:
		s := e.AsSelect()
		if s.IsTestOnly() {
			return false
		}
		t := x.a.GetType(s.Operand().ID())
		return t != nil && t.Kind() == types.StructKind && x.safe(s.Operand())
	}
	return false
}

// safeCond: a condition that evaluates without error for every subject:
// safe values compared with == and != or tested with in against a list
// literal, size of a variable, joined with !, && and ||.
func (x emptyAnalysis) safeCond(e ast.Expr) bool {
	if e.Kind() != ast.CallKind {
		return x.safe(e) && x.a.GetType(e.ID()) != nil && x.a.GetType(e.ID()).Kind() == types.BoolKind
	}
	c := e.AsCall()
	args := c.Args()
	switch c.FunctionName() {
	case operators.LogicalAnd, operators.LogicalOr, operators.LogicalNot:
		for _, a := range args {
			if !x.safeCond(a) {
				return false
			}
		}
		return len(args) > 0
	case operators.Equals, operators.NotEquals:
		return len(args) == 2 && x.safeValue(args[0]) && x.safeValue(args[1])
	case operators.In:
		if len(args) != 2 || !x.safe(args[0]) || args[1].Kind() != ast.ListKind {
			return false
		}
		for _, el := range args[1].AsList().Elements() {
			if el.Kind() != ast.LiteralKind {
				return false
			}
		}
		return true
	}
	return false
}

// safeValue: a safe value, or size of one.
func (x emptyAnalysis) safeValue(e ast.Expr) bool {
	if e.Kind() == ast.CallKind {
		c := e.AsCall()
		return c.FunctionName() == "size" && !c.IsMemberFunction() && len(c.Args()) == 1 && x.safe(c.Args()[0])
	}
	return x.safe(e)
}

// emptyWhenOf analyses a checked expression (see the top of this file).
func emptyWhenOf(a *ast.AST) alts {
	if a == nil || !a.IsChecked() {
		return nil
	}
	return emptyAnalysis{a}.emptyList(a.Expr())
}

// skips reports whether a subject whose non-empty emptiable variables are
// nonEmpty certainly gets [] from a rule with these alternatives.
func (w alts) skips(nonEmpty uint64) bool {
	for _, m := range w {
		if m&nonEmpty == 0 {
			return true
		}
	}
	return false
}
