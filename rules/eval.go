package rules

import (
	"cmp"
	"container/list"
	"context"
	"errors"
	"fmt"
	"iter"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/common/types/traits"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// Entry is one ledger entry of a chain.
type Entry struct {
	Index uint64
	Event *pb.Event
	// Leaf, used when Event is nil, is the entry as the ledger stores it:
	// the protobuf encoding of grantline.v1.Entry. Handing the engine leaves
	// lets it decode straight into its own views, which is much cheaper than
	// decoding to a pb.Event first.
	Leaf []byte
	// Observed, used with Event, is the entry's observed_time (the zero
	// time when unknown); with Leaf it is read from the leaf.
	Observed time.Time
}

// ChainSource reads chains. Implementations must be safe for concurrent use.
type ChainSource interface {
	// Chain returns the entries whose subject.id is subject, in any order,
	// limited to the tree being evaluated. An unknown subject yields an empty
	// chain, not an error.
	Chain(ctx context.Context, subject string) ([]Entry, error)
}

// Defaults for Options.
const (
	DefaultCostLimit      = 200_000_000
	DefaultSubjectTimeout = 30 * time.Second
	// DefaultCostTrackedEntries is the chain length up to which rules run
	// with cel-go's runtime cost tracker (cel.CostLimit). cel-go v0.31's
	// tracker keeps a value stack that grows with every comprehension
	// iteration and is scanned on each short-circuit or ternary, which makes
	// a comprehension over n elements O(n²); longer chains run the same
	// program without the tracker, bounded by SubjectTimeout and checked for
	// interruption every 100 comprehension iterations. Shorter chains also
	// run without the tracker when cel-go's static cost estimate, given the
	// subject's size bound, proves the limit cannot be reached (see
	// costbound.go); the result is the same, only cheaper.
	DefaultCostTrackedEntries = 5000
	// uncheckedCost is the static cost estimate (cel-go cost units, about
	// one per step) up to which a rule runs with cel-go's Eval instead of
	// ContextEval: ContextEval derives a cancellable context per call and
	// registers it with the subject's, about 2 µs each, which over the
	// catalog's 38 rules was ~10% of evaluating a 100-entry chain. Such a
	// rule is not interrupted midway; the subject's deadline is checked
	// before it starts (past it, it runs with ContextEval as before). At
	// worst ~100 ns per unit, that lets a rule finish at most about a
	// second past the deadline; the estimate is an upper bound far above
	// what the catalog's rules actually cost.
	uncheckedCost = 10_000_000
)

// Options tune evaluation; zero fields take the defaults.
type Options struct {
	// CostLimit bounds the CEL cost of one rule over one subject.
	CostLimit uint64
	// SubjectTimeout bounds the evaluation of all rules over one subject.
	SubjectTimeout time.Duration
	// Workers is the number of subjects evaluated in parallel; 0 is GOMAXPROCS.
	Workers int
	// CostTrackedEntries: see DefaultCostTrackedEntries; negative tracks
	// cost for every chain and every rule, static bound or not.
	CostTrackedEntries int

	// plainCEL runs every rule with cel-go's own plan only, without the
	// native comprehensions of native.go (the tests compare both).
	plainCEL bool
}

// RuleInfo describes a loaded rule (for evidence and listings).
type RuleInfo struct {
	ID, Title, Severity string
	Controls            []string
	File                string
	Text                string            // the rule file as read
	SHA256              string            // hex sha256 of Text
	Params              map[string]string // effective values of the params the rule declares or reads
}

// Result is the outcome of one evaluation.
type Result struct {
	Findings []Finding
	Errors   []RuleError
	// Subjects and Entries count what was evaluated (owner chains excluded).
	Subjects, Entries int
	// AsOf is the as-of time (the end of the period for a period).
	AsOf time.Time
	// Period: the evaluation covers [From, AsOf] (EvaluatePeriod); From
	// is zero otherwise.
	Period bool
	From   time.Time
	// ExposureBySubject is, per subject with exposure, the length in
	// seconds of the union of its findings' exposure intervals
	// (ExposureBySubject).
	ExposureBySubject map[string]int64
}

// Finding is one (rule, subject, primary entry).
type Finding struct {
	Rule, Title, Severity string
	Controls              []string
	Subject               string
	Entries               []EntryRef // the primary entry first
	Message               string
	// ExposureSeconds is how long privilege outlived its purpose: from
	// the deadline to ClosedAt or the as-of time, clipped to the period in
	// a period evaluation.
	ExposureSeconds int64
	// OpenedAt is when the finding opened; ClosedAt when it closed, zero
	// while still open at the as-of time (docs/rules.md "Periods"). A
	// finding about an occurrence opens and closes at its time.
	OpenedAt, ClosedAt time.Time
	// SharesPrimaryWith, when set, is the rule of a more specific finding
	// about the same subject and primary entry (docs/rules.md "Findings
	// that share a primary entry"): the two describe one thing.
	SharesPrimaryWith string
}

// Open reports whether f is still open at the as-of time.
func (f Finding) Open() bool { return f.ClosedAt.IsZero() }

// ExposureInterval is the interval a finding's exposure covers: it ends at
// ClosedAt, or at asOf while open, and lasts ExposureSeconds. Everything
// that sums exposure (per subject, in totals) uses it, so that totals made
// from findings.json reconcile with the engine's.
func ExposureInterval(closedAt time.Time, exposureSeconds int64, asOf time.Time) (start, end time.Time) {
	end = asOf
	if !closedAt.IsZero() && closedAt.Before(asOf) {
		end = closedAt
	}
	return end.Add(-time.Duration(exposureSeconds) * time.Second), end
}

// UnionSeconds is the length in seconds of the union of intervals.
func UnionSeconds(ivs [][2]time.Time) int64 {
	ivs = slices.Clone(ivs)
	slices.SortFunc(ivs, func(a, b [2]time.Time) int { return a[0].Compare(b[0]) })
	var total time.Duration
	var cur [2]time.Time
	have := false
	for _, iv := range ivs {
		if !iv[1].After(iv[0]) {
			continue
		}
		if have && !iv[0].After(cur[1]) {
			if iv[1].After(cur[1]) {
				cur[1] = iv[1]
			}
			continue
		}
		if have {
			total += cur[1].Sub(cur[0])
		}
		cur, have = iv, true
	}
	if have {
		total += cur[1].Sub(cur[0])
	}
	return int64(total / time.Second)
}

// ExposureBySubject is, per subject, the union of the exposure intervals
// of its findings (ExposureInterval): one grant cited by several rules
// counts once. Subjects without exposure are absent.
func ExposureBySubject(fs []Finding, asOf time.Time) map[string]int64 {
	by := map[string][][2]time.Time{}
	for _, f := range fs {
		if f.ExposureSeconds <= 0 {
			continue
		}
		s, e := ExposureInterval(f.ClosedAt, f.ExposureSeconds, asOf)
		by[f.Subject] = append(by[f.Subject], [2]time.Time{s, e})
	}
	out := make(map[string]int64, len(by))
	for sub, ivs := range by {
		if n := UnionSeconds(ivs); n > 0 {
			out[sub] = n
		}
	}
	return out
}

// severityRank orders severities, most severe first.
var severityRank = map[string]int{"critical": 0, "high": 1, "medium": 2, "low": 3}

// groupShared marks, among findings of one subject that share their primary
// entry, every one but the most specific with SharesPrimaryWith: the most
// specific is the most severe, then the one with exposure (it says how
// long), then the longest open, then the lowest rule id. fs is sorted by
// (rule, subject, primary).
func groupShared(fs []Finding) {
	type key struct {
		subject string
		index   uint64
	}
	lead := map[key]int{}
	better := func(a, b Finding) bool {
		if ra, rb := severityRank[a.Severity], severityRank[b.Severity]; ra != rb {
			return ra < rb
		}
		if (a.ExposureSeconds > 0) != (b.ExposureSeconds > 0) {
			return a.ExposureSeconds > 0
		}
		if !a.OpenedAt.Equal(b.OpenedAt) {
			return a.OpenedAt.Before(b.OpenedAt)
		}
		return a.Rule < b.Rule
	}
	for i, f := range fs {
		k := key{f.Subject, f.Entries[0].Index}
		if j, ok := lead[k]; !ok || better(f, fs[j]) {
			lead[k] = i
		}
	}
	for i := range fs {
		f := &fs[i]
		if j := lead[key{f.Subject, f.Entries[0].Index}]; j != i {
			f.SharesPrimaryWith = fs[j].Rule
		}
	}
}

// EntryRef cites a ledger entry.
type EntryRef struct {
	Index   uint64
	EventID string
}

// RuleError is a rule that could not be evaluated for a subject: cost limit,
// deadline or a runtime error. It is never silently dropped.
type RuleError struct {
	Rule, Subject, Message string
}

func (e RuleError) Error() string {
	return fmt.Sprintf("rule %s, subject %s: %s", e.Rule, e.Subject, e.Message)
}

type compiled struct {
	rule   *Rule
	prg    cel.Program // with the cost limit
	long   cel.Program // for chains longer than Options.CostTrackedEntries
	params map[string]ref.Val
	info   RuleInfo
	// freeUpTo: for a subject whose chainSizeBound (and the size of
	// every param value) is at most freeUpTo, the static cost estimate
	// is within the cost limit and long runs instead of prg; -1: never.
	freeUpTo   int64
	paramBound uint64
	// uncheckedUpTo: likewise, the bound up to which the static cost
	// estimate is within uncheckedCost, so that the rule runs without
	// per-call interruption (see uncheckedCost); -1: never.
	uncheckedUpTo int64
	// emptyWhen: a subject with every variable of one of these sets empty
	// gets [] from the rule, with no error (skip.go), so it is not run.
	emptyWhen alts
	// pop and popLong run the rule's population expression (nil without
	// one), with and without the cost tracker like prg and long.
	pop, popLong cel.Program
	popFreeUpTo  int64 // freeUpTo of the population expression
	// natives is how many of the rule's comprehensions long runs
	// natively (native.go).
	natives int
}

// Set is a compiled rule set. It is immutable and safe for concurrent use.
type Set struct {
	rules     []*compiled
	opts      Options
	needOwner bool
	// needHolders: some rule reads holder_leavings, so the chains of the
	// people who checked out the subject's credentials are read too.
	needHolders bool
	// needSource: some rule calls newerFromSource, so Evaluate indexes the
	// entries of each source system first (source.go).
	needSource bool
}

// NewSet compiles rs with params overrides and the default Options. A later
// rule with the same id as an earlier one replaces it.
func NewSet(rs []*Rule, overrides Params) (*Set, error) {
	return NewSetWithOptions(rs, overrides, Options{})
}

// NewSetWithOptions is NewSet with explicit limits.
func NewSetWithOptions(rs []*Rule, overrides Params, o Options) (*Set, error) {
	if o.CostLimit == 0 {
		o.CostLimit = DefaultCostLimit
	}
	if o.SubjectTimeout == 0 {
		o.SubjectTimeout = DefaultSubjectTimeout
	}
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	if o.CostTrackedEntries == 0 {
		o.CostTrackedEntries = DefaultCostTrackedEntries
	}
	byID := map[string]int{}
	var keep []*Rule
	for _, r := range rs {
		if i, ok := byID[r.ID]; ok {
			keep[i] = r
			continue
		}
		byID[r.ID] = len(keep)
		keep = append(keep, r)
	}
	// Every override must name a param some rule declares or a global one.
	for _, name := range overrides.Names() {
		ov := overrides.vals[name]
		known := false
		if g, ok := globalParams[name]; ok {
			known = true
			if !ov.typ.IsExactType(g.typ) {
				return nil, fmt.Errorf("%s: param %s: want %s, got %s", ov.pos, name, g.typ, ov.typ)
			}
		}
		for _, r := range keep {
			if p, ok := r.params[name]; ok {
				known = true
				if !ov.typ.IsExactType(p.typ) {
					return nil, fmt.Errorf("%s: param %s: rule %s (%s) declares it as %s, got %s", ov.pos, name, r.ID, p.pos, p.typ, ov.typ)
				}
			}
		}
		if !known {
			return nil, fmt.Errorf("%s: unknown param %q: no loaded rule declares it and it is not one of %s",
				ov.pos, name, strings.Join(globalParamNames, ", "))
		}
	}
	s := &Set{opts: o}
	for _, r := range keep {
		if r.ast == nil {
			return nil, fmt.Errorf("rule %s (%s) was not parsed with ParseRule", r.ID, r.File)
		}
		prg, err := r.env.Program(r.ast,
			cel.CostLimit(o.CostLimit),
			cel.InterruptCheckFrequency(100),
			cel.EvalOptions(cel.OptOptimize))
		if err != nil {
			return nil, fmt.Errorf("%s: building program: %w", r.File, err)
		}
		// The program without the cost tracker runs the comprehensions it
		// can natively (native.go); the tracked one stays cel-go's own, so
		// that its cost-limit errors are exactly cel-go's.
		longOpts := []cel.ProgramOption{cel.InterruptCheckFrequency(100), cel.EvalOptions(cel.OptOptimize)}
		var natives *int
		if !o.plainCEL {
			var dec cel.ProgramOption
			dec, natives = nativeDecorator(r.ast, r.env.CELTypeAdapter())
			longOpts = append(longOpts, dec)
		}
		long, err := r.env.Program(r.ast, longOpts...)
		if err != nil {
			return nil, fmt.Errorf("%s: building program: %w", r.File, err)
		}
		c := &compiled{rule: r, prg: prg, long: long, params: map[string]ref.Val{}}
		if natives != nil {
			c.natives = *natives
		}
		if r.popAst != nil {
			if c.pop, c.popLong, c.popFreeUpTo, err = populationPrograms(r, o); err != nil {
				return nil, err
			}
		}
		adapter := r.env.CELTypeAdapter()
		info := RuleInfo{ID: r.ID, Title: r.Title, Severity: r.Severity, Controls: r.Controls,
			File: r.File, Text: string(r.Text), SHA256: r.sha256(), Params: map[string]string{}}
		set := func(name string, v any, record bool) {
			c.params["params."+name] = adapter.NativeToValue(v)
			if record {
				info.Params[name] = formatParam(v)
			}
		}
		reads := func(name string) bool {
			return strings.Contains(r.Expression, "params."+name) || strings.Contains(r.Population, "params."+name)
		}
		for name, g := range globalParams {
			set(name, g.value, reads(name))
		}
		for name, p := range r.params {
			set(name, p.value, true)
		}
		for name, ov := range overrides.vals {
			_, declared := r.params[name]
			_, global := globalParams[name]
			if declared || global {
				set(name, ov.value, declared || reads(name))
			}
		}
		c.info = info
		c.freeUpTo = costFreeUpTo(r.env, r.ast, o.CostLimit)
		c.uncheckedUpTo = costFreeUpTo(r.env, r.ast, min(o.CostLimit, uncheckedCost))
		c.paramBound = paramsSize(c.params)
		c.emptyWhen = emptyWhenOf(r.ast.NativeRep())
		s.rules = append(s.rules, c)
		s.needOwner = s.needOwner || r.usesOwner
		s.needHolders = s.needHolders || r.usesHolders
		s.needSource = s.needSource || r.usesSource
	}
	sort.Slice(s.rules, func(i, j int) bool { return s.rules[i].rule.ID < s.rules[j].rule.ID })
	return s, nil
}

// Rules describes the loaded rules, in id order.
func (s *Set) Rules() []RuleInfo {
	out := make([]RuleInfo, len(s.rules))
	for i, c := range s.rules {
		out[i] = c.info
	}
	return out
}

// subjectResult is what one subject contributes.
type subjectResult struct {
	findings []Finding
	errors   []RuleError
	entries  int
}

// Evaluate runs every rule over every subject's chain at now (the
// one-instant view): only entries dated at or before now count. Subjects
// are evaluated in parallel; the result is deterministic: findings sorted
// by (rule, subject, primary index), one per (rule, subject, primary
// entry), errors by (rule, subject). A ChainSource error or ctx
// cancellation aborts the evaluation.
func (s *Set) Evaluate(ctx context.Context, subjects []string, src ChainSource, now time.Time) (*Result, error) {
	return s.evaluate(ctx, subjects, src, now, now, false)
}

// ErrPeriod is returned for a period that does not end after it starts:
// one ending before its start, or an empty one (a single instant is
// evaluated with Evaluate, the as-of view, not as a period).
var ErrPeriod = errors.New("the period must end after it starts (for one instant, evaluate as of that time instead)")

// EvaluatePeriod runs every rule over [from, to] (docs/rules.md
// "Periods"): the as-of time is to; every finding open at some instant of
// the period is kept, with when it opened and closed, and its exposure
// clipped to the period; findings closed before from are left out.
func (s *Set) EvaluatePeriod(ctx context.Context, subjects []string, src ChainSource, from, to time.Time) (*Result, error) {
	if !to.After(from) {
		return nil, fmt.Errorf("evaluating %s to %s: %w", from.Format(time.RFC3339), to.Format(time.RFC3339), ErrPeriod)
	}
	return s.evaluate(ctx, subjects, src, from, to, true)
}

// evaluate runs the rules over [from, now]. Entries dated after now are in
// no chain. When a rule compares entries with those of other subjects
// (newerFromSource), the entries of each source system are indexed first:
// from one read of the log when src is a LogScanner, else from every chain
// (see SubjectLister), which is then read twice.
func (s *Set) evaluate(ctx context.Context, subjects []string, src ChainSource, from, now time.Time, period bool) (*Result, error) {
	return s.Collect(ctx, Subjects(subjects), src, from, now, period)
}

// Collect runs Stream and gathers what it emits into one Result, in
// Evaluate's order. Memory grows with the findings, not with the chains.
func (s *Set) Collect(ctx context.Context, subjects iter.Seq2[string, error], src ChainSource, from, now time.Time, period bool) (*Result, error) {
	res := &Result{Findings: []Finding{}, Errors: []RuleError{}, AsOf: now, Period: period, ExposureBySubject: map[string]int64{}}
	sum, err := s.Stream(ctx, subjects, src, from, now, period, func(r *SubjectResult) error {
		res.Findings = append(res.Findings, r.Findings...)
		res.Errors = append(res.Errors, r.Errors...)
		if r.Exposure > 0 {
			res.ExposureBySubject[r.Subject] = r.Exposure
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	res.Subjects, res.Entries, res.From = sum.Subjects, sum.Entries, sum.From
	// Stream's order is subject by subject; a Result's is rule by rule.
	slices.SortStableFunc(res.Findings, func(a, b Finding) int {
		return cmp.Or(strings.Compare(a.Rule, b.Rule), strings.Compare(a.Subject, b.Subject),
			cmp.Compare(a.Entries[0].Index, b.Entries[0].Index))
	})
	slices.SortStableFunc(res.Errors, func(a, b RuleError) int {
		return cmp.Or(strings.Compare(a.Rule, b.Rule), strings.Compare(a.Subject, b.Subject))
	})
	return res, nil
}

// loadViews reads subject's chain into its views, with the other chains
// the set's rules read beside it: the holders' of its credentials when a
// rule uses holder_leavings, its owner's (a non-human subject with an owner
// other than itself) when a rule uses owner. Evaluation and populations
// read the same chains through it. It also returns the length of the
// subject's chain as read (before the views leave anything out). The
// caller releases the views.
func (s *Set) loadViews(ctx context.Context, subject string, src ChainSource, now time.Time, srcIdx *sourceIndex) (*views, int, error) {
	chain, err := src.Chain(ctx, subject)
	if err != nil {
		return nil, 0, fmt.Errorf("reading the chain of subject %q: %w", subject, err)
	}
	v, err := buildViews(subject, chain, now, srcIdx)
	if err != nil {
		return nil, 0, fmt.Errorf("reading the chain of subject %q: %w", subject, err)
	}
	if err := s.loadRelated(ctx, v, subject, src, now); err != nil {
		v.release()
		return nil, 0, err
	}
	return v, len(chain), nil
}

// loadRelated reads the holders' and owner's chains into v (see loadViews),
// through src's cache when src is a *relatedCache.
func (s *Set) loadRelated(ctx context.Context, v *views, subject string, src ChainSource, now time.Time) error {
	read := src.Chain
	if rc, ok := src.(*relatedCache); ok {
		read = rc.related
	}
	if s.needHolders {
		for _, h := range v.holders() {
			hc, err := read(ctx, h)
			if err == nil {
				err = v.setHolder(h, hc, now)
			}
			if err != nil {
				return fmt.Errorf("reading the chain of holder %q of a credential of subject %q: %w", h, subject, err)
			}
		}
	}
	if s.needOwner && v.subject.HasOwner && v.subject.Kind != "human" && v.subject.Owner != subject {
		oc, err := read(ctx, v.subject.Owner)
		if err == nil {
			err = v.setOwner(oc, now)
		}
		if err != nil {
			return fmt.Errorf("reading the chain of owner %q of subject %q: %w", v.subject.Owner, subject, err)
		}
	}
	return nil
}

func (s *Set) evaluateSubject(ctx context.Context, subject string, src ChainSource, from, now time.Time, period bool, srcIdx *sourceIndex) (subjectResult, error) {
	var res subjectResult
	v, chainLen, err := s.loadViews(ctx, subject, src, now, srcIdx)
	if err != nil {
		return res, err
	}
	defer v.release()
	res.entries = len(v.events)
	if len(s.rules) == 0 {
		return res, nil
	}
	sctx, cancel := context.WithTimeout(ctx, s.opts.SubjectTimeout)
	defer cancel()
	act := &activation{vals: subjectVals(s.rules[0].rule.env.CELTypeAdapter(), v, from, now)}
	tracked := s.opts.CostTrackedEntries < 0 || chainLen <= s.opts.CostTrackedEntries
	bound := max(chainSizeBound(subject, v.events), v.ownerBound)
	if srcIdx != nil {
		bound = max(bound, srcIdx.bound)
	}
	nonEmpty := v.nonEmpty()
	for _, c := range s.rules {
		act.params = c.params
		size := max(bound, c.paramBound)
		untracked := !tracked || (s.opts.CostTrackedEntries >= 0 && c.freeUpTo >= 0 && size <= uint64(c.freeUpTo))
		if untracked && c.emptyWhen.skips(nonEmpty) && sctx.Err() == nil {
			// Provably [] (skip.go): what running it would give, since
			// untracked it cannot exceed the cost limit either.
			continue
		}
		var (
			out ref.Val
			err error
		)
		switch {
		case untracked && c.uncheckedUpTo >= 0 && size <= uint64(c.uncheckedUpTo) && sctx.Err() == nil:
			out, _, err = c.long.Eval(act) // see uncheckedCost
		case untracked:
			out, _, err = c.long.ContextEval(sctx, act)
		default:
			out, _, err = c.prg.ContextEval(sctx, act)
		}
		if err != nil {
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			res.errors = append(res.errors, RuleError{Rule: c.rule.ID, Subject: subject, Message: err.Error()})
			continue
		}
		fs, err := toFindings(c, subject, out, from, now, period)
		if err != nil {
			res.errors = append(res.errors, RuleError{Rule: c.rule.ID, Subject: subject, Message: err.Error()})
			continue
		}
		res.findings = append(res.findings, fs...)
	}
	return res, nil
}

// toFindings converts a rule's output, keeping the first finding for each
// primary entry; for a period, it leaves out findings not open at any
// instant of [from, now] and clips exposure to it.
func toFindings(c *compiled, subject string, out ref.Val, from, now time.Time, period bool) ([]Finding, error) {
	l, ok := out.(traits.Lister)
	if !ok {
		if types.IsError(out) {
			return nil, out.(*types.Err)
		}
		return nil, errors.New("the expression did not yield a list")
	}
	n := int(l.Size().(types.Int))
	if n == 0 {
		return nil, nil
	}
	seen := map[int64]bool{}
	var fs []Finding
	for i := range n {
		f, ok := l.Get(types.Int(i)).(*findingVal)
		if !ok {
			return nil, fmt.Errorf("element %d of the result is not a finding", i)
		}
		if seen[f.primary.Index] {
			continue
		}
		opened, closed, exposure, ok := f.interval(from, now, period)
		if !ok {
			continue
		}
		seen[f.primary.Index] = true
		refs := make([]EntryRef, 0, 2+len(f.others))
		refs = append(refs, EntryRef{Index: uint64(f.primary.Index), EventID: f.primary.ID})
		for _, o := range f.others {
			refs = append(refs, EntryRef{Index: uint64(o.Index), EventID: o.ID})
		}
		if w := f.window; w != nil && w.closing != nil && !slices.ContainsFunc(refs, func(r EntryRef) bool { return r.Index == uint64(w.closing.Index) }) {
			refs = append(refs, EntryRef{Index: uint64(w.closing.Index), EventID: w.closing.ID})
		}
		fs = append(fs, Finding{
			Rule: c.rule.ID, Title: c.rule.Title, Severity: c.rule.Severity, Controls: c.rule.Controls,
			Subject: subject, Entries: refs, Message: f.message,
			ExposureSeconds: int64(exposure / time.Second), OpenedAt: opened, ClosedAt: closed,
		})
	}
	return fs, nil
}

// interval resolves when f was open (zero closed: open at now) and its
// exposure, and whether it belongs to the evaluation: in a period, a
// finding must be open at some instant of [from, now] (docs/rules.md
// "Periods").
func (f *findingVal) interval(from, now time.Time, period bool) (opened, closed time.Time, exposure time.Duration, ok bool) {
	w := f.window
	if w == nil {
		// A rule that gives no window: open since its primary entry, never
		// closed; a legacy exposure duration ends at now.
		opened = f.primary.Time
		exposure = f.exposure
		if period {
			exposure = min(exposure, now.Sub(from))
		}
		return opened, time.Time{}, exposure, true
	}
	opened = w.opened
	switch {
	case w.point:
		closed = opened
	case w.closing != nil:
		closed = w.closing.Time
		if !closed.After(opened) {
			return opened, closed, 0, false // never open
		}
	}
	if period {
		switch {
		case opened.After(now):
			return opened, closed, 0, false
		case w.point && opened.Before(from):
			return opened, closed, 0, false
		case !w.point && !closed.IsZero() && !closed.After(from):
			return opened, closed, 0, false
		}
	}
	if w.exposure {
		start, end := opened, now
		if !closed.IsZero() {
			end = closed
		}
		if period && start.Before(from) {
			start = from
		}
		exposure = max(end.Sub(start), 0)
	}
	return opened, closed, exposure, true
}

// perSubject calls fn for every subject on up to workers goroutines and
// returns the results in the order of subjects. Workers take the next
// subject from a shared counter: no feeder goroutine and no channel hand-off
// per subject. The first error cancels the rest and is returned.
func perSubject[T any](ctx context.Context, workers int, subjects []string, fn func(ctx context.Context, subject string) (T, error)) ([]T, error) {
	results := make([]T, len(subjects))
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(workers, max(len(subjects), 1)) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= len(subjects) {
					return
				}
				r, err := fn(ctx, subjects[i])
				if err != nil {
					cancel(err)
					return
				}
				results[i] = r
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	return results, nil
}

// relatedCache is a ChainSource for one evaluation that keeps the chains
// read as related chains (holders' and owners', loadRelated): one person
// who checks out the credentials of many service accounts, or owns many,
// has their chain read for each, which on a ledger-backed source is a
// store read per entry every time. It keeps the most recently used chains
// up to maxEntries entries in all (longer chains are never kept), so its
// memory is bounded whatever the log's size. Chain passes through
// uncached. Safe for concurrent use; the chains it hands out are shared
// and read-only (the engine never modifies a chain).
type relatedCache struct {
	ChainSource
	maxEntries int

	mu      sync.Mutex
	entries int
	lru     list.List // of *cachedChain, most recent first
	byID    map[string]*list.Element
}

type cachedChain struct {
	subject string
	chain   []Entry
}

// defaultRelatedEntries bounds a relatedCache: about 32 MiB of 500-byte
// leaves.
const defaultRelatedEntries = 1 << 16

func newRelatedCache(src ChainSource, maxEntries int) *relatedCache {
	return &relatedCache{ChainSource: src, maxEntries: maxEntries, byID: map[string]*list.Element{}}
}

// related returns subject's chain, from the cache or read and kept.
func (c *relatedCache) related(ctx context.Context, subject string) ([]Entry, error) {
	c.mu.Lock()
	if el, ok := c.byID[subject]; ok {
		c.lru.MoveToFront(el)
		ch := el.Value.(*cachedChain).chain
		c.mu.Unlock()
		return ch, nil
	}
	c.mu.Unlock()
	chain, err := c.ChainSource.Chain(ctx, subject)
	if err != nil || len(chain) > c.maxEntries/4 {
		return chain, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.byID[subject]; ok {
		return chain, nil // read meanwhile by another worker
	}
	c.byID[subject] = c.lru.PushFront(&cachedChain{subject, chain})
	c.entries += len(chain)
	for c.entries > c.maxEntries {
		old := c.lru.Back()
		cc := old.Value.(*cachedChain)
		c.lru.Remove(old)
		delete(c.byID, cc.subject)
		c.entries -= len(cc.chain)
	}
	return chain, nil
}
