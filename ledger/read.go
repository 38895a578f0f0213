package ledger

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/grantline/grantline/ledger/runindex"
)

// CheckpointAt returns the checkpoint published at size. ErrNotFound if none
// was (sizes between batches never had one).
func (l *Log) CheckpointAt(ctx context.Context, size uint64) (Checkpoint, error) {
	s := l.cur.Load()
	if size == s.cp.Size {
		return s.cp, nil
	}
	if size > s.cp.Size {
		return Checkpoint{}, fmt.Errorf("checkpoint at size %d: the tree has %d entries: %w", size, s.cp.Size, ErrNotFound)
	}
	vals, err := l.st.Get(checkpointKey(size))
	if err != nil {
		return Checkpoint{}, fmt.Errorf("%w: reading checkpoint %d: %w", ErrStorage, size, err)
	}
	if vals[0] == nil {
		return Checkpoint{}, fmt.Errorf("no checkpoint was published at size %d: %w", size, ErrNotFound)
	}
	return l.parseCheckpoint(vals[0], size)
}

// Entries returns the leaves [start, start+count) clipped to the tree size.
// ErrOutOfRange when start is at or past the end of the tree.
func (l *Log) Entries(ctx context.Context, start, count uint64) ([]Entry, error) {
	size := l.Latest().Size
	if start >= size {
		return nil, fmt.Errorf("entries from %d: the tree has %d entries: %w", start, size, ErrOutOfRange)
	}
	end := size
	if count < size-start {
		end = start + count
	}
	return l.checkedEntries(start, end)
}

// checkedEntries returns the leaves [start, end) of the published tree,
// each checked against its hash in the level-0 tile: a store that answers
// with altered or empty bytes (badger answers a value-log record that fails
// its checksum with no value) gets ErrCorrupt, never a wrong leaf. The
// tiles are the ones proofs read (cached when full), so the check costs a
// SHA-256 per leaf.
func (l *Log) checkedEntries(start, end uint64) ([]Entry, error) {
	es, err := l.entries(start, end)
	if err != nil {
		return nil, err
	}
	if err := l.checkLeaves(es); err != nil {
		return nil, err
	}
	return es, nil
}

// checkLeaves checks published leaves against their level-0 tile hashes.
func (l *Log) checkLeaves(es []Entry) error {
	s := l.cur.Load()
	var row []byte // the leaf hashes of level-0 tile ti
	var ti uint64
	for _, e := range es {
		if row == nil || e.Index/tileWidth != ti {
			ti = e.Index / tileWidth
			var err error
			if row, err = l.leafRow(s, ti); err != nil {
				return err
			}
		}
		if err := checkLeafInRow(e, row); err != nil {
			return err
		}
	}
	return nil
}

// checkLeafInRow checks a leaf against its hash in row, the leaf hashes of
// its level-0 tile.
func checkLeafInRow(e Entry, row []byte) error {
	j := e.Index % tileWidth
	if (j+1)*32 > uint64(len(row)) {
		return fmt.Errorf("%w: leaf %d has no hash in tile 0/%d (width %d); run grantline fsck", ErrCorrupt, e.Index, e.Index/tileWidth, len(row)/32)
	}
	return checkLeaf(e, row[j*32:(j+1)*32])
}

// checkLeaf compares a leaf with its expected hash and says what is wrong.
func checkLeaf(e Entry, want []byte) error {
	h := LeafHash(e.Leaf)
	if bytes.Equal(h[:], want) {
		return nil
	}
	if len(e.Leaf) == 0 {
		return fmt.Errorf("%w: leaf %d is empty in the store (its record was lost or could not be read) but tile 0/%d holds its hash %x; restore from a backup (run grantline fsck for the whole store)",
			ErrCorrupt, e.Index, e.Index/tileWidth, want)
	}
	return fmt.Errorf("%w: leaf %d (%d bytes) hashes to %x but tile 0/%d holds %x: the stored leaf was altered; restore from a backup (run grantline fsck for the whole store)",
		ErrCorrupt, e.Index, len(e.Leaf), h, e.Index/tileWidth, want)
}

