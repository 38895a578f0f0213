package ledger

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/transparency-dev/merkle/compact"

	"github.com/grantline/grantline/ledger/event"
	"github.com/grantline/grantline/ledger/runindex"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// request is one Append call waiting for the sequencer. Its events may be
// integrated over more than one batch.
type request struct {
	items   []prepared
	results []AppendResult
	left    int   // events not yet integrated; committer only
	err     error // first failure; committer only until done is closed
	size    uint64
	done    chan struct{}
}

// item is one event of a request.
type item struct {
	r *request
	i int
}

// sequencerState is owned by the sequencer goroutine.
type sequencerState struct {
	rng    *compact.Range
	tiles  tileWriter // the right edge of the tree as tile rows
	carry  []item     // events collected but not fitting the last batch
	last   *state     // the state of the last sealed batch (to be published)
	closed bool       // the queue is closed

	sealedAt time.Time // when the last checkpoint was signed

	dd dedupeScratch // reused by dedupe from batch to batch

	smap *subjectMap // nil: the log has no subject map
}

// Append appends evs and returns, in order, each event's index and leaf hash
// (for a duplicate by (source.system, id): the original's, with Duplicate
// set; for an event with the same key and other content: the stored entry's,
// with Conflict set and nothing stored), and the tree size after the batch. It returns only once the events
// are durable and integrated, and, without Options.CheckpointInterval,
// covered by the published checkpoint (with one, by the next checkpoint,
// within the interval; see Options.CheckpointInterval). Errors: ErrTooLarge (an
// event whose leaf would exceed MaxLeafSize; nothing queued), ErrPushback (the
// queue is full; retry later), ErrClosed, ErrStorage (not acknowledged; the
// events may or may not be stored, and retrying is safe). If ctx ends first
// Append returns its error while the events may still be appended.
func (l *Log) Append(ctx context.Context, evs []*pb.Event) ([]AppendResult, uint64, error) {
	return l.AppendBatch(ctx, event.NewBatch(evs))
}

// AppendBatch is Append of b.Events(), encoding their leaves from what b
// knows of them (event.Batch: the bytes a request's events were decoded
// from, or the checks its validation made) instead of checking and
// encoding them again; the leaves, results and errors are Append's.
func (l *Log) AppendBatch(ctx context.Context, b *event.Batch) ([]AppendResult, uint64, error) {
	if b.Len() == 0 {
		return nil, l.Latest().Size, nil
	}
	r := &request{
		items:   make([]prepared, b.Len()),
		results: make([]AppendResult, b.Len()),
		left:    b.Len(),
		done:    make(chan struct{}),
	}
	for i := range r.items {
		p, err := prepare(b, i)
		if err != nil {
			return nil, 0, err
		}
		r.items[i] = p
	}
	if err := l.broken.Load(); err != nil {
		return nil, 0, *err
	}
	n := int64(b.Len())
	l.mu.RLock()
	if l.closed {
		l.mu.RUnlock()
		return nil, 0, fmt.Errorf("append: %w", ErrClosed)
	}
	// The queue channel has room for QueueSize requests and each request
	// holds at least one pending event, so this send never blocks; a request
	// larger than the whole queue is let in only when nothing else waits.
	if p := l.pending.Add(n); p > int64(l.o.QueueSize) && p != n {
		l.pending.Add(-n)
		l.mu.RUnlock()
		l.stats.pushbacks.Add(1)
		return nil, 0, fmt.Errorf("append of %d events: %d events are already waiting (queue size %d): %w",
			n, p-n, l.o.QueueSize, ErrPushback)
	}
	l.queue <- r
	l.mu.RUnlock()
	select {
	case <-r.done:
	case <-ctx.Done():
		return nil, 0, fmt.Errorf("waiting for append: %w (the events may still be appended; retrying is safe)", ctx.Err())
	}
	if r.err != nil {
		return nil, 0, r.err
	}
	return r.results, r.size, nil
}

// sequence is the sequencer goroutine: it collects batches and builds them
// (dedupe, indices, leaves, tree, tiles, signed checkpoint) while the
// committer goroutine makes the previous batch durable, until the queue is
// closed and drained.
func (l *Log) sequence() {
	defer close(l.commits)
	for {
		batch := l.collect()
		if len(batch) == 0 && l.seq.closed {
			if l.unsealed() {
				l.commits <- l.build(nil) // Close leaves every leaf under a checkpoint
			}
			return
		}
		l.commits <- l.build(batch) // an empty batch: the checkpoint interval is up
	}
}

// unsealed reports whether leaves were integrated after the last signed
// checkpoint.
func (l *Log) unsealed() bool { return l.seq.rng.End() > l.seq.last.cp.Size }

// sealDue reports whether the next batch signs a checkpoint: always without
// a CheckpointInterval, else once the interval since the last one is up.
func (l *Log) sealDue(now time.Time) bool {
	return l.o.CheckpointInterval <= 0 || now.Sub(l.seq.sealedAt) >= l.o.CheckpointInterval
}

