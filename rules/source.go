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

	"github.com/grantline/grantline/ledger/event"
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
// for concurrent use. It keeps 32 bytes and the event id per entry, with no
// allocation per entry: ids live in one string per reading goroutine.
type sourceIndex struct {
	records map[string][]sourceRec
	bound   uint64 // longest string a record yields (see chainSizeBound)
}

// sourceRec is one entry of the index.
type sourceRec struct {
	index uint64
	sec   int64  // time: Unix seconds
	nsec  int32  // and nanoseconds
	sys   int32  // the system, as numbered by its reader
	id    string // a substring of its reader's arena
}

func (r sourceRec) time() time.Time { return time.Unix(r.sec, int64(r.nsec)).UTC() }

// after reports whether r's time is after (sec, nsec).
func (r sourceRec) after(sec int64, nsec int32) bool {
	return r.sec > sec || (r.sec == sec && r.nsec > nsec)
}

func recTime(t time.Time) (int64, int32) { return t.Unix(), int32(t.Nanosecond()) }

// newerFromSource returns the entry with the lowest ledger index among those
// of e's source system with an index lower than e's and a time after t, or
// nil. The event it returns is new, holding the entry's index, id, time and
// system: enough to cite it.
func (x *sourceIndex) newerFromSource(e *Event, t time.Time) *Event {
	if x == nil {
		return nil
	}
	rs := x.records[e.System]
	sec, nsec := recTime(t)
	i := sort.Search(len(rs), func(i int) bool { return rs[i].after(sec, nsec) })
	if i < len(rs) && rs[i].index < uint64(e.Index) {
		r := rs[i]
		return &Event{Index: int64(r.index), ID: r.id, Time: r.time(), System: e.System}
	}
	return nil
}

// sourceReader reads the entries of some chains into recs.
type sourceReader struct {
	recs    []sourceRec
	arena   []byte
	systems []string // sys number -> name
	sysNum  map[string]int32
}

func (r *sourceReader) system(b []byte) int32 {
	if n, ok := r.sysNum[string(b)]; ok { // no allocation: the compiler's map lookup with string(bytes)
		return n
	}
	n := int32(len(r.systems))
	r.systems = append(r.systems, string(b))
	r.sysNum[string(b)] = n
	return n
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
	readers := make([]*sourceReader, max(workers, 1))
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	nowSec, nowNsec := recTime(now)
	for w := range readers {
		rd := &sourceReader{sysNum: map[string]int32{}}
		readers[w] = rd
		wg.Go(func() {
			type idRef struct{ off, n int }
			var ids []idRef
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= len(subjects) {
					break
				}
				chain, err := src.Chain(ctx, subjects[i])
				if err != nil {
					cancel(fmt.Errorf("reading the chain of subject %q: %w", subjects[i], err))
					return
				}
				for _, en := range chain {
					rec, id, err := rd.read(en)
					if err != nil {
						cancel(fmt.Errorf("reading the chain of subject %q: %w", subjects[i], err))
						return
					}
					if !rec.after(nowSec, nowNsec) {
						ids = append(ids, idRef{len(rd.arena), len(id)})
						rd.arena = append(rd.arena, id...)
						rd.recs = append(rd.recs, rec)
					}
				}
			}
			arena := string(rd.arena) // one copy; every id is a substring
			rd.arena = nil
			for k := range rd.recs {
				rd.recs[k].id = arena[ids[k].off : ids[k].off+ids[k].n]
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	bySystem := map[string][]sourceRec{}
	for _, rd := range readers {
		for _, r := range rd.recs {
			name := rd.systems[r.sys]
			bySystem[name] = append(bySystem[name], r)
		}
	}
	x := &sourceIndex{records: make(map[string][]sourceRec, len(bySystem))}
	for sys, es := range bySystem {
		slices.SortFunc(es, func(a, b sourceRec) int { return cmp.Compare(a.index, b.index) })
		rs := es[:0] // records overwrite the sorted entries in place
		for i, r := range es {
			if i > 0 && r.index == es[i-1].index {
				continue // the same entry read twice (a subject listed twice)
			}
			if len(rs) == 0 || r.after(rs[len(rs)-1].sec, rs[len(rs)-1].nsec) {
				rs = append(rs, r)
				x.bound = max(x.bound, uint64(max(len(r.id), len(sys))))
			}
		}
		x.records[sys] = slices.Clip(rs)
	}
	return x, nil
}

// read returns what the index needs of an entry: its record (without the
// id) and its id's bytes, reading only those fields of a leaf.
func (r *sourceReader) read(en Entry) (sourceRec, []byte, error) {
	rec := sourceRec{index: en.Index}
	if en.Event != nil || en.Leaf == nil {
		ev := en.Event
		rec.sec, rec.nsec = recTime(toTime(ev.GetTime(), ev.GetTime() != nil))
		rec.sys = r.system([]byte(ev.GetSource().GetSystem()))
		return rec, []byte(ev.GetId()), nil
	}
	v := &sourceVisitor{}
	if err := event.VisitLeaf(en.Leaf, v); err != nil {
		return rec, nil, fmt.Errorf("%w: leaf %d: %w", errLeaf, en.Index, err)
	}
	rec.sec, rec.nsec = recTime(v.time)
	rec.sys = r.system(v.system)
	return rec, v.id, nil
}

// sourceVisitor keeps the id, source.system and time of a leaf (aliasing
// the leaf's bytes).
type sourceVisitor struct {
	id, system []byte
	time       time.Time
}

func (v *sourceVisitor) String(f event.Field, b []byte) {
	switch f {
	case event.ID:
		v.id = b
	case event.SourceSystem:
		v.system = b
	}
}

func (v *sourceVisitor) Bool(event.Field, bool) {}

func (v *sourceVisitor) Time(f event.Field, t time.Time) {
	if f == event.Time {
		v.time = t
	}
}

func (v *sourceVisitor) Attribute(key, value []byte) {}
