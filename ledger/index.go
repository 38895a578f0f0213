package ledger

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/grantline/grantline/ledger/event"
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
	d, ok := l.ix.(interface{ DropAll() error })
	if !ok {
		return 0, fmt.Errorf("%w: the index store does not belong to this log's main store: %s; empty it and reopen (it is rebuilt from the leaves)", ErrCorrupt, why)
	}
	l.logger.Warn("ledger empties its index store to rebuild it from the leaves", "why", why)
	if err := d.DropAll(); err != nil {
		return 0, fmt.Errorf("%w: emptying the index store (%s): %w", ErrStorage, why, err)
	}
	return 0, nil
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
				w.put(hashKey(h[:]), be64(nil, e.Index)) // a map leaf: no dedupe record, no subject
				continue
			}
			if err != nil {
				return fmt.Errorf("%w: leaf %d does not decode while rebuilding the indexes; run grantline fsck: %w", ErrCorrupt, e.Index, err)
			}
			d := event.DedupeKey(en.GetEvent().GetSource().GetSystem(), en.GetEvent().GetId())
			w.putIndexes(e.Index, be64(nil, e.Index), h[:indexKeyLen], d[:indexKeyLen], en.GetEvent().GetSubject().GetId())
		}
		w.put(keyIndexed, be64(nil, end))
		if err := l.ix.Commit(w.keys, w.vals); err != nil {
			return fmt.Errorf("%w: rebuilding the index entries of leaves %d..%d: %w", ErrStorage, start, end, err)
		}
	}
	return nil
}
