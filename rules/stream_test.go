package rules

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"iter"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grantline/grantline/internal/synth"
)

// synthOrg is a synthetic org's chains as leaves, with its subjects in
// first-seen order, its params and as-of time.
func synthOrg(t *testing.T, identities int) (leafChains, []string, Params, time.Time) {
	t.Helper()
	org, err := synth.Generate(synth.Config{Seed: 11, Identities: identities, FailureRate: 0.2})
	if err != nil {
		t.Fatal(err)
	}
	params, err := ParseParams("sod.yaml", org.ParamsYAML())
	if err != nil {
		t.Fatal(err)
	}
	leaves := leafChains{}
	var subjects []string
	for i, ev := range org.Events {
		s := ev.GetSubject().GetId()
		if _, ok := leaves[s]; !ok {
			subjects = append(subjects, s)
		}
		leaves[s] = append(leaves[s], Entry{Index: uint64(i), Leaf: encodeLeaf(t, ev)})
	}
	return leaves, subjects, params, org.AsOf
}

// catalogSet is the built-in catalog, less the rules drop rejects.
func catalogSet(tb testing.TB, params Params, o Options, drop func(*Rule) bool) *Set {
	tb.Helper()
	builtin, err := Builtin()
	if err != nil {
		tb.Fatal(err)
	}
	if drop != nil {
		builtin = slices.DeleteFunc(builtin, drop)
	}
	set, err := NewSetWithOptions(builtin, params, o)
	if err != nil {
		tb.Fatal(err)
	}
	return set
}

