package rules

import (
	"reflect"
	"slices"
	"sync"
	"time"
	"unsafe"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/ast"
	"github.com/google/cel-go/common/operators"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/common/types/traits"
	"github.com/google/cel-go/interpreter"
)

// Native evaluation of comprehensions (docs/rules.md "How rules run").
//
// A rule's CEL text is its definition and is what is checked, costed
// (costbound.go) and analysed (skip.go). When its program is built, a
// cel-go plan decorator (nativeDecorator) looks at every comprehension the
// macros filter, exists, all and the 3-argument map expanded, and when the
// predicate only uses what this file can compute in Go (field reads of the
// view structs, comparisons, &&, ||, !, ?:, timestamp arithmetic, size,
// indexing, `in`, cel.bind, nested filter/exists/all, and the functions
// endedBy, inForceAt, firstAfter, firstAtOrAfter, lastBefore, nextAfter,
// anyBetween and newerFromSource), it replaces cel-go's fold node with a
// nativeFold: a Go loop over the view slice that evaluates the predicate as
// compiled Go closures. A map's transform stays cel-go's own plan, run per
// selected element.
//
// Equivalence: a native closure yields a value only when it is certain to
// be the value cel-go computes; anything else (a missing map key, an index
// out of range, a timestamp far enough from today that arithmetic might
// overflow, an element of an unexpected type, an error from a function or
// a transform) makes the whole comprehension fall back to cel-go's own fold
// node, kept in the nativeFold, which computes the value or error as if
// nothing had been replaced. Expressions have no side effects, so running
// them again is harmless. TestNativeMatchesCEL runs every rule both ways.
//
// Only the program that runs without cel-go's runtime cost tracker (the
// static bound of costbound.go proves the cost limit cannot be reached, or
// the chain is too long to track) is decorated; the tracked program stays
// plain cel-go so that cost-limit errors are exactly cel-go's. Native loops
// check for interruption once per element, as cel-go's folds do.

// nkind is the Go representation of a native value.
type nkind uint8

const (
	nkNone nkind = iota
	nkBool
	nkStr
	nkInt
	nkTime
	nkDur
	nkObj  // a pointer to a view struct (*Event, *Grant, *Identity, ...)
	nkList // an nlist of view structs
	nkRef  // a CEL value used as is (maps, param lists)
)

// nexpr is a compiled expression: the closure of its kind is set. Each
// returns ok=false when it cannot be sure of cel-go's value.
type nexpr struct {
	kind nkind
	typ  string // the struct type of nkObj, the element type of nkList
	b    func(*nctx) (bool, bool)
	s    func(*nctx) (string, bool)
	i    func(*nctx) (int64, bool)
	t    func(*nctx) (time.Time, bool)
	d    func(*nctx) (time.Duration, bool)
	o    func(*nctx) (any, bool)
	l    func(*nctx) (nlist, bool)
	r    func(*nctx) (ref.Val, bool)
}

// nslot holds a variable: a comprehension's element, a cel.bind value, or a
// name resolved from the enclosing activation (once per evaluation).
type nslot struct {
	set bool
	b   bool
	s   string
	i   int64
	t   time.Time
	d   time.Duration
	o   any
	l   nlist
	r   ref.Val
}

// nctx is the state of one evaluation of a nativeFold.
type nctx struct {
	frame       *interpreter.ExecutionFrame
	adapter     types.Adapter
	slots       []nslot
	interrupted bool
}

// loopCheck is called once per element of a native loop, as cel-go's folds
// call CheckInterrupt.
func (c *nctx) loopCheck() bool {
	if c.frame.CheckInterrupt() {
		c.interrupted = true
		return false
	}
	return true
}

// nlist is a list of view structs: at gives the Go value, val the CEL value
// cel-go would hand out for the same element.
type nlist interface {
	n() int
	at(i int) any
	val(a types.Adapter, i int) ref.Val
	sub(idx []int) nlist
	events() ([]*Event, bool)
}

type sliceList[T cachedObj] []T

func (s sliceList[T]) n() int                             { return len(s) }
func (s sliceList[T]) at(i int) any                       { return s[i] }
func (s sliceList[T]) val(a types.Adapter, i int) ref.Val { return objVal(a, s[i]) }
func (s sliceList[T]) sub(idx []int) nlist {
	out := make(sliceList[T], len(idx))
	for j, i := range idx {
		out[j] = s[i]
	}
	return out
}
func (s sliceList[T]) events() ([]*Event, bool) {
	evs, ok := any([]T(s)).([]*Event)
	return evs, ok
}

// refList is a list of CEL values (a list cel-go made).
type refList []ref.Val

func (r refList) n() int                             { return len(r) }
func (r refList) at(i int) any                       { return r[i].Value() }
func (r refList) val(_ types.Adapter, i int) ref.Val { return r[i] }
func (r refList) sub(idx []int) nlist {
	out := make(refList, len(idx))
	for j, i := range idx {
		out[j] = r[i]
	}
	return out
}
func (r refList) events() ([]*Event, bool) { return nil, false }

// objList is a list of view structs made natively ([x], map).
type objList []any

func (r objList) n() int                             { return len(r) }
func (r objList) at(i int) any                       { return r[i] }
func (r objList) val(a types.Adapter, i int) ref.Val { return objAny(a, r[i]) }
func (r objList) sub(idx []int) nlist                { return pickList{r, idx} }
func (r objList) events() ([]*Event, bool)           { return nil, false }

// catList is a + b.
type catList struct{ a, b nlist }

func (l catList) n() int { return l.a.n() + l.b.n() }
func (l catList) at(i int) any {
	if i < l.a.n() {
		return l.a.at(i)
	}
	return l.b.at(i - l.a.n())
}
func (l catList) val(a types.Adapter, i int) ref.Val {
	if i < l.a.n() {
		return l.a.val(a, i)
	}
	return l.b.val(a, i-l.a.n())
}
func (l catList) sub(idx []int) nlist      { return pickList{l, idx} }
func (l catList) events() ([]*Event, bool) { return nil, false }

// pickList is the elements idx of base, keeping base's CEL values.
type pickList struct {
	base nlist
	idx  []int
}

func (l pickList) n() int                             { return len(l.idx) }
func (l pickList) at(i int) any                       { return l.base.at(l.idx[i]) }
func (l pickList) val(a types.Adapter, i int) ref.Val { return l.base.val(a, l.idx[i]) }
func (l pickList) sub(idx []int) nlist {
	out := make([]int, len(idx))
	for j, i := range idx {
		out[j] = l.idx[i]
	}
	return pickList{l.base, out}
}
func (l pickList) events() ([]*Event, bool) { return nil, false }

// cachedType reports whether the view struct typ caches its CEL value
// (objVal), which is what a list element of it is in CEL.
func cachedType(typ string) bool {
	switch typ {
	case "rules.Event", "rules.Grant", "rules.Session", "rules.Approval", "rules.Credential", "rules.Checkout":
		return true
	}
	return false
}

// objAny is objVal for a view struct of a cached type, nil otherwise.
func objAny(a types.Adapter, o any) ref.Val {
	switch x := o.(type) {
	case *Event:
		return objVal(a, x)
	case *Grant:
		return objVal(a, x)
	case *Session:
		return objVal(a, x)
	case *Approval:
		return objVal(a, x)
	case *Credential:
		return objVal(a, x)
	case *Checkout:
		return objVal(a, x)
	}
	return nil
}

// toNList is the nlist of a CEL list value.
func toNList(v ref.Val) (nlist, bool) {
	switch l := v.(type) {
	case *viewList[*Event]:
		return sliceList[*Event](l.items), true
	case *viewList[*Grant]:
		return sliceList[*Grant](l.items), true
	case *viewList[*Session]:
		return sliceList[*Session](l.items), true
	case *viewList[*Approval]:
		return sliceList[*Approval](l.items), true
	case *viewList[*Credential]:
		return sliceList[*Credential](l.items), true
	case *viewList[*Checkout]:
		return sliceList[*Checkout](l.items), true
	case traits.Lister:
		n, ok := l.Size().(types.Int)
		if !ok {
			return nil, false
		}
		out := make(refList, n)
		for i := range out {
			out[i] = l.Get(types.Int(i))
		}
		return out, true
	}
	return nil, false
}

