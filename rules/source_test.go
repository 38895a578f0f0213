package rules

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// logSource is a ChainSource that is also a LogScanner: chains and the log
// hold the same entries, as leaves.
type logSource struct {
	chains map[string][]Entry
	log    []Entry // in index order
	fail   uint64  // ScanLog fails at this index when failAt
	failAt bool
}

func (l *logSource) Chain(ctx context.Context, subject string) ([]Entry, error) {
	return l.chains[subject], nil
}

func (l *logSource) LogSize() uint64 { return uint64(len(l.log)) }

func (l *logSource) ScanLog(ctx context.Context, start, end uint64, fn func(Entry) error) error {
	for _, e := range l.log[start:end] {
		if err := ctx.Err(); err != nil {
			return err
		}
		if l.failAt && e.Index == l.fail {
			return fmt.Errorf("injected read failure at %d", e.Index)
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	return nil
}

// randomLog generates n entries over a few systems and subjects, with times
// that mostly rise but often fall back, repeat exactly, or lie after now;
// every 50th entry is a map leaf (no event, in no chain).
func randomLog(t testing.TB, rng *rand.Rand, n int, now time.Time) (*logSource, *memSource) {
	t.Helper()
	ls := &logSource{chains: map[string][]Entry{}}
	mem := &memSource{chains: map[string][]Entry{}}
	tm := now.Add(-time.Duration(n) * time.Minute)
	for i := range n {
		if i%50 == 49 {
			leaf, err := proto.Marshal(&pb.Entry{MapRoot: &pb.MapRoot{}})
			if err != nil {
				t.Fatal(err)
			}
			ls.log = append(ls.log, Entry{Index: uint64(i), Leaf: leaf})
			continue
		}
		switch rng.IntN(6) {
		case 0:
			tm = tm.Add(-time.Duration(rng.IntN(3600)) * time.Second) // reported late
		case 1: // the same instant again
		default:
			tm = tm.Add(time.Duration(rng.IntN(120_000)) * time.Millisecond)
		}
		at := tm
		if rng.IntN(20) == 0 {
			at = now.Add(time.Duration(1+rng.IntN(100)) * time.Hour) // after the as-of time
		}
		sub := fmt.Sprintf("user-%d", rng.IntN(7))
		ev := &pb.Event{Id: fmt.Sprintf("ev-%d", i), Type: "session.started", Time: timestamppb.New(at),
			Source: &pb.Source{System: fmt.Sprintf("sys-%d", rng.IntN(3))}, Subject: &pb.Identity{Id: sub}}
		leaf, err := proto.Marshal(&pb.Entry{Event: ev})
		if err != nil {
			t.Fatal(err)
		}
		e := Entry{Index: uint64(i), Leaf: leaf}
		ls.log = append(ls.log, e)
		ls.chains[sub] = append(ls.chains[sub], e)
		mem.chains[sub] = append(mem.chains[sub], Entry{Index: uint64(i), Event: ev})
	}
	return ls, mem
}

// newerByDefinition is newerFromSource as docs/rules.md (rule 20) states
// it, by brute force over every event entry of the log.
func newerByDefinition(mem *memSource, e *Event, t, now time.Time) *Event {
	var best *Event
	for _, ch := range mem.chains {
		for _, c := range ch {
			ct := c.Event.GetTime().AsTime()
			if c.Event.GetSource().GetSystem() != e.System || int64(c.Index) >= e.Index || !ct.After(t) || ct.After(now) {
				continue
			}
			if best == nil || int64(c.Index) < best.Index {
				best = &Event{Index: int64(c.Index), ID: c.Event.GetId(), Time: ct, System: e.System}
			}
		}
	}
	return best
}

func TestSourceIndexMatchesDefinition(t *testing.T) {
	defer func(c uint64) { scanChunk = c }(scanChunk)
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name    string
		n       int
		chunk   uint64
		workers int
	}{
		{"one chunk", 300, 1 << 15, 2},
		{"chunks of 7", 1000, 7, 2},
		{"chunks of 64, one worker", 1000, 64, 1},
		{"chunks of 100, four workers", 3000, 100, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			scanChunk = tc.chunk
			rng := rand.New(rand.NewPCG(uint64(tc.n), tc.chunk))
			ls, mem := randomLog(t, rng, tc.n, now)
			fromLog, err := buildSourceIndex(t.Context(), nil, ls, now, tc.workers)
			if err != nil {
				t.Fatal(err)
			}
			fromChains, err := buildSourceIndex(t.Context(), mem.subjects(), mem, now, tc.workers)
			if err != nil {
				t.Fatal(err)
			}
			if fromLog.records != fromChains.records || fromLog.bound != fromChains.bound {
				t.Fatalf("records/bound: from the log %d/%d, from the chains %d/%d",
					fromLog.records, fromLog.bound, fromChains.records, fromChains.bound)
			}
			for q := range 2000 {
				e := &Event{Index: int64(rng.IntN(tc.n + 5)), System: fmt.Sprintf("sys-%d", rng.IntN(4))}
				tq := now.Add(-time.Duration(rng.IntN(tc.n+200)) * time.Minute).Add(time.Duration(rng.IntN(1000)) * time.Millisecond)
				if q%10 == 0 { // exactly an entry's time
					if ch := mem.chains[fmt.Sprintf("user-%d", rng.IntN(7))]; len(ch) > 0 {
						tq = ch[rng.IntN(len(ch))].Event.GetTime().AsTime()
					}
				}
				want := newerByDefinition(mem, e, tq, now)
				for name, x := range map[string]*sourceIndex{"log": fromLog, "chains": fromChains} {
					got, err := x.newerFromSource(e, tq)
					if err != nil {
						t.Fatal(err)
					}
					if (got == nil) != (want == nil) || got != nil && (got.Index != want.Index || got.ID != want.ID || !got.Time.Equal(want.Time) || got.System != want.System) {
						t.Fatalf("from the %s, newerFromSource(index %d of %s, %s) = %+v, want %+v", name, e.Index, e.System, tq, got, want)
					}
				}
			}
		})
	}
}

