package rules

import (
	"cmp"
	"context"
	"errors"
	"fmt"
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
}

// Finding is one (rule, subject, primary entry).
type Finding struct {
	Rule, Title, Severity string
	Controls              []string
	Subject               string
	Entries               []EntryRef // the primary entry first
	Message               string
	ExposureSeconds       int64
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
}

// Set is a compiled rule set. It is immutable and safe for concurrent use.
type Set struct {
	rules      []*compiled
	opts       Options
	needOwner  bool
	needSource bool // some rule calls newerFromSource
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
		long, err := r.env.Program(r.ast, cel.InterruptCheckFrequency(100), cel.EvalOptions(cel.OptOptimize))
		if err != nil {
			return nil, fmt.Errorf("%s: building program: %w", r.File, err)
		}
		c := &compiled{rule: r, prg: prg, long: long, params: map[string]ref.Val{}}
		adapter := r.env.CELTypeAdapter()
		info := RuleInfo{ID: r.ID, Title: r.Title, Severity: r.Severity, Controls: r.Controls,
			File: r.File, Text: string(r.Text), SHA256: r.sha256(), Params: map[string]string{}}
		set := func(name string, v any, record bool) {
			c.params["params."+name] = adapter.NativeToValue(v)
			if record {
				info.Params[name] = formatParam(v)
			}
		}
		reads := func(name string) bool { return strings.Contains(r.Expression, "params."+name) }
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
		c.paramBound = paramsSize(c.params)
		s.rules = append(s.rules, c)
		s.needOwner = s.needOwner || r.usesOwner
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

// Evaluate runs every rule over every subject's chain at now. Subjects are
// evaluated in parallel; the result is deterministic: findings sorted by
// (rule, subject, primary index), one per (rule, subject, primary entry),
// errors by (rule, subject). A ChainSource error or ctx cancellation aborts
// the evaluation.
//
// Entries dated after now are in no chain. When a rule compares entries
// with those of other subjects (newerFromSource), every chain is read
// twice: once to index the entries of each source system (see
// SubjectLister), once to evaluate.
func (s *Set) Evaluate(ctx context.Context, subjects []string, src ChainSource, now time.Time) (*Result, error) {
	var srcIdx *sourceIndex
	if s.needSource {
		var err error
		if srcIdx, err = buildSourceIndex(ctx, subjects, src, now, s.opts.Workers); err != nil {
			return nil, err
		}
	}
	results := make([]subjectResult, len(subjects))
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// Workers take the next subject from a shared counter: no feeder
	// goroutine and no channel hand-off per subject.
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(s.opts.Workers, max(len(subjects), 1)) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= len(subjects) {
					return
				}
				r, err := s.evaluateSubject(ctx, subjects[i], src, now, srcIdx)
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
	res := &Result{Subjects: len(subjects), Findings: []Finding{}, Errors: []RuleError{}}
	for _, r := range results {
		res.Findings = append(res.Findings, r.findings...)
		res.Errors = append(res.Errors, r.errors...)
		res.Entries += r.entries
	}
	slices.SortStableFunc(res.Findings, func(a, b Finding) int {
		return cmp.Or(strings.Compare(a.Rule, b.Rule), strings.Compare(a.Subject, b.Subject),
			cmp.Compare(a.Entries[0].Index, b.Entries[0].Index))
	})
	slices.SortStableFunc(res.Errors, func(a, b RuleError) int {
		return cmp.Or(strings.Compare(a.Rule, b.Rule), strings.Compare(a.Subject, b.Subject))
	})
	return res, nil
}

func (s *Set) evaluateSubject(ctx context.Context, subject string, src ChainSource, now time.Time, srcIdx *sourceIndex) (subjectResult, error) {
	var res subjectResult
	chain, err := src.Chain(ctx, subject)
	if err != nil {
		return res, fmt.Errorf("reading the chain of subject %q: %w", subject, err)
	}
	v, err := buildViews(subject, chain, now, srcIdx)
	if err != nil {
		return res, fmt.Errorf("reading the chain of subject %q: %w", subject, err)
	}
	defer v.release()
	res.entries = len(v.events)
	if s.needOwner && v.subject.HasOwner && v.subject.Kind != "human" && v.subject.Owner != subject {
		oc, err := src.Chain(ctx, v.subject.Owner)
		if err != nil {
			return res, fmt.Errorf("reading the chain of owner %q of subject %q: %w", v.subject.Owner, subject, err)
		}
		if err := v.setOwner(oc, now); err != nil {
			return res, fmt.Errorf("reading the chain of owner %q of subject %q: %w", v.subject.Owner, subject, err)
		}
	}
	if len(s.rules) == 0 {
		return res, nil
	}
	sctx, cancel := context.WithTimeout(ctx, s.opts.SubjectTimeout)
	defer cancel()
	act := &activation{vals: subjectVals(s.rules[0].rule.env.CELTypeAdapter(), v, now)}
	tracked := s.opts.CostTrackedEntries < 0 || len(chain) <= s.opts.CostTrackedEntries
	bound := max(chainSizeBound(subject, v.events), v.ownerBound)
	if srcIdx != nil {
		bound = max(bound, srcIdx.bound)
	}
	for _, c := range s.rules {
		act.params = c.params
		prg := c.prg
		if !tracked || (s.opts.CostTrackedEntries >= 0 && c.freeUpTo >= 0 && max(bound, c.paramBound) <= uint64(c.freeUpTo)) {
			prg = c.long
		}
		out, _, err := prg.ContextEval(sctx, act)
		if err != nil {
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			res.errors = append(res.errors, RuleError{Rule: c.rule.ID, Subject: subject, Message: err.Error()})
			continue
		}
		fs, err := toFindings(c, subject, out)
		if err != nil {
			res.errors = append(res.errors, RuleError{Rule: c.rule.ID, Subject: subject, Message: err.Error()})
			continue
		}
		res.findings = append(res.findings, fs...)
	}
	return res, nil
}

// toFindings converts a rule's output, keeping the first finding for each
// primary entry.
func toFindings(c *compiled, subject string, out ref.Val) ([]Finding, error) {
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
		seen[f.primary.Index] = true
		refs := make([]EntryRef, 0, 1+len(f.others))
		refs = append(refs, EntryRef{Index: uint64(f.primary.Index), EventID: f.primary.ID})
		for _, o := range f.others {
			refs = append(refs, EntryRef{Index: uint64(o.Index), EventID: o.ID})
		}
		fs = append(fs, Finding{
			Rule: c.rule.ID, Title: c.rule.Title, Severity: c.rule.Severity, Controls: c.rule.Controls,
			Subject: subject, Entries: refs, Message: f.message,
			ExposureSeconds: int64(f.exposure / time.Second),
		})
	}
	return fs, nil
}
