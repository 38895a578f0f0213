package ledger

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

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
// leaf from the index store's watermark (keyIndexed) up to the tree size:
// the leaves a crash left unindexed, or all of them for a new or emptied
// index store. An index store ahead of the tree (the main store was
// restored from an older backup), or holding data without a watermark, is
// emptied first (DropAll), or refused with ErrCorrupt if it cannot be.
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
	from, err := l.indexedTo(size)
	if err != nil {
		return err
	}
	runs := l.o.LeafHashDir != ""
	if from, err = l.leafHashLayout(from, runs); err != nil {
		return err
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
	if runs {
		return l.openLeafHashes(ctx, size)
	}
	return nil
}

// leafHashLayout makes the index store's layout of leaf-hash entries the
// one asked for (runs: in Options.LeafHashDir, not in the index store) and
// returns its watermark. An index store holding the other layout's data
// (leaf-hash entries the runs make redundant, or lacking those the index
// store must then hold) is emptied, to be rebuilt from the leaves, and 0
// returned. A store about to take the runs' layout is marked (keyLeafHashRuns)
// in a commit ending with its watermark, unchanged.
func (l *Log) leafHashLayout(from uint64, runs bool) (uint64, error) {
	vals, err := l.ix.Get(keyLeafHashRuns)
	if err != nil {
		return 0, fmt.Errorf("%w: reading the index store's leaf-hash marker: %w", ErrStorage, err)
	}
	had := vals[0] != nil
	switch {
	case runs && !had && from > 0:
		if err := l.dropIndex("its leaf-hash entries move to the leaf-hash runs in " + l.o.LeafHashDir); err != nil {
			return 0, err
		}
		from = 0
	case !runs && had:
		if err := l.dropIndex("it lacks the leaf-hash entries, which were kept in leaf-hash runs (Options.LeafHashDir), and the log is opened without them"); err != nil {
			return 0, err
		}
		return 0, nil
	}
	if runs && !had {
		if err := l.ix.Commit([][]byte{keyLeafHashRuns, keyIndexed}, [][]byte{{1}, be64(nil, from)}); err != nil {
			return 0, fmt.Errorf("%w: marking the index store as keeping its leaf hashes in runs: %w", ErrStorage, err)
		}
	}
	return from, nil
}

// leafHashRunEntries is the leaf-hash runs' FlushEntries (0: the
// default); tests make it small so that runs are written and merged.
var leafHashRunEntries int

// openLeafHashes opens the leaf-hash runs in Options.LeafHashDir for a
// tree of size leaves (runs beyond it are dropped) and appends the leaf
// hashes of the leaves they lack, read from the level-0 tiles. Runs that
// are damaged are moved aside (the directory renamed DIR.damaged-UNIXTIME)
// and rebuilt: they hold nothing the tiles do not.
func (l *Log) openLeafHashes(ctx context.Context, size uint64) error {
	dir := l.o.LeafHashDir
	o := runindex.Options{FlushEntries: leafHashRunEntries, Logger: l.logger.With("component", "leafhash")}
	x, err := runindex.Open(dir, size, o)
	if errors.Is(err, runindex.ErrDamaged) {
		aside := fmt.Sprintf("%s.damaged-%d", dir, time.Now().Unix())
		if rerr := os.Rename(dir, aside); rerr != nil {
			return fmt.Errorf("%w: the leaf-hash runs in %s are damaged (%w) and could not be moved aside: %w; delete the directory (it is rebuilt from the log)", ErrStorage, dir, err, rerr)
		}
		l.logger.Warn("ledger moved damaged leaf-hash runs aside; they are rebuilt from the tiles", "dir", dir, "moved_to", aside, "err", err)
		x, err = runindex.Open(dir, size, o)
	}
	if err != nil {
		return fmt.Errorf("%w: opening the leaf-hash runs in %s: %w", ErrStorage, dir, err)
	}
	l.lh = x
	from := x.Covered()
	if from >= size {
		return nil
	}
	if err := l.appendTileHashes(ctx, from, size); err != nil {
		return err
	}
	l.logger.Info("ledger appended the leaf hashes the leaf-hash runs lacked", "from", from, "size", size)
	return nil
}

