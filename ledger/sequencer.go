package ledger

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"github.com/transparency-dev/merkle/compact"

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
	edge   [][]byte // bottom rows of the right-edge tiles, by tile level
	carry  []item   // events collected but not fitting the last batch
	last   *state   // the state of the last built batch
	closed bool     // the queue is closed

	// Scratch space of build, reused from batch to batch.
	first  map[[32]byte]int // dedupe key -> first position in the batch
	pos    []int            // positions of the dedupe keys to look up
	keys   [][]byte         // their store keys
	keyBuf []byte           // the bytes of keys
}

// Append appends evs and returns, in order, each event's index and leaf hash
// (for a duplicate by (source.system, id): the original's, with Duplicate
// set), and the tree size after the batch. It returns only once the events
// are durable and covered by a published checkpoint. Errors: ErrTooLarge (an
// event whose leaf would exceed MaxLeafSize; nothing queued), ErrPushback (the
// queue is full; retry later), ErrClosed, ErrStorage (not acknowledged; the
// events may or may not be stored, and retrying is safe). If ctx ends first
// Append returns its error while the events may still be appended.
func (l *Log) Append(ctx context.Context, evs []*pb.Event) ([]AppendResult, uint64, error) {
	if len(evs) == 0 {
		return nil, l.Latest().Size, nil
	}
	r := &request{
		items:   make([]prepared, len(evs)),
		results: make([]AppendResult, len(evs)),
		left:    len(evs),
		done:    make(chan struct{}),
	}
	for i, ev := range evs {
		p, err := prepare(i, ev)
		if err != nil {
			return nil, 0, err
		}
		r.items[i] = p
	}
	if err := l.broken.Load(); err != nil {
		return nil, 0, *err
	}
	n := int64(len(evs))
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
		if len(batch) == 0 {
			return
		}
		l.commits <- l.build(batch)
	}
}

// commit is the committer goroutine: it durably commits built batches in
// order, publishes their checkpoints and completes their requests.
func (l *Log) commit() {
	defer close(l.done)
	for b := range l.commits {
		l.commitBatch(b)
	}
}