// fromRef stores the CEL value v in s as kind k (typ: see nexpr).
func fromRef(s *nslot, v ref.Val, k nkind, typ string) bool {
	switch k {
	case nkBool:
		b, ok := v.(types.Bool)
		s.b = bool(b)
		return ok
	case nkStr:
		x, ok := v.(types.String)
		s.s = string(x)
		return ok
	case nkInt:
		x, ok := v.(types.Int)
		s.i = int64(x)
		return ok
	case nkTime:
		x, ok := v.(types.Timestamp)
		s.t = x.Time
		return ok
	case nkDur:
		x, ok := v.(types.Duration)
		s.d = x.Duration
		return ok
	case nkObj:
		if types.IsUnknownOrError(v) {
			return false
		}
		s.o = v.Value()
		return isType(s.o, typ)
	case nkList:
		l, ok := toNList(v)
		s.l = l
		return ok
	case nkRef:
		s.r = v
		return !types.IsUnknownOrError(v)
	}
	return false
}

// isType reports whether o is a non-nil pointer to the view struct named typ.
func isType(o any, typ string) bool {
	switch typ {
	case "rules.Event":
		x, ok := o.(*Event)
		return ok && x != nil
	case "rules.Grant":
		x, ok := o.(*Grant)
		return ok && x != nil
	case "rules.Session":
		x, ok := o.(*Session)
		return ok && x != nil
	case "rules.Approval":
		x, ok := o.(*Approval)
		return ok && x != nil
	case "rules.Credential":
		x, ok := o.(*Credential)
		return ok && x != nil
	case "rules.Checkout":
		x, ok := o.(*Checkout)
		return ok && x != nil
	case "rules.Subject":
		x, ok := o.(*Subject)
		return ok && x != nil
	case "rules.Owner":
		x, ok := o.(*Owner)
		return ok && x != nil
	case "rules.Identity":
		x, ok := o.(*Identity)
		return ok && x != nil
	case "rules.Entitlement":
		x, ok := o.(*Entitlement)
		return ok && x != nil
	case "rules.Refs":
		x, ok := o.(*Refs)
		return ok && x != nil
	}
	return false
}

// Safe ranges for timestamp arithmetic: within them cel-go's checked
// arithmetic cannot fail and gives the instant time.Time gives (outside
// them the comprehension falls back to cel-go).
const (
	safeMinUnix = -30_000_000_000 // about year 1019
	safeMaxUnix = 200_000_000_000 // about year 8307
	safeSubSecs = 9_000_000_000   // about 285 years: below time.Duration's range
)

func safeTime(t time.Time) bool {
	u := t.Unix()
	return u >= safeMinUnix && u <= safeMaxUnix
}

// nativeFold replaces one of cel-go's comprehension nodes.
type nativeFold struct {
	id      int64
	orig    interpreter.InterpretableV2 // cel-go's node: the fallback
	kind    foldKind
	rng     nexpr                       // nkList; unset when rngI is set
	rngI    interpreter.InterpretableV2 // cel-go's plan of the range
	pred    nexpr                       // nkBool
	tr      interpreter.InterpretableV2 // the transform of a map
	trN     nexpr                       // or its native form (2-argument map)
	iter    string
	slot    int
	nslots  int
	adapter types.Adapter
	pool    sync.Pool
}

type foldKind uint8

const (
	foldNone foldKind = iota
	foldFilter
	foldExists
	foldAll
	foldMap  // 3-argument map
	foldMap2 // 2-argument map
	foldBind
)

func (n *nativeFold) ID() int64 { return n.id }

func (n *nativeFold) Eval(a interpreter.Activation) ref.Val {
	return n.Exec(interpreter.AsFrame(a))
}

func (n *nativeFold) Exec(frame *interpreter.ExecutionFrame) ref.Val {
	c, _ := n.pool.Get().(*nctx)
	if c == nil {
		c = &nctx{adapter: n.adapter, slots: make([]nslot, n.nslots)}
	}
	c.frame = frame
	out, ok := n.run(c)
	interrupted := c.interrupted
	clear(c.slots)
	c.frame, c.interrupted = nil, false
	n.pool.Put(c)
	if interrupted {
		return types.WrapErr(interpreter.InterruptError{})
	}
	if !ok {
		return n.orig.Exec(frame)
	}
	return out
}

// iterAct binds a map's element for its transform.
type iterAct struct {
	name string
	v    ref.Val
}

func (a *iterAct) ResolveName(name string) (any, bool) {
	if name == a.name {
		return a.v, true
	}
	return nil, false
}

func (a *iterAct) Parent() interpreter.Activation { return nil }

func (n *nativeFold) run(c *nctx) (ref.Val, bool) {
	var l nlist
	var ok bool
	if n.rngI != nil {
		l, ok = toNList(n.rngI.Exec(c.frame))
	} else {
		l, ok = n.rng.l(c)
	}
	if !ok {
		return nil, false
	}
	s := &c.slots[n.slot]
	s.set = true
	size := l.n()
	switch n.kind {
	case foldExists, foldAll:
		b, ok := c.quantify(l, s, n.pred.b, n.kind == foldExists)
		return types.Bool(b), ok
	case foldMap2:
		if size == 0 {
			return emptyList, true
		}
		out := make([]ref.Val, 0, size)
		for i := range size {
			s.o = l.at(i)
			var v ref.Val
			if n.tr == nil {
				o, ok := n.trN.o(c)
				if !ok {
					return nil, false
				}
				if v = objAny(c.adapter, o); v == nil {
					return nil, false
				}
			} else {
				if v = n.transform(c, l.val(c.adapter, i)); v == nil {
					return nil, false
				}
			}
			out = append(out, v)
			if !c.loopCheck() {
				return nil, false
			}
		}
		return types.NewRefValList(c.adapter, out), true
	case foldFilter, foldMap:
		// The selected elements, or (a 3-argument map) their transforms.
		var out []ref.Val
		for i := range size {
			s.o = l.at(i)
			b, ok := n.pred.b(c)
			if !ok {
				return nil, false
			}
			if b {
				v := l.val(c.adapter, i)
				if n.kind == foldMap {
					v = n.transform(c, v)
				}
				if v == nil {
					return nil, false
				}
				out = append(out, v)
			}
			if !c.loopCheck() {
				return nil, false
			}
		}
		if len(out) == 0 {
			return emptyList, true
		}
		return types.NewRefValList(c.adapter, out), true
	}
	return nil, false
}

// transform runs cel-go's plan of a map's transform on the element ev:
// nil when ev is nil or the transform yields an error or unknown.
func (n *nativeFold) transform(c *nctx, ev ref.Val) ref.Val {
	if ev == nil {
		return nil
	}
	child := c.frame.Push(&iterAct{name: n.iter, v: ev})
	v := n.tr.Exec(child)
	child.Pop()
	if types.IsUnknownOrError(v) {
		return nil
	}
	return v
}

// nativeDecorator returns the plan decorator that makes the comprehensions
// of the checked expression a native when it can (see the top of this
// file), and a count of those it replaced, filled in as the program is
// planned.
func nativeDecorator(a *cel.Ast, adapter types.Adapter) (cel.ProgramOption, *int) {
	rep := a.NativeRep()
	exprs := map[int64]ast.Expr{}
	ast.PostOrderVisit(rep.Expr(), ast.NewExprVisitor(func(e ast.Expr) { exprs[e.ID()] = e }))
	captured := map[int64]interpreter.InterpretableV2{}
	count := new(int)
	dec := func(i interpreter.InterpretableV2) (interpreter.InterpretableV2, error) {
		id := i.ID()
		captured[id] = i
		e, ok := exprs[id]
		if !ok || e.Kind() != ast.ComprehensionKind {
			return i, nil
		}
		n := planFold(rep, e, i, captured, adapter)
		if n == nil || !markInterruptable(i) {
			return i, nil
		}
		captured[id] = n
		*count++
		return n, nil
	}
	return cel.CustomDecoratorV2(dec), count
}

