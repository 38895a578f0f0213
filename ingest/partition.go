package ingest

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"iter"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/grantline/grantline/internal/diskfree"
	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/event"
	"github.com/grantline/grantline/rules"
)

// A partitioned evaluation (docs/design.md "Streamed evaluation", "Reading
// the log sequentially") reads the leaves of a full evaluation in one
// sequential pass over the log instead of a subject-index scan and a point
// read per leaf: (1) from the subject index, the subjects in order with
// their entry counts, cut into consecutive subject ranges of at most
// EvaluateScan.PartitionBytes of leaves each; (2) one pass over the log in
// index order appending each leaf to its range's spill file; (3) range by
// range, in subject order, the spill file read back with plain reads,
// grouped by subject and served to the rules engine from memory. Chains the
// rules read for other subjects (owners, credential holders) outside the
// ranges in memory fall back to the point reads. When the rule set's
// source index (backdated-closure) scans the log, that scan is the pass.

// ScanMode says how a full evaluation (no subjects named) reads the chains.
type ScanMode int

const (
	// ScanAuto partitions when the store's files are larger than half of
	// EvaluateScan.MappedBound (the bound on mapped files: the reclaimer
	// gives pages up from 80% of it, and past that point reads fault
	// leaves in from disk again); with no bound it never does.
	ScanAuto ScanMode = iota
	// ScanOn always partitions a full evaluation.
	ScanOn
	// ScanOff always reads chains by subject index and point reads.
	ScanOff
)

var scanModeNames = map[ScanMode]string{ScanAuto: "auto", ScanOn: "on", ScanOff: "off"}

func (m ScanMode) String() string { return scanModeNames[m] }

// ParseScanMode reads "auto", "on" or "off".
func ParseScanMode(s string) (ScanMode, error) {
	for m, name := range scanModeNames {
		if s == name {
			return m, nil
		}
	}
	return ScanAuto, fmt.Errorf("%q is not a scan mode: want auto, on or off", s)
}

// EvaluateScan configures partitioned evaluation (Config.EvaluateScan).
type EvaluateScan struct {
	Mode ScanMode
	// Dir holds the spill files, in Dir/SpillDirName, one temporary
	// directory per evaluation, removed when it ends; New removes what a
	// crash left there. Empty: never partitioned.
	Dir string
	// StoreDir is the store's directory: ScanAuto compares the total size
	// of its files with MappedBound.
	StoreDir    string
	MappedBound int64
	// PartitionBytes bounds the spilled bytes (leaves, ids, indexes) of one
	// subject range, which the evaluation holds in memory while it
	// evaluates the range (three at a time at most: the one before while
	// its last subjects finish, and the next, read ahead);
	// 0 is DefaultPartitionBytes. A single chain longer than that is one
	// range.
	PartitionBytes int64
}

// SpillDirName is the directory under EvaluateScan.Dir holding the spill
// files of evaluations in progress.
const SpillDirName = "evaluate-spill"

// DefaultPartitionBytes is EvaluateScan.PartitionBytes' default.
const DefaultPartitionBytes = 16 << 20

// ErrSpillSpace is a partitioned evaluation's refusal to start on a disk
// without room for its spill files.
var ErrSpillSpace = errors.New("not enough free disk for the evaluation's spill files")

// spillRoot is where the spill directories go; "" when disabled.
func (c EvaluateScan) spillRoot() string {
	if c.Dir == "" {
		return ""
	}
	return filepath.Join(c.Dir, SpillDirName)
}

// removeSpillLeftovers removes the spill files of evaluations a crash
// interrupted. Only SpillDirName is touched, never Dir itself.
func removeSpillLeftovers(c EvaluateScan, log *slog.Logger) error {
	root := c.spillRoot()
	if root == "" {
		return nil
	}
	ents, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("removing the spill files of interrupted evaluations: %w", err)
	}
	if len(ents) > 0 {
		log.Info("removing the spill files of interrupted evaluations", "dir", root, "entries", len(ents))
	}
	if err := os.RemoveAll(root); err != nil {
		return fmt.Errorf("removing the spill files of interrupted evaluations in %s: %w", root, err)
	}
	return nil
}

