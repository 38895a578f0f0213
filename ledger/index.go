package ledger

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/grantline/grantline/internal/atomicfile"
	"github.com/grantline/grantline/ledger/event"
	"github.com/grantline/grantline/ledger/runindex"
)

// errSeparateIndex is Open's refusal of a main store whose indexes are kept
// in a separate index store that was not given.
var errSeparateIndex = errors.New("the log keeps its indexes in a separate index store, which was not given: open the log with its index store (Options.Index); see docs/design.md, \"Indexes off the durable commit\"")

// openIndex makes the indexes complete before the log serves. With the
// indexes in the main store there is nothing to do (they are committed with
// the leaves), but a main store marked as using a separate index store is
// refused. With a separate index store (Options.Index) it marks the main
// store as such, then rebuilds, from the leaves, the index entries of every
// leaf from the index store's watermark (keyIndexed, or keyIndexedRuns with
// runs) up to the tree size:
// the leaves a crash left unindexed, or all of them for a new or emptied
// index store. An index store ahead of the tree (the main store was
// restored from an older backup), or holding data without its watermark
// (among them one indexed with runs when the log is opened without, and the
// reverse), is emptied first (DropAll), or refused with ErrCorrupt if it
// cannot be. With runs it then opens them (openRuns).
func (l *Log) openIndex(ctx context.Context) error {
	vals, err := l.st.Get(keySeparateIndex)
	if err != nil {
		return fmt.Errorf("%w: reading the index marker: %w", ErrStorage, err)
	}
	marked := vals[0] != nil
	if !l.split {
		if marked {
			return fmt.Errorf("ledger: %w", errSeparateIndex)
		}
		return nil
	}
	size := l.seq.rng.End()
	from, kept, err := l.indexedTo(size)
	if err != nil {
		return err
	}
	if l.o.RunsDir != "" && !kept {
		// The runs are trusted only beside an index store indexed with
		// them: one that was empty, emptied or in the other layout says
		// the log may have run without the runs (after a restore, say),
		// and their keys for leaves since rewritten would hide those
		// leaves (a retry would be stored twice). Discarded before the
		// store gets its watermark, so a crash in between discards them
		// again.
		if err := l.discardRuns(); err != nil {
			return err
		}
	}
	if !marked {
		// Before any append whose index entries the main store lacks.
		if err := l.st.Commit([][]byte{keySeparateIndex}, [][]byte{{1}}); err != nil {
			return fmt.Errorf("%w: marking the store as indexed separately: %w", ErrStorage, err)
		}
	}
	if from < size {
		if err := l.rebuildIndex(ctx, from, size); err != nil {
			return err
		}
		l.logger.Info("ledger rebuilt the index entries of leaves the index store lacked", "from", from, "size", size)
	}
	if l.o.RunsDir != "" {
		return l.openRuns(ctx, size)
	}
	return nil
}

// Subdirectories of Options.RunsDir.
const (
	leafHashRuns = "leafhash"
	dedupeRuns   = "dedupe"
)

// runFlushEntries is the FlushEntries of both indexes' runs (0: the
// default); tests make it small so that runs are written and merged.
var runFlushEntries int

// discardRuns removes the leaf-hash and dedupe runs in Options.RunsDir
// (openRuns then rebuilds them from the log), and makes the removal
// durable.
func (l *Log) discardRuns() error {
	found := false
	for _, sub := range []string{leafHashRuns, dedupeRuns} {
		dir := filepath.Join(l.o.RunsDir, sub)
		if _, err := os.Stat(dir); err != nil {
			continue
		}
		found = true
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("%w: removing runs the index store does not vouch for, in %s: %w; remove the directory by hand (it is rebuilt from the log)", ErrStorage, dir, err)
		}
	}
	if !found {
		return nil
	}
	if err := atomicfile.SyncDir(l.o.RunsDir); err != nil {
		return fmt.Errorf("%w: %w", ErrStorage, err)
	}
	l.logger.Warn("ledger removed runs its index store does not vouch for (the store was new, emptied or indexed without runs); they are rebuilt from the log", "dir", l.o.RunsDir)
	return nil
}

