package ledger

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"path/filepath"
	"runtime"
	"sync"

	"filippo.io/torchwood/prefix"
	"github.com/transparency-dev/merkle/compact"
	"golang.org/x/mod/sumdb/note"

	"github.com/grantline/grantline/ledger/event"
	"github.com/grantline/grantline/ledger/runindex"
)

// fsckChunk is how many leaves one fsck job reads: 16 level-0 tiles.
const fsckChunk = 16 * tileWidth

// Fsck re-verifies the published log: it re-hashes every leaf, rebuilds
// every tile from scratch and compares it with the stored one, checks every
// stored checkpoint's signature and root, and the leaf-hash, dedupe and
// subject index entries of every leaf. report (may be nil) receives
// progress. The error names the first bad index, tile or checkpoint.
// On an open log it checks the tree of the published checkpoint; appends
// may go on meanwhile.
func (l *Log) Fsck(ctx context.Context, report func(format string, args ...any)) error {
	size := l.Latest().Size
	if err := l.waitIndexed(ctx, size); err != nil {
		return fmt.Errorf("fsck at size %d: %w", size, err)
	}
	lr := fsckRuns{hash: l.lh, dedupe: l.dd, to: size, dir: l.o.RunsDir}
	return fsck(ctx, l.st, l.ix, l.o.Verifier, size, size, size, true, lr, report)
}

// fsckRuns is what fsck checks of the runs (Options.RunsDir): with hash
// nil the leaf-hash and dedupe entries are in the index store (unless
// marked says they are in runs that were not given); otherwise the
// leaf-hash and dedupe runs must hold exactly the keys of the leaves below
// to.
type fsckRuns struct {
	hash, dedupe *runindex.Index
	marked       bool // the index store keeps no leaf-hash or dedupe entries (keyIndexedRuns)
	to           uint64
	dir          string
}

// on says that the leaf-hash and dedupe entries are not in the index store.
func (r fsckRuns) on() bool { return r.hash != nil || r.marked }

// Fsck checks the store of a log that is not open (it may be one Open
// refuses), as `grantline fsck` does, with v, the verifier of the log's key.
// With v nil (the keys are not at hand, e.g. right after a restore) it
// checks everything but the checkpoint signatures: each checkpoint's text
// is parsed and its root compared with the leaves, and all must name one
// origin; report is told that signatures were not checked. It does not
// close st.
func Fsck(ctx context.Context, st Store, v note.Verifier, report func(format string, args ...any)) error {
	return FsckWithIndex(ctx, st, nil, v, report)
}

// FsckWithIndex is Fsck for a log that keeps its indexes in a separate
// index store (Options.Index): ix, which it does not close either. The
// index entries of the leaves below the index store's watermark must match
// them exactly; the leaves above it are not indexed yet (the next Open
// indexes them), which it reports. With ix nil such a log's indexes are
// not checked, and report is told so; for a log whose indexes live in st,
// ix is ignored.
func FsckWithIndex(ctx context.Context, st, ix Store, v note.Verifier, report func(format string, args ...any)) error {
	return FsckWithRuns(ctx, st, ix, "", v, report)
}

// FsckWithRuns is FsckWithIndex for a log that keeps its leaf-hash and
// dedupe indexes in runs in runsDir (Options.RunsDir; "" if not at hand,
// and then they are not checked, which it reports). The runs must hold
// exactly the keys of the leaves they cover; the leaves beyond are not in
// them yet (the next Open appends them), which it reports. Like Open, it
// deletes what a crash left in runsDir (temporary files, the inputs of a
// finished merge) and runs beyond the tree (the main store was restored
// from an older backup).
func FsckWithRuns(ctx context.Context, st, ix Store, runsDir string, v note.Verifier, report func(format string, args ...any)) error {
	if report == nil {
		report = func(string, ...any) {}
	}
	if v == nil {
		report("fsck: no log verifier key: checkpoint signatures are NOT checked, only the tree's structure")
	}
	vals, err := st.Get(keyLatest, keyTree, keySeparateIndex)
	if err != nil {
		return storageErr(err, "reading the latest tree size")
	}
	separate := vals[2] != nil
	if !separate {
		ix = st
	} else if ix == nil {
		report("fsck: the log keeps its indexes in a separate index store, which was not given: indexes not checked")
	}
	if vals[0] == nil || len(vals[0]) != 8 || (vals[1] != nil && len(vals[1]) != 8) {
		return fmt.Errorf("%w: the latest tree size record is missing or malformed", ErrCorrupt)
	}
	cpSize := binary.BigEndian.Uint64(vals[0])
	size := cpSize
	if vals[1] != nil {
		size = binary.BigEndian.Uint64(vals[1])
	}
	if size < cpSize {
		return fmt.Errorf("%w: the tree size record says %d, below the latest checkpoint's %d", ErrCorrupt, size, cpSize)
	}
	indexed := size
	var lr fsckRuns
	if separate && ix != nil {
		w, err := ix.Get(keyIndexed, keyIndexedRuns)
		if err != nil {
			return storageErr(err, "reading the index store's watermark")
		}
		mark := w[0]
		if w[1] != nil {
			// The log keeps its leaf-hash and dedupe indexes in runs.
			mark, lr.marked = w[1], true
		}
		switch {
		case w[0] != nil && w[1] != nil:
			return fmt.Errorf("%w: the index store holds the watermarks of both layouts, with and without runs (the next Open empties and rebuilds it)", ErrCorrupt)
		case mark == nil:
			indexed = 0
		case len(mark) != 8:
			return fmt.Errorf("%w: the index store's watermark has %d bytes, want 8 (the next Open rebuilds the index store)", ErrCorrupt, len(mark))
		default:
			indexed = binary.BigEndian.Uint64(mark)
		}
		if indexed > size {
			return fmt.Errorf("%w: the index store indexes %d leaves but the tree has %d: it belongs to a longer log (was the main store restored from an older backup?); the next Open empties and rebuilds it", ErrCorrupt, indexed, size)
		}
		if indexed < size {
			report("fsck: the index store covers %d of %d leaves; the next Open indexes the rest from the leaves", indexed, size)
		}
	}
	switch {
	case !lr.marked:
	case runsDir == "":
		report("fsck: the log keeps its leaf-hash and dedupe indexes in runs, whose directory was not given: not checked")
	default:
		lr.dir, lr.to = runsDir, size
		for _, r := range []struct {
			sub, name string
			x         **runindex.Index
		}{{leafHashRuns, "leaf-hash index", &lr.hash}, {dedupeRuns, "dedupe index", &lr.dedupe}} {
			dir := filepath.Join(runsDir, r.sub)
			x, err := runindex.Open(dir, size, runindex.Options{Name: r.name})
			if errors.Is(err, runindex.ErrDamaged) {
				return fmt.Errorf("%w: opening the %s's runs in %s: %w; they are derived from the log: stop the server, delete %s and start it to rebuild them", ErrCorrupt, r.name, dir, err, runsDir)
			}
			if err != nil {
				return fmt.Errorf("%w: opening the %s's runs in %s: %w", ErrStorage, r.name, dir, err)
			}
			defer x.Close()
			*r.x = x
			lr.to = min(lr.to, x.Covered())
		}
		if lr.to < size {
			report("fsck: the runs cover %d of %d leaves; the next Open appends the rest", lr.to, size)
		}
	}
	return fsck(ctx, st, ix, v, cpSize, size, indexed, false, lr, report)
}

