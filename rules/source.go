package rules

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/grantline/grantline/ledger/event"
)

// SubjectLister is an optional upgrade of a ChainSource. Some rules
// (backdated-closure) compare an entry with every entry of the same source
// system, whatever its subject. Evaluate reads those from the log in index
// order when the ChainSource is a LogScanner; otherwise from the chains of
// every subject Subjects lists, or, when the ChainSource implements neither,
// from the chains of the subjects being evaluated.
type SubjectLister interface {
	// Subjects returns every subject that has an entry in the tree being
	// evaluated, in any order. Safe for concurrent use.
	Subjects(ctx context.Context) ([]string, error)
}

// LogScanner is an optional upgrade of a ChainSource backed by a whole log
// (the ledger): it reads the entries of the tree being evaluated in ledger
// index order. Rules that compare entries across subjects (backdated-closure)
// then index them from a sequential read of the log, in bounded pieces read
// in parallel, instead of reading every subject's chain and sorting all its
// entries. The entries of the log must be exactly those of all the chains,
// plus entries that are not events (map leaves), which are skipped.
type LogScanner interface {
	// LogSize is the number of entries of the tree being evaluated.
	LogSize() uint64
	// ScanLog calls fn for each entry with start <= index < end (end at
	// most LogSize), in index order, stopping at fn's first error, which it
	// returns. The entry is valid only during the call. Safe for
	// concurrent use.
	ScanLog(ctx context.Context, start, end uint64, fn func(Entry) error) error
}

// sourceIndex answers newerFromSource. For each source system it keeps the
// system's "records": the entries that set a new latest time when the
// system's entries (dated at or before the as-of time) are read in ledger
// index order. Their indices and times both increase, so the lowest-index
// entry of a system with time after t is the first record with time after
// t, found by binary search. That staircase of high-water marks is all the
// rule needs: an entry that is not a record is preceded by a record at
// least as late.
//
// Records are stored delta-encoded in blocks of stairBlock (stairs), in
// memory without pointers, so the garbage collector never scans it. Built
// from a LogScanner it keeps no event ids (about 9 bytes per record): the id
// of an entry newerFromSource returns is read back from the log by its
// index. Built from chains it keeps them (9 bytes plus the id). It is
// immutable once built and safe for concurrent use.
type sourceIndex struct {
	systems map[string]*stairs
	bound   uint64 // longest string a record yields (see chainSizeBound)
	records int    // over all systems
	bytes   int    // held by the records, blocks and data
	// readID, when set, reads the id of the entry at an index: the
	// records hold none.
	readID func(index uint64) (string, error)
}

// stairBlock is the number of records per block of stairs.
const stairBlock = 32

// stairs are the records of one system. data holds, per record, the
// uvarint deltas of its index and Unix seconds from the previous record of
// its block (from the block's head for its first), its nanoseconds, and,
// with ids, its event id, length first.
type stairs struct {
	ids   bool
	heads []stairHead
	data  []byte
	// last is the latest record appended (valid when heads is non-empty).
	last            stairRec
	inBlock         int // records in the last block
	maxID           int // longest id
	recordsAppended int
}

// stairHead is the first record of a block.
type stairHead struct {
	index uint64
	sec   int64
	nsec  int32
	off   uint64 // of the block's first record in data
}

// stairRec is one record while building or reading stairs; id aliases the
// bytes it was read from.
type stairRec struct {
	index uint64
	sec   int64
	nsec  int32
	id    []byte
}

func (r stairRec) time() time.Time { return time.Unix(r.sec, int64(r.nsec)).UTC() }

// after reports whether r's time is after (sec, nsec).
func (r stairRec) after(sec int64, nsec int32) bool {
	return r.sec > sec || (r.sec == sec && r.nsec > nsec)
}

func recTime(t time.Time) (int64, int32) { return t.Unix(), int32(t.Nanosecond()) }

// add appends r, whose index and time must both be above the last
// record's.
func (s *stairs) add(r stairRec) {
	prev := s.last
	if len(s.heads) == 0 || s.inBlock == stairBlock {
		s.heads = append(s.heads, stairHead{index: r.index, sec: r.sec, nsec: r.nsec, off: uint64(len(s.data))})
		s.inBlock = 0
		prev = stairRec{index: r.index, sec: r.sec}
	}
	s.data = binary.AppendUvarint(s.data, r.index-prev.index)
	s.data = binary.AppendUvarint(s.data, uint64(r.sec)-uint64(prev.sec))
	s.data = binary.AppendUvarint(s.data, uint64(r.nsec))
	if s.ids {
		s.data = binary.AppendUvarint(s.data, uint64(len(r.id)))
		s.data = append(s.data, r.id...)
	}
	s.inBlock++
	s.recordsAppended++
	s.maxID = max(s.maxID, len(r.id))
	s.last = stairRec{index: r.index, sec: r.sec, nsec: r.nsec}
}