// spillSpace is where partitioned evaluations reserve the disk for their
// spill files: the process's, so that evaluations running at once (on one
// server or several in the process) do not each count the same free bytes.
// A variable for tests, which give it a fake free-space figure.
var spillSpace = diskfree.Process

// subjectCounter is the Ledger upgrade a partitioned evaluation needs
// (ledger.Log.ForEachSubjectCount).
type subjectCounter interface {
	ForEachSubjectCount(ctx context.Context, size uint64, fn func(subject string, entries uint64) error) error
}

// storeBytes is the total size of the files under dir.
func storeBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// usePartitions decides whether a full evaluation of cs is partitioned.
func (s *Server) usePartitions(cs *chainSource) bool {
	c := s.cfg.EvaluateScan
	if c.Dir == "" || c.Mode == ScanOff || cs.size == 0 {
		return false
	}
	if _, ok := cs.l.(subjectCounter); !ok {
		return false
	}
	if _, ok := cs.l.(entryScanner); !ok {
		return false
	}
	if c.Mode == ScanOn {
		return true
	}
	return c.MappedBound > 0 && c.StoreDir != "" && storeBytes(c.StoreDir) > c.MappedBound/2
}

// The record of a leaf in a spill file: uvarint len(subject), subject,
// big-endian uint64 index, uvarint len(leaf), leaf.
const recordOverhead = 2 + 8 + 3

// partSource is the ChainSource of a partitioned evaluation. Its Chain
// serves the ranges in memory and falls back to cs's point reads for the
// others; ScanLog tees the source index's scan into the spill files while
// the pass has not been made. Safe for concurrent use.
type partSource struct {
	*chainSource
	dir    string // this evaluation's spill directory
	log    *slog.Logger
	res    *diskfree.Reservation // its spill's disk, in spillSpace, until Close
	need   int64                 // the bytes reserved
	ranges []*partRange
	firsts []string // ranges[i].first, for the search
	wbuf   int      // bytes buffered per range before a write
	open   bool     // keep the spill files open while writing

	mu      sync.Mutex
	passed  bool   // the pass is made (or being made): no more teeing
	covered []span // ranges of the log the tee saw
	cur     int    // the range of the last subject yielded; -1 before
	loaded  []int  // ranges in memory
	stats   partStats

	// next is the range being read ahead, while the one before it is
	// evaluated; only enter and Close touch it (never at once: the
	// sequence has ended when Close runs).
	next *readAhead
}

// readAhead is a range read on its own goroutine; done is closed when the
// fields are set.
type readAhead struct {
	ri     int
	done   chan struct{}
	data   []byte
	chains map[string][]leafRef
	err    error
}

type span struct{ start, end uint64 }

type partStats struct {
	spilledBytes                 int64
	teed                         bool
	served, fellBack, loadedRngs int
	passTime, loadTime           time.Duration
}

// partRange is a range of consecutive subjects and, once loaded, their
// leaves.
type partRange struct {
	first    string
	planned  uint64 // entries of its subjects below the tree size, by the subject index
	spilled  uint64
	path     string
	f        *os.File
	buf      []byte
	done     bool // loaded and let go: never loaded again
	data     []byte
	chains   map[string][]leafRef
	awaiting map[string]struct{} // yielded subjects whose chain was not asked for yet
}

// leafRef is a leaf in a loaded range's data.
type leafRef struct {
	index    uint64
	off, len int
}