// Restorer is a Store that can load a backup written by its Backup method
// (see Log.Backup). ledger/badgerstore implements it.
type Restorer interface {
	Restore(r io.Reader) error
}

// Restore loads a backup written by Log.Backup into st, which must not hold
// a ledger yet and must implement Restorer. Run Fsck on it afterwards. It
// does not close st.
func Restore(ctx context.Context, st Store, r io.Reader) error {
	rs, ok := st.(Restorer)
	if !ok {
		return fmt.Errorf("restore: the store %T cannot restore backups", st)
	}
	vals, err := st.Get(keyLatest)
	if err != nil {
		return storageErr(err, "restore: reading the latest tree size")
	}
	if vals[0] != nil {
		return errors.New("restore: the store already holds a ledger; restore into an empty one")
	}
	if err := rs.Restore(r); err != nil {
		return fmt.Errorf("%w: restore: %w", ErrStorage, err)
	}
	return nil
}

// fsck checks the tree of size leaves whose latest checkpoint is at cpSize
// (below size when leaves wait for their checkpoint). live: appends may be
// going on, so leaves and index entries beyond size are not an error.
//
// It is one pass over the leaves, in chunks of fsckChunk checked by a
// bounded pool of workers (fsckWorkers), each chunk read by its own scan:
// a worker hashes and decodes its leaves, compares their hashes with the
// stored level-0 tiles and adds the index entries they need to a digest.
// This goroutine takes the chunks' leaf hashes in order, rebuilds the tree
// above level 0 and checks the higher tiles and every checkpoint's root.
// The three indexes are then read by range scans, not looked up leaf by
// leaf, and their digests compared with the leaves' (fsckIndexes); only
// when they differ does fsck look entries up one by one to name the first
// bad one. Memory stays bounded: at most 2 x workers chunks of leaf hashes
// (128 KiB each) are in flight, never the leaves of the whole log.
//
// The index entries are read from ix: st itself, or a separate index store
// (Options.Index); nil: the indexes are not checked. Only the entries of the
// leaves below indexed (size, or a separate index store's watermark) are
// checked: above it, a separate index store has not indexed them yet.
func fsck(ctx context.Context, st, ix Store, ver note.Verifier, cpSize, size, indexed uint64, live bool, lr fsckRuns, report func(string, ...any)) error {
	if report == nil {
		report = func(string, ...any) {}
	}
	report("fsck: checking a tree of %d leaves: checkpoints first", size)
	sizes, roots, err := fsckCheckpoints(st, ver, cpSize, live)
	if err != nil {
		return err
	}
	if size > cpSize {
		report("fsck: %d leaves after the latest checkpoint wait for the next one (Open signs them)", size-cpSize)
	}
	report("fsck: %d checkpoints verify; checking %d leaves", len(sizes), size)
	mapFmt, err := readMapFormat(st)
	if err != nil {
		return err
	}
	var fm *fsckMap
	if mapFmt != mapNone {
		fm = newFsckMap(sizes)
		report("fsck: the log has a subject map: re-deriving it from the leaves")
	}

	ctx, cancel := context.WithCancel(ctx)
	workers := fsckWorkers()
	jobs := make(chan func())
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for job := range jobs {
				job()
			}
		})
	}
	// Stop the workers before returning, on every path: the caller may
	// close st next.
	defer func() { cancel(); wg.Wait() }()

	// The leaf chunks in order, then the index scans. slots holds each
	// chunk's result channel in order; its capacity bounds the chunks
	// checked ahead of the tree rebuild.
	slots := make(chan chan fsckChunkResult, 2*workers)
	var idx fsckIndexes
	ranges := indexScanRanges()
	if ix == nil {
		ranges = nil
	}
	idx.scanned = make([]indexScan, len(ranges))
	go func() {
		defer close(jobs)
		defer close(slots)
		for start := uint64(0); start < size; start += fsckChunk {
			end := min(start+fsckChunk, size)
			res := make(chan fsckChunkResult, 1)
			select {
			case slots <- res:
			case <-ctx.Done():
				return
			}
			select {
			case jobs <- func() { res <- checkChunk(ctx, st, start, end, size, indexed, live, lr) }:
			case <-ctx.Done():
				return
			}
		}
		for n, r := range ranges {
			select {
			case jobs <- func() { idx.scanned[n] = scanIndex(ctx, ix, r, indexed) }:
			case <-ctx.Done():
				return
			}
		}
	}()

	t := &fsckTree{st: st, live: live, sizes: sizes, roots: roots, rng: (&compact.RangeFactory{Hash: hasher.HashChildren}).NewEmptyRange(0)}
	if err := t.checkRoots(); err != nil {
		return err
	}
	for res := range slots {
		var r fsckChunkResult
		select {
		case r = <-res:
		case <-ctx.Done():
			return ctx.Err()
		}
		if err := t.add(r); err != nil {
			return err
		}
		if err := fm.chunk(r); err != nil {
			return err
		}
		idx.leaves.add(&r.digest)
		idx.hashLeaves.add(&r.hashDigest)
		idx.dedupeLeaves.add(&r.dedupeDigest)
		if end := r.start + uint64(len(r.hashes)); end%(64*fsckChunk) == 0 || end == size {
			report("fsck: %d/%d leaves verified", end, size)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := t.finish(size); err != nil {
		return err
	}
	if fm != nil {
		// The map's records are where the indexes are; a separate index
		// store holds them up to its own watermark (keyMapped), and the
		// next Open re-derives the rest from the leaves.
		mapped := cpSize
		if ix != nil && ix != st {
			if mapped, err = mappedTo(ix); err != nil {
				return err
			}
		}
		switch {
		case ix == nil:
			report("fsck: the subject map's records are in the index store, which was not given: not checked")
		case mapped < cpSize:
			report("fsck: the index store holds the subject map records up to checkpoint %d of %d; the next Open re-derives the rest from the leaves", mapped, cpSize)
		default:
			if err := fm.checkStored(ctx, ix, mapFmt, cpSize, size == cpSize && mapped == cpSize && !live); err != nil {
				return err
			}
		}
		report("fsck: the subject map of %d subjects matches the leaves at every checkpoint", len(fm.states))
	}
	wg.Wait() // the producer queued every index scan; the workers finish them
	for _, s := range idx.scanned {
		if s.err != nil {
			return storageErr(s.err, "reading indexes")
		}
		idx.stored.add(&s.digest)
	}
	if ix != nil {
		if idx.leaves != idx.stored {
			report("fsck: the indexes do not match the leaves; looking for the first bad entry")
			return findIndexFault(context.WithoutCancel(ctx), st, ix, indexed, lr.on(), idx)
		}
		if lr.on() {
			report("fsck: the subject index matches the leaves")
		} else {
			report("fsck: leaf-hash, dedupe and subject indexes match the leaves")
		}
	}
	if lr.hash != nil {
		if err := checkRuns(ctx, st, lr.hash, kHash, lr.to, lr.dir, idx.hashLeaves, tileHashKeys, report); err != nil {
			return err
		}
		if err := checkRuns(ctx, st, lr.dedupe, kDedupe, lr.to, lr.dir, idx.dedupeLeaves, leafDedupeKeys, report); err != nil {
			return err
		}
	}

	vals, err := st.Get(leafKey(size))
	if err != nil {
		return storageErr(err, "reading leaves")
	}
	if vals[0] != nil && !live {
		return fmt.Errorf("%w: leaf %d exists beyond the tree (size %d)", ErrCorrupt, size, size)
	}
	report("fsck: ok: %d leaves, %d checkpoints, root %x", size, len(sizes), rootOf(t.rng))
	return nil
}

// fsckWorkers is how many goroutines fsck checks chunks with.
func fsckWorkers() int { return max(2, runtime.GOMAXPROCS(0)) }

// fsckCheckpoints reads every stored checkpoint up to cpSize and checks
// its signature (its text only when ver is nil) and origin; it returns
// their sizes and roots in order.
func fsckCheckpoints(st Store, ver note.Verifier, cpSize uint64, live bool) ([]uint64, [][32]byte, error) {
	var sizes []uint64
	var roots [][32]byte
	origin := ""
	err := st.Scan([]byte{kCheckpoint}, []byte{kCheckpoint + 1}, func(k, v []byte) error {
		if len(k) != 9 {
			return fmt.Errorf("%w: malformed checkpoint key %x", ErrCorrupt, k)
		}
		n := binary.BigEndian.Uint64(k[1:])
		var cp Checkpoint
		var err error
		if ver != nil {
			cp, err = parseCheckpoint(v, n, ver)
		} else {
			cp, err = parseUnverified(v, n)
		}
		if err != nil {
			return err
		}
		if origin == "" {
			origin = cp.Origin
		} else if cp.Origin != origin {
			return fmt.Errorf("%w: checkpoint %d is of origin %q but earlier ones of %q", ErrCorrupt, n, cp.Origin, origin)
		}
		if n > cpSize && !live {
			return fmt.Errorf("%w: checkpoint %d is beyond the latest tree size %d", ErrCorrupt, n, cpSize)
		}
		if n > cpSize {
			return errStop // published after this check started
		}
		sizes, roots = append(sizes, n), append(roots, cp.Root)
		return nil
	})
	if err != nil && err != errStop {
		return nil, nil, storageErr(err, "reading checkpoints")
	}
	if len(sizes) == 0 || sizes[len(sizes)-1] != cpSize {
		return nil, nil, fmt.Errorf("%w: the checkpoint of the latest tree size %d is missing", ErrCorrupt, cpSize)
	}
	return sizes, roots, nil
}

// fsckChunkResult is what a worker found in the leaves [start, start+len(hashes)).
type fsckChunkResult struct {
	start  uint64
	hashes [][32]byte // of the leaves read, in order
	digest indexDigest
	// hashDigest and dedupeDigest are the leaf-hash and dedupe entries'
	// digests when they are in runs.
	hashDigest, dedupeDigest indexDigest
	// err is the first fault found, at leaf errAt; hashes stop there or
	// go on past it (a leaf that does not decode still has a hash).
	err   error
	errAt uint64
	// suspect is the first leaf whose hash differs from its entry in the
	// stored level-0 tile, when that comes before err.
	suspect *leafSuspect
	// subjects are the leaves' subjects ("" for none or a map leaf), and
	// mapLeaves the map leaves, for fsckMap.
	subjects  []string
	mapLeaves []fsckMapLeaf
}

// fsckMapLeaf is a map leaf found by checkChunk.
type fsckMapLeaf struct {
	index uint64
	leaf  []byte
}

// leafSuspect is a leaf whose hash differs from its entry in the level-0
// tile. Either was altered; the signed tree above tells which: if the
// leaves give a checkpoint's root, the tile is wrong, otherwise the leaf.
type leafSuspect struct {
	index     uint64
	leafBytes int // -1: unknown
	hash      [32]byte
	stored    []byte // the tile's entry
}

func (s *leafSuspect) leafAltered(why string) error {
	if s.leafBytes == 0 {
		return fmt.Errorf("%w: leaf %d is empty in the store (its record was lost or could not be read) but tile 0/%d holds its hash %x, and %s; restore from a backup",
			ErrCorrupt, s.index, s.index/tileWidth, s.stored, why)
	}
	return fmt.Errorf("%w: leaf %d (%d bytes) hashes to %x but tile 0/%d holds %x, and %s: the stored leaf was altered; restore from a backup",
		ErrCorrupt, s.index, s.leafBytes, s.hash, s.index/tileWidth, s.stored, why)
}

func (s *leafSuspect) tileAltered(cp uint64) error {
	return fmt.Errorf("%w: tile 0/%d was altered: it holds %x for leaf %d, but that leaf hashes to %x and the leaves give the signed root of checkpoint %d; restore from a backup",
		ErrCorrupt, s.index/tileWidth, s.stored, s.index, s.hash, cp)
}

func (s *leafSuspect) unresolved() error {
	return fmt.Errorf("%w: leaf %d (%d bytes) hashes to %x but tile 0/%d holds %x: the leaf or the tile was altered (no signed checkpoint covers the leaf to tell which); restore from a backup",
		ErrCorrupt, s.index, s.leafBytes, s.hash, s.index/tileWidth, s.stored)
}

// checkChunk reads the leaves [start, end) of a tree of size leaves in one
// scan, hashes and decodes each, adds the index entries each needs to the
// digest, and compares the hashes with the stored level-0 tiles.
func checkChunk(ctx context.Context, st Store, start, end, size, indexed uint64, live bool, lr fsckRuns) fsckChunkResult {
	r := fsckChunkResult{start: start, hashes: make([][32]byte, 0, end-start), errAt: end}
	fail := func(at uint64, err error) {
		if r.err == nil || at < r.errAt {
			r.err, r.errAt = err, at
		}
	}
	next := start
	var key []byte
	var val [8]byte
	// addRun adds leaf i's leaf-hash or dedupe entry to the digest of the
	// store that holds it: the index store's, or the runs'.
	addRun := func(i uint64, key, val []byte) {
		switch {
		case !lr.on():
			if i < indexed {
				r.digest.addEntry(key, val)
			}
		case lr.hash != nil && i < lr.to && key[0] == kHash:
			r.hashDigest.addEntry(key, val)
		case lr.hash != nil && i < lr.to:
			r.dedupeDigest.addEntry(key, val)
		}
	}
	var zeroDedupe [1 + indexKeyLen]byte // a map leaf's key in the dedupe runs
	zeroDedupe[0] = kDedupe
	err := st.Scan(leafKey(start), leafKey(end), func(k, v []byte) error {
		i := binary.BigEndian.Uint64(k[1:])
		if i != next {
			fail(next, fmt.Errorf("%w: leaf %d is missing", ErrCorrupt, next))
			return errStop
		}
		if i%tileWidth == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		next++
		inIndex := i < indexed // above a separate index store's watermark: not indexed yet
		h := LeafHash(v)
		r.hashes = append(r.hashes, h)
		e, err := event.DecodeLeaf(v)
		if errors.Is(err, event.ErrMapLeaf) {
			// A map leaf has a leaf-hash entry only; fsckMap checks it.
			binary.BigEndian.PutUint64(val[:], i)
			key = append(append(key[:0], kHash), h[:indexKeyLen]...)
			addRun(i, key, val[:])
			if lr.on() {
				addRun(i, zeroDedupe[:], val[:])
			}
			r.subjects = append(r.subjects, "")
			r.mapLeaves = append(r.mapLeaves, fsckMapLeaf{i, bytes.Clone(v)})
			return nil
		}
		if err != nil {
			r.subjects = append(r.subjects, "")
			fail(i, fmt.Errorf("%w: leaf %d does not decode: %w", ErrCorrupt, i, err))
			return nil
		}
		r.subjects = append(r.subjects, e.GetEvent().GetSubject().GetId())
		binary.BigEndian.PutUint64(val[:], i)
		key = append(append(key[:0], kHash), h[:indexKeyLen]...)
		addRun(i, key, val[:])
		d := event.DedupeKey(e.GetEvent().GetSource().GetSystem(), e.GetEvent().GetId())
		key = append(append(key[:0], kDedupe), d[:indexKeyLen]...)
		addRun(i, key, val[:])
		if s := e.GetEvent().GetSubject().GetId(); s != "" {
			key = appendSubjectKey(key[:0], s, i)
			if inIndex {
				r.digest.addEntry(key, nil)
			}
		}
		return nil
	})
	switch {
	case err == errStop:
	case err != nil && ctx.Err() != nil:
		fail(start, ctx.Err())
		return r
	case err != nil:
		fail(start, storageErr(err, "reading leaves"))
		return r
	case next != end:
		fail(next, fmt.Errorf("%w: leaf %d is missing", ErrCorrupt, next))
	}
	read := start + uint64(len(r.hashes)) // the hashes known
	if read == start {
		return r
	}
	// The level-0 tiles over the leaves read. A stored tile is the leaf
	// hashes of its 256 leaves (fewer in the tree's last, partial tile,
	// which may have grown since on a live log).
	first, last := start/tileWidth, (read-1)/tileWidth
	tiles, err := st.Get(leafTileKeys(first, last)...)
	if err != nil {
		fail(start, storageErr(err, fmt.Sprintf("reading tiles 0/%d-0/%d", first, last)))
		return r
	}
	for n, stored := range tiles {
		ti := first + uint64(n)
		lo, hi := ti*tileWidth, min((ti+1)*tileWidth, size)
		if lo >= read {
			break
		}
		if stored == nil {
			fail(lo, fmt.Errorf("%w: tile 0/%d is missing", ErrCorrupt, ti))
			continue
		}
		want := int(hi-lo) * 32 // the tile's length in a tree of size leaves
		if len(stored) < want || (len(stored) > want && !live) || len(stored)%32 != 0 {
			fail(lo, fmt.Errorf("%w: tile 0/%d (%d bytes) differs from the one rebuilt from the leaves (%d bytes)", ErrCorrupt, ti, len(stored), want))
			continue
		}
		for i := lo; i < min(hi, read); i++ {
			p := (i - lo) * 32
			if h := r.hashes[i-start]; !bytes.Equal(h[:], stored[p:p+32]) {
				if r.err == nil || i <= r.errAt {
					r.suspect = &leafSuspect{index: i, leafBytes: -1, hash: h, stored: append([]byte(nil), stored[p:p+32]...)}
					if vals, err := st.Get(leafKey(i)); err == nil && vals[0] != nil {
						r.suspect.leafBytes = len(vals[0])
					}
					if r.errAt == i {
						// The leaf's hash not matching explains why it
						// does not decode; the suspect is resolved to an
						// error in any case.
						r.err, r.errAt = nil, end
					}
				}
				break
			}
		}
		if r.suspect != nil {
			break
		}
	}
	return r
}

// fsckTree rebuilds the tree above level 0 from the leaf hashes, in order,
// and checks the stored tiles of the higher levels and each checkpoint's
// root against it.
type fsckTree struct {
	st      Store
	live    bool
	sizes   []uint64
	roots   [][32]byte
	ci      int // the next checkpoint to reach
	rng     *compact.Range
	rows    [][]byte // the tile row being rebuilt at each level
	tileErr error
	suspect *leafSuspect // pending: resolved by the next checkpoint
}

// add appends the leaf hashes of r.
func (t *fsckTree) add(r fsckChunkResult) error {
	if r.suspect != nil && t.suspect == nil {
		t.suspect = r.suspect
	}
	for j, h := range r.hashes {
		i := r.start + uint64(j)
		if r.err != nil && i >= r.errAt {
			break
		}
		if err := t.rng.Append(h[:], t.visit); err != nil {
			return fmt.Errorf("rebuilding the tree at leaf %d: %w", i, err)
		}
		if t.tileErr != nil {
			if t.suspect != nil {
				return t.suspect.leafAltered("the tiles above it agree with the tile")
			}
			return t.tileErr
		}
		if err := t.checkRoots(); err != nil {
			return err
		}
	}
	if r.err != nil {
		if t.suspect != nil {
			return t.suspect.unresolved()
		}
		return r.err
	}
	return nil
}

// checkRoots checks the roots of the checkpoints at the current size.
func (t *fsckTree) checkRoots() error {
	for t.ci < len(t.sizes) && t.sizes[t.ci] == t.rng.End() {
		n, want := t.sizes[t.ci], t.roots[t.ci]
		root := rootOf(t.rng)
		if s := t.suspect; s != nil && n > s.index {
			// The signed root says whether the leaf or the tile is right.
			if root == want {
				return s.tileAltered(n)
			}
			return s.leafAltered(fmt.Sprintf("the leaves do not give the root of signed checkpoint %d", n))
		}
		if root != want {
			return fmt.Errorf("%w: checkpoint %d has root %x but the leaves give %x", ErrCorrupt, n, want, root)
		}
		t.ci++
	}
	return nil
}

// visit collects the tree's nodes into tile rows of level 1 and up (the
// workers checked level 0) and checks each full row.
func (t *fsckTree) visit(id compact.NodeID, h []byte) {
	if id.Level%TileHeight != 0 || id.Level == 0 {
		return
	}
	lv := id.Level / TileHeight
	for uint(len(t.rows)) <= lv {
		t.rows = append(t.rows, nil)
	}
	t.rows[lv] = append(t.rows[lv], h...)
	if len(t.rows[lv]) == tileWidth*32 {
		t.checkTile(uint64(lv), id.Index/tileWidth, t.rows[lv])
		t.rows[lv] = t.rows[lv][:0]
	}
}

func (t *fsckTree) checkTile(level, index uint64, row []byte) {
	if t.tileErr != nil {
		return
	}
	vals, err := t.st.Get(tileKey(level, index))
	switch {
	case err != nil:
		t.tileErr = storageErr(err, fmt.Sprintf("reading tile %d/%d", level, index))
	case vals[0] == nil:
		t.tileErr = fmt.Errorf("%w: tile %d/%d is missing", ErrCorrupt, level, index)
	case !bytes.Equal(vals[0], row) && !(t.live && bytes.HasPrefix(vals[0], row)): // a live tile may have grown
		t.tileErr = fmt.Errorf("%w: tile %d/%d (%d bytes) differs from the one rebuilt from the leaves (%d bytes)", ErrCorrupt, level, index, len(vals[0]), len(row))
	}
}

// finish checks the partial tiles at the right edge of a tree of size
// leaves and that every checkpoint was reached.
func (t *fsckTree) finish(size uint64) error {
	for lv, row := range t.rows {
		if lv > 0 && len(row) > 0 {
			t.checkTile(uint64(lv), (size>>(uint(lv)*TileHeight))/tileWidth, row)
		}
	}
	if t.suspect != nil {
		if t.tileErr != nil {
			return t.suspect.leafAltered("the tiles above it agree with the tile")
		}
		return t.suspect.unresolved()
	}
	if t.tileErr != nil {
		return t.tileErr
	}
	if t.ci != len(t.sizes) {
		return fmt.Errorf("%w: checkpoint %d was not reached by the leaves", ErrCorrupt, t.sizes[t.ci])
	}
	return nil
}

// indexDigest is a digest of a multiset of index entries (key, value): the
// sum modulo 2^256 of the SHA-256 of each entry's length-prefixed key and
// value. Two sets of entries have the same digest if, and (but with
// negligible probability for damage that is not crafted) only if, they are
// equal; the order the entries are added in does not matter.
type indexDigest [4]uint64

func (d *indexDigest) addEntry(k, v []byte) {
	var buf [128]byte
	b := binary.BigEndian.AppendUint32(buf[:0], uint32(len(k)))
	b = append(append(b, k...), v...)
	h := sha256.Sum256(b)
	var carry uint64
	for w := range d {
		d[w], carry = bits.Add64(d[w], binary.LittleEndian.Uint64(h[8*w:]), carry)
	}
}

func (d *indexDigest) add(o *indexDigest) {
	var carry uint64
	for w := range d {
		d[w], carry = bits.Add64(d[w], o[w], carry)
	}
}

// fsckIndexes are the digests of the index entries the leaves need and of
// those stored.
type fsckIndexes struct {
	leaves, stored indexDigest
	// the leaf-hash and dedupe entries in runs the leaves need
	hashLeaves, dedupeLeaves indexDigest
	scanned                  []indexScan
}

// indexScan is what scanIndex found in one key range.
type indexScan struct {
	digest indexDigest
	err    error
}

// indexScanRanges splits the key ranges of the three indexes into ranges
// that workers scan in parallel: by the first byte after the kind, in 16
// ranges for the leaf-hash and dedupe indexes (random keys), 4 for the
// subject index.
func indexScanRanges() [][2][]byte {
	var out [][2][]byte
	for _, k := range []struct {
		kind byte
		n    int
	}{{kHash, 16}, {kDedupe, 16}, {kSubject, 4}} {
		step := 256 / k.n
		for p := 0; p < k.n; p++ {
			lo, hi := []byte{k.kind, byte(p * step)}, []byte{k.kind, byte((p + 1) * step)}
			if p == 0 {
				lo = []byte{k.kind}
			}
			if p == k.n-1 {
				hi = []byte{k.kind + 1}
			}
			out = append(out, [2][]byte{lo, hi})
		}
	}
	return out
}

// indexTarget is the leaf an index entry points to, ok false if the entry
// is malformed.
func indexTarget(k, v []byte) (uint64, bool) {
	switch k[0] {
	case kHash, kDedupe:
		if len(k) != 1+indexKeyLen || len(v) != 8 {
			return 0, false
		}
		return binary.BigEndian.Uint64(v), true
	case kSubject:
		_, i, ok := parseSubjectKey(k)
		return i, ok && len(v) == 0
	}
	return 0, false
}

// scanIndex adds the index entries in r that point into the tree of size
// leaves (and malformed ones) to a digest. Entries for leaves at or beyond
// size belong to appends after this check started (or to a batch that
// never completed) and are left out.
func scanIndex(ctx context.Context, st Store, r [2][]byte, size uint64) indexScan {
	var s indexScan
	n := 0
	s.err = st.Scan(r[0], r[1], func(k, v []byte) error {
		if n++; n%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		if i, ok := indexTarget(k, v); ok && i >= size {
			return nil
		}
		s.digest.addEntry(k, v)
		return nil
	})
	return s
}

// findIndexFault names the first index fault once the digests differ:
// first a leaf whose entries are missing or point elsewhere (looked up
// leaf by leaf), then an entry that no leaf needs. It always returns an
// error. The leaves are read from st, the index entries from ix.
//
// With runs (the leaf hashes and dedupe keys are in runs), the index store
// must hold no leaf-hash or dedupe entry at all.
func findIndexFault(ctx context.Context, st, ix Store, size uint64, runs bool, idx fsckIndexes) error {
	for start := uint64(0); start < size; start += fsckChunk {
		if err := ctx.Err(); err != nil {
			return err
		}
		end := min(start+fsckChunk, size)
		var keys [][]byte
		err := st.Scan(leafKey(start), leafKey(end), func(k, v []byte) error {
			i := binary.BigEndian.Uint64(k[1:])
			h := LeafHash(v)
			e, err := event.DecodeLeaf(v)
			if errors.Is(err, event.ErrMapLeaf) {
				keys = append(keys, hashKey(h[:]), nil, nil) // no dedupe record, no subject
				return nil
			}
			if err != nil {
				return fmt.Errorf("%w: leaf %d does not decode: %w", ErrCorrupt, i, err)
			}
			dk := dedupeKey(event.DedupeKey(e.GetEvent().GetSource().GetSystem(), e.GetEvent().GetId()))
			sk := dk // placeholder: no subject, not checked
			if s := e.GetEvent().GetSubject().GetId(); s != "" {
				sk = subjectKey(s, i)
			}
			keys = append(keys, hashKey(h[:]), dk, sk)
			return nil
		})
		if err != nil {
			return storageErr(err, "reading leaves")
		}
		isMap := make([]bool, len(keys)/3)
		for j := range isMap {
			if keys[3*j+1] == nil {
				isMap[j] = true
				// placeholders: the map leaf's own leaf-hash entry, checked below
				keys[3*j+1], keys[3*j+2] = keys[3*j], keys[3*j]
			}
		}
		vals, err := ix.Get(keys...)
		if err != nil {
			return storageErr(err, "reading indexes")
		}
		for j := 0; j < len(vals); j += 3 {
			i := start + uint64(j/3)
			hv, dv, sv := vals[j], vals[j+1], vals[j+2]
			if !runs && (hv == nil || len(hv) != 8 || binary.BigEndian.Uint64(hv) != i) {
				return fmt.Errorf("%w: the leaf-hash index of leaf %d is missing or points elsewhere", ErrCorrupt, i)
			}
			if isMap[j/3] {
				continue
			}
			if !runs && (dv == nil || len(dv) != 8 || binary.BigEndian.Uint64(dv) != i) {
				return fmt.Errorf("%w: the dedupe record of leaf %d is missing or points elsewhere", ErrCorrupt, i)
			}
			if sv == nil && keys[j+2][0] == kSubject {
				return fmt.Errorf("%w: the subject index entry of leaf %d is missing", ErrCorrupt, i)
			}
		}
	}
	// Every leaf has its entries: some entry belongs to no leaf.
	if runs {
		for _, kind := range []byte{kHash, kDedupe} {
			var k []byte
			err := ix.Scan([]byte{kind}, []byte{kind + 1}, func(key, _ []byte) error { k = bytes.Clone(key); return errStop })
			if err != nil && err != errStop {
				return storageErr(err, "reading indexes")
			}
			if k != nil {
				return fmt.Errorf("%w: the index store holds a %s entry (key %x) but the log keeps that index in runs: an entry was added; restore from a backup", ErrCorrupt, indexNames[kind], k)
			}
		}
	}
	for _, kind := range []byte{kHash, kDedupe, kSubject} {
		if err := findStrayEntry(ctx, ix, kind, size); err != nil {
			return err
		}
	}
	return fmt.Errorf("%w: the index entries do not match the leaves, but no single entry could be named (did the store change during the check?); run fsck again", ErrCorrupt)
}

// indexNames name the indexes in errors.
var indexNames = map[byte]string{kHash: "leaf-hash index", kDedupe: "dedupe index", kSubject: "subject index"}

// findStrayEntry returns an error for the first entry of an index that
// points into the tree but not to a leaf that needs it, or is malformed.
func findStrayEntry(ctx context.Context, st Store, kind byte, size uint64) error {
	var stray error
	err := st.Scan([]byte{kind}, []byte{kind + 1}, func(k, v []byte) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		i, ok := indexTarget(k, v)
		if !ok {
			stray = fmt.Errorf("%w: the %s holds a malformed entry (key %x, %d-byte value)", ErrCorrupt, indexNames[kind], k, len(v))
			return errStop
		}
		if i >= size {
			return nil
		}
		vals, err := st.Get(leafKey(i))
		if err != nil {
			return err
		}
		var want []byte
		if _, err := event.DecodeLeaf(vals[0]); errors.Is(err, event.ErrMapLeaf) && kind == kHash {
			h := LeafHash(vals[0])
			want = hashKey(h[:])
		} else if e, err := event.DecodeLeaf(vals[0]); err == nil {
			switch kind {
			case kHash:
				h := LeafHash(vals[0])
				want = hashKey(h[:])
			case kDedupe:
				want = dedupeKey(event.DedupeKey(e.GetEvent().GetSource().GetSystem(), e.GetEvent().GetId()))
			case kSubject:
				want = subjectKey(e.GetEvent().GetSubject().GetId(), i)
			}
		}
		if !bytes.Equal(k, want) {
			stray = fmt.Errorf("%w: the %s holds an entry (key %x) pointing to leaf %d, which is not that leaf's: an entry was altered or added; restore from a backup",
				ErrCorrupt, indexNames[kind], k, i)
			return errStop
		}
		return nil
	})
	if stray != nil {
		return stray
	}
	if err != nil {
		return storageErr(err, "reading indexes")
	}
	return nil
}

