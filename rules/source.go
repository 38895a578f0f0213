package rules

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// SubjectLister is an optional upgrade of a ChainSource. Some rules
// (backdated-closure) compare an entry with every entry of the same source
// system, whatever its subject; Evaluate gathers those from the chains of
// every subject Subjects lists, or, when the ChainSource does not implement
// SubjectLister, from the chains of the subjects being evaluated.
type SubjectLister interface {
	// Subjects returns every subject that has an entry in the tree being
	// evaluated, in any order. Safe for concurrent use.
	Subjects(ctx context.Context) ([]string, error)
}

// sourceIndex answers newerFromSource: for each source system, the entries
// that set a new latest time when the system's entries are read in ledger
// index order ("records"). Their indices and times both increase, so the
// lowest-index entry of a system with time after t is the first record with
// time after t, found by binary search. It is immutable once built and safe
// for concurrent use.
type sourceIndex struct {
	records map[string][]*Event
	bound   uint64 // longest string of a record (see chainSizeBound)
}

// sourceEntry is what the index needs of an entry.
type sourceEntry struct {
	index          uint64
	time           time.Time
	system, id     string
	subject, type_ string
}

// newerFromSource returns the entry with the lowest ledger index among those
// of e's source system with an index lower than e's and a time after t, or
// nil.
func (x *sourceIndex) newerFromSource(e *Event, t time.Time) *Event {
	if x == nil {
		return nil
	}
	rs := x.records[e.System]
	i := sort.Search(len(rs), func(i int) bool { return rs[i].Time.After(t) })
	if i < len(rs) && rs[i].Index < e.Index {
		return rs[i]
	}
	return nil
}

// buildSourceIndex reads the chain of every subject (in parallel, on
// workers goroutines) and indexes the entries dated at or before now.
func buildSourceIndex(ctx context.Context, subjects []string, src ChainSource, now time.Time, workers int) (*sourceIndex, error) {
	if l, ok := src.(SubjectLister); ok {
		all, err := l.Subjects(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing the subjects of the tree: %w", err)
		}
		subjects = all
	}
	parts := make([][]sourceEntry, max(workers, 1))
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := range parts {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= len(subjects) {
					return
				}
				chain, err := src.Chain(ctx, subjects[i])
				if err != nil {
					cancel(fmt.Errorf("reading the chain of subject %q: %w", subjects[i], err))
					return
				}
				for _, en := range chain {
					se, err := sourceEntryOf(en)
					if err != nil {
						cancel(fmt.Errorf("reading the chain of subject %q: %w", subjects[i], err))
						return
					}
					if !se.time.After(now) {
						parts[w] = append(parts[w], se)
					}
				}
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	bySystem := map[string][]sourceEntry{}
	for _, p := range parts {
		for _, se := range p {
			bySystem[se.system] = append(bySystem[se.system], se)
		}
	}
	x := &sourceIndex{records: make(map[string][]*Event, len(bySystem))}
	for sys, es := range bySystem {
		slices.SortFunc(es, func(a, b sourceEntry) int { return cmp.Compare(a.index, b.index) })
		var rs []*Event
		for i, se := range es {
			if i > 0 && se.index == es[i-1].index {
				continue // the same entry read twice (a subject listed twice)
			}
			if len(rs) == 0 || se.time.After(rs[len(rs)-1].Time) {
				e := &Event{Index: int64(se.index), ID: se.id, Type: se.type_, Time: se.time, System: sys,
					Subject: Identity{ID: se.subject}, src: x}
				rs = append(rs, e)
				x.bound = max(x.bound, uint64(max(len(e.ID), len(e.Type), len(e.System), len(e.Subject.ID))))
			}
		}
		x.records[sys] = rs
	}
	return x, nil
}

// sourceEntryOf reads what the index needs from an entry, decoding only
// those fields of a leaf.
func sourceEntryOf(en Entry) (sourceEntry, error) {
	se := sourceEntry{index: en.Index}
	if en.Event != nil || en.Leaf == nil {
		ev := en.Event
		se.time = toTime(ev.GetTime(), ev.GetTime() != nil)
		se.system, se.id = ev.GetSource().GetSystem(), ev.GetId()
		se.subject, se.type_ = ev.GetSubject().GetId(), ev.GetType()
		return se, nil
	}
	err := eachField(en.Leaf, func(num protowire.Number, typ protowire.Type, v []byte) error {
		if num != entryEvent || typ != protowire.BytesType {
			return nil
		}
		return eachField(v, func(num protowire.Number, typ protowire.Type, w []byte) (err error) {
			if typ != protowire.BytesType {
				return nil
			}
			switch num {
			case evID:
				se.id, err = str(w, "id")
			case evType:
				se.type_, err = str(w, "type")
			case evTime:
				se.time, err = mergeTime(se.time, w)
			case evSource:
				err = eachField(w, func(n protowire.Number, t protowire.Type, b []byte) (err error) {
					if n == 1 && t == protowire.BytesType {
						se.system, err = str(b, "source.system")
					}
					return err
				})
			case evSubject:
				err = eachField(w, func(n protowire.Number, t protowire.Type, b []byte) (err error) {
					if n == 1 && t == protowire.BytesType {
						se.subject, err = str(b, "identity id")
					}
					return err
				})
			}
			return err
		})
	})
	if err != nil {
		return se, fmt.Errorf("%w: leaf %d: %w", errLeaf, en.Index, err)
	}
	return se, nil
}