// markInterruptable sets the interruptable flag of cel-go's fold node, as
// cel.InterruptCheckFrequency's decorator would have (it runs after this
// file's and so no longer sees the node). False if the node is not the fold
// it is expected to be, and then it is not replaced.
func markInterruptable(i interpreter.InterpretableV2) bool {
	v := reflect.ValueOf(i)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct || v.Elem().Type().Name() != "evalFold" {
		return false
	}
	f := v.Elem().FieldByName("interruptable")
	if !f.IsValid() || f.Kind() != reflect.Bool {
		return false
	}
	reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().SetBool(true)
	return true
}

// shape recognises the comprehensions the standard macros and cel.bind
// expand to: the kind, its predicate (or bound value), and its transform
// (or cel.bind's body).
func shape(comp ast.ComprehensionExpr) (foldKind, ast.Expr, ast.Expr) {
	if comp.HasIterVar2() {
		return foldNone, nil, nil
	}
	accu := comp.AccuVar()
	isAccu := func(e ast.Expr) bool { return e.Kind() == ast.IdentKind && e.AsIdent() == accu }
	lit := func(e ast.Expr, v ref.Val) bool {
		return e.Kind() == ast.LiteralKind && e.AsLiteral().Equal(v) == types.True && e.AsLiteral().Type() == v.Type()
	}
	call := func(e ast.Expr, fn string, n int) []ast.Expr {
		if e.Kind() != ast.CallKind || e.AsCall().FunctionName() != fn || e.AsCall().IsMemberFunction() || len(e.AsCall().Args()) != n {
			return nil
		}
		return e.AsCall().Args()
	}
	init, cond, step, res := comp.AccuInit(), comp.LoopCondition(), comp.LoopStep(), comp.Result()
	emptyList := func(e ast.Expr) bool { return e.Kind() == ast.ListKind && len(e.AsList().Elements()) == 0 }
	// cel.bind(name, init, body)
	if emptyList(comp.IterRange()) && lit(cond, types.False) && isAccu(step) && accu != parserAccu && accu != legacyAccu {
		return foldBind, init, res
	}
	if !isAccu(res) {
		return foldNone, nil, nil
	}
	switch {
	case emptyList(init) && lit(cond, types.True):
		if add := call(step, operators.Add, 2); add != nil && isAccu(add[0]) && add[1].Kind() == ast.ListKind &&
			len(add[1].AsList().Elements()) == 1 && len(add[1].AsList().OptionalIndices()) == 0 {
			return foldMap2, nil, add[1].AsList().Elements()[0]
		}
		a := call(step, operators.Conditional, 3)
		if a == nil || !isAccu(a[2]) {
			return foldNone, nil, nil
		}
		add := call(a[1], operators.Add, 2)
		if add == nil || !isAccu(add[0]) || add[1].Kind() != ast.ListKind || len(add[1].AsList().Elements()) != 1 ||
			len(add[1].AsList().OptionalIndices()) != 0 {
			return foldNone, nil, nil
		}
		x := add[1].AsList().Elements()[0]
		if x.Kind() == ast.IdentKind && x.AsIdent() == comp.IterVar() {
			return foldFilter, a[0], nil
		}
		return foldMap, a[0], x
	case lit(init, types.False):
		c := call(cond, operators.NotStrictlyFalse, 1)
		if c == nil {
			return foldNone, nil, nil
		}
		if n := call(c[0], operators.LogicalNot, 1); n == nil || !isAccu(n[0]) {
			return foldNone, nil, nil
		}
		if s := call(step, operators.LogicalOr, 2); s != nil && isAccu(s[0]) {
			return foldExists, s[1], nil
		}
	case lit(init, types.True):
		c := call(cond, operators.NotStrictlyFalse, 1)
		if c == nil || !isAccu(c[0]) {
			return foldNone, nil, nil
		}
		if s := call(step, operators.LogicalAnd, 2); s != nil && isAccu(s[0]) {
			return foldAll, s[1], nil
		}
	}
	return foldNone, nil, nil
}

const (
	parserAccu = "@result"
	legacyAccu = "__result__"
)

// planFold makes the nativeFold for the comprehension e (planned by cel-go
// as orig), or nil.
func planFold(rep *ast.AST, e ast.Expr, orig interpreter.InterpretableV2, captured map[int64]interpreter.InterpretableV2, adapter types.Adapter) *nativeFold {
	comp := e.AsComprehension()
	kind, pred, tr := shape(comp)
	switch kind {
	case foldFilter, foldExists, foldAll, foldMap, foldMap2:
	default:
		return nil
	}
	elem := elemType(rep, comp.IterRange())
	if elem == "" {
		return nil
	}
	nc := &ncomp{a: rep, outer: map[string]int{}}
	n := &nativeFold{id: e.ID(), orig: orig, kind: kind, iter: comp.IterVar(), adapter: adapter}
	if rng, ok := nc.compile(comp.IterRange()); ok && rng.kind == nkList {
		n.rng = rng
	} else if ri := captured[comp.IterRange().ID()]; ri != nil {
		n.rngI = ri
		nc = &ncomp{a: rep, outer: map[string]int{}}
	} else {
		return nil
	}
	n.slot = nc.bind(n.iter, nkObj, elem)
	if kind == foldMap2 {
		// The transform natively when it is a view struct cel-go caches,
		// else cel-go's plan of it.
		if x, ok := nc.compile(tr); ok && x.kind == nkObj && cachedType(x.typ) {
			n.trN = x
		} else if n.tr = captured[tr.ID()]; n.tr == nil {
			return nil
		}
		n.nslots = nc.nslots
		return n
	}
	p, ok := nc.compile(pred)
	if !ok || p.kind != nkBool {
		return nil
	}
	n.pred = p
	if kind == foldMap {
		if n.tr = captured[tr.ID()]; n.tr == nil {
			return nil
		}
	}
	n.nslots = nc.nslots
	return n
}

// elemType is the struct type of the elements of the list e, or "".
func elemType(rep *ast.AST, e ast.Expr) string {
	t := rep.GetType(e.ID())
	if t.Kind() != types.ListKind || len(t.Parameters()) != 1 || t.Parameters()[0].Kind() != types.StructKind {
		return ""
	}
	return t.Parameters()[0].TypeName()
}

// ncomp compiles expressions to nexprs.
type ncomp struct {
	a      *ast.AST
	scope  []nbinding
	nslots int
	outer  map[string]int // names resolved from the activation -> slot
}

type nbinding struct {
	name string
	slot int
	kind nkind
	typ  string
}

func (nc *ncomp) bind(name string, k nkind, typ string) int {
	s := nc.nslots
	nc.nslots++
	nc.scope = append(nc.scope, nbinding{name, s, k, typ})
	return s
}

// kindOf is the native kind of expression e's checked type.
func (nc *ncomp) kindOf(e ast.Expr) (nkind, string) {
	t := nc.a.GetType(e.ID())
	switch t.Kind() {
	case types.BoolKind:
		return nkBool, ""
	case types.StringKind:
		return nkStr, ""
	case types.IntKind:
		return nkInt, ""
	case types.TimestampKind:
		return nkTime, ""
	case types.DurationKind:
		return nkDur, ""
	case types.StructKind:
		return nkObj, t.TypeName()
	case types.ListKind:
		if el := elemType(nc.a, e); el != "" {
			return nkList, el
		}
		return nkRef, ""
	case types.MapKind:
		return nkRef, ""
	}
	return nkNone, ""
}