// offer appends r if it is a record: if its time is after the last one's.
func (s *stairs) offer(r stairRec) bool {
	if len(s.heads) == 0 || r.after(s.last.sec, s.last.nsec) {
		s.add(r)
		return true
	}
	return false
}

// firstAfterBelow returns the first record with time after (sec, nsec) if
// its index is below the given one; false otherwise. Records' indices grow
// with their times, so when the head of the block the answer would be in
// already has an index at or above below, the block is not decoded: for a
// closing dated in time order (the usual case) the lookup is a binary
// search of the heads.
func (s *stairs) firstAfterBelow(sec int64, nsec int32, below uint64) (stairRec, bool) {
	h := s.heads
	// The first block whose head is after t; the answer is in the block
	// before it, or is that block's head.
	b, hi := 0, len(h)
	for b < hi {
		m := int(uint(b+hi) >> 1)
		if h[m].sec > sec || (h[m].sec == sec && h[m].nsec > nsec) {
			hi = m
		} else {
			b = m + 1
		}
	}
	if b > 0 && h[b-1].index >= below {
		// The answer, in block b-1 after its head or block b's head, has
		// a higher index still.
		return stairRec{}, false
	}
	if b > 0 {
		end := uint64(len(s.data))
		if b < len(h) {
			end = h[b].off
		}
		prev := stairRec{index: h[b-1].index, sec: h[b-1].sec}
		for p := s.data[h[b-1].off:end]; len(p) > 0; {
			var r stairRec
			var ok bool
			if r, p, ok = s.decode(prev, p); !ok {
				break // cannot happen: add wrote it
			}
			if r.index >= below {
				return stairRec{}, false
			}
			if r.after(sec, nsec) {
				return r, true
			}
			prev = r
		}
	}
	if b < len(h) && h[b].index < below {
		r, _, _ := s.decode(stairRec{index: h[b].index, sec: h[b].sec}, s.data[h[b].off:])
		return r, true
	}
	return stairRec{}, false
}

// decode reads the record at the start of p, which follows prev.
func (s *stairs) decode(prev stairRec, p []byte) (stairRec, []byte, bool) {
	var v [4]uint64
	n := 3
	if s.ids {
		n = 4
	}
	for i := range n {
		x, k := binary.Uvarint(p)
		if k <= 0 {
			return stairRec{}, nil, false
		}
		v[i], p = x, p[k:]
	}
	if uint64(len(p)) < v[3] {
		return stairRec{}, nil, false
	}
	r := stairRec{index: prev.index + v[0], sec: int64(uint64(prev.sec) + v[1]), nsec: int32(v[2]), id: p[:v[3]]}
	return r, p[v[3]:], true
}

// newerFromSource returns the entry with the lowest ledger index among those
// of e's source system with an index lower than e's and a time after t, or
// nil. The event it returns is new, holding the entry's index, id, time and
// system: enough to cite it. The error is one reading the entry's id back
// from the log.
func (x *sourceIndex) newerFromSource(e *Event, t time.Time) (*Event, error) {
	if x == nil {
		return nil, nil
	}
	s := x.systems[e.System]
	if s == nil {
		return nil, nil
	}
	sec, nsec := recTime(t)
	r, ok := s.firstAfterBelow(sec, nsec, uint64(e.Index))
	if !ok {
		return nil, nil
	}
	id := string(r.id)
	if x.readID != nil {
		var err error
		if id, err = x.readID(r.index); err != nil {
			return nil, err
		}
	}
	return &Event{Index: int64(r.index), ID: id, Time: r.time(), System: e.System}, nil
}

// indexBuilder collects the records of every system.
type indexBuilder struct {
	systems map[string]*stairs
	ids     bool // the records keep event ids
	maxID   int  // the longest id seen, when they do not
}

func (b *indexBuilder) system(name string) *stairs {
	if s, ok := b.systems[name]; ok {
		return s
	}
	s := &stairs{ids: b.ids}
	b.systems[name] = s
	return s
}

// index finishes the build.
func (b *indexBuilder) index() *sourceIndex {
	x := &sourceIndex{systems: b.systems, bound: uint64(b.maxID)}
	for name, s := range b.systems {
		s.data = slices.Clip(s.data)
		s.heads = slices.Clip(s.heads)
		x.bound = max(x.bound, uint64(max(s.maxID, len(name))))
		x.records += s.recordsAppended
		x.bytes += len(s.data) + len(s.heads)*32 + len(name)
	}
	return x
}

