package rules

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/cel-go/cel"
	celast "github.com/google/cel-go/common/ast"
	"github.com/google/cel-go/common/types"
	"gopkg.in/yaml.v3"
)

// Item is one member of a rule's population (docs/rules.md "Populations"):
// a chain entry the rule tests, such as one privileged grant event.
type Item struct {
	Rule, Subject string
	Index         uint64
	EventID       string
	Time          time.Time
}

// compilePopulation type-checks the population expression in the rule's
// environment: it must yield a list(rules.Event).
func (r *Rule) compilePopulation(n *yaml.Node) error {
	where := fmt.Sprintf("%s:%d:%d", r.File, n.Line, n.Column)
	ast, iss := r.env.Compile(r.Population)
	if iss.Err() != nil {
		var b strings.Builder
		for i, e := range iss.Errors() {
			if i > 0 {
				b.WriteString("\n")
			}
			fmt.Fprintf(&b, "%s: population: line %d, column %d of the expression: %s", where, e.Location.Line(), e.Location.Column()+1, e.Message)
		}
		return fmt.Errorf("%s", b.String())
	}
	if !ast.OutputType().IsExactType(cel.ListType(eventType)) {
		return fmt.Errorf("%s: population: the expression yields %s; a population must yield the entries the rule tests, a list(rules.Event), e.g. grants.filter(g, g.privileged).map(g, g.event)",
			where, ast.OutputType())
	}
	// A population may read the owner's or the holders' chains, or the
	// source index, like a rule: the set then reads them for it too.
	celast.PostOrderVisit(ast.NativeRep().Expr(), celast.NewExprVisitor(func(e celast.Expr) {
		switch {
		case e.Kind() == celast.IdentKind && e.AsIdent() == "owner":
			r.usesOwner = true
		case e.Kind() == celast.IdentKind && e.AsIdent() == "holder_leavings":
			r.usesHolders = true
		case e.Kind() == celast.CallKind && e.AsCall().FunctionName() == "newerFromSource":
			r.usesSource = true
		}
	}))
	r.popAst = ast
	return nil
}

// populationPrograms builds the population programs of r under o's cost
// limit, like the rule's own (NewSetWithOptions), and the largest input
// size for which the static cost estimate stays under the limit
// (costFreeUpTo: within it, the untracked program gives the same result).
func populationPrograms(r *Rule, o Options) (tracked, long cel.Program, freeUpTo int64, err error) {
	if tracked, err = r.env.Program(r.popAst, cel.CostLimit(o.CostLimit), cel.InterruptCheckFrequency(100),
		cel.EvalOptions(cel.OptOptimize)); err != nil {
		return nil, nil, 0, fmt.Errorf("%s: building the population program: %w", r.File, err)
	}
	if long, err = r.env.Program(r.popAst, cel.InterruptCheckFrequency(100), cel.EvalOptions(cel.OptOptimize)); err != nil {
		return nil, nil, 0, fmt.Errorf("%s: building the population program: %w", r.File, err)
	}
	return tracked, long, costFreeUpTo(r.env, r.popAst, o.CostLimit), nil
}

// HasPopulation reports whether some rule of the set declares a population.
func (s *Set) HasPopulation() bool {
	return slices.ContainsFunc(s.rules, func(c *compiled) bool { return c.pop != nil })
}

// Primary names the primary entry of a finding (Finding.Entries[0]).
type Primary struct {
	Rule, Subject string
	Index         uint64
}

// PopulationRules are the ids of the set's rules that declare a
// population, in id order.
func (s *Set) PopulationRules() []string {
	var out []string
	for _, c := range s.rules {
		if c.pop != nil {
			out = append(out, c.rule.ID)
		}
	}
	return out
}