// parseUnverified parses a stored checkpoint note without checking its
// signature (there is no key to check it with), for Fsck without keys.
func parseUnverified(n []byte, size uint64) (Checkpoint, error) {
	bad := func(err error) (Checkpoint, error) {
		return Checkpoint{}, fmt.Errorf("%w: stored checkpoint %d: %w; run grantline fsck with the log's keys", ErrCorrupt, size, err)
	}
	if err := checkNoteShape(n); err != nil {
		return bad(err)
	}
	_, err := note.Open(n, note.VerifierList())
	var unverified *note.UnverifiedNoteError
	if !errors.As(err, &unverified) {
		return bad(fmt.Errorf("%w: %w", ErrMalformed, err))
	}
	c, err := parseBody([]byte(unverified.Note.Text))
	if err != nil {
		return bad(err)
	}
	if c.Size != size {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint stored under size %d says size %d", ErrCorrupt, size, c.Size)
	}
	c.Note = n
	return c, nil
}

// fsckMap re-derives the subject map from the leaves: each map leaf must
// sit at the end of a checkpoint, cover its own index, and hold the root
// of the prefix tree of the subjects' states over the leaves before it.
type fsckMap struct {
	cps     map[uint64]bool // checkpoint sizes
	tree    *prefix.Tree
	states  map[[32]byte]subjectState
	changed map[[32]byte]bool // since the last map leaf
	root    [32]byte          // the newest map leaf's
	next    uint64            // leaves seen
}