func TestSourceIndexFromLogErrors(t *testing.T) {
	defer func(c uint64) { scanChunk = c }(scanChunk)
	scanChunk = 16
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	ls, _ := randomLog(t, rand.New(rand.NewPCG(5, 6)), 500, now)

	ls.failAt, ls.fail = true, 333
	if _, err := buildSourceIndex(t.Context(), nil, ls, now, 2); err == nil || !strings.Contains(err.Error(), "injected read failure at 333") {
		t.Fatalf("a failing scan: got %v", err)
	}
	ls.failAt = false

	bad := ls.log[200]
	ls.log[200] = Entry{Index: 200, Leaf: []byte{0xff}}
	if _, err := buildSourceIndex(t.Context(), nil, ls, now, 2); !errors.Is(err, errLeaf) || !strings.Contains(err.Error(), "leaf 200") {
		t.Fatalf("a malformed leaf: got %v, want errLeaf naming leaf 200", err)
	}
	ls.log[200] = bad

	// An index built from the log reads a cited entry's id back from it.
	x, err := buildSourceIndex(t.Context(), nil, ls, now, 2)
	if err != nil {
		t.Fatal(err)
	}
	var q *Event
	for _, e := range ls.log[400:] {
		if ev, err := decodeForTest(e); err == nil {
			q = &Event{Index: int64(e.Index), System: ev.System}
			break
		}
	}
	got, err := x.newerFromSource(q, now.Add(-1000*time.Hour))
	if err != nil || got == nil {
		t.Fatalf("newerFromSource: %v, %v; want an entry", got, err)
	}
	ls.failAt, ls.fail = true, uint64(got.Index)
	if _, err := x.newerFromSource(q, now.Add(-1000*time.Hour)); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("reading the id of entry %d", got.Index)) {
		t.Fatalf("newerFromSource when the log cannot be read: got %v", err)
	}
	ls.failAt = false

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := buildSourceIndex(ctx, nil, ls, now, 2); !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled context: got %v", err)
	}
}

// countingSource counts the chains read per subject.
type countingSource struct {
	mem   *memSource
	mu    sync.Mutex
	reads map[string]int
}

func (c *countingSource) Chain(ctx context.Context, subject string) ([]Entry, error) {
	c.mu.Lock()
	c.reads[subject]++
	c.mu.Unlock()
	return c.mem.Chain(ctx, subject)
}