// commit is the committer goroutine: it durably commits built batches in
// order, answers each batch's callers and publishes its state as soon as
// its main commit returns, then hands it to the indexer (a queue of
// indexQueue batches: see maxUnindexed).
func (l *Log) commit() {
	defer close(l.indexes)
	for b := range l.commits {
		l.commitBatch(b)
		if !l.split {
			// The index records were in the durable commit: the batch's
			// dedupe keys are in the store now.
			l.settle(b)
		}
		l.answer(b)
		select {
		case l.indexes <- b:
		default: // the queue is full: the index store is the slower
			t0 := time.Now()
			l.indexes <- b
			l.stats.indexWaitNanos.Add(uint64(time.Since(t0)))
		}
	}
}

// index is the indexer goroutine: in order, it commits each durable batch's
// index entries to the index store (when separate), advances the tree size
// the index has reached (Log.ixw), and drops the batch's dedupe keys from
// the in-flight map.
func (l *Log) index() {
	defer close(l.done)
	for b := range l.indexes {
		l.indexBatch(b)
	}
}

// indexQueue is how many answered batches may wait for the indexer while it
// commits another's index entries; maxUnindexed is then the most batches
// answered (durable, their checkpoint published) whose index commit is not
// done: the one being indexed, indexQueue waiting, and the one the committer
// holds, answered, while it waits for room. Two absorb one slow index
// commit (a badger memtable flush) without stalling the committer, since an
// index commit takes about as long as a durable commit; more would only let
// a slow index store fall further behind, while a read of the index waits
// for the index commits ahead of the state it reads (at most maxUnindexed,
// ~10-15 ms each for 2000 events) and their writes stay in memory (a few MB
// at MaxBatch). See docs/design.md, "Indexes off the durable commit".
const (
	indexQueue   = 2
	maxUnindexed = indexQueue + 2
)

// collect returns the next batch: what is queued, up to MaxBatch events and
// the store's transaction limits, waiting up to MaxBatchAge for more after
// the first event. Empty means the queue is closed and drained, or, with a
// CheckpointInterval, that the interval is up while leaves wait for a
// checkpoint.
func (l *Log) collect() []item {
	batch := l.seq.carry
	l.seq.carry = nil
	add := func(r *request) {
		for i := range r.items {
			batch = append(batch, item{r, i})
		}
	}
	if len(batch) == 0 && !l.seq.closed {
		var sealTimer <-chan time.Time
		if l.o.CheckpointInterval > 0 && l.unsealed() {
			t := time.NewTimer(time.Until(l.seq.sealedAt.Add(l.o.CheckpointInterval)))
			defer t.Stop()
			sealTimer = t.C
		}
		select {
		case r, ok := <-l.queue:
			if !ok {
				l.seq.closed = true
				return nil
			}
			add(r)
		case <-sealTimer:
			return nil
		}
	}
	var timer *time.Timer
recv:
	for !l.seq.closed && len(batch) < l.o.MaxBatch {
		select {
		case r, ok := <-l.queue:
			if !ok {
				l.seq.closed = true
				break recv
			}
			add(r)
			continue
		default:
		}
		if l.o.MaxBatchAge <= 0 {
			break
		}
		if timer == nil {
			timer = time.NewTimer(l.o.MaxBatchAge)
			defer timer.Stop()
		}
		select {
		case r, ok := <-l.queue:
			if !ok {
				l.seq.closed = true
				break recv
			}
			add(r)
		case <-timer.C:
			break recv
		}
	}
	n := l.fit(batch)
	l.seq.carry = append([]item(nil), batch[n:]...)
	return batch[:n]
}

// commitRoom tracks what a commit holds against 90% of a store's limits.
type commitRoom struct{ count, bytes, maxCount, maxBytes int64 }

func newCommitRoom(maxCount int, maxBytes int64) commitRoom {
	return commitRoom{maxCount: int64(maxCount) * 9 / 10, maxBytes: maxBytes * 9 / 10}
}

// fits reports whether c more entries of b bytes stay within the limits.
func (r *commitRoom) fits(c, b int64) bool { return r.count+c <= r.maxCount && r.bytes+b <= r.maxBytes }

func (r *commitRoom) add(c, b int64) { r.count, r.bytes = r.count+c, r.bytes+b }