// newPartSource plans a partitioned evaluation of cs's tree: it samples
// leaves for their size, cuts the subjects into ranges, reserves the disk
// for the spill files in spillSpace (refused with ErrSpillSpace when it
// does not fit) and makes the spill directory. The caller must Close it,
// which releases the reservation.
func (s *Server) newPartSource(ctx context.Context, cs *chainSource) (*partSource, error) {
	c := s.cfg.EvaluateScan
	limit := c.PartitionBytes
	if limit <= 0 {
		limit = DefaultPartitionBytes
	}
	p := &partSource{chainSource: cs, log: s.log, cur: -1}
	per, err := p.sampleRecordBytes(ctx)
	if err != nil {
		return nil, err
	}
	var total uint64
	var cur *partRange
	err = cs.l.(subjectCounter).ForEachSubjectCount(ctx, cs.size, func(sub string, n uint64) error {
		if cur == nil || (cur.planned > 0 && float64(cur.planned+n)*per > float64(limit)) {
			cur = &partRange{first: sub}
			p.ranges = append(p.ranges, cur)
			p.firsts = append(p.firsts, sub)
		}
		cur.planned += n
		total += n
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("planning the partitioned evaluation: reading the subject index: %w", err)
	}
	root := c.spillRoot()
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("making the spill directory for a partitioned evaluation: %w", err)
	}
	need := int64(float64(total)*per*1.1) + 16<<20
	// Reserved until Close: the evaluations already running have their
	// spill to write too (docs/design.md "Streamed evaluation").
	if p.res, err = spillSpace.Reserve(root, need); err != nil {
		var short *diskfree.ShortError
		if !errors.As(err, &short) {
			return nil, fmt.Errorf("reserving disk for a partitioned evaluation: %w", err)
		}
		others, todo := "", ""
		if short.Others > 0 {
			others = fmt.Sprintf(", and the %d partitioned evaluation(s) already running reserved %d MiB of it for spill files they have yet to write", short.Others, short.Reserved>>20)
			todo = "wait for them to end, "
		}
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf(
			"%w: evaluating all subjects by one sequential read of the log (serve --evaluate-scan) spills the %d entries' leaves to %s, about %d MiB; %d MiB are free there%s; %sfree disk space, or restart the server with --evaluate-scan off, which needs no disk but faults pages in from disk when the store is larger than --max-mapped (docs/operations.md \"Disk for evaluation\")",
			ErrSpillSpace, total, root, need>>20, short.Free>>20, others, todo))
	}
	p.need = need
	if p.dir, err = os.MkdirTemp(root, "eval-"); err != nil {
		p.res.Release()
		return nil, fmt.Errorf("making the spill directory for a partitioned evaluation: %w", err)
	}
	for i, r := range p.ranges {
		r.path = filepath.Join(p.dir, fmt.Sprintf("range-%06d", i))
	}
	p.open = len(p.ranges) <= maxOpenSpills
	p.wbuf = int(min(64<<10, max(4<<10, limit/int64(len(p.ranges)+1))))
	return p, nil
}

// maxOpenSpills is how many spill files the pass keeps open; with more
// ranges each write opens and closes its file.
var maxOpenSpills = 512 // a variable for tests

// sampleRecordBytes estimates a spill record's mean size from up to 1,024
// leaves at four places in the log.
func (p *partSource) sampleRecordBytes(ctx context.Context) (float64, error) {
	var n, bytes int
	var v subjectVisitor
	for k := range uint64(4) {
		start := p.size * k / 4
		err := p.chainSource.ScanLog(ctx, start, min(start+256, p.size), func(e rules.Entry) error {
			v.subject = nil
			if err := event.VisitLeaf(e.Leaf, &v); err == nil && len(v.subject) > 0 {
				n++
				bytes += recordOverhead + len(v.subject) + len(e.Leaf)
			}
			return nil
		})
		if err != nil {
			return 0, fmt.Errorf("planning the partitioned evaluation: %w", err)
		}
	}
	if n == 0 {
		return 600, nil
	}
	return float64(bytes) / float64(n), nil
}