func (l *Log) entries(start, end uint64) ([]Entry, error) {
	out := make([]Entry, 0, end-start)
	next := start
	err := l.st.Scan(leafKey(start), leafKey(end), func(k, v []byte) error {
		i := binary.BigEndian.Uint64(k[1:])
		if i != next {
			return fmt.Errorf("%w: leaf %d is missing; run grantline fsck", ErrCorrupt, next)
		}
		next++
		out = append(out, Entry{Index: i, Leaf: append([]byte(nil), v...)})
		return nil
	})
	if err != nil {
		return nil, storageErr(err, "reading leaves")
	}
	if next != end {
		return nil, fmt.Errorf("%w: leaf %d is missing; run grantline fsck", ErrCorrupt, next)
	}
	return out, nil
}

// ScanEntries calls fn for each leaf with start <= index < end of the
// published tree (end clipped to its size), in index order, each checked
// against its hash in the level-0 tile as Entries checks it, stopping at
// fn's first error, which it returns as is. The Entry's Leaf is the
// store's buffer, valid only during the call: unlike Entries, nothing is
// copied or kept, so a scan of the whole log (the source index of
// backdated-closure, docs/BENCHMARKS.md "Streamed evaluation") holds one
// page of tile rows at a time. ErrOutOfRange when start is at or past the
// end of the tree. Safe for concurrent use.
func (l *Log) ScanEntries(ctx context.Context, start, end uint64, fn func(Entry) error) error {
	s := l.cur.Load()
	size := s.cp.Size
	if start >= size {
		return fmt.Errorf("entries from %d: the tree has %d entries: %w", start, size, ErrOutOfRange)
	}
	end = min(end, size)
	rows := make([][]byte, 0, scanPage/tileWidth+1)
	for start < end {
		if err := ctx.Err(); err != nil {
			return err
		}
		pageEnd := min(end, (start/scanPage+1)*scanPage)
		// The tile rows first, outside the store's scan: a store need not
		// allow reads inside its Scan callback.
		first := start / tileWidth
		rows = rows[:0]
		for ti := first; ti <= (pageEnd-1)/tileWidth; ti++ {
			row, err := l.leafRow(s, ti)
			if err != nil {
				return err
			}
			rows = append(rows, row)
		}
		next := start
		var fnErr error
		err := l.st.Scan(leafKey(start), leafKey(pageEnd), func(k, v []byte) error {
			i := binary.BigEndian.Uint64(k[1:])
			if i != next {
				return fmt.Errorf("%w: leaf %d is missing; run grantline fsck", ErrCorrupt, next)
			}
			next++
			e := Entry{Index: i, Leaf: v}
			if err := checkLeafInRow(e, rows[i/tileWidth-first]); err != nil {
				return err
			}
			fnErr = fn(e)
			return fnErr
		})
		if fnErr != nil {
			return fnErr
		}
		if err != nil {
			return storageErr(err, "reading leaves")
		}
		if next != pageEnd {
			return fmt.Errorf("%w: leaf %d is missing; run grantline fsck", ErrCorrupt, next)
		}
		start = pageEnd
	}
	return nil
}

// scanPage is how many leaves ScanEntries reads in one store scan: 16
// level-0 tiles, whose rows (128 KiB) it reads first.
const scanPage = 16 * tileWidth