// fit is how many of batch's events one commit takes: at most MaxBatch and
// within 90% of the store's limits (at least one event). With a separate
// index store the main commit (leaves, tiles, checkpoint, subject map) and
// the index commit (three index entries per event) are counted against
// their own store's limits, so that the smaller store does not bound the
// other's commits too.
func (l *Log) fit(batch []item) int {
	main := newCommitRoom(l.maxCount, l.maxBytes)
	ix := &main
	if l.split {
		r := newCommitRoom(l.ixCount, l.ixBytes)
		ix = &r
	}
	tiles := int64(2*64/TileHeight + 4) // tiles of every level, twice, checkpoint, latest size
	main.add(tiles, tiles*entrySize(10, 8192))
	mapCount, mapBytes := l.mapBudget()
	main.add(1, entrySize(9, 64))            // the map leaf
	ix.add(2, 2*entrySize(1+indexKeyLen, 8)) // its hash entry, the watermark
	for i, it := range batch {
		if i == l.o.MaxBatch {
			return i
		}
		p := &it.r.items[it.i]
		mc, mb := int64(1), entrySize(9, len(p.leaf)+event.ObservedRoom)
		if i%tileWidth == 0 {
			mc++
			mb += entrySize(10, 8192)
		}
		// The subject map's records go with the indexes (appendMapLeaf).
		ic, ib := 3+mapCount, 2*entrySize(1+indexKeyLen, 8)+entrySize(len(p.subject)+12, 0)+mapBytes
		if l.split {
			if i > 0 && !(main.fits(mc, mb) && ix.fits(ic, ib)) {
				return i
			}
		} else if i > 0 && !main.fits(mc+ic, mb+ib) {
			return i
		}
		main.add(mc, mb)
		ix.add(ic, ib)
	}
	return len(batch)
}

// built is a batch ready to commit.
type built struct {
	items  []item
	res    []AppendResult
	keys   [][]byte
	vals   [][]byte
	ixKeys [][]byte // index entries for a separate index store
	ixVals [][]byte // (empty when the indexes are in keys)
	// ixMap, when > 0, is 1 + the position in ixKeys of the subject map's
	// records (appendMapLeaf), which with everything after them (the map
	// leaf's hash entry, the watermarks) commit in one CommitAtomic.
	ixMap int
	// With runs: the leaf-hash and dedupe key prefixes of leaves first..size.
	leafHashes, dedupeKeys []runindex.Key
	dedupes                [][32]byte // new events' dedupe keys, in flight until the dedupe stage's store holds them (settle)
	first                  uint64     // tree size before
	size                   uint64     // tree size after
	state                  *state     // to publish once durable; nil when the batch signed no checkpoint
	commit                 bool       // there is something to commit
	err                    error      // the batch failed before its commit
	start                  time.Time
}

// build sequences one batch in four stages: dedupe (which events are new),
// encode (indices, leaves, index keys, the tree), the edge-tile writer
// (changed partial tiles) and seal (the signed checkpoint and the state to
// publish, when one is due). Events in an earlier batch still being committed
// count as stored. An empty batch only seals.
func (l *Log) build(batch []item) *built {
	b := &built{items: batch, start: time.Now(), first: l.seq.rng.End()}
	b.size = b.first
	if err := l.broken.Load(); err != nil {
		b.err = *err
		return b
	}
	fresh, repeatOf, res, err := l.dedupe(batch)
	if err != nil {
		b.err = err
		return b
	}
	b.res = res
	var w, ix *writes
	if l.split {
		w, ix = newWritesPer(len(fresh), 1), newWritesPer(len(fresh), 3)
	} else {
		w = newWrites(len(fresh))
		ix = w
	}
	now := l.o.Now()
	b.dedupes, err = l.encode(batch, fresh, repeatOf, res, event.EncodeTimestamp(now), w, ix)
	if err != nil {
		l.markBroken(err)
		b.err = fmt.Errorf("%w: %w", ErrStorage, err)
		return b
	}
	size := l.seq.rng.End()
	if size == b.first && !(l.unsealed() && (len(batch) == 0 || l.sealDue(time.Now()))) {
		return b // only duplicates, and no checkpoint due: nothing to commit
	}
	sealing := l.sealDue(time.Now()) || len(batch) == 0
	if sealing && l.seq.smap != nil {
		if l.split {
			b.ixMap = 1 + len(ix.keys)
		}
		if size, err = l.appendMapLeaf(w, ix); err != nil {
			l.markBroken(err)
			b.err = fmt.Errorf("%w: %w", ErrStorage, err)
			return b
		}
	}
	l.seq.tiles.flush(size, w)
	w.put(keyTree, be64(nil, size))
	if sealing {
		s, err := l.seal(size, w)
		if err != nil {
			l.markBroken(err)
			b.err = fmt.Errorf("%w: %w", ErrStorage, err)
			return b
		}
		b.state = s
	}
	if l.split && size > b.first {
		ix.put(l.ixMark, be64(nil, size))
		b.ixKeys, b.ixVals, b.leafHashes, b.dedupeKeys = ix.keys, ix.vals, ix.leafHashes, ix.dedupeKeys
	}
	b.keys, b.vals, b.size, b.commit = w.keys, w.vals, size, true
	l.inflightMu.Lock()
	for _, p := range fresh {
		pr := &batch[p].r.items[batch[p].i]
		l.inflight[pr.dedupe] = inflightEntry{res: res[p], event: pr.eventField()}
	}
	l.inflightMu.Unlock()
	return b
}

// writes are the key-value pairs of one commit. The keys of a batch (and
// the subject map's node records) share arenas.
type writes struct {
	keys, vals [][]byte
	arena      []byte
	// leafHashes and dedupeKeys, with runs (Log.lh, Log.dd), are the
	// leaf-hash and dedupe key prefixes of the batch's leaves in index
	// order, from the batch's first (a map leaf's dedupe key is the zero
	// key, which names no event): they go to the runs, not to keys.
	leafHashes, dedupeKeys []runindex.Key
}