// rangeOf returns the range holding subject, or -1 if it sorts before the
// first range.
func (p *partSource) rangeOf(subject []byte) int {
	lo, hi := 0, len(p.firsts) // the first range whose first is after subject
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if p.firsts[m] <= string(subject) {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo - 1
}

// subjectVisitor keeps a leaf's subject.id (aliasing the leaf).
type subjectVisitor struct {
	event.Ignore
	subject []byte
}

func (v *subjectVisitor) String(f event.Field, b []byte) {
	if f == event.SubjectID {
		v.subject = b
	}
}

// spill appends a leaf to its range's spill file; leaves that are in no
// chain (map leaves, events without a subject) are skipped.
func (p *partSource) spill(v *subjectVisitor, e rules.Entry) error {
	v.subject = nil
	err := event.VisitLeaf(e.Leaf, v)
	if errors.Is(err, event.ErrMapLeaf) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: leaf %d does not decode: %w; run grantline fsck", ledger.ErrCorrupt, e.Index, err)
	}
	if len(v.subject) == 0 {
		return nil // no subject: in no chain, and not in the subject index
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	ri := p.rangeOf(v.subject)
	if ri < 0 {
		return fmt.Errorf("%w: leaf %d has subject %q, which the subject index does not hold; run grantline fsck", ledger.ErrCorrupt, e.Index, v.subject)
	}
	r := p.ranges[ri]
	r.buf = binary.AppendUvarint(r.buf, uint64(len(v.subject)))
	r.buf = append(r.buf, v.subject...)
	r.buf = binary.BigEndian.AppendUint64(r.buf, e.Index)
	r.buf = binary.AppendUvarint(r.buf, uint64(len(e.Leaf)))
	r.buf = append(r.buf, e.Leaf...)
	r.spilled++
	if len(r.buf) >= p.wbuf {
		return p.flush(r, !p.open)
	}
	return nil
}

// flush writes r's buffer to its spill file, closing it after when
// closeAfter. p.mu is held.
func (p *partSource) flush(r *partRange, closeAfter bool) error {
	if len(r.buf) > 0 {
		if r.f == nil {
			f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
			if err != nil {
				return fmt.Errorf("writing a spill file of the partitioned evaluation: %w", err)
			}
			r.f = f
		}
		if _, err := r.f.Write(r.buf); err != nil {
			return fmt.Errorf("writing a spill file of the partitioned evaluation (%s): %w; it needs about the size of the leaves free on disk (docs/operations.md \"Disk for evaluation\")", r.path, err)
		}
		p.stats.spilledBytes += int64(len(r.buf))
		p.res.Wrote(p.stats.spilledBytes)
		r.buf = r.buf[:0]
	}
	if closeAfter && r.f != nil {
		err := r.f.Close()
		r.f = nil
		if err != nil {
			return fmt.Errorf("writing a spill file of the partitioned evaluation (%s): %w", r.path, err)
		}
	}
	return nil
}

// ScanLog is chainSource's, teeing the leaves into the spill files until
// the pass is made: the source index of backdated-closure reads the whole
// log once before the first subject is evaluated, and that read then is
// the pass (rules.LogScanner).
func (p *partSource) ScanLog(ctx context.Context, start, end uint64, fn func(rules.Entry) error) error {
	p.mu.Lock()
	tee := !p.passed
	p.mu.Unlock()
	if !tee {
		return p.chainSource.ScanLog(ctx, start, end, fn)
	}
	var v subjectVisitor
	next := start
	err := p.chainSource.ScanLog(ctx, start, end, func(e rules.Entry) error {
		if err := p.spill(&v, e); err != nil {
			return err
		}
		next = e.Index + 1
		return fn(e)
	})
	p.mu.Lock()
	p.covered = append(p.covered, span{start, next})
	p.mu.Unlock()
	return err
}

// teeComplete reports whether the tee saw every entry of the log exactly
// once. p.mu is held.
func (p *partSource) teeComplete() bool {
	if len(p.covered) == 0 {
		return false
	}
	cov := slices.Clone(p.covered)
	slices.SortFunc(cov, func(a, b span) int { return cmp.Compare(a.start, b.start) })
	at := uint64(0)
	for _, s := range cov {
		if s.start != at {
			return false // a gap, or an entry seen twice
		}
		at = s.end
	}
	return at == p.size
}

// makePass finishes the spill files: kept from the tee when it saw the
// whole log once, else written by one read of the log in index order. It
// checks each range holds the entries the subject index counts.
func (p *partSource) makePass(ctx context.Context) error {
	t0 := time.Now()
	p.mu.Lock()
	p.passed = true
	teed := p.teeComplete()
	if !teed && len(p.covered) > 0 {
		// Start over: the tee saw part of the log only.
		for _, r := range p.ranges {
			if r.f != nil {
				r.f.Close()
				r.f = nil
			}
			os.Remove(r.path)
			r.buf, r.spilled = r.buf[:0], 0
		}
		p.stats.spilledBytes = 0
		p.res.Wrote(0) // removed: to be written again
	}
	p.mu.Unlock()
	if !teed {
		var v subjectVisitor
		err := p.chainSource.ScanLog(ctx, 0, p.size, func(e rules.Entry) error { return p.spill(&v, e) })
		if err != nil {
			return fmt.Errorf("reading the log for the partitioned evaluation: %w", err)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.ranges {
		if err := p.flush(r, true); err != nil {
			return err
		}
		if r.spilled != r.planned {
			return fmt.Errorf("%w: the subject index counts %d entries for the subjects from %q on, and the log holds %d of theirs; run grantline fsck", ledger.ErrCorrupt, r.planned, r.first, r.spilled)
		}
		r.buf = nil
	}
	p.stats.teed, p.stats.passTime = teed, time.Since(t0)
	return nil
}

// subjects yields the subjects of the tree in subject-index order, making
// the pass before the first and loading each range as its first subject is
// yielded.
func (p *partSource) subjects(ctx context.Context) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		if err := p.makePass(ctx); err != nil {
			yield("", err)
			return
		}
		for s, err := range LedgerSubjects(ctx, p.l, p.size) {
			if err == nil {
				err = p.enter(s)
			}
			if err != nil {
				yield("", err)
				return
			}
			if !yield(s, nil) {
				return
			}
		}
	}
}

// enter notes that subject is about to be evaluated, loading its range
// and letting go of the ranges before it whose subjects have all been
// read.
func (p *partSource) enter(subject string) error {
	ri := p.rangeOf([]byte(subject))
	if ri < 0 {
		return nil // not planned: its chain is read by point reads
	}
	p.mu.Lock()
	r := p.ranges[ri]
	load := ri != p.cur && !r.done && r.chains == nil
	p.mu.Unlock()
	if load {
		// Outside the lock: workers go on reading the ranges in memory.
		// enter is called by the subject sequence only, one at a time.
		t0 := time.Now()
		var data []byte
		var chains map[string][]leafRef
		var err error
		if ra := p.next; ra != nil {
			<-ra.done
			p.next = nil
			if ra.ri == ri {
				data, chains, err = ra.data, ra.chains, ra.err
			}
		}
		if chains == nil && err == nil {
			data, chains, err = loadRange(r)
		}
		if err != nil {
			return err
		}
		// Read the next range while this one is evaluated: its file
		// may have to come from disk.
		if ri+1 < len(p.ranges) {
			ra := &readAhead{ri: ri + 1, done: make(chan struct{})}
			p.next = ra
			go func() {
				defer close(ra.done)
				ra.data, ra.chains, ra.err = loadRange(p.ranges[ra.ri])
			}()
		}
		p.mu.Lock()
		r.data, r.chains, r.awaiting = data, chains, map[string]struct{}{}
		p.loaded = append(p.loaded, ri)
		p.stats.loadedRngs++
		p.stats.loadTime += time.Since(t0)
		p.mu.Unlock()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if ri != p.cur {
		p.cur = ri
		for _, q := range slices.Clone(p.loaded) {
			if q != ri && len(p.ranges[q].awaiting) == 0 {
				p.unload(q)
			}
		}
	}
	if r.awaiting != nil {
		r.awaiting[subject] = struct{}{}
	}
	return nil
}

// unload lets go of range q's leaves. p.mu is held.
func (p *partSource) unload(q int) {
	r := p.ranges[q]
	r.data, r.chains, r.awaiting, r.done = nil, nil, nil, true
	p.loaded = slices.DeleteFunc(p.loaded, func(x int) bool { return x == q })
}

// loadRange reads r's spill file (plain reads: no mapping counts against
// --max-mapped) and groups its leaves by subject, each chain in index
// order. The file is removed once read.
func loadRange(r *partRange) ([]byte, map[string][]leafRef, error) {
	data, err := os.ReadFile(r.path)
	if err != nil {
		return nil, nil, fmt.Errorf("reading a spill file of the partitioned evaluation: %w", err)
	}
	os.Remove(r.path) // read: its disk space is no longer needed
	chains := map[string][]leafRef{}
	bad := func(off int) error {
		return fmt.Errorf("%w: the spill file %s of the partitioned evaluation is malformed at byte %d (the disk returned other bytes than were written)", ledger.ErrStorage, r.path, off)
	}
	n := uint64(0)
	for off := 0; off < len(data); {
		start := off
		sl, k := binary.Uvarint(data[off:])
		if k <= 0 || uint64(len(data)-off-k) < sl+8 {
			return nil, nil, bad(start)
		}
		off += k
		sub := data[off : off+int(sl)]
		off += int(sl)
		index := binary.BigEndian.Uint64(data[off:])
		off += 8
		ll, k := binary.Uvarint(data[off:])
		if k <= 0 || uint64(len(data)-off-k) < ll {
			return nil, nil, bad(start)
		}
		off += k
		refs, ok := chains[string(sub)]
		if !ok {
			refs = make([]leafRef, 0, 8)
		}
		chains[string(sub)] = append(refs, leafRef{index: index, off: off, len: int(ll)})
		off += int(ll)
		n++
	}
	if n != r.spilled {
		return nil, nil, fmt.Errorf("%w: the spill file %s of the partitioned evaluation holds %d leaves, %d were written", ledger.ErrStorage, r.path, n, r.spilled)
	}
	for _, refs := range chains {
		// The tee's parallel scan writes pieces of the log out of order.
		if !slices.IsSortedFunc(refs, func(a, b leafRef) int { return cmp.Compare(a.index, b.index) }) {
			slices.SortFunc(refs, func(a, b leafRef) int { return cmp.Compare(a.index, b.index) })
		}
	}
	return data, chains, nil
}

// Chain serves a chain of a range in memory as a copy (so that chains the
// engine keeps, such as owners', do not hold a whole range), and reads
// any other by point reads.
func (p *partSource) Chain(ctx context.Context, subject string) ([]rules.Entry, error) {
	p.mu.Lock()
	var refs []leafRef
	var data []byte
	found := false
	if ri := p.rangeOf([]byte(subject)); ri >= 0 {
		r := p.ranges[ri]
		if r.chains != nil {
			refs, found = r.chains[subject]
			data = r.data
			if _, ok := r.awaiting[subject]; ok {
				delete(r.awaiting, subject)
				if ri != p.cur && len(r.awaiting) == 0 {
					p.unload(ri)
				}
			}
		}
	}
	if found {
		p.stats.served++
	} else {
		p.stats.fellBack++
	}
	p.mu.Unlock()
	if !found {
		return p.chainSource.Chain(ctx, subject)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	total := 0
	for _, ref := range refs {
		total += ref.len
	}
	buf := make([]byte, 0, total)
	out := make([]rules.Entry, len(refs))
	for i, ref := range refs {
		buf = append(buf, data[ref.off:ref.off+ref.len]...)
		out[i] = rules.Entry{Index: ref.index, Leaf: buf[len(buf)-ref.len : len(buf) : len(buf)]}
	}
	return out, nil
}

// Close removes the evaluation's spill files, whatever state it ended in.
func (p *partSource) Close() error {
	if p.next != nil {
		<-p.next.done
		p.next = nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.ranges {
		if r.f != nil {
			r.f.Close()
			r.f = nil
		}
		r.data, r.chains = nil, nil
	}
	err := os.RemoveAll(p.dir)
	p.res.Release()
	p.log.Info("partitioned evaluation", "ranges", len(p.ranges), "spill_reserved_bytes", p.need, "spilled_bytes", p.stats.spilledBytes,
		"pass_shared_with_source_index", p.stats.teed, "pass_seconds", p.stats.passTime.Seconds(),
		"range_wait_seconds", p.stats.loadTime.Seconds(), "chains_from_ranges", p.stats.served, "chains_by_point_reads", p.stats.fellBack)
	if err != nil {
		return fmt.Errorf("removing the spill files of an evaluation: %w", err)
	}
	return nil
}