// openRuns opens the leaf-hash and dedupe runs in Options.RunsDir for a
// tree of size leaves (runs beyond it are dropped) and appends the keys of
// the leaves they lack: leaf hashes from the level-0 tiles, dedupe keys
// from the leaves.
func (l *Log) openRuns(ctx context.Context, size uint64) error {
	var err error
	if l.lh, err = l.openRunIndex(filepath.Join(l.o.RunsDir, leafHashRuns), "leaf-hash index", size); err != nil {
		return err
	}
	if l.dd, err = l.openRunIndex(filepath.Join(l.o.RunsDir, dedupeRuns), "dedupe index", size); err != nil {
		return err
	}
	for _, r := range []struct {
		x      *runindex.Index
		name   string
		keysOf runKeys
		chunk  uint64
	}{
		{l.lh, "leaf-hash index", tileHashKeys, 64 * tileWidth},
		{l.dd, "dedupe index", leafDedupeKeys, fsckChunk},
	} {
		if from := r.x.Covered(); from < size {
			if err := l.appendRunKeys(ctx, r.x, r.name, r.keysOf, r.chunk, from, size); err != nil {
				return err
			}
			l.logger.Info("ledger appended the keys its runs lacked", "index", r.name, "from", from, "size", size)
		}
	}
	return nil
}

// openRunIndex opens the runs of one index (name, for errors) in dir.
// Runs that are damaged are moved aside (the directory renamed
// DIR.damaged-UNIXTIME) and rebuilt: they hold nothing the log does not.
func (l *Log) openRunIndex(dir, name string, size uint64) (*runindex.Index, error) {
	o := runindex.Options{FlushEntries: runFlushEntries, Name: name, Logger: l.logger.With("component", "runs", "index", name)}
	x, err := runindex.Open(dir, size, o)
	if errors.Is(err, runindex.ErrDamaged) {
		aside := fmt.Sprintf("%s.damaged-%d", dir, time.Now().Unix())
		if rerr := os.Rename(dir, aside); rerr != nil {
			return nil, fmt.Errorf("%w: the %s's runs in %s are damaged (%w) and could not be moved aside: %w; delete the directory (it is rebuilt from the log)", ErrStorage, name, dir, err, rerr)
		}
		l.logger.Warn("ledger moved damaged runs aside; they are rebuilt from the log", "index", name, "dir", dir, "moved_to", aside, "err", err)
		x, err = runindex.Open(dir, size, o)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: opening the %s's runs in %s: %w", ErrStorage, name, dir, err)
	}
	return x, nil
}

// appendRuns appends the leaf-hash and dedupe key prefixes of leaves
// [first, first+len(hashes)) to the runs.
func (l *Log) appendRuns(first uint64, hashes, dedupes []runindex.Key) error {
	if err := l.lh.Append(first, hashes); err != nil {
		return fmt.Errorf("appending their leaf hashes to the runs in %s: %w", l.o.RunsDir, err)
	}
	if err := l.dd.Append(first, dedupes); err != nil {
		return fmt.Errorf("appending their dedupe keys to the runs in %s: %w", l.o.RunsDir, err)
	}
	return nil
}

// closeRuns closes the runs (writing their buffered keys as runs), if open.
func (l *Log) closeRuns() error {
	var err error
	for _, x := range []*runindex.Index{l.lh, l.dd} {
		if x != nil {
			if cerr := x.Close(); cerr != nil && err == nil {
				err = cerr
			}
		}
	}
	return err
}

// runKeys returns the keys of leaves [start, end) in one index's runs.
type runKeys func(st Store, start, end uint64) ([]runindex.Key, error)