// newWrites makes room for the entries of events events when one store
// takes them all (a leaf and three index entries each).
func newWrites(events int) *writes { return newWritesPer(events, 4) }

// newWritesPer makes room for perEvent entries for each of events events,
// and for the tiles, checkpoint and size records of a batch.
func newWritesPer(events, perEvent int) *writes {
	n := perEvent*events + events/tileWidth + 20
	return &writes{keys: make([][]byte, 0, n), vals: make([][]byte, 0, n)}
}

func (w *writes) put(k, v []byte) {
	w.keys = append(w.keys, k)
	w.vals = append(w.vals, v)
}

// putIndexes adds the leaf-hash, dedupe and subject index entries of leaf
// idx (iv: be64(idx), the value of the first two; hk, dk: the prefixes of
// its leaf hash and dedupe key; subject may be empty). With runs the
// caller passes hk and dk nil: they go to w.leafHashes and w.dedupeKeys.
func (w *writes) putIndexes(idx uint64, iv, hk, dk []byte, subject string) {
	// The first key makes room in the arena for all of them (the subject
	// key: the subject escaped, at most twice its length, and 11 bytes).
	need := 1 + len(hk) + 1 + len(dk) + len(subject)*2 + 11
	if hk != nil {
		w.put(w.key(need, func(b []byte) []byte { return append(append(b, kHash), hk...) }), iv)
		need = 0
	}
	if dk != nil {
		w.put(w.key(need, func(b []byte) []byte { return append(append(b, kDedupe), dk...) }), iv)
		need = 0
	}
	if subject != "" {
		w.put(w.key(need, func(b []byte) []byte { return appendSubjectKey(b, subject, idx) }), []byte{})
	}
}

// key appends the bytes built by f (a key, or a subject map record) to the
// arena and returns them; need is the room to make first, for these and
// the appends that follow.
func (w *writes) key(need int, f func([]byte) []byte) []byte {
	if cap(w.arena)-len(w.arena) < need {
		w.arena = make([]byte, 0, max(need, 64<<10))
	}
	o := len(w.arena)
	w.arena = f(w.arena)
	return w.arena[o:len(w.arena):len(w.arena)]
}

// dedupeScratch is dedupe's reusable space.
type dedupeScratch struct {
	first  map[[32]byte]int // dedupe key -> first position in the batch
	pos    []int            // positions of the dedupe keys to look up
	keys   [][]byte         // their store keys
	keyBuf []byte           // the bytes of keys
	// canon holds, for the first event of each dedupe key, the bytes that
	// hold the event the log keeps for that key (see sameEvent): its own
	// for a new event, the stored leaf's or in-flight event's otherwise.
	canon [][]byte
}

// sameEvent reports whether canon, which starts with an event field (the
// leaf's field 1: tag, length, event bytes) and may go on with other
// fields, holds the event field ev. Lengths are varints in their one
// deterministic encoding, so a prefix match is an exact match of the field.
func sameEvent(canon, ev []byte) bool { return bytes.HasPrefix(canon, ev) }

// resolveRepeat is the result of an event whose dedupe key is already held
// by r (stored, in flight, or first in the batch) with the event bytes
// canon: a duplicate when ev is that event, else a conflict.
func resolveRepeat(r AppendResult, canon, ev []byte) AppendResult {
	out := AppendResult{Index: r.Index, LeafHash: r.LeafHash}
	if sameEvent(canon, ev) {
		out.Duplicate = true
	} else {
		out.Conflict = true
	}
	return out
}

