// Package runindex is an index from 16-byte keys to leaf index (the
// ledger's leaf-hash index, and its dedupe index): a tiny log-structured
// merge tree of fixed-size records. Keys (for the leaf-hash index, 16-byte
// prefixes of RFC 6962 leaf hashes) are appended in leaf order into a memory
// buffer with a hash table over it; a full buffer is sorted and written by a
// background goroutine as an immutable run file covering leaves [from, to),
// and adjacent runs of one size tier are merged in the background into one.
// Appending costs a copy and a hash-table insert; a lookup costs a probe of
// each memory buffer's table, and a binary search in memory and one read of
// at most a few KiB per run. Lookups return candidates: two leaves may share
// a key, so the caller confirms each on the leaf. Runs are written to a temporary file,
// synced and renamed, so a crash leaves whole runs; Open keeps the chain of
// runs from leaf 0 and the caller re-appends the leaves after it. The file
// format, merging, the crash story and the memory used are in docs/design.md,
// "The leaf-hash runs".
package runindex

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/grantline/grantline/internal/atomicfile"
)

// Key is an indexed key: for the leaf-hash index, the first 16 bytes of a
// leaf hash.
type Key = [16]byte

// Defaults for Options.
const (
	DefaultFlushEntries = 65536
	DefaultFanout       = 8
	DefaultName         = "leaf-hash index"
	// MaxFlushEntries bounds FlushEntries: a buffer's hash table names
	// positions in 32 bits, and takes 8 bytes per FlushEntries.
	MaxFlushEntries = 1 << 30
)

// Options tune an Index. The zero value is the defaults.
type Options struct {
	// FlushEntries: keys held in memory before they are written as a run. 0: DefaultFlushEntries (65536).
	// At most MaxFlushEntries. Each memory buffer (at most three) takes 16 bytes per key it holds plus
	// a hash table of 8 bytes per FlushEntries (2 x FlushEntries 4-byte slots, rounded up to a power of two).
	FlushEntries int
	// Fanout: this many adjacent runs of one tier are merged into one. 0: DefaultFanout (8). <2 invalid.
	Fanout int
	Logger *slog.Logger // nil discards
	// Name names the index in every error and log message ("": DefaultName, "leaf-hash index"),
	// e.g. "dedupe index".
	Name string
}

var (
	// ErrDamaged marks a run file that cannot come from a crash (our
	// writes are temporary file, sync, rename): a bad header or size, a
	// name not matching the header, a bad CRC or records out of order.
	// The remedy is to delete the directory: it is rebuilt from the log.
	ErrDamaged = errors.New("runindex: damaged")
	// ErrClosed is returned by calls after Close.
	ErrClosed = errors.New("runindex: closed")
)

// Index is an open index. Its methods are safe for concurrent
// use, except that Appends must come from one goroutine at a time.
type Index struct {
	dir   string
	name  string // Options.Name
	seed  hashSeed
	flush int
	fan   int
	log   *slog.Logger
	abort atomic.Bool // asks a running merge to stop (Close)
	wg    sync.WaitGroup
	once  sync.Once
	cerr  error // Close's result

	mu       sync.Mutex
	cond     *sync.Cond // Broadcast on every change below
	active   *buffer
	imm      []*buffer // full buffers waiting to be written, oldest first
	runs     []*run    // the chain, oldest (and largest) first
	covered  uint64
	durable  uint64
	err      error // sticky background failure
	stopping bool  // set by Close, never cleared
	merging  bool
	merges   uint64
	flushes  uint64
}