// buildSourceIndex indexes the entries dated at or before now of every
// source system: from the log when src is a LogScanner, else from the
// chains of every subject (see SubjectLister), read on workers goroutines.
func buildSourceIndex(ctx context.Context, subjects []string, src ChainSource, now time.Time, workers int) (*sourceIndex, error) {
	if sc, ok := src.(LogScanner); ok {
		return buildSourceIndexFromLog(ctx, sc, now, workers)
	}
	if l, ok := src.(SubjectLister); ok {
		all, err := l.Subjects(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing the subjects of the tree: %w", err)
		}
		subjects = all
	}
	return buildSourceIndexFromChains(ctx, subjects, src, now, workers)
}

// scanChunk is how many entries of the log one worker reads at a time.
var scanChunk uint64 = 1 << 15 // a variable for tests

// chunkStairs are the records of one chunk of the log relative to the
// chunk alone (each system's entries that are later than every earlier
// entry of the chunk), in index order per system.
type chunkStairs struct {
	systems map[string]*chunkSys
	err     error
}

type chunkSys struct {
	recs []chunkRec
}

// chunkRec is a record of a chunk: no id, only its length; no pointers, so
// the garbage collector does not scan a chunk's records.
type chunkRec struct {
	index uint64
	sec   int64
	nsec  int32
	idLen int32
}

// chunkPool keeps chunkStairs between chunks (a 1M-entry log has 31): a
// chunk's records, nearly one per entry for a source reporting in time
// order, were most of the scan's allocations.
var chunkPool = sync.Pool{New: func() any { return &chunkStairs{systems: map[string]*chunkSys{}} }}

// release returns cs to chunkPool, its records emptied.
func (cs *chunkStairs) release() {
	for _, cy := range cs.systems {
		cy.recs = cy.recs[:0]
	}
	cs.err = nil
	if len(cs.systems) > 64 {
		clear(cs.systems) // a log with many systems: do not keep them all
	}
	chunkPool.Put(cs)
}

// buildSourceIndexFromLog reads the log in chunks of scanChunk entries on
// workers goroutines. Each chunk's records relative to the chunk are found
// in parallel; merged in index order, a chunk record is a record of the log
// when it is later than every record before the chunk. At most 2×workers
// chunks are read and not yet merged, so beside the index itself the build
// holds a bounded number of entries.
func buildSourceIndexFromLog(ctx context.Context, sc LogScanner, now time.Time, workers int) (*sourceIndex, error) {
	size := sc.LogSize()
	chunks := int((size + scanChunk - 1) / scanChunk)
	workers = max(1, min(workers, chunks))
	nowSec, nowNsec := recTime(now)
	chunkNumbers := func(yield func(int, error) bool) {
		for c := range chunks {
			if !yield(c, nil) {
				return
			}
		}
	}
	scan := func(ctx context.Context, c int) (*chunkStairs, error) {
		start := uint64(c) * scanChunk
		cs := scanChunkStairs(ctx, sc, start, min(start+scanChunk, size), nowSec, nowNsec)
		return cs, cs.err
	}
	b := indexBuilder{systems: map[string]*stairs{}}
	merge := func(cs *chunkStairs) error {
		for name, cy := range cs.systems {
			if len(cy.recs) == 0 {
				continue // a system of an earlier chunk kept by the pool
			}
			s := b.system(name)
			for _, r := range cy.recs {
				if s.offer(stairRec{index: r.index, sec: r.sec, nsec: r.nsec}) {
					b.maxID = max(b.maxID, int(r.idLen))
				}
			}
		}
		cs.release()
		return nil
	}
	if err := inOrder(ctx, workers, 2*workers, chunkNumbers, scan, merge); err != nil {
		return nil, err
	}
	x := b.index()
	x.readID = func(index uint64) (string, error) { return readEntryID(ctx, sc, index) } // ctx: the evaluation's, ids are read back while it runs
	return x, nil
}

// readEntryID reads the event id of the entry at index from the log.
func readEntryID(ctx context.Context, sc LogScanner, index uint64) (string, error) {
	var id string
	found := false
	var v sourceVisitor
	err := sc.ScanLog(ctx, index, index+1, func(en Entry) error {
		_, _, b, err := v.read(en)
		id, found = string(b), err == nil
		return err
	})
	if err == nil && !found {
		err = fmt.Errorf("no entry %d in the log", index)
	}
	if err != nil {
		return "", fmt.Errorf("reading the id of entry %d of the log: %w", index, err)
	}
	return id, nil
}