// slotExpr reads slot k as kind kd.
func slotExpr(k int, kd nkind, typ string, get func(*nctx) (*nslot, bool)) nexpr {
	x := nexpr{kind: kd, typ: typ}
	switch kd {
	case nkBool:
		x.b = func(c *nctx) (bool, bool) { s, ok := get(c); return ok && s.b, ok }
	case nkStr:
		x.s = func(c *nctx) (string, bool) {
			s, ok := get(c)
			if !ok {
				return "", false
			}
			return s.s, true
		}
	case nkInt:
		x.i = func(c *nctx) (int64, bool) {
			s, ok := get(c)
			if !ok {
				return 0, false
			}
			return s.i, true
		}
	case nkTime:
		x.t = func(c *nctx) (time.Time, bool) {
			s, ok := get(c)
			if !ok {
				return time.Time{}, false
			}
			return s.t, true
		}
	case nkDur:
		x.d = func(c *nctx) (time.Duration, bool) {
			s, ok := get(c)
			if !ok {
				return 0, false
			}
			return s.d, true
		}
	case nkObj:
		x.o = func(c *nctx) (any, bool) {
			s, ok := get(c)
			if !ok {
				return nil, false
			}
			return s.o, true
		}
	case nkList:
		x.l = func(c *nctx) (nlist, bool) {
			s, ok := get(c)
			if !ok {
				return nil, false
			}
			return s.l, true
		}
	case nkRef:
		x.r = func(c *nctx) (ref.Val, bool) {
			s, ok := get(c)
			if !ok {
				return nil, false
			}
			return s.r, true
		}
	}
	return x
}

// compile compiles e; false when it is outside what this file evaluates.
func (nc *ncomp) compile(e ast.Expr) (nexpr, bool) {
	switch e.Kind() {
	case ast.LiteralKind:
		switch v := e.AsLiteral().(type) {
		case types.Bool:
			return nexpr{kind: nkBool, b: func(*nctx) (bool, bool) { return bool(v), true }}, true
		case types.String:
			return nexpr{kind: nkStr, s: func(*nctx) (string, bool) { return string(v), true }}, true
		case types.Int:
			return nexpr{kind: nkInt, i: func(*nctx) (int64, bool) { return int64(v), true }}, true
		}
		return nexpr{}, false
	case ast.IdentKind:
		return nc.ident(e)
	case ast.SelectKind:
		sel := e.AsSelect()
		if sel.IsTestOnly() {
			return nexpr{}, false
		}
		op, ok := nc.compile(sel.Operand())
		if !ok || op.kind != nkObj {
			return nexpr{}, false
		}
		return field(op, sel.FieldName())
	case ast.CallKind:
		return nc.call(e)
	case ast.ComprehensionKind:
		return nc.comprehension(e)
	case ast.ListKind:
		return nc.list(e)
	}
	return nexpr{}, false
}

// list compiles a list literal of view structs of a cached type.
func (nc *ncomp) list(e ast.Expr) (nexpr, bool) {
	l := e.AsList()
	typ := elemType(nc.a, e)
	if len(l.OptionalIndices()) != 0 || !cachedType(typ) {
		return nexpr{}, false
	}
	var els []func(*nctx) (any, bool)
	for _, el := range l.Elements() {
		x, ok := nc.compile(el)
		if !ok || x.kind != nkObj || x.typ != typ {
			return nexpr{}, false
		}
		els = append(els, x.o)
	}
	return nexpr{kind: nkList, typ: typ, l: func(c *nctx) (nlist, bool) {
		if len(els) == 0 {
			return objList(nil), true
		}
		out := make(objList, len(els))
		for i, f := range els {
			o, ok := f(c)
			if !ok {
				return nil, false
			}
			out[i] = o
		}
		return out, true
	}}, true
}

func (nc *ncomp) ident(e ast.Expr) (nexpr, bool) {
	name := e.AsIdent()
	if name == parserAccu || name == legacyAccu {
		return nexpr{}, false
	}
	for i := len(nc.scope) - 1; i >= 0; i-- {
		if b := nc.scope[i]; b.name == name {
			k := b.slot
			return slotExpr(k, b.kind, b.typ, func(c *nctx) (*nslot, bool) { return &c.slots[k], true }), true
		}
	}
	kd, typ := nc.kindOf(e)
	if kd == nkNone {
		return nexpr{}, false
	}
	k, ok := nc.outer[name]
	if !ok {
		k = nc.nslots
		nc.nslots++
		nc.outer[name] = k
	}
	return slotExpr(k, kd, typ, func(c *nctx) (*nslot, bool) {
		s := &c.slots[k]
		if !s.set {
			v, found := c.frame.ResolveName(name)
			if !found {
				return nil, false
			}
			rv, ok := v.(ref.Val)
			if !ok || !fromRef(s, rv, kd, typ) {
				return nil, false
			}
			s.set = true
		}
		return s, true
	}), true
}

// comprehension compiles a nested filter, exists, all or cel.bind.
func (nc *ncomp) comprehension(e ast.Expr) (nexpr, bool) {
	comp := e.AsComprehension()
	kind, pred, body := shape(comp)
	switch kind {
	case foldBind:
		init, ok := nc.compile(pred)
		if !ok || init.kind == nkNone {
			return nexpr{}, false
		}
		k := nc.bind(comp.AccuVar(), init.kind, init.typ)
		defer func() { nc.scope = nc.scope[:len(nc.scope)-1] }()
		b, ok := nc.compile(body)
		if !ok {
			return nexpr{}, false
		}
		return withPre(b, func(c *nctx) bool { return store(c, &c.slots[k], init) }), true
	case foldFilter, foldExists, foldAll:
	default:
		return nexpr{}, false
	}
	elem := elemType(nc.a, comp.IterRange())
	if elem == "" {
		return nexpr{}, false
	}
	rng, ok := nc.compile(comp.IterRange())
	if !ok || rng.kind != nkList {
		return nexpr{}, false
	}
	k := nc.bind(comp.IterVar(), nkObj, elem)
	defer func() { nc.scope = nc.scope[:len(nc.scope)-1] }()
	p, ok := nc.compile(pred)
	if !ok || p.kind != nkBool {
		return nexpr{}, false
	}
	if kind == foldFilter {
		return nexpr{kind: nkList, typ: elem, l: func(c *nctx) (nlist, bool) {
			l, ok := rng.l(c)
			if !ok {
				return nil, false
			}
			var idx []int
			s := &c.slots[k]
			for i := range l.n() {
				s.o = l.at(i)
				b, ok := p.b(c)
				if !ok || !c.loopCheck() {
					return nil, false
				}
				if b {
					idx = append(idx, i)
				}
			}
			if len(idx) == l.n() {
				return l, true
			}
			return l.sub(idx), true
		}}, true
	}
	want := kind == foldExists
	return nexpr{kind: nkBool, b: func(c *nctx) (bool, bool) {
		l, ok := rng.l(c)
		if !ok {
			return false, false
		}
		return c.quantify(l, &c.slots[k], p.b, want)
	}}, true
}

// quantify is exists (want true) or all (want false) of the predicate p over l,
// each element in turn in s.o.
func (c *nctx) quantify(l nlist, s *nslot, p func(*nctx) (bool, bool), want bool) (bool, bool) {
	for i := range l.n() {
		s.o = l.at(i)
		b, ok := p(c)
		if !ok {
			return false, false
		}
		if b == want {
			return want, true
		}
		if !c.loopCheck() {
			return false, false
		}
	}
	return !want, true
}