// Open opens (creating dir if needed) the index in dir. limit is the tree size of the log it indexes:
// runs reaching beyond it (the log was restored from an older backup) are deleted, as are temporary files
// and runs no longer needed (inputs of a merge whose output exists). Covered() is then the end of the
// contiguous chain of runs from 0 (0 for a new/empty dir); the caller re-appends [Covered(), limit).
// A run file that is malformed (bad magic/header, size not matching its count, or name not matching
// header) is an error wrapping ErrDamaged naming the file and saying: delete the directory, it is rebuilt
// from the log. Open reads only headers, sparse sections and trailers, never whole runs.
//
// Open starts two goroutines (a writer and a merger) that Close stops, and
// keeps one file descriptor open per run.
func Open(dir string, limit uint64, o Options) (*Index, error) {
	name := o.Name
	if name == "" {
		name = DefaultName
	}
	if o.FlushEntries < 0 || o.FlushEntries > MaxFlushEntries {
		return nil, fmt.Errorf("opening %s %s: FlushEntries %d, want 0 (meaning %d) to %d", name, dir, o.FlushEntries, DefaultFlushEntries, MaxFlushEntries)
	}
	if o.Fanout < 0 || o.Fanout == 1 {
		return nil, fmt.Errorf("opening %s %s: Fanout %d, want 0 (%d) or at least 2", name, dir, o.Fanout, DefaultFanout)
	}
	x := &Index{dir: dir, name: name, flush: o.FlushEntries, fan: o.Fanout, log: o.Logger,
		seed: hashSeed{rand.Uint64(), rand.Uint64()}}
	if x.flush == 0 {
		x.flush = DefaultFlushEntries
	}
	if x.fan == 0 {
		x.fan = DefaultFanout
	}
	if x.log == nil {
		x.log = slog.New(slog.DiscardHandler)
	}
	x.cond = sync.NewCond(&x.mu)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("opening %s: %w", x.name, err)
	}
	runs, err := x.load(limit)
	if err != nil {
		return nil, err
	}
	x.runs = runs
	if len(runs) > 0 {
		x.covered = runs[len(runs)-1].to
	}
	x.durable = x.covered
	x.active = x.newBuffer(x.covered)
	x.wg.Add(2)
	go x.writer()
	go x.merger()
	return x, nil
}

// load reads dir: it deletes temporary files and runs beyond limit, builds
// the chain from leaf 0 preferring the largest run starting at each point,
// opens the chain's runs and deletes every other run file.
func (x *Index) load(limit uint64) ([]*run, error) {
	ents, err := os.ReadDir(x.dir)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", x.name, err)
	}
	type cand struct {
		name     string
		from, to uint64
	}
	var cands []cand
	var drop []string // names to delete, once the chain has opened
	for _, e := range ents {
		name := e.Name()
		switch from, to, ok := parseRunName(name); {
		case strings.HasSuffix(name, tmpSuffix) && strings.HasPrefix(name, runPrefix):
			x.log.Info(x.name+": deleting an unfinished run (a crash or failure while writing it)", "file", filepath.Join(x.dir, name))
			drop = append(drop, name)
		case !ok || e.IsDir():
			// Not ours: leave it.
		case from >= to:
			return nil, damaged(filepath.Join(x.dir, name), 0, fmt.Sprintf("the name's range [%d, %d) is empty", from, to))
		case to > limit:
			x.log.Info(x.name+": deleting a run beyond the log's tree size (the log was restored from an older backup)",
				"file", filepath.Join(x.dir, name), "tree_size", limit)
			drop = append(drop, name)
		default:
			cands = append(cands, cand{name, from, to})
		}
	}
	// By start, then the largest first.
	slices.SortFunc(cands, func(a, b cand) int {
		if a.from != b.from {
			return cmp.Compare(a.from, b.from)
		}
		return cmp.Compare(b.to, a.to)
	})
	var chain []cand
	var pos uint64
	for _, c := range cands {
		switch {
		case c.from == pos:
			chain = append(chain, c)
			pos = c.to
		case c.from < pos:
			x.log.Info(x.name+": deleting a run a larger run covers (the input of a finished merge)", "file", filepath.Join(x.dir, c.name))
			drop = append(drop, c.name)
		default:
			x.log.Info(x.name+": deleting a run after a gap in the chain (its leaves are indexed again from the log)",
				"file", filepath.Join(x.dir, c.name), "gap_at", pos)
			drop = append(drop, c.name)
		}
	}
	runs := make([]*run, 0, len(chain))
	fail := func(err error) ([]*run, error) {
		for _, r := range runs {
			r.f.Close()
		}
		return nil, fmt.Errorf("opening %s: %w", x.name, err)
	}
	for _, c := range chain {
		r, err := openRun(filepath.Join(x.dir, c.name), c.from, c.to)
		if err != nil {
			return fail(err)
		}
		x.adopt(r)
		runs = append(runs, r)
	}
	for _, name := range drop {
		if err := os.Remove(filepath.Join(x.dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fail(err)
		}
	}
	if len(drop) > 0 {
		if err := atomicfile.SyncDir(x.dir); err != nil {
			return fail(err)
		}
	}
	return runs, nil
}

// adopt gives r the index's reference and its release hook.
func (x *Index) adopt(r *run) {
	r.refs.Store(1)
	r.onRelease = x.onRelease
}