func TestRelatedCache(t *testing.T) {
	mem := &memSource{chains: map[string][]Entry{}, fail: "broken"}
	for i, n := range []int{10, 20, 30, 50} {
		for j := range n {
			mem.chains[fmt.Sprintf("p%d", i)] = append(mem.chains[fmt.Sprintf("p%d", i)], Entry{Index: uint64(j)})
		}
	}
	src := &countingSource{mem: mem, reads: map[string]int{}}
	c := newRelatedCache(src, 120) // keeps chains of up to 30 entries, 120 in all
	read := func(s string, wantLen int) {
		t.Helper()
		ch, err := c.related(t.Context(), s)
		if err != nil || len(ch) != wantLen {
			t.Fatalf("related(%s): %d entries, %v; want %d", s, len(ch), err, wantLen)
		}
	}
	for range 3 {
		read("p0", 10)
		read("p1", 20)
	}
	read("p3", 50) // too long to keep
	read("p3", 50)
	if src.reads["p0"] != 1 || src.reads["p1"] != 1 || src.reads["p3"] != 2 {
		t.Fatalf("reads %v: want p0 and p1 once, p3 (never kept) twice", src.reads)
	}
	read("p2", 30)
	read("p0", 10) // most recent: p0, p2, p1
	for _, s := range []string{"q1", "q2", "q3", "q4"} {
		mem.chains[s] = make([]Entry, 20)
		read(s, 20) // 80 more entries: p1, the least recently used, goes
	}
	if c.entries > 120 {
		t.Fatalf("the cache holds %d entries, over its bound of 120", c.entries)
	}
	before := maps.Clone(src.reads)
	read("p0", 10)
	read("p1", 20)
	if src.reads["p0"] != before["p0"] || src.reads["p1"] != before["p1"]+1 {
		t.Fatalf("reads %v after %v: want p0 kept (recently used) and p1 read again (evicted)", src.reads, before)
	}
	if _, err := c.related(t.Context(), "broken"); err == nil {
		t.Fatal("a failing read gave no error")
	}
	if _, ok := c.byID["broken"]; ok {
		t.Fatal("a failing read was cached")
	}
	if ch, err := c.Chain(t.Context(), "p0"); err != nil || len(ch) != 10 || src.reads["p0"] != before["p0"]+1 {
		t.Fatalf("Chain passes through uncached: got %d entries, %v, reads %v", len(ch), err, src.reads)
	}
}

func decodeForTest(en Entry) (*Event, error) {
	var e Event
	return &e, decodeLeaf(&e, en.Index, en.Leaf)
}

// firstAfter returns the first record with time after (sec, nsec): the
// lookup without an index bound, whose early exits never fire.
func (s *stairs) firstAfter(sec int64, nsec int32) (stairRec, bool) {
	return s.firstAfterBelow(sec, nsec, math.MaxUint64)
}

// TestFirstAfterBelow: the early exits of firstAfterBelow (a block head
// already at or past the index bound, a record past it inside a block)
// give what firstAfter followed by the index check gives, on staircases
// whose records are spaced so that both happen, in blocks of every fill.
func TestFirstAfterBelow(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 2))
	for _, n := range []int{1, stairBlock - 1, stairBlock, stairBlock + 1, 5*stairBlock + 3} {
		for _, ids := range []bool{false, true} {
			s := &stairs{ids: ids}
			index, sec := uint64(rng.IntN(3)), int64(1_000_000)
			var recs []stairRec
			for range n {
				r := stairRec{index: index, sec: sec, nsec: int32(rng.IntN(1_000_000_000))}
				if ids {
					r.id = fmt.Appendf(nil, "id-%d", index)
				}
				s.add(r)
				recs = append(recs, r)
				index += uint64(1 + rng.IntN(4))
				sec += int64(rng.IntN(3)) + 1
			}
			last := recs[len(recs)-1]
			for range 3000 {
				qs := recs[0].sec - 2 + int64(rng.IntN(int(last.sec-recs[0].sec)+4))
				qn := int32(rng.IntN(1_000_000_000))
				if rng.IntN(4) == 0 { // exactly a record's time
					r := recs[rng.IntN(len(recs))]
					qs, qn = r.sec, r.nsec
				}
				below := uint64(rng.IntN(int(last.index) + 3))
				want, ok := s.firstAfter(qs, qn)
				ok = ok && want.index < below
				got, gok := s.firstAfterBelow(qs, qn, below)
				if gok != ok || ok && (got.index != want.index || got.sec != want.sec || got.nsec != want.nsec || string(got.id) != string(want.id)) {
					t.Fatalf("n %d ids %v: firstAfterBelow(%d.%09d, %d) = %+v %v, want %+v %v", n, ids, qs, qn, below, got, gok, want, ok)
				}
			}
		}
	}
}