// appendTileHashes appends to the leaf-hash runs the hashes of leaves
// [from, size), read from the level-0 tiles, 64 tiles per store read.
func (l *Log) appendTileHashes(ctx context.Context, from, size uint64) error {
	const tilesPerRead = 64
	keys := make([]runindex.Key, 0, tileWidth*tilesPerRead)
	for t := from / tileWidth; t*tileWidth < size; t += tilesPerRead {
		if err := ctx.Err(); err != nil {
			return err
		}
		last := min(t+tilesPerRead, (size+tileWidth-1)/tileWidth)
		tk := make([][]byte, 0, last-t)
		for i := t; i < last; i++ {
			tk = append(tk, tileKey(0, i))
		}
		vals, err := l.st.Get(tk...)
		if err != nil {
			return fmt.Errorf("%w: reading level-0 tiles %d..%d for the leaf-hash runs: %w", ErrStorage, t, last-1, err)
		}
		keys = keys[:0]
		lo := max(from, t*tileWidth)
		for i := lo; i < min(size, last*tileWidth); i++ {
			v := vals[i/tileWidth-t]
			off := int(i%tileWidth) * 32
			if len(v) < off+32 || len(v)%32 != 0 {
				return fmt.Errorf("%w: tile 0/%d holds %d bytes, too few for leaf %d; run grantline fsck", ErrCorrupt, i/tileWidth, len(v), i)
			}
			keys = append(keys, runindex.Key(v[off:off+indexKeyLen]))
		}
		if err := l.lh.Append(lo, keys); err != nil {
			return fmt.Errorf("%w: appending leaf hashes %d..%d to the runs in %s: %w", ErrStorage, lo, lo+uint64(len(keys)), l.o.LeafHashDir, err)
		}
	}
	return nil
}

// indexedTo returns the separate index store's watermark: every leaf below
// it has its index entries there. It empties an index store that is ahead
// of the tree (size) or holds data without a watermark, and then returns 0.
func (l *Log) indexedTo(size uint64) (uint64, error) {
	vals, err := l.ix.Get(keyIndexed)
	if err != nil {
		return 0, fmt.Errorf("%w: reading the index store's watermark: %w", ErrStorage, err)
	}
	why := ""
	switch v := vals[0]; {
	case v == nil:
		nonEmpty := false
		if err := l.ix.Scan(nil, nil, func(k, v []byte) error { nonEmpty = true; return errStop }); err != nil && err != errStop {
			return 0, fmt.Errorf("%w: scanning the index store: %w", ErrStorage, err)
		}
		if !nonEmpty {
			return 0, nil
		}
		why = "it holds data but no watermark"
	case len(v) != 8:
		why = fmt.Sprintf("its watermark has %d bytes, want 8", len(v))
	case binary.BigEndian.Uint64(v) > size:
		why = fmt.Sprintf("it indexes %d leaves but the tree has %d (was the main store restored from an older backup?)", binary.BigEndian.Uint64(v), size)
	default:
		return binary.BigEndian.Uint64(v), nil
	}
	return 0, l.dropIndex(why)
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
			h := LeafHash(e.Leaf)
			en, err := event.DecodeLeaf(e.Leaf)
			if errors.Is(err, event.ErrMapLeaf) {
				if l.o.LeafHashDir == "" { // else the runs take it (openLeafHashes)
					w.put(hashKey(h[:]), be64(nil, e.Index)) // a map leaf: no dedupe record, no subject
				}
				continue
			}
			if err != nil {
				return fmt.Errorf("%w: leaf %d does not decode while rebuilding the indexes; run grantline fsck: %w", ErrCorrupt, e.Index, err)
			}
			d := event.DedupeKey(en.GetEvent().GetSource().GetSystem(), en.GetEvent().GetId())
			hk := h[:indexKeyLen]
			if l.o.LeafHashDir != "" {
				hk = nil // the runs take it (openLeafHashes)
			}
			w.putIndexes(e.Index, be64(nil, e.Index), hk, d[:indexKeyLen], en.GetEvent().GetSubject().GetId())
		}
		w.put(keyIndexed, be64(nil, end))
		if err := l.ix.Commit(w.keys, w.vals); err != nil {
			return fmt.Errorf("%w: rebuilding the index entries of leaves %d..%d: %w", ErrStorage, start, end, err)
		}
	}
	return nil
}