func (x *Index) onRelease(r *run) {
	if err := r.f.Close(); err != nil {
		x.log.Warn(x.name+": closing a run", "file", r.path, "err", err)
	}
	if r.obsolete.Load() {
		if err := os.Remove(r.path); err != nil {
			x.log.Warn(x.name+": deleting a merged run (Open deletes it next time)", "file", r.path, "err", err)
		}
	}
}

// newBuffer starts a buffer at leaf base. Appends may reallocate its keys
// (beyond 65,536): a snapshot keeps the old array, whose keys never change.
// Its hash table is sized for FlushEntries keys now, allocated by the first
// Append and never moved.
func (x *Index) newBuffer(base uint64) *buffer {
	return &buffer{base: base, keys: make([]Key, 0, min(x.flush, 1<<16)), size: tableSlots(x.flush), seed: x.seed}
}

// Covered returns the index of the next leaf Append expects: every leaf below it is findable.
func (x *Index) Covered() uint64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.covered
}

// Durable returns the end of the runs on disk (<= Covered): what survives a crash.
func (x *Index) Durable() uint64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.durable
}

// Append adds the keys of leaves [first, first+len(keys)). first must equal Covered() (else an error
// naming both). It copies keys (the caller reuses its slice). It does not wait for disk: when the memory
// buffer reaches FlushEntries it is handed to the background writer; Append blocks only if two buffers
// are already waiting to be written (back-pressure, so memory is bounded). A background write/merge
// failure is returned by every later Append and by Close (sticky), wrapped with what failed; reads go on.
// Safe for concurrent use with Lookup/Verify/Durable; Appends themselves come from one goroutine.
func (x *Index) Append(first uint64, keys []Key) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if err := x.refuseLocked(); err != nil {
		return err
	}
	if first != x.covered {
		return fmt.Errorf("appending to %s %s: leaves from %d, but the index covers %d (append from Covered())", x.name, x.dir, first, x.covered)
	}
	for len(keys) > 0 {
		a := x.active
		n := min(len(keys), x.flush-len(a.keys))
		a.add(keys[:n])
		keys = keys[n:]
		x.covered += uint64(n)
		if len(a.keys) == x.flush {
			if err := x.sealLocked(); err != nil {
				return err
			}
		}
	}
	return nil
}

// refuseLocked returns why Append or Flush cannot go on: ErrClosed after
// Close, else the sticky background failure, else nil.
func (x *Index) refuseLocked() error {
	if x.stopping {
		return ErrClosed
	}
	return x.err
}

// sealLocked hands the active buffer to the writer, waiting while two are
// already waiting, and starts a new one.
func (x *Index) sealLocked() error {
	for len(x.imm) >= 2 && x.err == nil && !x.stopping {
		x.cond.Wait()
	}
	if x.err != nil {
		return x.err
	}
	if x.stopping {
		return ErrClosed // Close took the buffer
	}
	x.imm = append(x.imm, x.active)
	x.active = x.newBuffer(x.covered)
	x.cond.Broadcast()
	return nil
}

// Flush writes the buffered keys as a run and waits for it and any pending background writes.
func (x *Index) Flush() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if err := x.refuseLocked(); err != nil {
		return err
	}
	if len(x.active.keys) > 0 {
		if err := x.sealLocked(); err != nil {
			return err
		}
	}
	for len(x.imm) > 0 && x.err == nil {
		x.cond.Wait()
	}
	return x.err
}

// Close flushes (so a restart finds everything on disk), stops the background goroutines (abandoning
// a merge in progress: it leaves its inputs, never a gap), closes files. Idempotent: every call returns
// the first call's result, which is the sticky background failure if there was one. After Close,
// Append/Lookup/Verify/Flush return ErrClosed; Covered and Durable keep their last values.
func (x *Index) Close() error {
	x.once.Do(func() {
		x.mu.Lock()
		if x.err == nil && len(x.active.keys) > 0 {
			// No back-pressure: the writer drains every buffer before it stops.
			x.imm = append(x.imm, x.active)
			x.active = x.newBuffer(x.covered)
		}
		x.stopping = true
		x.cond.Broadcast()
		x.mu.Unlock()
		x.abort.Store(true)
		x.wg.Wait()
		x.mu.Lock()
		runs := x.runs
		x.runs = nil
		x.cerr = x.err
		x.cond.Broadcast()
		x.mu.Unlock()
		for _, r := range runs {
			r.release()
		}
	})
	return x.cerr
}