// dedupe is the first stage: it decides which of batch's events are new.
// It returns their positions in batch order (fresh: the first of each
// dedupe key in the batch, not in an earlier batch still in flight, not in
// the store); for each position the position of the first event of the
// batch with its dedupe key, or -1 if it is that first event (repeatOf);
// and results complete for the firsts already stored or in flight: the
// stored entry's index and leaf hash, with Duplicate set when the event is
// the stored one and Conflict when it differs (anything but the observed
// time). It reads the store once for the candidates (the keys neither in
// flight nor ruled out by the dedupe filter, dedupefilter.go), in key order, and
// confirms each hit on the leaf it names (ErrCorrupt if that leaf is another
// key's event), comparing the event bytes there: only hits cost a compare.
// With dedupe runs it looks each candidate up in them instead
// (lookupDedupeRuns). It does not change the tree.
func (l *Log) dedupe(batch []item) (fresh, repeatOf []int, res []AppendResult, err error) {
	res = make([]AppendResult, len(batch))
	sc := &l.seq.dd
	if sc.first == nil {
		sc.first = make(map[[32]byte]int, len(batch))
	}
	first := sc.first
	clear(first)
	stored := make([]bool, len(batch))
	canon := slices.Grow(sc.canon[:0], len(batch))[:len(batch)]
	clear(canon)
	sc.canon = canon
	pos := sc.pos[:0]
	repeatOf = make([]int, len(batch))
	l.inflightMu.Lock()
	for p, it := range batch {
		d := it.r.items[it.i].dedupe
		if f, ok := first[d]; ok {
			repeatOf[p] = f
			continue
		}
		repeatOf[p] = -1
		first[d] = p
		if e, ok := l.inflight[d]; ok {
			res[p] = resolveRepeat(e.res, e.event, it.r.items[it.i].eventField())
			stored[p], canon[p] = true, e.event
			continue
		}
		if !l.filter.mayContain(&d) {
			continue // neither stored nor in flight: new
		}
		pos = append(pos, p)
	}
	l.inflightMu.Unlock()
	if l.dd != nil {
		// One lookup per key in the runs: their order does not matter.
		if err := l.lookupDedupeRuns(batch, pos, res, stored, canon); err != nil {
			return nil, nil, nil, err
		}
		pos = pos[:0] // looked up
	}
	// In key order, consecutive lookups walk the store's index along nearby
	// paths that are still in the CPU cache.
	slices.SortFunc(pos, func(p, q int) int {
		a, b := &batch[p].r.items[batch[p].i].dedupe, &batch[q].r.items[batch[q].i].dedupe
		return bytes.Compare(a[:], b[:])
	})
	keys, kb := sc.keys[:0], sc.keyBuf[:0]
	if n := len(pos) * (1 + indexKeyLen); cap(kb) < n {
		kb = make([]byte, 0, n)
	}
	for _, p := range pos {
		o := len(kb)
		kb = append(append(kb, kDedupe), batch[p].r.items[batch[p].i].dedupe[:indexKeyLen]...)
		keys = append(keys, kb[o:len(kb):len(kb)])
	}
	sc.pos, sc.keys, sc.keyBuf = pos, keys, kb
	if len(keys) > 0 {
		vals, err := l.ix.Get(keys...)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("%w: looking up duplicates: %w", ErrStorage, err)
		}
		if err := l.confirmDuplicates(batch, keys, pos, vals, res, stored, canon); err != nil {
			return nil, nil, nil, err
		}
	}
	for p := range batch {
		if repeatOf[p] < 0 && !stored[p] {
			fresh = append(fresh, p)
		}
	}
	return fresh, repeatOf, res, nil
}

// encode is the second stage: it gives each fresh event (positions into
// batch) the next index, completes its leaf with the observed time ts,
// appends the leaf to w and its leaf-hash, dedupe and subject index entries
// to ix (w itself when the indexes are in the main store), and the leaf
// hash to the tree, whose perfect nodes go to the edge-tile
// writer. It then gives each repeat within the batch (repeatOf[p] >= 0) its
// first occurrence's result, marked Duplicate, and returns the fresh events'
// dedupe keys. An error leaves the tree in an unknown state: the log must
// stop appending.
func (l *Log) encode(batch []item, fresh, repeatOf []int, res []AppendResult, ts []byte, w, ix *writes) ([][32]byte, error) {
	dedupes := make([][32]byte, 0, len(fresh))
	next := l.seq.rng.End()
	tw := &l.seq.tiles
	tw.begin()
	visit := func(id compact.NodeID, h []byte) { tw.visit(id, h, w) }
	leaves, hashes := l.hashLeaves(batch, fresh, ts)
	for n, p := range fresh {
		pr := &batch[p].r.items[batch[p].i]
		h, leaf := &hashes[n], leaves[n]
		idx := next
		next++
		res[p] = AppendResult{Index: idx, LeafHash: *h}
		l.seq.dd.canon[p] = pr.eventField()
		dedupes = append(dedupes, pr.dedupe)
		l.filter.add(&pr.dedupe)
		if err := l.seq.rng.Append(h[:], visit); err != nil {
			return nil, fmt.Errorf("extending the tree at %d: %w", idx, err)
		}
		lk := w.key(9, func(b []byte) []byte { return be64(append(b, kLeaf), idx) })
		w.put(lk, leaf)
		hk, dk := h[:indexKeyLen], pr.dedupe[:indexKeyLen]
		if l.lh != nil {
			ix.leafHashes = append(ix.leafHashes, runindex.Key(hk))
			ix.dedupeKeys = append(ix.dedupeKeys, runindex.Key(dk))
			hk, dk = nil, nil
		}
		ix.putIndexes(idx, lk[1:], hk, dk, pr.subject)
		if l.seq.smap != nil {
			l.seq.smap.add(pr.subject, idx, *h)
		}
	}
	if tw.err != nil {
		return nil, tw.err
	}
	canon := l.seq.dd.canon
	for p, f := range repeatOf {
		if f >= 0 {
			// The first of the batch wins; a later one is a duplicate of
			// what the log keeps for the key, or a conflict with it.
			res[p] = resolveRepeat(res[f], canon[f], batch[p].r.items[batch[p].i].eventField())
		}
	}
	return dedupes, nil
}