// store evaluates x into s.
func store(c *nctx, s *nslot, x nexpr) bool {
	var ok bool
	switch x.kind {
	case nkBool:
		s.b, ok = x.b(c)
	case nkStr:
		s.s, ok = x.s(c)
	case nkInt:
		s.i, ok = x.i(c)
	case nkTime:
		s.t, ok = x.t(c)
	case nkDur:
		s.d, ok = x.d(c)
	case nkObj:
		s.o, ok = x.o(c)
	case nkList:
		s.l, ok = x.l(c)
	case nkRef:
		s.r, ok = x.r(c)
	}
	return ok
}

// withPre is x run after pre, which must succeed.
func withPre(x nexpr, pre func(*nctx) bool) nexpr {
	y := nexpr{kind: x.kind, typ: x.typ}
	switch x.kind {
	case nkBool:
		y.b = after(pre, x.b)
	case nkStr:
		y.s = after(pre, x.s)
	case nkInt:
		y.i = after(pre, x.i)
	case nkTime:
		y.t = after(pre, x.t)
	case nkDur:
		y.d = after(pre, x.d)
	case nkObj:
		y.o = after(pre, x.o)
	case nkList:
		y.l = after(pre, x.l)
	case nkRef:
		y.r = after(pre, x.r)
	default:
		return nexpr{}
	}
	return y
}

// after is f run after pre, which must succeed.
func after[V any](pre func(*nctx) bool, f func(*nctx) (V, bool)) func(*nctx) (V, bool) {
	return func(c *nctx) (V, bool) {
		if !pre(c) {
			var zero V
			return zero, false
		}
		return f(c)
	}
}

// cond is c ? x : y for x and y of the same kind.
func cond(p, x, y nexpr) (nexpr, bool) {
	if x.kind != y.kind || x.typ != y.typ || x.kind == nkNone {
		return nexpr{}, false
	}
	z := nexpr{kind: x.kind, typ: x.typ}
	switch x.kind {
	case nkBool:
		z.b = choose(p.b, x.b, y.b)
	case nkStr:
		z.s = choose(p.b, x.s, y.s)
	case nkInt:
		z.i = choose(p.b, x.i, y.i)
	case nkTime:
		z.t = choose(p.b, x.t, y.t)
	case nkDur:
		z.d = choose(p.b, x.d, y.d)
	case nkObj:
		z.o = choose(p.b, x.o, y.o)
	case nkList:
		z.l = choose(p.b, x.l, y.l)
	default:
		return nexpr{}, false
	}
	return z, true
}

// choose is p ? x : y.
func choose[V any](p func(*nctx) (bool, bool), x, y func(*nctx) (V, bool)) func(*nctx) (V, bool) {
	return func(c *nctx) (V, bool) {
		v, ok := p(c)
		if !ok {
			var zero V
			return zero, false
		}
		if v {
			return x(c)
		}
		return y(c)
	}
}

func boolExpr(f func(*nctx) (bool, bool)) nexpr { return nexpr{kind: nkBool, b: f} }

func (nc *ncomp) call(e ast.Expr) (nexpr, bool) {
	call := e.AsCall()
	if call.IsMemberFunction() {
		return nexpr{}, false
	}
	fn := call.FunctionName()
	// duration("...") and timestamp("...") of a literal: cel-go's own
	// conversion, once; a literal it rejects is left to cel-go.
	if (fn == "duration" || fn == "timestamp") && len(call.Args()) == 1 && call.Args()[0].Kind() == ast.LiteralKind {
		if lit, ok := call.Args()[0].AsLiteral().(types.String); ok {
			switch v := lit.ConvertToType(map[string]ref.Type{"duration": types.DurationType, "timestamp": types.TimestampType}[fn]).(type) {
			case types.Duration:
				return nexpr{kind: nkDur, d: func(*nctx) (time.Duration, bool) { return v.Duration, true }}, true
			case types.Timestamp:
				return nexpr{kind: nkTime, t: func(*nctx) (time.Time, bool) { return v.Time, true }}, true
			}
		}
		return nexpr{}, false
	}
	var args []nexpr
	// A ternary's branches and an empty list literal are compiled below.
	if fn != operators.Conditional {
		for _, a := range call.Args() {
			if fn == operators.In && a.Kind() == ast.ListKind {
				args = append(args, nexpr{})
				continue
			}
			x, ok := nc.compile(a)
			if !ok {
				return nexpr{}, false
			}
			args = append(args, x)
		}
	}
	kinds := func(ks ...nkind) bool {
		if len(ks) != len(args) {
			return false
		}
		for i, k := range ks {
			if args[i].kind != k {
				return false
			}
		}
		return true
	}
	switch fn {
	case operators.LogicalAnd, operators.LogicalOr:
		if !kinds(nkBool, nkBool) {
			return nexpr{}, false
		}
		x, y := args[0].b, args[1].b
		short := fn == operators.LogicalOr // the value that decides
		return boolExpr(func(c *nctx) (bool, bool) {
			v, ok := x(c)
			if !ok {
				return false, false
			}
			if v == short {
				return short, true
			}
			return y(c)
		}), true
	case operators.LogicalNot:
		if !kinds(nkBool) {
			return nexpr{}, false
		}
		x := args[0].b
		return boolExpr(func(c *nctx) (bool, bool) { v, ok := x(c); return !v, ok }), true
	case operators.Conditional:
		a := call.Args()
		p, ok1 := nc.compile(a[0])
		x, ok2 := nc.compile(a[1])
		if !ok1 || !ok2 || p.kind != nkBool {
			return nexpr{}, false
		}
		var y nexpr
		if a[2].Kind() == ast.ListKind && len(a[2].AsList().Elements()) == 0 && x.kind == nkList {
			y = nexpr{kind: nkList, typ: x.typ, l: func(*nctx) (nlist, bool) { return sliceList[*Event](nil), true }}
		} else {
			var ok bool
			if y, ok = nc.compile(a[2]); !ok {
				return nexpr{}, false
			}
		}
		return cond(p, x, y)
	case operators.Equals, operators.NotEquals, operators.Less, operators.LessEquals, operators.Greater, operators.GreaterEquals:
		if len(args) != 2 || args[0].kind != args[1].kind {
			return nexpr{}, false
		}
		return compare(fn, args[0], args[1])
	case operators.Add, operators.Subtract:
		if fn == operators.Add && kinds(nkList, nkList) && args[0].typ == args[1].typ {
			x, y := args[0].l, args[1].l
			return nexpr{kind: nkList, typ: args[0].typ, l: func(c *nctx) (nlist, bool) {
				a, ok1 := x(c)
				if !ok1 {
					return nil, false
				}
				b, ok2 := y(c)
				if !ok2 {
					return nil, false
				}
				switch {
				case a.n() == 0:
					return b, true
				case b.n() == 0:
					return a, true
				}
				return catList{a, b}, true
			}}, true
		}
		return arith(fn, args)
	case operators.In:
		return nc.in(call.Args(), args)
	case operators.Index:
		kd, typ := nc.kindOf(e)
		return index(args, kd, typ)
	case "size":
		if !kinds(nkList) {
			return nexpr{}, false
		}
		l := args[0].l
		return nexpr{kind: nkInt, i: func(c *nctx) (int64, bool) {
			x, ok := l(c)
			if !ok {
				return 0, false
			}
			return int64(x.n()), true
		}}, true
	case "endedBy", "inForceAt":
		if !kinds(nkObj, nkTime) || args[0].typ != "rules.Grant" {
			return nexpr{}, false
		}
		f := endedBy
		if fn == "inForceAt" {
			f = inForceAt
		}
		g, t := args[0].o, args[1].t
		return boolExpr(func(c *nctx) (bool, bool) {
			o, ok1 := g(c)
			at, ok2 := t(c)
			x, ok3 := o.(*Grant)
			if !ok1 || !ok2 || !ok3 || x == nil {
				return false, false
			}
			return f(x, at), true
		}), true
	case "firstAfter", "firstAtOrAfter", "lastBefore":
		if !kinds(nkList, nkTime) || args[0].typ != "rules.Event" {
			return nexpr{}, false
		}
		var pick func([]*Event, time.Time) int
		switch fn {
		case "firstAfter":
			pick = func(evs []*Event, t time.Time) int { return searchTime(evs, t, true) }
		case "firstAtOrAfter":
			pick = func(evs []*Event, t time.Time) int { return searchTime(evs, t, false) }
		default:
			pick = func(evs []*Event, t time.Time) int { return searchTime(evs, t, false) - 1 }
		}
		l, t := args[0].l, args[1].t
		return nexpr{kind: nkList, typ: "rules.Event", l: func(c *nctx) (nlist, bool) {
			x, ok1 := l(c)
			at, ok2 := t(c)
			if !ok1 || !ok2 {
				return nil, false
			}
			evs, ok := x.events()
			if !ok {
				return nil, false
			}
			i := pick(evs, at)
			if i < 0 || i >= len(evs) {
				return sliceList[*Event](nil), true
			}
			return sliceList[*Event](evs[i : i+1]), true
		}}, true
	case "nextAfter":
		if !kinds(nkList, nkObj) || args[0].typ != "rules.Event" || args[1].typ != "rules.Event" {
			return nexpr{}, false
		}
		l, ev := args[0].l, args[1].o
		return nexpr{kind: nkList, typ: "rules.Event", l: func(c *nctx) (nlist, bool) {
			x, ok1 := l(c)
			o, ok2 := ev(c)
			e, ok3 := o.(*Event)
			if !ok1 || !ok2 || !ok3 || e == nil {
				return nil, false
			}
			evs, ok := x.events()
			if !ok {
				return nil, false
			}
			i, _ := slices.BinarySearchFunc(evs, e, func(x, e *Event) int {
				if chainOrder(x, e) > 0 {
					return 1
				}
				return -1
			})
			if i >= len(evs) {
				return sliceList[*Event](nil), true
			}
			return sliceList[*Event](evs[i : i+1]), true
		}}, true
	case "anyBetween":
		if !kinds(nkList, nkTime, nkTime) || args[0].typ != "rules.Event" {
			return nexpr{}, false
		}
		l, from, to := args[0].l, args[1].t, args[2].t
		return boolExpr(func(c *nctx) (bool, bool) {
			x, ok1 := l(c)
			f, ok2 := from(c)
			t, ok3 := to(c)
			if !ok1 || !ok2 || !ok3 {
				return false, false
			}
			evs, ok := x.events()
			if !ok {
				return false, false
			}
			i := searchTime(evs, f, true)
			return i < len(evs) && evs[i].Time.Before(t), true
		}), true
	case "newerFromSource":
		if !kinds(nkObj, nkTime) || args[0].typ != "rules.Event" {
			return nexpr{}, false
		}
		ev, t := args[0].o, args[1].t
		return nexpr{kind: nkList, typ: "rules.Event", l: func(c *nctx) (nlist, bool) {
			o, ok1 := ev(c)
			at, ok2 := t(c)
			e, ok3 := o.(*Event)
			if !ok1 || !ok2 || !ok3 || e == nil {
				return nil, false
			}
			rec, err := e.src.newerFromSource(e, at)
			if err != nil {
				return nil, false // cel-go reports it
			}
			if rec == nil {
				return sliceList[*Event](nil), true
			}
			return sliceList[*Event]{rec}, true
		}}, true
	}
	return nexpr{}, false
}