// TestStreamMatchesEvaluate: whatever the worker count (and so the order
// in which subjects finish), Stream emits every subject once, in the order
// given, each subject's findings by (rule, primary index), and together
// exactly what Evaluate returns, for an instant and for a period.
func TestStreamMatchesEvaluate(t *testing.T) {
	leaves, subjects, params, asOf := synthOrg(t, 80)
	// The reference: Evaluate on one worker.
	ref1 := catalogSet(t, params, Options{Workers: 1}, nil)
	for _, workers := range []int{1, 3, 8} {
		set := catalogSet(t, params, Options{Workers: workers}, nil)
		for _, tc := range []struct {
			name   string
			from   time.Time
			period bool
		}{
			{"instant", asOf, false},
			{"period", asOf.AddDate(0, -2, 0), true},
		} {
			t.Run(fmt.Sprintf("workers=%d/%s", workers, tc.name), func(t *testing.T) {
				var want *Result
				var err error
				if tc.period {
					want, err = ref1.EvaluatePeriod(t.Context(), subjects, leaves, tc.from, asOf)
				} else {
					want, err = ref1.Evaluate(t.Context(), subjects, leaves, asOf)
				}
				if err != nil {
					t.Fatal(err)
				}
				if len(want.Findings) == 0 {
					t.Fatal("the synthetic org yields no findings: the comparison would prove nothing")
				}
				var got []Finding
				var gotErrs []RuleError
				exposure := map[string]int64{}
				var order []string
				sum, err := set.Stream(t.Context(), Subjects(subjects), leaves, tc.from, asOf, tc.period, func(r *SubjectResult) error {
					order = append(order, r.Subject)
					if !slices.IsSortedFunc(r.Findings, func(a, b Finding) int {
						return cmp.Or(strings.Compare(a.Rule, b.Rule), cmp.Compare(a.Entries[0].Index, b.Entries[0].Index))
					}) {
						t.Errorf("subject %s: findings not by (rule, primary index)", r.Subject)
					}
					for _, f := range r.Findings {
						if f.Subject != r.Subject {
							t.Errorf("subject %s carries a finding about %s", r.Subject, f.Subject)
						}
					}
					got = append(got, r.Findings...)
					gotErrs = append(gotErrs, r.Errors...)
					if r.Exposure > 0 {
						exposure[r.Subject] = r.Exposure
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(order, subjects) {
					t.Errorf("subjects emitted in the order %v, want %v", order, subjects)
				}
				if sum.Subjects != want.Subjects || sum.Entries != want.Entries || sum.Findings != len(want.Findings) || sum.Errors != len(want.Errors) {
					t.Errorf("summary %+v, want %d subjects, %d entries, %d findings, %d errors", sum, want.Subjects, want.Entries, len(want.Findings), len(want.Errors))
				}
				if sum.Period != tc.period || (tc.period && !sum.From.Equal(tc.from)) || !sum.AsOf.Equal(asOf) {
					t.Errorf("summary period %v from %v as of %v", sum.Period, sum.From, sum.AsOf)
				}
				slices.SortStableFunc(got, func(a, b Finding) int {
					return cmp.Or(strings.Compare(a.Rule, b.Rule), strings.Compare(a.Subject, b.Subject), cmp.Compare(a.Entries[0].Index, b.Entries[0].Index))
				})
				if !reflect.DeepEqual(got, want.Findings) {
					t.Errorf("streamed findings (%d) differ from Evaluate's (%d)", len(got), len(want.Findings))
				}
				if fmt.Sprint(gotErrs) != fmt.Sprint(want.Errors) {
					t.Errorf("streamed errors %v, want %v", gotErrs, want.Errors)
				}
				if !reflect.DeepEqual(exposure, want.ExposureBySubject) {
					t.Errorf("streamed exposure %v, want %v", exposure, want.ExposureBySubject)
				}
			})
		}
	}
}

// countingChains counts the chains read and can fail one subject.
type countingChains struct {
	leafChains
	reads atomic.Int64
	fail  string
}

func (c *countingChains) Chain(ctx context.Context, s string) ([]Entry, error) {
	c.reads.Add(1)
	if s == c.fail {
		return nil, errors.New("disk on fire")
	}
	return c.leafChains.Chain(ctx, s)
}

// TestStreamStops: cancellation, an emit error, a listing error and a chain
// error each stop the evaluation promptly, are returned, and nothing is
// emitted after them; the subjects read beyond the stopping point are
// bounded by the window, not by the number of subjects.
func TestStreamStops(t *testing.T) {
	const workers = 2
	leaves, subjects, params, asOf := synthOrg(t, 200)
	// Only rules that read the subject's own chain alone, so that chains
	// read count subjects begun: backdated-closure's source index reads
	// every chain up front, and some rules read owners' and holders' chains.
	set := catalogSet(t, params, Options{Workers: workers}, func(r *Rule) bool { return r.usesSource || r.usesOwner || r.usesHolders })
	errEmit := errors.New("client went away")
	errList := errors.New("index unreadable")
	listFailing := func(yield func(string, error) bool) {
		for i, s := range subjects {
			if i == 10 {
				yield("", errList)
				return
			}
			if !yield(s, nil) {
				return
			}
		}
	}
	for _, tc := range []struct {
		name     string
		subjects iter.Seq2[string, error]
		fail     string // a subject whose chain cannot be read
		stopAt   int    // emit cancels (cancel) or fails at this many subjects
		cancel   bool
		want     error
		wantText string
	}{
		{name: "cancelled", subjects: Subjects(subjects), stopAt: 5, cancel: true, want: context.Canceled},
		{name: "emit fails", subjects: Subjects(subjects), stopAt: 5, want: errEmit},
		{name: "listing fails", subjects: listFailing, stopAt: -1, want: errList},
		{name: "chain fails", subjects: Subjects(subjects), fail: subjects[7], stopAt: -1, wantText: "disk on fire"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := &countingChains{leafChains: leaves, fail: tc.fail}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			var mu sync.Mutex
			emitted, after := 0, 0
			stopped := false
			_, err := set.Stream(ctx, tc.subjects, src, asOf, asOf, false, func(r *SubjectResult) error {
				mu.Lock()
				defer mu.Unlock()
				if stopped {
					after++
				}
				emitted++
				if emitted == tc.stopAt {
					stopped = true
					if tc.cancel {
						cancel()
						return nil
					}
					return errEmit
				}
				return nil
			})
			switch {
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Fatalf("Stream = %v, want %v", err, tc.want)
			case tc.wantText != "" && (err == nil || !strings.Contains(err.Error(), tc.wantText)):
				t.Fatalf("Stream = %v, want an error containing %q", err, tc.wantText)
			}
			if after > 0 {
				t.Errorf("%d subject(s) emitted after the stop", after)
			}
			// Read at most: those emitted, the window and one per worker.
			if limit := int64(emitted + 4*workers + workers); src.reads.Load() > limit || src.reads.Load() >= int64(len(subjects)) {
				t.Errorf("%d chains read of %d subjects after stopping at %d; want at most %d", src.reads.Load(), len(subjects), emitted, limit)
			}
		})
	}
}

// TestStreamPeriodBackwards: a period that ends before it starts is
// ErrPeriod, before anything is read.
func TestStreamPeriodBackwards(t *testing.T) {
	leaves, subjects, params, asOf := synthOrg(t, 40)
	set := catalogSet(t, params, Options{}, nil)
	_, err := set.Stream(t.Context(), Subjects(subjects), leaves, asOf.Add(time.Hour), asOf, true, func(*SubjectResult) error {
		t.Error("emitted a subject of an invalid period")
		return nil
	})
	if !errors.Is(err, ErrPeriod) {
		t.Errorf("Stream over a backwards period = %v, want ErrPeriod", err)
	}
}