// chunk takes a chunk's leaves in order (fm nil: the log has no subject
// map, so a map leaf is an error).
func (m *fsckMap) chunk(r fsckChunkResult) error {
	if m == nil {
		if len(r.mapLeaves) > 0 {
			return fmt.Errorf("%w: leaf %d is a map leaf, but the log was created without a subject map", ErrCorrupt, r.mapLeaves[0].index)
		}
		return nil
	}
	ml := r.mapLeaves
	for j, h := range r.hashes {
		i := r.start + uint64(j)
		if len(ml) > 0 && ml[0].index == i {
			if err := m.mapLeaf(i, ml[0].leaf); err != nil {
				return err
			}
			ml = ml[1:]
			continue
		}
		if j >= len(r.subjects) {
			break // the chunk's error, reported by fsckTree.add
		}
		if err := m.event(i, r.subjects[j], h); err != nil {
			return err
		}
	}
	return nil
}

func newFsckMap(sizes []uint64) *fsckMap {
	m := &fsckMap{cps: make(map[uint64]bool, len(sizes)), states: make(map[[32]byte]subjectState), changed: make(map[[32]byte]bool)}
	for _, s := range sizes {
		m.cps[s] = true
	}
	st := prefix.NewMemoryStorage()
	if err := prefix.InitStorage(context.Background(), mapHash, st); err != nil {
		panic(err)
	}
	m.tree = prefix.NewTree(mapHash, st)
	return m
}