// scanChunkStairs reads the entries [start, end) of the log.
func scanChunkStairs(ctx context.Context, sc LogScanner, start, end uint64, nowSec int64, nowNsec int32) *chunkStairs {
	cs := chunkPool.Get().(*chunkStairs)
	var v sourceVisitor
	cs.err = sc.ScanLog(ctx, start, end, func(en Entry) error {
		rec, sys, id, err := v.read(en)
		if errors.Is(err, event.ErrMapLeaf) {
			return nil // not an event: in no chain
		}
		if err != nil {
			return fmt.Errorf("reading the log: %w", err)
		}
		if rec.after(nowSec, nowNsec) {
			return nil
		}
		cy, ok := cs.systems[string(sys)]
		if !ok {
			cy = &chunkSys{}
			cs.systems[string(sys)] = cy
		}
		if n := len(cy.recs); n > 0 && !rec.after(cy.recs[n-1].sec, cy.recs[n-1].nsec) {
			return nil
		}
		cy.recs = append(cy.recs, chunkRec{index: rec.index, sec: rec.sec, nsec: rec.nsec, idLen: int32(len(id))})
		return nil
	})
	return cs
}

// sourceEntry is an entry read from a chain, while building from chains.
type sourceEntry struct {
	index uint64
	sec   int64
	nsec  int32
	sys   int32 // numbered by the reader
	idOff int
	idLen int
}

// sourceReader reads the entries of some chains.
type sourceReader struct {
	ents    []sourceEntry
	arena   []byte
	systems []string // sys number -> name
	sysNum  map[string]int32
	v       sourceVisitor
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

// buildSourceIndexFromChains reads the chain of every subject (in
// parallel, on workers goroutines), then sorts each system's entries by
// index to find its records. It holds every entry of the chains while it
// sorts them.
func buildSourceIndexFromChains(ctx context.Context, subjects []string, src ChainSource, now time.Time, workers int) (*sourceIndex, error) {
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
					rec, sys, id, err := rd.v.read(en)
					if err != nil {
						cancel(fmt.Errorf("reading the chain of subject %q: %w", subjects[i], err))
						return
					}
					if !rec.after(nowSec, nowNsec) {
						rd.ents = append(rd.ents, sourceEntry{index: rec.index, sec: rec.sec, nsec: rec.nsec,
							sys: rd.system(sys), idOff: len(rd.arena), idLen: len(id)})
						rd.arena = append(rd.arena, id...)
					}
				}
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	type ref struct {
		e  *sourceEntry
		rd *sourceReader
	}
	bySystem := map[string][]ref{}
	for _, rd := range readers {
		for k := range rd.ents {
			name := rd.systems[rd.ents[k].sys]
			bySystem[name] = append(bySystem[name], ref{&rd.ents[k], rd})
		}
	}
	b := indexBuilder{systems: map[string]*stairs{}, ids: true}
	for name, es := range bySystem {
		slices.SortFunc(es, func(a, b ref) int { return cmp.Compare(a.e.index, b.e.index) })
		s := b.system(name)
		for i, r := range es {
			if i > 0 && r.e.index == es[i-1].e.index {
				continue // the same entry read twice (a subject listed twice)
			}
			s.offer(stairRec{index: r.e.index, sec: r.e.sec, nsec: r.e.nsec, id: r.rd.arena[r.e.idOff : r.e.idOff+r.e.idLen]})
		}
	}
	return b.index(), nil
}

// read returns what the index needs of an entry: its index and time, its
// source system and its id (aliasing the leaf or the visitor), reading only
// those fields of a leaf.
func (v *sourceVisitor) read(en Entry) (stairRec, []byte, []byte, error) {
	rec := stairRec{index: en.Index}
	if en.Event != nil || en.Leaf == nil {
		ev := en.Event
		rec.sec, rec.nsec = recTime(toTime(ev.GetTime(), ev.GetTime() != nil))
		return rec, []byte(ev.GetSource().GetSystem()), []byte(ev.GetId()), nil
	}
	*v = sourceVisitor{}
	if err := event.VisitLeaf(en.Leaf, v); err != nil {
		return rec, nil, nil, fmt.Errorf("%w: leaf %d: %w", errLeaf, en.Index, err)
	}
	rec.sec, rec.nsec = recTime(v.time)
	return rec, v.system, v.id, nil
}

// sourceVisitor keeps the id, source.system and time of a leaf (aliasing
// the leaf's bytes).
type sourceVisitor struct {
	event.Ignore
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

func (v *sourceVisitor) Time(f event.Field, t time.Time) {
	if f == event.Time {
		v.time = t
	}
}