// storageErr wraps a store error in ErrStorage unless it already carries a
// ledger sentinel; a store's own integrity failure (see Store) becomes
// ErrCorrupt.
func storageErr(err error, doing string) error {
	if isLedgerErr(err) {
		return err
	}
	if isStoreCorrupt(err) {
		var k interface{ Key() []byte }
		if errors.As(err, &k) && k.Key() != nil {
			doing += " (" + describeKey(k.Key()) + ")"
		}
		return fmt.Errorf("%w: %s: %w; restore from a backup", ErrCorrupt, doing, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrStorage, doing, err)
}

// isStoreCorrupt reports whether a store error says that stored data failed
// the store's own integrity check (Store's doc: a Corrupt() bool method).
func isStoreCorrupt(err error) bool {
	var c interface{ Corrupt() bool }
	return errors.As(err, &c) && c.Corrupt()
}

func isLedgerErr(err error) bool {
	for _, s := range []error{ErrCorrupt, ErrNotFound, ErrOutOfRange, ErrStorage, ErrClosed} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// ReadEntryBundle returns tlog-tiles entry bundle index holding its first
// width entries (1..256): per entry a big-endian uint16 length and the leaf.
// ErrNotFound if the published tree does not have that many entries there.
func (l *Log) ReadEntryBundle(ctx context.Context, index uint64, width int) ([]byte, error) {
	if width < 1 || width > tileWidth {
		return nil, fmt.Errorf("entry bundle %d: width %d must be 1..256: %w", index, width, ErrOutOfRange)
	}
	size := l.Latest().Size
	if w := tileWidthAt(size, 0, index); w < width {
		return nil, fmt.Errorf("entry bundle %d with width %d: the tree of size %d has %d entries there: %w", index, width, size, w, ErrNotFound)
	}
	es, err := l.checkedEntries(index*tileWidth, index*tileWidth+uint64(width))
	if err != nil {
		return nil, err
	}
	n := 0
	for _, e := range es {
		n += 2 + len(e.Leaf)
	}
	b := make([]byte, 0, n)
	for _, e := range es {
		b = binary.BigEndian.AppendUint16(b, uint16(len(e.Leaf)))
		b = append(b, e.Leaf...)
	}
	return b, nil
}

// parseEntryBundle splits a tlog-tiles entry bundle into its leaves. The
// leaves alias data.
func parseEntryBundle(data []byte) ([][]byte, error) {
	var out [][]byte
	for off := 0; off < len(data); {
		if len(data)-off < 2 {
			return nil, fmt.Errorf("entry bundle: truncated length at byte %d (entry %d)", off, len(out))
		}
		n := int(binary.BigEndian.Uint16(data[off:]))
		if len(data)-off-2 < n {
			return nil, fmt.Errorf("entry bundle: entry %d at byte %d declares %d bytes but only %d remain", len(out), off, n, len(data)-off-2)
		}
		out = append(out, data[off+2:off+2+n])
		off += 2 + n
		if len(out) > tileWidth {
			return nil, fmt.Errorf("entry bundle: more than %d entries (byte %d)", tileWidth, off)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("entry bundle: empty")
	}
	return out, nil
}

// LookupLeafHash returns the index of the leaf with that RFC 6962 leaf hash.
// ErrNotFound if no published leaf has it. Like every read of the indexes
// it first waits until they cover the published tree (waitIndexed).
func (l *Log) LookupLeafHash(ctx context.Context, hash []byte) (uint64, error) {
	if len(hash) != 32 {
		return 0, fmt.Errorf("leaf hash has %d bytes, want 32: %w", len(hash), ErrNotFound)
	}
	size := l.Latest().Size
	if err := l.waitIndexed(ctx, size); err != nil {
		return 0, fmt.Errorf("looking up leaf hash %x: %w", hash, err)
	}
	// The index holds only a prefix of the hash: confirm each candidate
	// on its leaf.
	confirm := func(i uint64) (bool, error) {
		if i >= size {
			return false, nil
		}
		leaves, err := l.st.Get(leafKey(i))
		if err != nil {
			return false, storageErr(err, "looking up a leaf hash")
		}
		if leaves[0] == nil {
			return false, fmt.Errorf("%w: leaf %d, named by the leaf-hash index, is missing; run grantline fsck", ErrCorrupt, i)
		}
		return LeafHash(leaves[0]) == [32]byte(hash), nil
	}
	if l.lh != nil {
		var found uint64
		var ok bool
		var cerr error
		err := l.lh.Lookup(runindex.Key(hash[:indexKeyLen]), func(i uint64) bool {
			ok, cerr = confirm(i)
			found = i
			return !ok && cerr == nil
		})
		switch {
		case err != nil:
			return 0, fmt.Errorf("%w: looking up leaf hash %x in the leaf-hash runs: %w", ErrStorage, hash, err)
		case cerr != nil:
			return 0, cerr
		case !ok:
			return 0, fmt.Errorf("leaf hash %x: %w", hash, ErrNotFound)
		}
		return found, nil
	}
	vals, err := l.ix.Get(hashKey(hash))
	if err != nil {
		return 0, storageErr(err, "looking up a leaf hash")
	}
	if vals[0] == nil || len(vals[0]) != 8 {
		return 0, fmt.Errorf("leaf hash %x: %w", hash, ErrNotFound)
	}
	i := binary.BigEndian.Uint64(vals[0])
	ok, err := confirm(i)
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("leaf hash %x: %w", hash, ErrNotFound)
	}
	return i, nil
}

// SubjectEntries returns up to limit (all if limit <= 0) entries of subject
// with start <= index < size, in index order; none (no error) for an unknown
// subject. ErrOutOfRange if size exceeds the tree.
func (l *Log) SubjectEntries(ctx context.Context, subject string, size, start uint64, limit int) ([]Entry, error) {
	if latest := l.Latest().Size; size > latest {
		return nil, fmt.Errorf("subject entries at size %d: the tree has %d entries: %w", size, latest, ErrOutOfRange)
	}
	if start >= size {
		return nil, nil
	}
	if err := l.waitIndexed(ctx, size); err != nil {
		return nil, fmt.Errorf("subject entries of %q at size %d: %w", subject, size, err)
	}
	// One buffer for the leaf keys of the whole chain, not one allocation
	// per entry.
	var idx []uint64
	var kbuf []byte
	err := l.ix.Scan(subjectKey(subject, start), subjectKey(subject, size), func(k, v []byte) error {
		if limit > 0 && len(idx) >= limit {
			return errStop
		}
		i := binary.BigEndian.Uint64(k[len(k)-8:])
		idx = append(idx, i)
		kbuf = be64(append(kbuf, kLeaf), i)
		return nil
	})
	if err != nil && err != errStop {
		return nil, storageErr(err, "reading the subject index")
	}
	const kl = 1 + 8 // len(leafKey(i))
	keys := make([][]byte, len(idx))
	for j := range keys {
		keys[j] = kbuf[j*kl : (j+1)*kl : (j+1)*kl]
	}
	if len(keys) == 0 {
		return nil, nil
	}
	vals, err := l.st.Get(keys...)
	if err != nil {
		return nil, storageErr(err, "reading subject entries")
	}
	out := make([]Entry, len(vals))
	for j, v := range vals {
		if v == nil {
			return nil, fmt.Errorf("%w: leaf %d of subject %q is missing; run grantline fsck", ErrCorrupt, idx[j], subject)
		}
		out[j] = Entry{Index: idx[j], Leaf: v}
	}
	if err := l.checkLeaves(out); err != nil {
		return nil, err
	}
	return out, nil
}

// ForEachSubject calls fn once for each distinct subject id with an entry
// below size, in ascending byte order, stopping at fn's first error, which
// it returns. It is ForEachSubjectCount without the counts: it reads the
// subject index in runs of subjects, calls fn outside the store's read
// transactions, first waits until the indexes cover size, and answers a
// size beyond the published tree with ErrOutOfRange.
func (l *Log) ForEachSubject(ctx context.Context, size uint64, fn func(subject string) error) error {
	return l.ForEachSubjectCount(ctx, size, func(subject string, _ uint64) error { return fn(subject) })
}

// Backup writes a backup of the store (for ledger/badgerstore, badger's
// backup format) to w while the log keeps running. Restore it with Restore
// and check it with Fsck.
func (l *Log) Backup(ctx context.Context, w io.Writer) error {
	b, ok := l.st.(interface {
		Backup(context.Context, io.Writer) error
	})
	if !ok {
		return fmt.Errorf("backup: the store %T cannot back up", l.st)
	}
	if err := b.Backup(ctx, w); err != nil {
		return storageErr(err, "backup")
	}
	return nil
}

// Stats are counters since Open, for metrics.
type Stats struct {
	Appended     uint64        // new leaves
	Duplicates   uint64        // events answered as duplicates
	Conflicts    uint64        // events answered as conflicts (same key, other content)
	Batches      uint64        // sequencer batches
	BatchEvents  uint64        // events over all batches
	CommitTime   time.Duration // total time integrating batches: from the start of each build to its answer, after its durable commit
	StoreTime    time.Duration // of which in the store's durable commit
	IndexTime    time.Duration // in the separate index store's commits (Options.Index), after the answers, off the ack path
	IndexWait    time.Duration // the committer waiting for room in the indexer's queue: the index store was the slower
	Pushbacks    uint64        // Appends refused with ErrPushback
	QueuedEvents int64         // events waiting now
	Size         uint64        // latest checkpoint size
}

type stats struct {
	appended, duplicates, conflicts, batches, batchEvents, commitNanos, storeNanos, indexNanos, indexWaitNanos, pushbacks atomic.Uint64
}

// Stats returns the log's counters.
func (l *Log) Stats() Stats {
	return Stats{
		Appended:     l.stats.appended.Load(),
		Duplicates:   l.stats.duplicates.Load(),
		Conflicts:    l.stats.conflicts.Load(),
		Batches:      l.stats.batches.Load(),
		BatchEvents:  l.stats.batchEvents.Load(),
		CommitTime:   time.Duration(l.stats.commitNanos.Load()),
		StoreTime:    time.Duration(l.stats.storeNanos.Load()),
		IndexTime:    time.Duration(l.stats.indexNanos.Load()),
		IndexWait:    time.Duration(l.stats.indexWaitNanos.Load()),
		Pushbacks:    l.stats.pushbacks.Load(),
		QueuedEvents: l.pending.Load(),
		Size:         l.Latest().Size,
	}
}

// ForEachSubjectCount calls fn once for each distinct subject id with an
// entry below size, in ascending byte order (ForEachSubject's order), with
// the number of its entries below size, stopping at fn's first error,
// which it returns. It reads every key of the subject index once, in runs
// of subjects, and calls fn outside the store's read transactions. A
// partitioned evaluation (ingest, docs/design.md "Streamed evaluation")
// plans its subject ranges from these counts. A size beyond the published
// tree is ErrOutOfRange, as for SubjectEntries.
func (l *Log) ForEachSubjectCount(ctx context.Context, size uint64, fn func(subject string, entries uint64) error) error {
	const run = 1024 // subjects per scan
	type hit struct {
		subject string
		n       uint64
	}
	if latest := l.Latest().Size; size > latest {
		return fmt.Errorf("subjects at size %d: the tree has %d entries: %w", size, latest, ErrOutOfRange)
	}
	if err := l.waitIndexed(ctx, size); err != nil {
		return fmt.Errorf("subjects at size %d: %w", size, err)
	}
	from, end := []byte{kSubject}, []byte{kSubject + 1}
	for from != nil {
		if err := ctx.Err(); err != nil {
			return err
		}
		var hits []hit
		var prefix []byte // of the current subject's keys
		seen := 0
		next := []byte(nil)
		err := l.ix.Scan(from, end, func(k, v []byte) error {
			if len(k) < 1+2+8 {
				return fmt.Errorf("%w: malformed subject index key %x; run grantline fsck", ErrCorrupt, k)
			}
			p, i := k[:len(k)-8], binary.BigEndian.Uint64(k[len(k)-8:])
			if seen == 0 || !bytes.Equal(p, prefix) {
				s, _, ok := parseSubjectKey(k)
				if !ok {
					return fmt.Errorf("%w: malformed subject index key %x; run grantline fsck", ErrCorrupt, k)
				}
				if seen == run {
					next = subjectPrefix(s) // resume here
					return errStop
				}
				prefix = append(prefix[:0], p...)
				seen++
				hits = append(hits, hit{subject: s})
			}
			if i < size {
				hits[len(hits)-1].n++
			}
			return nil
		})
		if err != nil && err != errStop {
			return storageErr(err, "reading the subject index")
		}
		for _, h := range hits {
			if h.n == 0 {
				continue // every entry at or above size
			}
			if err := fn(h.subject, h.n); err != nil {
				return err
			}
		}
		from = next
	}
	return nil
}