// tileHashKeys are the leaf-hash prefixes of leaves [start, end), read
// from the level-0 tiles in one store read.
func tileHashKeys(st Store, start, end uint64) ([]runindex.Key, error) {
	first, last := start/tileWidth, (end-1)/tileWidth
	vals, err := st.Get(leafTileKeys(first, last)...)
	if err != nil {
		return nil, storageErr(err, fmt.Sprintf("reading level-0 tiles %d..%d", first, last))
	}
	keys := make([]runindex.Key, 0, end-start)
	for i := start; i < end; i++ {
		v := vals[i/tileWidth-first]
		off := int(i%tileWidth) * 32
		if len(v) < off+32 || len(v)%32 != 0 {
			return nil, fmt.Errorf("%w: tile 0/%d holds %d bytes, too few for leaf %d; run grantline fsck", ErrCorrupt, i/tileWidth, len(v), i)
		}
		keys = append(keys, runindex.Key(v[off:off+indexKeyLen]))
	}
	return keys, nil
}

// leafDedupeKeys are the dedupe key prefixes of leaves [start, end), read
// and decoded from the leaves in one scan (a map leaf's is the zero key).
func leafDedupeKeys(st Store, start, end uint64) ([]runindex.Key, error) {
	keys := make([]runindex.Key, 0, end-start)
	next := start
	err := st.Scan(leafKey(start), leafKey(end), func(k, v []byte) error {
		i := binary.BigEndian.Uint64(k[1:])
		if i != next {
			return fmt.Errorf("%w: leaf %d is missing; run grantline fsck", ErrCorrupt, next)
		}
		next++
		e, err := event.DecodeLeaf(v)
		if errors.Is(err, event.ErrMapLeaf) {
			keys = append(keys, runindex.Key{})
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: leaf %d does not decode; run grantline fsck: %w", ErrCorrupt, i, err)
		}
		d := event.DedupeKey(e.GetEvent().GetSource().GetSystem(), e.GetEvent().GetId())
		keys = append(keys, runindex.Key(d[:indexKeyLen]))
		return nil
	})
	if err == nil && next != end {
		err = fmt.Errorf("%w: leaf %d is missing; run grantline fsck", ErrCorrupt, next)
	}
	if err != nil {
		return nil, storageErr(err, "reading leaves")
	}
	return keys, nil
}

// appendRunKeys appends the keys of leaves [from, size) to the runs x (of
// the index name), chunk leaves at a time.
func (l *Log) appendRunKeys(ctx context.Context, x *runindex.Index, name string, keysOf runKeys, chunk, from, size uint64) error {
	for start := from; start < size; start += chunk {
		if err := ctx.Err(); err != nil {
			return err
		}
		end := min(start+chunk, size)
		keys, err := keysOf(l.st, start, end)
		if err != nil {
			return fmt.Errorf("rebuilding the %s's runs: %w", name, err)
		}
		if err := x.Append(start, keys); err != nil {
			return fmt.Errorf("%w: appending the keys of leaves %d..%d to the %s's runs in %s: %w", ErrStorage, start, end, name, l.o.RunsDir, err)
		}
	}
	return nil
}