// event takes event leaf i of subject with leaf hash h.
func (m *fsckMap) event(i uint64, subject string, h [32]byte) error {
	m.next = i + 1
	if m.cps[i+1] {
		return fmt.Errorf("%w: leaf %d, the last of checkpoint %d, is an event, not the map leaf a log with a subject map ends every checkpoint with", ErrCorrupt, i, i+1)
	}
	if subject == "" {
		return nil
	}
	lb := SubjectLabel(subject)
	s := m.states[lb]
	s.count++
	s.last = i
	s.chain = ChainNext(s.chain, h)
	m.states[lb] = s
	m.changed[lb] = true
	return nil
}

// mapLeaf takes map leaf i.
func (m *fsckMap) mapLeaf(i uint64, leaf []byte) error {
	m.next = i + 1
	root, covers, err := event.DecodeMapLeaf(leaf)
	if err != nil {
		return fmt.Errorf("%w: map leaf %d: %w", ErrCorrupt, i, err)
	}
	if covers != i {
		return fmt.Errorf("%w: map leaf %d says it covers the leaves up to %d, not its own index", ErrCorrupt, i, covers)
	}
	if !m.cps[i+1] {
		return fmt.Errorf("%w: map leaf %d is not the last leaf of a checkpoint (none was signed at size %d)", ErrCorrupt, i, i+1)
	}
	ctx := context.Background()
	for lb := range m.changed {
		if err := m.tree.Insert(ctx, lb, m.states[lb].value()); err != nil {
			return fmt.Errorf("re-deriving the subject map at leaf %d: %w", i, err)
		}
	}
	clear(m.changed)
	want, err := m.tree.RootHash(ctx)
	if err != nil {
		return fmt.Errorf("re-deriving the subject map at leaf %d: %w", i, err)
	}
	if root != want {
		return fmt.Errorf("%w: map leaf %d holds subject map root %x, but the subjects of the leaves before it give %x", ErrCorrupt, i, root, want)
	}
	m.root = root
	return nil
}