func compare(fn string, x, y nexpr) (nexpr, bool) {
	var cmpf func(c *nctx) (int, bool)
	switch x.kind {
	case nkStr:
		cmpf = cmpOrdered(x.s, y.s)
	case nkInt:
		cmpf = cmpOrdered(x.i, y.i)
	case nkTime:
		a, b := x.t, y.t
		cmpf = func(c *nctx) (int, bool) {
			u, ok1 := a(c)
			v, ok2 := b(c)
			if !ok1 || !ok2 {
				return 0, false
			}
			return u.Compare(v), true
		}
	case nkDur:
		cmpf = cmpOrdered(x.d, y.d)
	case nkBool:
		if fn != operators.Equals && fn != operators.NotEquals {
			return nexpr{}, false
		}
		a, b := x.b, y.b
		cmpf = func(c *nctx) (int, bool) {
			u, ok1 := a(c)
			v, ok2 := b(c)
			if !ok1 || !ok2 {
				return 0, false
			}
			if u == v {
				return 0, true
			}
			return 1, true
		}
	default:
		return nexpr{}, false
	}
	var test func(int) bool
	switch fn {
	case operators.Equals:
		test = func(r int) bool { return r == 0 }
	case operators.NotEquals:
		test = func(r int) bool { return r != 0 }
	case operators.Less:
		test = func(r int) bool { return r < 0 }
	case operators.LessEquals:
		test = func(r int) bool { return r <= 0 }
	case operators.Greater:
		test = func(r int) bool { return r > 0 }
	default:
		test = func(r int) bool { return r >= 0 }
	}
	return boolExpr(func(c *nctx) (bool, bool) {
		r, ok := cmpf(c)
		return ok && test(r), ok
	}), true
}

// cmpOrdered compares x and y, not evaluating y when x fails.
func cmpOrdered[V int64 | string | time.Duration](x, y func(*nctx) (V, bool)) func(*nctx) (int, bool) {
	return func(c *nctx) (int, bool) {
		u, ok := x(c)
		if !ok {
			return 0, false
		}
		v, ok := y(c)
		if !ok {
			return 0, false
		}
		switch {
		case u < v:
			return -1, true
		case u > v:
			return 1, true
		}
		return 0, true
	}
}

func arith(fn string, args []nexpr) (nexpr, bool) {
	if len(args) != 2 {
		return nexpr{}, false
	}
	x, y := args[0], args[1]
	switch {
	case fn == operators.Add && x.kind == nkTime && y.kind == nkDur,
		fn == operators.Subtract && x.kind == nkTime && y.kind == nkDur:
		a, b := x.t, y.d
		neg := fn == operators.Subtract
		return nexpr{kind: nkTime, t: func(c *nctx) (time.Time, bool) {
			t, ok1 := a(c)
			d, ok2 := b(c)
			if !ok1 || !ok2 || !safeTime(t) || (neg && d == minDuration) {
				return time.Time{}, false
			}
			if neg {
				d = -d
			}
			return t.Add(d), true
		}}, true
	case fn == operators.Add && x.kind == nkDur && y.kind == nkTime:
		a, b := x.d, y.t
		return nexpr{kind: nkTime, t: func(c *nctx) (time.Time, bool) {
			d, ok1 := a(c)
			t, ok2 := b(c)
			if !ok1 || !ok2 || !safeTime(t) {
				return time.Time{}, false
			}
			return t.Add(d), true
		}}, true
	case fn == operators.Subtract && x.kind == nkTime && y.kind == nkTime:
		a, b := x.t, y.t
		return nexpr{kind: nkDur, d: func(c *nctx) (time.Duration, bool) {
			t, ok1 := a(c)
			u, ok2 := b(c)
			if !ok1 || !ok2 || !safeTime(t) || !safeTime(u) {
				return 0, false
			}
			if s := t.Unix() - u.Unix(); s > safeSubSecs || s < -safeSubSecs {
				return 0, false
			}
			return t.Sub(u), true
		}}, true
	case x.kind == nkInt && y.kind == nkInt:
		a, b := x.i, y.i
		sub := fn == operators.Subtract
		return nexpr{kind: nkInt, i: func(c *nctx) (int64, bool) {
			u, ok1 := a(c)
			v, ok2 := b(c)
			if !ok1 || !ok2 {
				return 0, false
			}
			if sub {
				r := u - v
				if (v > 0 && r > u) || (v < 0 && r < u) {
					return 0, false // overflow: cel-go's error
				}
				return r, true
			}
			r := u + v
			if (v > 0 && r < u) || (v < 0 && r > u) {
				return 0, false
			}
			return r, true
		}}, true
	}
	return nexpr{}, false
}