// hashParallelMin is the fewest fresh events for which hashLeaves spreads
// the work over several goroutines.
const hashParallelMin = 256

// hashLeaves completes the leaf of each fresh event (positions into batch)
// with the observed time ts, in the buffer prepare encoded it into, and
// returns the leaves (without the 0x00 prefix) and their leaf hashes, in the
// order of fresh. The events are independent, so a large batch is hashed on
// every core: the sequencer is one goroutine, and this is its largest share
// of CPU after the dedupe lookups.
func (l *Log) hashLeaves(batch []item, fresh []int, ts []byte) ([][]byte, [][32]byte) {
	leaves, hashes := make([][]byte, len(fresh)), make([][32]byte, len(fresh))
	one := func(from, to int) {
		for n := from; n < to; n++ {
			pr := &batch[fresh[n]].r.items[batch[fresh[n]].i]
			full := pr.appendObserved(ts)
			hashes[n] = sha256.Sum256(full)
			leaves[n] = full[1:len(full):len(full)]
		}
	}
	workers := min(runtime.GOMAXPROCS(0), len(fresh)/hashParallelMin)
	if workers <= 1 {
		one(0, len(fresh))
		return leaves, hashes
	}
	var wg sync.WaitGroup
	per := (len(fresh) + workers - 1) / workers
	for from := 0; from < len(fresh); from += per {
		wg.Go(func() { one(from, min(from+per, len(fresh))) })
	}
	wg.Wait()
	return leaves, hashes
}

// tileWriter is the edge-tile writer: it keeps the bottom rows of the
// tree's right-edge tiles, turns the perfect nodes a compact range emits
// (every 8th level is a tile row) into tile hashes, writes each tile that
// fills, and on flush the partial tiles a batch changed.
type tileWriter struct {
	edge     [][]byte // bottom row of the right-edge tile of each tile level
	changed  []bool   // levels changed by the current batch
	unsealed []bool   // levels changed since the last seal
	err      error
}

// begin starts a batch.
func (t *tileWriter) begin() {
	t.changed = slices.Grow(t.changed[:0], 64/TileHeight)[:64/TileHeight]
	clear(t.changed)
	if t.unsealed == nil {
		t.unsealed = make([]bool, 64/TileHeight)
	}
}

// visit takes one node of the tree; a full tile goes to w at once.
func (t *tileWriter) visit(id compact.NodeID, h []byte, w *writes) {
	if id.Level%TileHeight != 0 {
		return
	}
	lv := id.Level / TileHeight
	for uint(len(t.edge)) <= lv {
		t.edge = append(t.edge, nil)
	}
	if want := id.Index % tileWidth; uint64(len(t.edge[lv])/32) != want {
		t.err = fmt.Errorf("internal error: node %d/%d lands at position %d of its tile", id.Level, id.Index, len(t.edge[lv])/32)
	}
	t.edge[lv] = append(t.edge[lv], h...)
	t.changed[lv], t.unsealed[lv] = true, true
	if len(t.edge[lv]) == tileWidth*32 {
		w.put(tileKey(uint64(lv), id.Index/tileWidth), t.edge[lv])
		t.edge[lv] = nil
		t.changed[lv] = false
	}
}

// flush writes to w the partial tiles of a tree of size that the batch
// changed (copies: the rows keep growing).
func (t *tileWriter) flush(size uint64, w *writes) {
	for lv, c := range t.changed {
		if c && len(t.edge[lv]) > 0 {
			w.put(tileKey(uint64(lv), (size>>(uint(lv)*TileHeight))/tileWidth), append([]byte(nil), t.edge[lv]...))
		}
	}
}

// edgeState returns the expanded edge tiles of the tree as of now, reusing
// from old those of levels unchanged since the last seal, and starts a new
// seal period.
func (t *tileWriter) edgeState(old edgeTiles) edgeTiles {
	out := make(edgeTiles, len(t.edge))
	for lv := range t.edge {
		switch {
		case len(t.edge[lv]) == 0:
		case !t.unsealed[lv] && lv < len(old):
			out[lv] = old[lv]
		default:
			out[lv] = expandTile(append([]byte(nil), t.edge[lv]...))
		}
	}
	clear(t.unsealed)
	return out
}

// seal is the last stage: it signs the checkpoint of the tree as it now
// stands (size leaves), adds it and the latest-size record to w, and returns
// the state to publish once w is durable.
func (l *Log) seal(size uint64, w *writes) (*state, error) {
	cp, err := l.sign(size, rootOf(l.seq.rng))
	if err != nil {
		return nil, err
	}
	w.put(checkpointKey(size), cp.Note)
	w.put(keyLatest, be64(nil, size))
	s := &state{cp: cp, edge: l.seq.tiles.edgeState(l.seq.last.edge)}
	l.seq.last = s
	l.seq.sealedAt = time.Now()
	return s, nil
}