// checkStored compares what the log stored for proofs with the map
// re-derived: the root node as of the latest checkpoint (cpSize), and, when
// states is set (no leaves wait for a checkpoint and no appends go on),
// every subject's state record.
func (m *fsckMap) checkStored(ctx context.Context, st Store, f mapFormat, cpSize uint64, states bool) error {
	n, err := versionedNodes{st, cpSize, f}.Load(ctx, prefix.RootLabel)
	if err != nil {
		return err
	}
	if cpSize > 0 && n.Hash != m.root {
		return fmt.Errorf("%w: the stored subject map root as of checkpoint %d is %x, but the leaves give %x", ErrCorrupt, cpSize, n.Hash, m.root)
	}
	if !states {
		return nil
	}
	labels := make([][32]byte, 0, len(m.states))
	for lb := range m.states {
		labels = append(labels, lb)
	}
	for start := 0; start < len(labels); start += fsckChunk {
		end := min(start+fsckChunk, len(labels))
		vals, err := readStates(st, f, labels[start:end])
		if err != nil {
			return err
		}
		for j, v := range vals {
			lb := labels[start+j]
			if v == nil {
				return fmt.Errorf("%w: the subject state record %x is missing", ErrCorrupt, lb)
			}
			got, err := decodeSubjectState(v)
			if err != nil {
				return err
			}
			if got != m.states[lb] {
				return fmt.Errorf("%w: the subject state record %x says count %d, last %d, but the leaves give count %d, last %d", ErrCorrupt, lb, got.count, got.last, m.states[lb].count, m.states[lb].last)
			}
		}
	}
	return nil
}