// collect returns the next batch: what is queued, up to MaxBatch events and
// the store's transaction limits, waiting up to MaxBatchAge for more after
// the first event. Empty means the queue is closed and drained.
func (l *Log) collect() []item {
	batch := l.seq.carry
	l.seq.carry = nil
	add := func(r *request) {
		for i := range r.items {
			batch = append(batch, item{r, i})
		}
	}
	if len(batch) == 0 && !l.seq.closed {
		r, ok := <-l.queue
		if !ok {
			l.seq.closed = true
			return nil
		}
		add(r)
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

// fit is how many of batch's events one commit takes: at most MaxBatch and
// within 90% of the store's limits (at least one event).
func (l *Log) fit(batch []item) int {
	maxCount, maxBytes := int64(l.maxCount)*9/10, l.maxBytes*9/10
	count := int64(2*64/TileHeight + 4) // tiles of every level, twice, checkpoint, latest size
	bytes := count * entrySize(10, 8192)
	for i, it := range batch {
		if i == l.o.MaxBatch {
			return i
		}
		p := &it.r.items[it.i]
		c := int64(4)
		b := entrySize(9, len(p.leaf)+observedRoom) +
			2*entrySize(1+indexKeyLen, 8) +
			entrySize(len(p.subject)+12, 0)
		if i%tileWidth == 0 {
			c++
			b += entrySize(10, 8192)
		}
		if i > 0 && (count+c > maxCount || bytes+b > maxBytes) {
			return i
		}
		count, bytes = count+c, bytes+b
	}
	return len(batch)
}

// built is a batch ready to commit.
type built struct {
	items   []item
	res     []AppendResult
	keys    [][]byte
	vals    [][]byte
	dedupes [][32]byte // new events' dedupe keys, in flight until committed
	first   uint64     // tree size before
	size    uint64     // tree size after
	state   *state     // to publish once durable
	err     error      // the batch failed before its commit
	start   time.Time
}

// build dedupes and sequences one batch: it assigns indices, encodes leaves,
// extends the tree and its tiles and signs the new checkpoint. Events in an
// earlier batch still being committed count as stored.
func (l *Log) build(batch []item) *built {
	b := &built{items: batch, start: time.Now(), first: l.seq.rng.End()}
	b.size = b.first
	if err := l.broken.Load(); err != nil {
		b.err = *err
		return b
	}
	res := make([]AppendResult, len(batch))
	if l.seq.first == nil {
		l.seq.first = make(map[[32]byte]int, len(batch))
	}
	first := l.seq.first
	clear(first)
	stored := make([]bool, len(batch))
	pos := l.seq.pos[:0]
	l.inflightMu.Lock()
	for p, it := range batch {
		d := it.r.items[it.i].dedupe
		if _, ok := first[d]; ok {
			continue
		}
		first[d] = p
		if r, ok := l.inflight[d]; ok {
			res[p], stored[p] = r, true
			res[p].Duplicate = true
			continue
		}
		pos = append(pos, p)
	}
	l.inflightMu.Unlock()
	// In key order, consecutive lookups walk the store's index (badger's
	// skiplist) along nearby paths that are still in the CPU cache.
	slices.SortFunc(pos, func(p, q int) int {
		a, b := &batch[p].r.items[batch[p].i].dedupe, &batch[q].r.items[batch[q].i].dedupe
		return bytes.Compare(a[:], b[:])
	})
	keys, kb := l.seq.keys[:0], l.seq.keyBuf[:0]
	if n := len(pos) * (1 + indexKeyLen); cap(kb) < n {
		kb = make([]byte, 0, n)
	}
	for _, p := range pos {
		o := len(kb)
		kb = append(append(kb, kDedupe), batch[p].r.items[batch[p].i].dedupe[:indexKeyLen]...)
		keys = append(keys, kb[o:len(kb):len(kb)])
	}
	l.seq.pos, l.seq.keys, l.seq.keyBuf = pos, keys, kb
	vals, err := l.st.Get(keys...)
	if err != nil {
		b.err = fmt.Errorf("%w: looking up duplicates: %w", ErrStorage, err)
		return b
	}
	if b.err = l.confirmDuplicates(batch, keys, pos, vals, res, stored); b.err != nil {
		return b
	}

	b.dedupes = make([][32]byte, 0, len(batch))
	ts := encodeTimestamp(l.o.Now())
	rng := l.seq.rng
	edge := l.seq.edge
	next := b.first
	ks := make([][]byte, 0, 4*len(batch)+16)
	vs := make([][]byte, 0, 4*len(batch)+16)
	dirty := make([]bool, 64/TileHeight)
	var arena []byte
	var visitErr error
	visit := func(id compact.NodeID, h []byte) {
		if id.Level%TileHeight != 0 {
			return
		}
		lv := id.Level / TileHeight
		for uint(len(edge)) <= lv {
			edge = append(edge, nil)
		}
		if want := id.Index % tileWidth; uint64(len(edge[lv])/32) != want {
			visitErr = fmt.Errorf("internal error: node %d/%d lands at position %d of its tile", id.Level, id.Index, len(edge[lv])/32)
		}
		edge[lv] = append(edge[lv], h...)
		dirty[lv] = true
		if len(edge[lv]) == tileWidth*32 {
			ks = append(ks, tileKey(uint64(lv), id.Index/tileWidth))
			vs = append(vs, edge[lv])
			edge[lv] = nil
			dirty[lv] = false
		}
	}
	for p, it := range batch {
		pr := &it.r.items[it.i]
		if f := first[pr.dedupe]; f != p {
			res[p] = res[f]
			res[p].Duplicate = true
			continue
		}
		if stored[p] {
			continue
		}
		// The leaf is completed in the buffer prepare encoded it into; the
		// keys of a batch share one arena.
		full := pr.appendObserved(ts)
		h := sha256.Sum256(full)
		leaf := full[1:]
		need := 9 + 2*(1+indexKeyLen) + len(pr.subject)*2 + 11
		if cap(arena)-len(arena) < need {
			arena = make([]byte, 0, max(need, 64<<10))
		}
		idx := next
		next++
		res[p] = AppendResult{Index: idx, LeafHash: h}
		b.dedupes = append(b.dedupes, pr.dedupe)
		if err := rng.Append(h[:], visit); err != nil {
			visitErr = err
		}
		take := func(f func([]byte) []byte) []byte {
			o := len(arena)
			arena = f(arena)
			return arena[o:len(arena):len(arena)]
		}
		lk := take(func(b []byte) []byte { return be64(append(b, kLeaf), idx) })
		hk := take(func(b []byte) []byte { return append(append(b, kHash), h[:indexKeyLen]...) })
		dk := take(func(b []byte) []byte { return append(append(b, kDedupe), pr.dedupe[:indexKeyLen]...) })
		iv := lk[1:] // be64(idx): the value of both index entries
		ks = append(ks, lk, hk, dk)
		vs = append(vs, leaf[:len(leaf):len(leaf)], iv, iv)
		if pr.subject != "" {
			ks = append(ks, take(func(b []byte) []byte { return appendSubjectKey(b, pr.subject, idx) }))
			vs = append(vs, []byte{})
		}
	}
	b.res = res
	if visitErr != nil {
		l.markBroken(visitErr)
		b.err = fmt.Errorf("%w: %w", ErrStorage, visitErr)
		return b
	}
	if next == b.first {
		return b // only duplicates: nothing to commit
	}
	for lv, d := range dirty {
		if d && len(edge[lv]) > 0 {
			ks = append(ks, tileKey(uint64(lv), (next>>(uint(lv)*TileHeight))/tileWidth))
			vs = append(vs, append([]byte(nil), edge[lv]...))
		}
	}
	cp, err := l.sign(next, rootOf(rng))
	if err != nil {
		l.markBroken(err)
		b.err = fmt.Errorf("%w: %w", ErrStorage, err)
		return b
	}
	ks = append(ks, checkpointKey(next), keyLatest)
	vs = append(vs, cp.Note, be64(nil, next))
	l.seq.edge = edge
	// The state to publish: new expanded edge tiles where they changed.
	old := l.seq.last
	s := &state{cp: cp, edge: make(edgeTiles, len(edge))}
	for lv := range edge {
		switch {
		case len(edge[lv]) == 0:
		case !dirty[lv] && lv < len(old.edge):
			s.edge[lv] = old.edge[lv]
		default:
			s.edge[lv] = expandTile(append([]byte(nil), edge[lv]...))
		}
	}
	l.seq.last = s
	b.keys, b.vals, b.size, b.state = ks, vs, next, s
	l.inflightMu.Lock()
	for p := range batch {
		if !stored[p] && first[batch[p].r.items[batch[p].i].dedupe] == p {
			l.inflight[batch[p].r.items[batch[p].i].dedupe] = res[p]
		}
	}
	l.inflightMu.Unlock()
	return b
}

// confirmDuplicates completes the results of the batch events whose dedupe
// keys were found stored (vals[j] for keys[j], event batch[pos[j]]): the
// records hold only the index under a key prefix, so each hit is confirmed on
// its leaf, which also gives the leaf hash. Duplicates are rare, so reading
// their leaves costs little.
func (l *Log) confirmDuplicates(batch []item, keys [][]byte, pos []int, vals [][]byte, res []AppendResult, stored []bool) error {
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
		e, err := DecodeLeaf(leaves[n])
		if err != nil {
			return fmt.Errorf("%w: leaf %d, named by dedupe record %x, does not decode; run grantline fsck: %w", ErrCorrupt, idx, keys[j][1:], err)
		}
		p := pos[j]
		it := batch[p]
		if DedupeKey(e.GetEvent().GetSource().GetSystem(), e.GetEvent().GetId()) != it.r.items[it.i].dedupe {
			return fmt.Errorf("%w: dedupe record %x names leaf %d, which is another event; run grantline fsck", ErrCorrupt, keys[j][1:], idx)
		}
		res[p] = AppendResult{Index: idx, LeafHash: LeafHash(leaves[n]), Duplicate: true}
		stored[p] = true
	}
	return nil
}

// commitBatch makes a built batch durable, publishes its checkpoint and
// completes its events. A failed commit marks the log broken: the store's
// state is unknown, so appends stop until it is reopened (and re-checked)
// while reads go on from the last published state.
func (l *Log) commitBatch(b *built) {
	err := b.err
	if err == nil {
		if berr := l.broken.Load(); berr != nil {
			err = *berr // built on top of a batch that failed
		} else if b.state != nil {
			t0 := time.Now()
			err = l.st.Commit(b.keys, b.vals)
			l.stats.storeNanos.Add(uint64(time.Since(t0)))
			if err != nil {
				err = fmt.Errorf("%w: committing %d events (indices %d..%d): %w", ErrStorage, b.size-b.first, b.first, b.size-1, err)
				l.markBroken(err)
			} else {
				l.cur.Store(b.state)
			}
		}
	}
	if len(b.dedupes) > 0 {
		l.inflightMu.Lock()
		for _, d := range b.dedupes {
			delete(l.inflight, d)
		}
		l.inflightMu.Unlock()
	}
	if err != nil {
		l.logger.Error("ledger append failed", "events", len(b.items), "err", err)
	} else {
		l.stats.appended.Add(b.size - b.first)
		l.stats.duplicates.Add(uint64(len(b.items)) - (b.size - b.first))
	}
	l.finish(b.items, b.res, b.size, err)
	l.stats.batches.Add(1)
	l.stats.batchEvents.Add(uint64(len(b.items)))
	l.stats.commitNanos.Add(uint64(time.Since(b.start)))
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