// lookupDedupeRuns looks the dedupe keys of the events at pos (positions
// into batch) up in the dedupe runs and confirms each candidate on its
// leaf: a candidate whose leaf is a map leaf (the runs' zero key) or
// another event's (a shared key prefix) is passed over. An event found is
// stored (stored[p]): its result is the original's, marked Duplicate or
// Conflict, and canon[p] the original's leaf.
func (l *Log) lookupDedupeRuns(batch []item, pos []int, res []AppendResult, stored []bool, canon [][]byte) error {
	for _, p := range pos {
		it := batch[p]
		d := &it.r.items[it.i].dedupe
		// Candidates come newest first (a retry of a recent event is found
		// in the runs' memory buffer); the first confirmed ends the lookup.
		var cerr error
		err := l.dd.Lookup(runindex.Key(d[:indexKeyLen]), func(i uint64) bool {
			vals, err := l.st.Get(leafKey(i))
			if err != nil {
				cerr = storageErr(err, "reading the originals of duplicates")
				return false
			}
			v := vals[0]
			if v == nil {
				cerr = fmt.Errorf("%w: the dedupe runs name leaf %d, which is missing; run grantline fsck", ErrCorrupt, i)
				return false
			}
			e, err := event.DecodeLeaf(v)
			if errors.Is(err, event.ErrMapLeaf) {
				return true
			}
			if err != nil {
				cerr = fmt.Errorf("%w: leaf %d, named by the dedupe runs, does not decode; run grantline fsck: %w", ErrCorrupt, i, err)
				return false
			}
			if event.DedupeKey(e.GetEvent().GetSource().GetSystem(), e.GetEvent().GetId()) != *d {
				return true
			}
			res[p] = resolveRepeat(AppendResult{Index: i, LeafHash: LeafHash(v)}, v, it.r.items[it.i].eventField())
			stored[p], canon[p] = true, v
			return false
		})
		if err != nil {
			return fmt.Errorf("%w: looking up duplicates in the dedupe runs: %w", ErrStorage, err)
		}
		if cerr != nil {
			return cerr
		}
	}
	return nil
}

// confirmDuplicates completes the results of the batch events whose dedupe
// keys were found stored (vals[j] for keys[j], event batch[pos[j]]): the
// records hold only the index under a key prefix, so each hit is confirmed on
// its leaf, which also gives the leaf hash and the stored event, compared
// with the sent one (duplicate or conflict; canon[p] keeps the stored leaf).
// Resends are rare, so reading their leaves costs little.
func (l *Log) confirmDuplicates(batch []item, keys [][]byte, pos []int, vals [][]byte, res []AppendResult, stored []bool, canon [][]byte) error {
	var leafKeys [][]byte
	var hits []int
	for j, v := range vals {
		if v == nil {
			continue
		}
		if len(v) != 8 {
			return fmt.Errorf("%w: dedupe record %x has %d bytes, want 8; run grantline fsck", ErrCorrupt, keys[j][1:], len(v))
		}
		leafKeys = append(leafKeys, leafKey(binary.BigEndian.Uint64(v)))
		hits = append(hits, j)
	}
	if len(hits) == 0 {
		return nil
	}
	leaves, err := l.st.Get(leafKeys...)
	if err != nil {
		return fmt.Errorf("%w: reading the originals of duplicates: %w", ErrStorage, err)
	}
	for n, j := range hits {
		idx := binary.BigEndian.Uint64(leafKeys[n][1:])
		if leaves[n] == nil {
			return fmt.Errorf("%w: dedupe record %x names leaf %d, which is missing; run grantline fsck", ErrCorrupt, keys[j][1:], idx)
		}
		e, err := event.DecodeLeaf(leaves[n])
		if err != nil {
			return fmt.Errorf("%w: leaf %d, named by dedupe record %x, does not decode; run grantline fsck: %w", ErrCorrupt, idx, keys[j][1:], err)
		}
		p := pos[j]
		it := batch[p]
		if event.DedupeKey(e.GetEvent().GetSource().GetSystem(), e.GetEvent().GetId()) != it.r.items[it.i].dedupe {
			return fmt.Errorf("%w: dedupe record %x names leaf %d, which is another event; run grantline fsck", ErrCorrupt, keys[j][1:], idx)
		}
		res[p] = resolveRepeat(AppendResult{Index: idx, LeafHash: LeafHash(leaves[n])}, leaves[n], it.r.items[it.i].eventField())
		stored[p], canon[p] = true, leaves[n]
	}
	return nil
}

// commitBatch makes a built batch durable in the main store (b.err on
// failure). A failed commit marks the log broken: the store's state is
// unknown, so appends stop until it is reopened (and re-checked) while
// reads go on from the last published state.
func (l *Log) commitBatch(b *built) {
	if b.err != nil {
		return
	}
	if berr := l.broken.Load(); berr != nil {
		b.err = *berr // built on top of a batch that failed
		return
	}
	if !b.commit {
		return
	}
	t0 := time.Now()
	err := l.st.Commit(b.keys, b.vals)
	l.stats.storeNanos.Add(uint64(time.Since(t0)))
	if err != nil {
		b.err = fmt.Errorf("%w: committing %d events (up to tree size %d): %w", ErrStorage, b.size-b.first, b.size, err)
		l.markBroken(b.err)
	}
}