// checkRuns compares the runs x of one index (kind: kHash or kDedupe) with
// the leaves: the digest of every (key prefix, index) they hold below to
// with want, the digest of those the leaves need. When the digests differ
// it names the first leaf whose key the runs lack (looked up leaf by leaf,
// its key from keysOf), or else says that the runs hold an entry no leaf
// has. The runs verify their own framing and checksums as they are read.
func checkRuns(ctx context.Context, st Store, x *runindex.Index, kind byte, to uint64, dir string, want indexDigest, keysOf runKeys, report func(string, ...any)) error {
	name := indexNames[kind]
	fix := fmt.Sprintf("the runs are derived from the log: stop the server, delete %s and start it to rebuild them", dir)
	var got indexDigest
	var key [1 + indexKeyLen]byte
	var val [8]byte
	key[0] = kind
	err := x.Verify(ctx, to, func(k runindex.Key, i uint64) {
		copy(key[1:], k[:])
		binary.BigEndian.PutUint64(val[:], i)
		got.addEntry(key[:], val[:])
	})
	if err != nil {
		return fmt.Errorf("%w: the %s's runs in %s: %w; %s", ErrCorrupt, name, dir, err, fix)
	}
	if got == want {
		report("fsck: the %s's runs match the leaves", name)
		return nil
	}
	report("fsck: the %s's runs do not match the leaves; looking for the first bad entry", name)
	for start := uint64(0); start < to; start += fsckChunk {
		if err := ctx.Err(); err != nil {
			return err
		}
		end := min(start+fsckChunk, to)
		keys, err := keysOf(st, start, end)
		if err != nil {
			return err
		}
		for n, k := range keys {
			i := start + uint64(n)
			found := false
			if err := x.Lookup(k, func(j uint64) bool { found = j == i; return !found }); err != nil {
				return fmt.Errorf("%w: looking up leaf %d in the %s's runs in %s: %w", ErrStorage, i, name, dir, err)
			}
			if !found {
				return fmt.Errorf("%w: the %s's runs in %s lack leaf %d (key %x); %s", ErrCorrupt, name, dir, i, k, fix)
			}
		}
	}
	return fmt.Errorf("%w: the %s's runs in %s hold an entry that no leaf below %d has; %s", ErrCorrupt, name, dir, to, fix)
}