// indexedTo returns the separate index store's watermark (l.ixMark): every
// leaf below it has its index entries there. It empties an index store
// that is ahead of the tree (size) or holds data without that watermark
// (none, or the other layout's: with or without runs), and then returns 0.
// kept reports that it found its own watermark and kept the store.
func (l *Log) indexedTo(size uint64) (from uint64, kept bool, err error) {
	other := keyIndexedRuns
	if l.o.RunsDir != "" {
		other = keyIndexed
	}
	vals, err := l.ix.Get(l.ixMark, other)
	if err != nil {
		return 0, false, fmt.Errorf("%w: reading the index store's watermark: %w", ErrStorage, err)
	}
	why := ""
	switch v := vals[0]; {
	case v != nil && vals[1] != nil:
		why = "it holds the watermarks of both layouts (with and without runs)"
	case v == nil && vals[1] != nil && l.o.RunsDir != "":
		why = "its leaf-hash and dedupe entries move to the runs in " + l.o.RunsDir
	case v == nil && vals[1] != nil:
		why = "it lacks the leaf-hash and dedupe entries, which were kept in runs (Options.RunsDir), and the log is opened without them"
	case v == nil:
		nonEmpty := false
		if err := l.ix.Scan(nil, nil, func(k, v []byte) error { nonEmpty = true; return errStop }); err != nil && err != errStop {
			return 0, false, fmt.Errorf("%w: scanning the index store: %w", ErrStorage, err)
		}
		if !nonEmpty {
			return 0, false, nil
		}
		why = "it holds data but no watermark"
	case len(v) != 8:
		why = fmt.Sprintf("its watermark has %d bytes, want 8", len(v))
	case binary.BigEndian.Uint64(v) > size:
		why = fmt.Sprintf("it indexes %d leaves but the tree has %d (was the main store restored from an older backup?)", binary.BigEndian.Uint64(v), size)
	default:
		return binary.BigEndian.Uint64(v), true, nil
	}
	return 0, false, l.dropIndex(why)
}

// dropIndex empties the separate index store through its DropAll method,
// for a reason (why) that its entries do not serve this log as they are;
// it is then rebuilt from the leaves. Without DropAll it fails with
// ErrCorrupt, saying to empty the store.
func (l *Log) dropIndex(why string) error {
	d, ok := l.ix.(interface{ DropAll() error })
	if !ok {
		return fmt.Errorf("%w: the index store cannot serve this log as it is: %s; empty it and reopen (it is rebuilt from the leaves)", ErrCorrupt, why)
	}
	l.logger.Warn("ledger empties its index store to rebuild it from the leaves", "why", why)
	if err := d.DropAll(); err != nil {
		return fmt.Errorf("%w: emptying the index store (%s): %w", ErrStorage, why, err)
	}
	return nil
}

// rebuildIndex writes the index entries of leaves [from, size) to the
// separate index store, in commits within its limits, each advancing the
// watermark.
func (l *Log) rebuildIndex(ctx context.Context, from, size uint64) error {
	runs := l.o.RunsDir != ""
	chunk := uint64(max(1, min(fsckChunk, l.ixCount*9/10/4-1)))
	for start := from; start < size; start += chunk {
		if err := ctx.Err(); err != nil {
			return err
		}
		end := min(start+chunk, size)
		es, err := l.entries(start, end)
		if err != nil {
			return err
		}
		w := newWritesPer(len(es), 3)
		for _, e := range es {
			// With runs, the runs take the leaf hashes and dedupe keys
			// (openRuns): neither is computed here.
			en, err := event.DecodeLeaf(e.Leaf)
			if errors.Is(err, event.ErrMapLeaf) {
				if !runs {
					h := LeafHash(e.Leaf)
					w.put(hashKey(h[:]), be64(nil, e.Index)) // a map leaf: no dedupe record, no subject
				}
				continue
			}
			if err != nil {
				return fmt.Errorf("%w: leaf %d does not decode while rebuilding the indexes; run grantline fsck: %w", ErrCorrupt, e.Index, err)
			}
			var hk, dk []byte
			if !runs {
				h := LeafHash(e.Leaf)
				d := event.DedupeKey(en.GetEvent().GetSource().GetSystem(), en.GetEvent().GetId())
				hk, dk = h[:indexKeyLen], d[:indexKeyLen]
			}
			w.putIndexes(e.Index, be64(nil, e.Index), hk, dk, en.GetEvent().GetSubject().GetId())
		}
		w.put(l.ixMark, be64(nil, end))
		if err := l.ix.Commit(w.keys, w.vals); err != nil {
			return fmt.Errorf("%w: rebuilding the index entries of leaves %d..%d: %w", ErrStorage, start, end, err)
		}
	}
	return nil
}