const minDuration = time.Duration(-1 << 63)

// in compiles x in y: y a literal list of strings, a map, or a CEL list
// value (a param).
func (nc *ncomp) in(exprs []ast.Expr, args []nexpr) (nexpr, bool) {
	if len(args) != 2 || args[0].kind != nkStr {
		return nexpr{}, false
	}
	x := args[0].s
	if exprs[1].Kind() == ast.ListKind {
		l := exprs[1].AsList()
		if len(l.OptionalIndices()) != 0 {
			return nexpr{}, false
		}
		var set []string
		for _, el := range l.Elements() {
			if el.Kind() != ast.LiteralKind {
				return nexpr{}, false
			}
			s, ok := el.AsLiteral().(types.String)
			if !ok {
				return nexpr{}, false
			}
			set = append(set, string(s))
		}
		return boolExpr(func(c *nctx) (bool, bool) {
			v, ok := x(c)
			return ok && slices.Contains(set, v), ok
		}), true
	}
	if args[1].kind != nkRef {
		return nexpr{}, false
	}
	y := args[1].r
	return boolExpr(func(c *nctx) (bool, bool) {
		k, ok1 := x(c)
		m, ok2 := y(c)
		if !ok1 || !ok2 {
			return false, false
		}
		return refHas(m, k)
	}), true
}

// refHas is k in v, for a map with string keys or a list of strings.
func refHas(v ref.Val, k string) (bool, bool) {
	switch m := v.(type) {
	case *viewMap[*Event]:
		_, ok := m.m[k]
		return ok, true
	case *viewMap[[]*Event]:
		_, ok := m.m[k]
		return ok, true
	case *viewMap[*Grant]:
		_, ok := m.m[k]
		return ok, true
	case *viewMap[*Credential]:
		_, ok := m.m[k]
		return ok, true
	case traits.Mapper:
		b, ok := m.Contains(types.String(k)).(types.Bool)
		return bool(b), ok
	case traits.Lister:
		n, ok := m.Size().(types.Int)
		if !ok {
			return false, false
		}
		for i := range n {
			s, ok := m.Get(i).(types.String)
			if !ok {
				return false, false // heterogeneous: cel-go's own rules
			}
			if string(s) == k {
				return true, true
			}
		}
		return false, true
	}
	return false, false
}

// index compiles l[i] for a list of view structs and m[k] for a map with
// string keys whose values (of kind kd) are view structs or lists of them.
func index(args []nexpr, kd nkind, typ string) (nexpr, bool) {
	if len(args) != 2 {
		return nexpr{}, false
	}
	switch {
	case args[0].kind == nkList && args[1].kind == nkInt:
		l, i, typ := args[0].l, args[1].i, args[0].typ
		return nexpr{kind: nkObj, typ: typ, o: func(c *nctx) (any, bool) {
			x, ok1 := l(c)
			n, ok2 := i(c)
			if !ok1 || !ok2 || n < 0 || n >= int64(x.n()) {
				return nil, false
			}
			o := x.at(int(n))
			return o, isType(o, typ)
		}}, true
	case args[0].kind == nkRef && args[1].kind == nkStr && (kd == nkObj || kd == nkList || kd == nkRef):
		m, k := args[0].r, args[1].s
		get := func(c *nctx, s *nslot) bool {
			v, ok1 := m(c)
			key, ok2 := k(c)
			return ok1 && ok2 && refGet(v, key, kd, typ, s)
		}
		switch kd {
		case nkObj:
			return nexpr{kind: nkObj, typ: typ, o: func(c *nctx) (any, bool) {
				var s nslot
				if !get(c, &s) {
					return nil, false
				}
				return s.o, true
			}}, true
		case nkRef:
			return nexpr{kind: nkRef, r: func(c *nctx) (ref.Val, bool) {
				var s nslot
				if !get(c, &s) {
					return nil, false
				}
				return s.r, true
			}}, true
		}
		return nexpr{kind: nkList, typ: typ, l: func(c *nctx) (nlist, bool) {
			var s nslot
			if !get(c, &s) {
				return nil, false
			}
			return s.l, true
		}}, true
	}
	return nexpr{}, false
}

// refGet stores v[k] in s as kind kd; false for a missing key (cel-go's
// error) or a value not of that kind.
func refGet(v ref.Val, k string, kd nkind, typ string, s *nslot) bool {
	switch m := v.(type) {
	case *viewMap[*Event]:
		x, ok := m.m[k]
		s.o = x
		return ok && kd == nkObj && isType(s.o, typ)
	case *viewMap[*Grant]:
		x, ok := m.m[k]
		s.o = x
		return ok && kd == nkObj && isType(s.o, typ)
	case *viewMap[*Credential]:
		x, ok := m.m[k]
		s.o = x
		return ok && kd == nkObj && isType(s.o, typ)
	case *viewMap[[]*Event]:
		x, ok := m.m[k]
		s.l = sliceList[*Event](x)
		return ok && kd == nkList && typ == "rules.Event"
	case traits.Mapper:
		x, found := m.Find(types.String(k))
		return found && x != nil && fromRef(s, x, kd, typ)
	}
	return false
}

// field is op.name for the view struct type op.typ.
func field(op nexpr, name string) (nexpr, bool) {
	f, ok := nfields[op.typ][name]
	if !ok {
		return nexpr{}, false
	}
	return f(op.o), true
}

type nfield func(op func(*nctx) (any, bool)) nexpr

// readField reads get of the *T that op yields; false when op fails or
// yields anything but a non-nil *T.
func readField[T, V any](op func(*nctx) (any, bool), get func(*T) V) func(*nctx) (V, bool) {
	return func(c *nctx) (V, bool) {
		var zero V
		o, ok := op(c)
		if !ok {
			return zero, false
		}
		x, ok := o.(*T)
		if !ok || x == nil {
			return zero, false
		}
		return get(x), true
	}
}

func fBool[T any](get func(*T) bool) nfield {
	return func(op func(*nctx) (any, bool)) nexpr { return boolExpr(readField(op, get)) }
}

func fStr[T any](get func(*T) string) nfield {
	return func(op func(*nctx) (any, bool)) nexpr { return nexpr{kind: nkStr, s: readField(op, get)} }
}

func fInt[T any](get func(*T) int64) nfield {
	return func(op func(*nctx) (any, bool)) nexpr { return nexpr{kind: nkInt, i: readField(op, get)} }
}

func fTime[T any](get func(*T) time.Time) nfield {
	return func(op func(*nctx) (any, bool)) nexpr { return nexpr{kind: nkTime, t: readField(op, get)} }
}

// fObj reads a struct-valued field; get returns nil for a missing one,
// which then falls back (the getters of fields.go say what CEL sees).
func fObj[T any](typ string, get func(*T) any) nfield {
	return func(op func(*nctx) (any, bool)) nexpr {
		return nexpr{kind: nkObj, typ: typ, o: func(c *nctx) (any, bool) {
			o, ok := op(c)
			if !ok {
				return nil, false
			}
			x, ok := o.(*T)
			if !ok || x == nil {
				return nil, false
			}
			v := get(x)
			return v, v != nil
		}}
	}
}

func fList[T any](typ string, get func(*T) nlist) nfield {
	return func(op func(*nctx) (any, bool)) nexpr { return nexpr{kind: nkList, typ: typ, l: readField(op, get)} }
}

// evOrEmpty is orEmpty as an any that is never a typed nil.
func evOrEmpty(e *Event) any { return orEmpty(e) }

// evOrNil is e as an any, nil when e is nil (then the read falls back).
func evOrNil(e *Event) any {
	if e == nil {
		return nil
	}
	return e
}