// answer completes a batch's events once its durable commit returned (or
// it failed) and publishes its sealed state: its leaves, tiles and
// checkpoint are durable, and a separate index store's commit of its index
// entries follows in the indexer, so reads that consult the index wait for
// it (waitIndexed) and the in-flight map keeps its dedupe keys until then.
func (l *Log) answer(b *built) {
	err := b.err
	if err == nil && b.state != nil {
		l.cur.Store(b.state)
	}
	if err != nil {
		l.logger.Error("ledger append failed", "events", len(b.items), "err", err)
	} else {
		l.answeredTo.Store(b.size)
		conflicts := uint64(0)
		for _, r := range b.res {
			if r.Conflict {
				conflicts++
			}
		}
		l.stats.appended.Add(b.size - b.first)
		l.stats.conflicts.Add(conflicts)
		l.stats.duplicates.Add(uint64(len(b.items)) - (b.size - b.first) - conflicts)
	}
	// The batch's stats are counted before its callers are answered, so a
	// caller that reads Stats after Append returns sees its own batch.
	l.stats.batches.Add(1)
	l.stats.batchEvents.Add(uint64(len(b.items)))
	l.stats.commitNanos.Add(uint64(time.Since(b.start)))
	l.finish(b.items, b.res, b.size, err)
}

// indexBatch commits an answered batch's entries to a separate index store
// and advances the tree size the index has reached, then drops the batch's
// dedupe keys from the in-flight map. It commits a batch whose durable
// commit succeeded even when a later batch's failed: its records describe
// durable leaves. A failed index commit marks the log broken like a failed
// main commit (appends stop; the next Open rebuilds the index entries of
// the leaves past the index store's watermark, so retries are answered as
// duplicates) and fails the index watch: reads waiting for the index, now
// or later, get the error instead of waiting for ever. Once the index
// store failed, later batches' index commits are skipped (its state is
// unknown; the watermark must advance in batch order).
func (l *Log) indexBatch(b *built) {
	if b.err == nil && len(b.ixKeys) > 0 && l.ixw.failed() == nil {
		t0 := time.Now()
		err := l.commitIndex(b)
		if err == nil && l.lh != nil {
			err = l.appendRuns(b.first, b.leafHashes, b.dedupeKeys)
		}
		l.stats.indexNanos.Add(uint64(time.Since(t0)))
		if err != nil {
			err = fmt.Errorf("%w: committing the index entries of %d answered events (up to tree size %d; they are durable, and the next Open indexes them): %w", ErrStorage, b.size-b.first, b.size, err)
			l.markBroken(err)
			l.ixw.fail(err)
			l.logger.Error("ledger index commit failed", "events", b.size-b.first, "size", b.size, "err", err)
		} else {
			l.ixw.advance(b.size)
		}
	}
	l.settle(b)
}

// settle drops a batch's dedupe keys from the in-flight map once the store
// the dedupe stage reads (the index store, or the dedupe runs) holds them,
// or the batch failed.
func (l *Log) settle(b *built) {
	if len(b.dedupes) > 0 {
		l.inflightMu.Lock()
		for _, d := range b.dedupes {
			delete(l.inflight, d)
		}
		l.inflightMu.Unlock()
		b.dedupes = nil
	}
}

// commitIndex commits b's index entries to the separate index store. The
// subject map's records of a sealed batch, and the watermarks after them,
// go in a commit of their own that a crash cannot tear (commitAtomic):
// the index entries before them are rewritten from the leaves when a crash
// tears their commit (Open, from the watermark), but the map's subject
// states are overwritten in place, so a torn commit of them would leave
// some states newer than the map's watermark, and the next map root wrong.
func (l *Log) commitIndex(b *built) error {
	if b.ixMap == 0 {
		return l.ix.Commit(b.ixKeys, b.ixVals)
	}
	at := b.ixMap - 1
	if at > 0 {
		if err := l.ix.Commit(b.ixKeys[:at], b.ixVals[:at]); err != nil {
			return err
		}
	}
	return commitAtomic(l.ix, b.ixKeys[at:], b.ixVals[at:])
}

// markBroken stops appends after a failure that leaves the store's state
// unknown.
func (l *Log) markBroken(cause error) {
	err := fmt.Errorf("%w: appends stopped after a storage failure; reopen the ledger (restart the server) once the cause is fixed: %w", ErrStorage, cause)
	l.broken.CompareAndSwap(nil, &err)
}

// finish completes the events of batch with their results or err.
func (l *Log) finish(batch []item, res []AppendResult, size uint64, err error) {
	for p, it := range batch {
		r := it.r
		if err != nil {
			if r.err == nil {
				r.err = err
			}
		} else {
			r.results[it.i] = res[p]
		}
		r.left--
		if r.left == 0 {
			r.size = size
			close(r.done)
		}
	}
	l.pending.Add(-int64(len(batch)))
}
