package rules

import (
	"cmp"
	"context"
	"fmt"
	"iter"
	"slices"
	"strings"
	"sync"
	"time"
)

// SubjectResult is one subject's share of an evaluation, as Stream hands
// it over.
type SubjectResult struct {
	Subject string
	// Findings are sorted by (rule, primary index), one per (rule, primary
	// entry), with SharesPrimaryWith set.
	Findings []Finding
	// Errors are sorted by rule.
	Errors []RuleError
	// Entries is the number of the subject's entries evaluated.
	Entries int
	// Exposure is the length in seconds of the union of the findings'
	// exposure intervals (ExposureBySubject); 0 without exposure.
	Exposure int64
}

// Summary totals a streamed evaluation.
type Summary struct {
	Subjects, Entries, Findings, Errors int
	AsOf                                time.Time
	// Period: the evaluation covered [From, AsOf]; From is zero otherwise.
	Period bool
	From   time.Time
}

// Subjects yields the strings of a slice, in order, with no error: the
// subject sequence of Stream for a list already in memory.
func Subjects(list []string) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		for _, s := range list {
			if !yield(s, nil) {
				return
			}
		}
	}
}

// Stream evaluates every rule over the chain of each subject the sequence
// yields and hands each subject's result to emit, on the calling goroutine,
// in the order the subjects were yielded (so the output is deterministic:
// subject by subject in that order, and within a subject by rule then
// primary index). With period false it is Evaluate's one-instant view at
// asOf and from is ignored; with period true it is EvaluatePeriod's
// [from, asOf].
//
// Subjects are read one at a time from src and evaluated on Options.Workers
// goroutines; at most 4×Workers subjects are between being read and being
// emitted, so memory grows with the longest chains and the worker count,
// not with the number of subjects or entries. The one exception is a rule
// set that compares entries across subjects (backdated-closure): it first
// indexes, per source system, the entries later than every earlier entry
// of that system (source.go): about 10 bytes and the event id per such
// entry, read from the log in bounded pieces when src is a LogScanner. A yielded error, a ChainSource error, an emit error or ctx
// cancellation stops the evaluation and is returned; results already
// emitted stand.
func (s *Set) Stream(ctx context.Context, subjects iter.Seq2[string, error], src ChainSource, from, asOf time.Time, period bool, emit func(*SubjectResult) error) (Summary, error) {
	sum := Summary{AsOf: asOf, Period: period}
	if !period {
		from = asOf
	} else {
		if !asOf.After(from) {
			return sum, fmt.Errorf("evaluating %s to %s: %w", from.Format(time.RFC3339), asOf.Format(time.RFC3339), ErrPeriod)
		}
		sum.From = from
	}
	var srcIdx *sourceIndex
	if s.needSource {
		var list []string
		_, lister := src.(SubjectLister)
		_, scanner := src.(LogScanner)
		if !lister && !scanner {
			// The index is built from the evaluated subjects: list them.
			for sub, err := range subjects {
				if err != nil {
					return sum, fmt.Errorf("listing the subjects: %w", err)
				}
				list = append(list, sub)
			}
			subjects = Subjects(list)
		}
		var err error
		if srcIdx, err = buildSourceIndex(ctx, list, src, asOf, s.opts.Workers); err != nil {
			return sum, err
		}
	}
	if s.needHolders || s.needOwner {
		src = newRelatedCache(src, defaultRelatedEntries)
	}
	err := inOrder(ctx, s.opts.Workers, 4*s.opts.Workers, subjects,
		func(ctx context.Context, subject string) (*SubjectResult, error) {
			r, err := s.evaluateSubject(ctx, subject, src, from, asOf, period, srcIdx)
			if err != nil {
				return nil, err
			}
			return subjectResultOf(subject, r, asOf), nil
		},
		func(r *SubjectResult) error {
			sum.Subjects++
			sum.Entries += r.Entries
			sum.Findings += len(r.Findings)
			sum.Errors += len(r.Errors)
			return emit(r)
		})
	return sum, err
}

// subjectResultOf orders one subject's findings, marks those that share a
// primary entry and sums its exposure.
func subjectResultOf(subject string, r subjectResult, asOf time.Time) *SubjectResult {
	out := &SubjectResult{Subject: subject, Findings: r.findings, Errors: r.errors, Entries: r.entries}
	if out.Findings == nil {
		out.Findings = []Finding{}
	}
	if out.Errors == nil {
		out.Errors = []RuleError{}
	}
	slices.SortStableFunc(out.Findings, func(a, b Finding) int {
		return cmp.Or(strings.Compare(a.Rule, b.Rule), cmp.Compare(a.Entries[0].Index, b.Entries[0].Index))
	})
	slices.SortStableFunc(out.Errors, func(a, b RuleError) int { return strings.Compare(a.Rule, b.Rule) })
	groupShared(out.Findings) // its groups never span subjects
	out.Exposure = ExposureBySubject(out.Findings, asOf)[subject]
	return out
}

// inOrder calls fn for every item the sequence yields (subjects, or the
// chunks of a log scan), on up to workers goroutines, and hands the results
// to emit on the calling goroutine in the order of the sequence. At most
// window items are between being taken and being emitted (a slow emit, such
// as a slow client, holds the workers back), so memory is bounded by window
// results whatever the number of items. The sequence is pulled by one worker
// at a time. The first error (from the sequence, fn or emit) or ctx's
// cancellation stops the rest and is returned; an error from the sequence
// is wrapped as one listing the subjects, the only sequence that can fail.
func inOrder[K, T any](ctx context.Context, workers, window int, items iter.Seq2[K, error], fn func(context.Context, K) (T, error), emit func(T) error) error {
	workers = max(workers, 1)
	window = max(window, workers)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next, stop := iter.Pull2(items)
	defer stop()
	var mu sync.Mutex
	seq, done := 0, false
	take := func() (int, K, bool) {
		var zero K
		mu.Lock()
		defer mu.Unlock()
		if done || ctx.Err() != nil {
			return 0, zero, false
		}
		item, err, ok := next()
		switch {
		case !ok:
			done = true
			return 0, zero, false
		case err != nil:
			done = true
			cancel(fmt.Errorf("listing the subjects: %w", err))
			return 0, zero, false
		}
		seq++
		return seq - 1, item, true
	}
	type result struct {
		i int
		v T
	}
	// tokens counts subjects taken and not yet emitted; results never
	// blocks a worker, as it holds as many as there are tokens.
	tokens := make(chan struct{}, window)
	results := make(chan result, window)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				select {
				case tokens <- struct{}{}:
				case <-ctx.Done():
					return
				}
				i, item, ok := take()
				if !ok {
					<-tokens
					return
				}
				v, err := fn(ctx, item)
				if err != nil {
					cancel(err)
					return
				}
				results <- result{i, v}
			}
		})
	}
	go func() {
		wg.Wait()
		close(results)
	}()
	pending := make(map[int]T, window)
	want := 0
	for r := range results {
		if ctx.Err() != nil {
			continue // draining: the workers are stopping
		}
		pending[r.i] = r.v
		for ctx.Err() == nil {
			v, ok := pending[want]
			if !ok {
				break
			}
			delete(pending, want)
			if err := emit(v); err != nil {
				cancel(err)
				break
			}
			want++
			<-tokens
		}
	}
	return context.Cause(ctx)
}
