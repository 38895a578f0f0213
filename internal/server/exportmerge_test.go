package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/grantline/grantline/ledger"
)

// chainsOf deals indexes 0..n-1 to the subjects round-robin with the given
// weights (subject i takes weights[i] consecutive indexes per round).
func chainsOf(n int, weights ...int) map[string][]ledger.Entry {
	chains := map[string][]ledger.Entry{}
	for i := 0; i < n; {
		for s, w := range weights {
			for k := 0; k < w && i < n; k++ {
				sub := fmt.Sprintf("s%d", s)
				chains[sub] = append(chains[sub], ledger.Entry{Index: uint64(i), Leaf: fmt.Appendf(nil, "leaf %d", i)})
				i++
			}
		}
	}
	return chains
}

// pager serves pages of chains as ledger.Log.SubjectEntries would, and
// counts the entries handed out and not yet passed on (held).
type pager struct {
	chains    map[string][]ledger.Entry
	held, max int
	failAfter int // fail the call after this many calls (0: never)
	calls     int
}

var errPage = errors.New("page failed")

func (p *pager) page(_ context.Context, sub string, start uint64, n int) ([]ledger.Entry, error) {
	p.calls++
	if p.failAfter > 0 && p.calls > p.failAfter {
		return nil, errPage
	}
	var out []ledger.Entry
	for _, e := range p.chains[sub] {
		if e.Index >= start && len(out) < n {
			out = append(out, e)
		}
	}
	p.held += len(out)
	p.max = max(p.max, p.held)
	return out, nil
}

func TestMergeSubjects(t *testing.T) {
	many := make([]int, 3000)
	for i := range many {
		many[i] = 1 + i%3
	}
	for _, tc := range []struct {
		name     string
		chains   map[string][]ledger.Entry
		subjects []string
		wantMax  int // bound on entries held at once
	}{
		{name: "none", chains: chainsOf(10, 1, 1), subjects: nil, wantMax: 0},
		{name: "unknown subject", chains: chainsOf(10, 1), subjects: []string{"nobody"}, wantMax: 0},
		{name: "one subject", chains: chainsOf(2500, 1), subjects: []string{"s0"}, wantMax: mergeMaxPage},
		{name: "chain a multiple of the page", chains: chainsOf(2000, 1), subjects: []string{"s0"}, wantMax: mergeMaxPage},
		{name: "interleaved, uneven", chains: chainsOf(5000, 1, 3, 7), subjects: []string{"s2", "s0", "s1"}, wantMax: 3 * mergeMaxPage},
		{name: "named twice", chains: chainsOf(3000, 2, 1), subjects: []string{"s1", "s0", "s1"}, wantMax: 2 * mergeMaxPage},
		{name: "some of them", chains: chainsOf(3000, 2, 1, 1), subjects: []string{"s2", "s0"}, wantMax: 2 * mergeMaxPage},
		{name: "many subjects", chains: chainsOf(100000, many...), subjects: nil, wantMax: mergeMaxHeld},
	} {
		t.Run(tc.name, func(t *testing.T) {
			subjects := tc.subjects
			if tc.name == "many subjects" {
				for s := range tc.chains {
					subjects = append(subjects, s)
				}
			}
			var want []uint64
			for _, s := range subjects {
				for _, e := range tc.chains[s] {
					want = append(want, e.Index)
				}
			}
			slices.Sort(want)
			want = slices.Compact(want) // a subject named twice
			p := &pager{chains: tc.chains}
			var got []uint64
			err := mergeSubjects(t.Context(), subjects, p.page, func(i uint64, leaf []byte) error {
				if string(leaf) != fmt.Sprintf("leaf %d", i) {
					return fmt.Errorf("entry %d came with leaf %q", i, leaf)
				}
				got = append(got, i)
				p.held--
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("merged %d entries %v..., want %d %v...", len(got), got[:min(len(got), 10)], len(want), want[:min(len(want), 10)])
			}
			if p.max > tc.wantMax {
				t.Errorf("held up to %d entries at once, want at most %d", p.max, tc.wantMax)
			}
		})
	}
}

func TestMergeSubjectsErrors(t *testing.T) {
	chains := chainsOf(5000, 1, 1)
	errStop := errors.New("stop")
	for _, tc := range []struct {
		name      string
		failAfter int
		fnErrAt   uint64
		want      error
	}{
		{name: "first page fails", failAfter: 1, fnErrAt: 1 << 62, want: errPage},
		{name: "a later page fails", failAfter: 3, fnErrAt: 1 << 62, want: errPage},
		{name: "the callback fails", fnErrAt: 1234, want: errStop},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &pager{chains: chains, failAfter: tc.failAfter}
			n := 0
			err := mergeSubjects(t.Context(), []string{"s0", "s1"}, p.page, func(i uint64, _ []byte) error {
				if i == tc.fnErrAt {
					return errStop
				}
				n++
				return nil
			})
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v after %d entries, want %v", err, n, tc.want)
			}
		})
	}
}