// Stats describes the index at one moment.
type Stats struct {
	Runs     int    // run files in the chain
	Bytes    int64  // their total size
	Buffered int    // keys in memory, not yet in a run
	Merges   uint64 // merges installed since Open
	Flushes  uint64 // buffers written as runs since Open
}

// Stats returns the index's figures now.
func (x *Index) Stats() Stats {
	x.mu.Lock()
	defer x.mu.Unlock()
	s := Stats{Runs: len(x.runs), Merges: x.merges, Flushes: x.flushes, Buffered: len(x.active.keys)}
	for _, r := range x.runs {
		s.Bytes += r.size()
	}
	for _, b := range x.imm {
		s.Buffered += len(b.keys)
	}
	return s
}

// snapshotInto takes what a reader sees: it appends the buffers (oldest
// first, their keys slices fixed now) to bufs and the runs (oldest first,
// acquired so that a merge replacing them does not close them under the
// reader; releaseRuns gives them back) to runs. A caller passing arrays of
// its own stack takes a snapshot without allocating (Lookup's hot path).
func (x *Index) snapshotInto(bufs []buffer, runs []*run) ([]buffer, []*run, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.stopping {
		return nil, nil, ErrClosed
	}
	for _, b := range x.imm {
		bufs = append(bufs, *b)
	}
	bufs = append(bufs, *x.active) // the slice header: later appends land beyond its length, or in a new array
	runs = append(runs, x.runs...)
	for _, r := range runs {
		r.acquire()
	}
	return bufs, runs, nil
}

func releaseRuns(runs []*run) {
	for _, r := range runs {
		r.release()
	}
}

// Lookup calls fn with the index of every leaf whose key is k (memory buffers first, then runs newest
// first), until fn returns false: a memory buffer costs a probe of its hash table (no allocation), a
// run one read. Candidates only: the caller confirms each on the leaf. A miss calls fn never and
// returns nil. Safe for concurrent use; a merge finishing meanwhile does not break a lookup
// in progress (runs are reference-counted: a replaced run's file is closed and removed when its last
// reader is done).
func (x *Index) Lookup(k Key, fn func(index uint64) bool) error {
	var bufArr [3]buffer // at most two full buffers and the active one
	var runArr [32]*run  // ~25 runs at 100 million leaves; more spill to the heap
	bufs, runs, err := x.snapshotInto(bufArr[:0], runArr[:0])
	if err != nil {
		return err
	}
	defer releaseRuns(runs)
	for i := len(bufs) - 1; i >= 0; i-- {
		if !bufs[i].lookup(&k, fn) {
			return nil
		}
	}
	for i := len(runs) - 1; i >= 0; i-- {
		more, err := runs[i].lookup(&k, fn)
		if err != nil {
			return fmt.Errorf("looking up a key in the %s: %w", x.name, err)
		}
		if !more {
			return nil
		}
	}
	return nil
}

// Verify is in verify.go; the background goroutines follow.

// writer writes full buffers as runs, oldest first, until Close has
// drained them or a write fails.
func (x *Index) writer() {
	defer x.wg.Done()
	for {
		x.mu.Lock()
		for len(x.imm) == 0 && !x.stopping && x.err == nil {
			x.cond.Wait()
		}
		if x.err != nil || len(x.imm) == 0 {
			x.mu.Unlock()
			return
		}
		b := x.imm[0]
		x.mu.Unlock()

		r, err := x.writeBuffer(b)

		x.mu.Lock()
		if err != nil {
			x.err = fmt.Errorf("%s: writing leaves [%d, %d) as a run: %w", x.name, b.base, b.base+uint64(len(b.keys)), err)
			x.log.Error(x.name+": background write failed; appends stop until the index is reopened", "err", err)
		} else {
			x.adopt(r)
			x.runs = append(x.runs, r)
			x.durable = r.to
			x.imm[0] = nil
			x.imm = x.imm[1:]
			x.flushes++
		}
		x.cond.Broadcast()
		x.mu.Unlock()
	}
}

// writeBuffer sorts b's records (in a copy: readers may be scanning b) and
// writes them as a run.
func (x *Index) writeBuffer(b *buffer) (*run, error) {
	recs := make([]rec, len(b.keys))
	for i := range b.keys {
		recs[i] = recOf(&b.keys[i], b.base+uint64(i))
	}
	recs = sortRecs(recs)
	w, err := createRun(x.dir, b.base, b.base+uint64(len(recs)))
	if err != nil {
		return nil, err
	}
	for _, r := range recs {
		w.add(r)
	}
	return w.finish()
}