// Population evaluates the population expression of every rule that has
// one over each subject's chain, with from and now bound as in
// EvaluatePeriod (pass from == now for one instant). The primary entry of
// each finding in primaries whose rule has a population is an item too,
// whether the expression names it or not (a finding is always a failed
// item of its population). Items are sorted by
// (rule, subject, index), one per (rule, subject, entry). A population
// that cannot be evaluated (cost limit, deadline, runtime error) is an
// error naming the rule and subject: a population is complete or absent.
func (s *Set) Population(ctx context.Context, subjects []string, src ChainSource, from, now time.Time, primaries []Primary) ([]Item, error) {
	if !s.HasPopulation() {
		return []Item{}, nil
	}
	var srcIdx *sourceIndex
	if s.needSource {
		var err error
		if srcIdx, err = buildSourceIndex(ctx, subjects, src, now, s.opts.Workers); err != nil {
			return nil, err
		}
	}
	bySubject := map[string][]Primary{}
	for _, p := range primaries {
		bySubject[p.Subject] = append(bySubject[p.Subject], p)
	}
	results, err := perSubject(ctx, s.opts.Workers, subjects, func(ctx context.Context, subject string) ([]Item, error) {
		return s.subjectPopulation(ctx, subject, src, from, now, bySubject[subject], srcIdx)
	})
	if err != nil {
		return nil, err
	}
	out := []Item{}
	for _, r := range results {
		out = append(out, r...)
	}
	slices.SortFunc(out, func(a, b Item) int {
		return cmp.Or(strings.Compare(a.Rule, b.Rule), strings.Compare(a.Subject, b.Subject), cmp.Compare(a.Index, b.Index))
	})
	return slices.CompactFunc(out, func(a, b Item) bool {
		return a.Rule == b.Rule && a.Subject == b.Subject && a.Index == b.Index
	}), nil
}

func (s *Set) subjectPopulation(ctx context.Context, subject string, src ChainSource, from, now time.Time, primaries []Primary, srcIdx *sourceIndex) ([]Item, error) {
	v, chainLen, err := s.loadViews(ctx, subject, src, now, srcIdx)
	if err != nil {
		return nil, err
	}
	defer v.release()
	sctx, cancel := context.WithTimeout(ctx, s.opts.SubjectTimeout)
	defer cancel()
	act := &activation{vals: subjectVals(s.rules[0].rule.env.CELTypeAdapter(), v, from, now)}
	tracked := s.opts.CostTrackedEntries < 0 || chainLen <= s.opts.CostTrackedEntries
	// As in evaluation: a subject whose inputs are within the bound where
	// the static estimate stays under the cost limit runs untracked.
	bound := max(chainSizeBound(subject, v.events), v.ownerBound)
	if srcIdx != nil {
		bound = max(bound, srcIdx.bound)
	}
	var items []Item
	var byIndex map[uint64]*Event
	if len(primaries) > 0 {
		byIndex = make(map[uint64]*Event, len(v.events))
		for _, e := range v.events {
			byIndex[uint64(e.Index)] = e
		}
	}
	for _, c := range s.rules {
		if c.pop == nil {
			continue
		}
		act.params = c.params
		prg := c.popLong
		if tracked && !(s.opts.CostTrackedEntries >= 0 && c.popFreeUpTo >= 0 && max(bound, c.paramBound) <= uint64(c.popFreeUpTo)) {
			prg = c.pop
		}
		out, _, err := prg.ContextEval(sctx, act)
		if err == nil && types.IsError(out) {
			err = out.(*types.Err)
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("population of rule %s, subject %q: %w", c.rule.ID, subject, err)
		}
		evs, ok := asEvents(out)
		if !ok {
			return nil, fmt.Errorf("population of rule %s, subject %q: the expression did not yield a list of events", c.rule.ID, subject)
		}
		for _, e := range evs {
			items = append(items, Item{Rule: c.rule.ID, Subject: subject, Index: uint64(e.Index), EventID: e.ID, Time: e.Time})
		}
		for _, p := range primaries {
			if p.Rule != c.rule.ID {
				continue
			}
			e := byIndex[p.Index]
			if e == nil {
				return nil, fmt.Errorf("population of rule %s, subject %q: a finding's primary entry %d is not in the chain", c.rule.ID, subject, p.Index)
			}
			items = append(items, Item{Rule: c.rule.ID, Subject: subject, Index: p.Index, EventID: e.ID, Time: e.Time})
		}
	}
	return items, nil
}