// nfields are the fields read natively, per view struct: each reads what
// the getter of fields.go (or ext.NativeTypes' reflection) hands to CEL.
var nfields = map[string]map[string]nfield{
	"rules.Event": {
		"index":              fInt(func(e *Event) int64 { return e.Index }),
		"id":                 fStr(func(e *Event) string { return e.ID }),
		"type":               fStr(func(e *Event) string { return e.Type }),
		"time":               fTime(func(e *Event) time.Time { return e.Time }),
		"system":             fStr(func(e *Event) string { return e.System }),
		"subject":            fObj("rules.Identity", func(e *Event) any { return &e.Subject }),
		"actor":              fObj("rules.Identity", func(e *Event) any { return &e.Actor }),
		"entitlement":        fObj("rules.Entitlement", func(e *Event) any { return &e.Entitlement }),
		"refs":               fObj("rules.Refs", func(e *Event) any { return &e.Refs }),
		"expires_at":         fTime(func(e *Event) time.Time { return e.ExpiresAt }),
		"has_expiry":         fBool(func(e *Event) bool { return e.HasExpiry }),
		"reason":             fStr(func(e *Event) string { return e.Reason }),
		"mfa":                fBool(func(e *Event) bool { return e.MFA }),
		"mfa_recorded":       fBool(func(e *Event) bool { return e.MFARecorded }),
		"breakglass":         fBool(func(e *Event) bool { return e.Breakglass }),
		"privileged":         fBool(func(e *Event) bool { return e.Privileged }),
		"approvals":          fList("rules.Event", func(e *Event) nlist { return sliceList[*Event](e.Approvals) }),
		"breakglass_reviews": fList("rules.Event", func(e *Event) nlist { return sliceList[*Event](e.BreakglassReviews) }),
		"observed_time":      fTime(func(e *Event) time.Time { return e.ObservedTime }),
		"has_observed_time":  fBool(func(e *Event) bool { return e.HasObservedTime }),
		"opening":            fObj("rules.Event", func(e *Event) any { return evOrEmpty(e.Opening) }),
		"has_opening":        fBool(func(e *Event) bool { return e.HasOpening }),
	},
	"rules.Identity": {
		"id":       fStr(func(x *Identity) string { return x.ID }),
		"kind":     fStr(func(x *Identity) string { return x.Kind }),
		"display":  fStr(func(x *Identity) string { return x.Display }),
		"owner_id": fStr(func(x *Identity) string { return x.OwnerID }),
	},
	"rules.Entitlement": {
		"id":         fStr(func(x *Entitlement) string { return x.ID }),
		"resource":   fStr(func(x *Entitlement) string { return x.Resource }),
		"privileged": fBool(func(x *Entitlement) bool { return x.Privileged }),
	},
	"rules.Refs": {
		"request":    fStr(func(x *Refs) string { return x.Request }),
		"grant":      fStr(func(x *Refs) string { return x.Grant }),
		"session":    fStr(func(x *Refs) string { return x.Session }),
		"credential": fStr(func(x *Refs) string { return x.Credential }),
		"review":     fStr(func(x *Refs) string { return x.Review }),
		"ticket":     fStr(func(x *Refs) string { return x.Ticket }),
	},
	"rules.Subject": {
		"id":        fStr(func(x *Subject) string { return x.ID }),
		"kind":      fStr(func(x *Subject) string { return x.Kind }),
		"owner":     fStr(func(x *Subject) string { return x.Owner }),
		"has_owner": fBool(func(x *Subject) bool { return x.HasOwner }),
	},
	"rules.Owner": {
		"id":           fStr(func(x *Owner) string { return x.ID }),
		"known":        fBool(func(x *Owner) bool { return x.Known }),
		"terminations": fList("rules.Event", func(x *Owner) nlist { return sliceList[*Event](x.Terminations) }),
		"moves":        fList("rules.Event", func(x *Owner) nlist { return sliceList[*Event](x.Moves) }),
		"stated":       fObj("rules.Event", func(x *Owner) any { return evOrEmpty(x.Stated) }),
	},
	"rules.Grant": {
		"id":              fStr(func(g *Grant) string { return g.ID }),
		"type":            fStr(func(g *Grant) string { return g.Type }),
		"event":           fObj("rules.Event", func(g *Grant) any { return evOrNil(g.Event) }),
		"time":            fTime(func(g *Grant) time.Time { return g.Time }),
		"entitlement":     fStr(func(g *Grant) string { return g.Entitlement }),
		"privileged":      fBool(func(g *Grant) bool { return g.Privileged }),
		"has_expiry":      fBool(func(g *Grant) bool { return g.HasExpiry }),
		"expires_at":      fTime(func(g *Grant) time.Time { return g.ExpiresAt }),
		"has_end":         fBool(func(g *Grant) bool { return g.HasEnd }),
		"end":             fObj("rules.Event", func(g *Grant) any { return evOrEmpty(g.End) }),
		"ends":            fList("rules.Event", func(g *Grant) nlist { return sliceList[*Event](g.Ends) }),
		"request":         fStr(func(g *Grant) string { return g.Request }),
		"approvals":       fList("rules.Event", func(g *Grant) nlist { return sliceList[*Event](g.Approvals) }),
		"sessions":        fList("rules.Session", func(g *Grant) nlist { return sliceList[*Session](g.Sessions) }),
		"has_session_end": fBool(func(g *Grant) bool { return g.HasSessionEnd }),
		"session_end":     fObj("rules.Event", func(g *Grant) any { return evOrEmpty(g.SessionEnd) }),
		"certifications":  fList("rules.Event", func(g *Grant) nlist { return sliceList[*Event](g.Certifications) }),
		"revocations":     fList("rules.Event", func(g *Grant) nlist { return sliceList[*Event](g.Revocations) }),
	},
	"rules.Session": {
		"id":         fStr(func(s *Session) string { return s.ID }),
		"grant":      fStr(func(s *Session) string { return s.Grant }),
		"start":      fObj("rules.Event", func(s *Session) any { return evOrNil(s.Start) }),
		"has_end":    fBool(func(s *Session) bool { return s.HasEnd }),
		"end":        fObj("rules.Event", func(s *Session) any { return evOrEmpty(s.End) }),
		"privileged": fBool(func(s *Session) bool { return s.Privileged }),
	},
	"rules.Approval": {
		"request":  fStr(func(a *Approval) string { return a.Request }),
		"event":    fObj("rules.Event", func(a *Approval) any { return evOrNil(a.Event) }),
		"closings": fList("rules.Event", func(a *Approval) nlist { return sliceList[*Event](a.Closings) }),
		"uses":     fList("rules.Event", func(a *Approval) nlist { return sliceList[*Event](a.Uses) }),
	},
	"rules.Checkout": {
		"event":        fObj("rules.Event", func(k *Checkout) any { return evOrNil(k.Event) }),
		"has_rotation": fBool(func(k *Checkout) bool { return k.HasRotation }),
		"rotation":     fObj("rules.Event", func(k *Checkout) any { return evOrEmpty(k.Rotation) }),
	},
	"rules.Credential": {
		"id":         fStr(func(x *Credential) string { return x.ID }),
		"has_latest": fBool(func(x *Credential) bool { return x.HasLatest }),
		"latest":     fObj("rules.Event", func(x *Credential) any { return evOrEmpty(x.Latest) }),
		"revoked":    fBool(func(x *Credential) bool { return x.Revoked }),
		"issues":     fList("rules.Event", func(x *Credential) nlist { return sliceList[*Event](x.Issues) }),
		"revocation": fObj("rules.Event", func(x *Credential) any { return evOrEmpty(x.Revocation) }),
		"checkouts":  fList("rules.Checkout", func(x *Credential) nlist { return sliceList[*Checkout](x.Checkouts) }),
		"rotations":  fList("rules.Event", func(x *Credential) nlist { return sliceList[*Event](x.Rotations) }),
	},
}
