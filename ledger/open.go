package ledger

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"golang.org/x/mod/sumdb/note"

	"github.com/grantline/grantline/ledger/event"
)

// state is what readers see: the latest checkpoint and the partial tiles on
// the right edge of its tree. It is immutable once published.
type state struct {
	cp   Checkpoint
	edge edgeTiles
}

// load reads the latest checkpoint and the tree's right edge from the store,
// checks them against each other, and primes the sequencer. On an empty store
// it publishes the size-0 checkpoint. Leaves integrated after the latest
// checkpoint (a crash within a CheckpointInterval) are re-hashed, checked
// against the stored tiles, and signed into a new checkpoint before the log
// serves.
func (l *Log) load(ctx context.Context) (*state, error) {
	vals, err := l.st.Get(keyLatest, keyTree)
	if err != nil {
		return nil, fmt.Errorf("%w: reading the latest tree size: %w", ErrStorage, err)
	}
	if vals[0] == nil {
		return l.initEmpty()
	}
	format, err := readMapFormat(l.st)
	if err != nil {
		return nil, err
	}
	l.smapOn = format != mapNone
	if err := checkIndexAtomic(l.ix, l.split, l.smapOn); err != nil {
		return nil, err
	}
	if l.smapOn != l.o.SubjectMap {
		l.logger.Warn("ledger: the subject map is fixed when a log is created; this log keeps its own", "subject_map", l.smapOn)
	}
	if l.smapOn {
		l.seq.smap = newSubjectMap(l.ix, format)
	}
	if len(vals[0]) != 8 || (vals[1] != nil && len(vals[1]) != 8) {
		return nil, fmt.Errorf("%w: tree size records have %d and %d bytes, want 8; run grantline fsck", ErrCorrupt, len(vals[0]), len(vals[1]))
	}
	cpSize := binary.BigEndian.Uint64(vals[0])
	size := cpSize // the tree as integrated
	if vals[1] != nil {
		size = binary.BigEndian.Uint64(vals[1])
	}
	if size < cpSize {
		return nil, fmt.Errorf("%w: the tree size record says %d, below the latest checkpoint's %d; run grantline fsck", ErrCorrupt, size, cpSize)
	}
	vals, err = l.st.Get(checkpointKey(cpSize), leafKey(size))
	if err != nil {
		return nil, fmt.Errorf("%w: reading checkpoint %d: %w", ErrStorage, cpSize, err)
	}
	if vals[0] == nil {
		return nil, fmt.Errorf("%w: the checkpoint of the latest tree size %d is missing; run grantline fsck", ErrCorrupt, cpSize)
	}
	if vals[1] != nil {
		return nil, fmt.Errorf("%w: leaf %d exists beyond the tree (size %d); run grantline fsck", ErrCorrupt, size, size)
	}
	cp, err := l.parseCheckpoint(vals[0], cpSize)
	if err != nil {
		return nil, err
	}
	// The right edge of the tree as integrated.
	tip := &state{cp: Checkpoint{Size: size}}
	var rows [][]byte
	for level := uint64(0); level*TileHeight < 64 && size>>(level*TileHeight) > 0; level++ {
		row := size >> (level * TileHeight)
		w := int(row % tileWidth)
		if w == 0 {
			tip.edge, rows = append(tip.edge, nil), append(rows, nil)
			continue
		}
		v, err := l.st.Get(tileKey(level, row/tileWidth))
		if err != nil {
			return nil, fmt.Errorf("%w: reading tile %d/%d: %w", ErrStorage, level, row/tileWidth, err)
		}
		if v[0] == nil {
			return nil, fmt.Errorf("%w: right-edge tile %d/%d is missing (tree size %d); run grantline fsck", ErrCorrupt, level, row/tileWidth, size)
		}
		if len(v[0]) != w*32 {
			return nil, fmt.Errorf("%w: right-edge tile %d/%d has %d bytes, want %d hashes (%d bytes) for tree size %d; run grantline fsck",
				ErrCorrupt, level, row/tileWidth, len(v[0]), w, w*32, size)
		}
		tip.edge, rows = append(tip.edge, expandTile(v[0])), append(rows, v[0])
	}
	rng, err := l.rangeAt(tip)
	if err != nil {
		return nil, err
	}
	signed := rng
	if size > cpSize {
		// The checkpoint's tree from the stored tiles (prefixes of today's),
		// then the unsigned tail from its leaves.
		if signed, err = l.rangeAt(&state{cp: Checkpoint{Size: cpSize}}); err != nil {
			return nil, err
		}
	}
	if root := rootOf(signed); root != cp.Root {
		return nil, fmt.Errorf("%w: the stored tiles give root %x at size %d but the signed checkpoint says %x; the store was modified or damaged: run grantline fsck",
			ErrCorrupt, root, cpSize, cp.Root)
	}
	if size > cpSize {
		for start := cpSize; start < size; start += fsckChunk {
			es, err := l.entries(start, min(start+fsckChunk, size))
			if err != nil {
				return nil, err
			}
			for _, e := range es {
				h := LeafHash(e.Leaf)
				if l.seq.smap != nil {
					ev, err := event.DecodeLeaf(e.Leaf)
					if err != nil {
						return nil, fmt.Errorf("%w: leaf %d, after the latest checkpoint %d, does not decode as an event (a map leaf is only ever the last leaf of a checkpoint); run grantline fsck: %w", ErrCorrupt, e.Index, cpSize, err)
					}
					l.seq.smap.add(ev.GetEvent().GetSubject().GetId(), e.Index, h)
				}
				if err := signed.Append(h[:], nil); err != nil {
					return nil, fmt.Errorf("%w: re-hashing leaf %d: %w", ErrCorrupt, e.Index, err)
				}
			}
		}
		if a, b := rootOf(signed), rootOf(rng); a != b {
			return nil, fmt.Errorf("%w: the %d leaves after checkpoint %d give root %x but the stored tiles give %x at size %d; run grantline fsck",
				ErrCorrupt, size-cpSize, cpSize, a, b, size)
		}
	}
	// The leaves of the last partial bundle must hash to the edge tile.
	if w := size % tileWidth; w > 0 {
		if err := l.checkLeafHashes(size-w, rows[0]); err != nil {
			return nil, err
		}
	}
	l.seq.rng = rng
	l.seq.tiles.edge = make([][]byte, len(rows))
	for i, r := range rows {
		l.seq.tiles.edge[i] = append([]byte(nil), r...)
	}
	s := &state{cp: cp, edge: tip.edge}
	if size > cpSize && l.seq.smap != nil && l.split {
		// openMap signs them, once the index store's subject map reaches
		// the latest checkpoint.
	} else if size > cpSize && l.seq.smap != nil {
		if s, err = l.sealTail(cpSize, s); err != nil {
			return nil, err
		}
	} else if size > cpSize {
		if cp, err = l.sign(size, rootOf(rng)); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrStorage, err)
		}
		if err := l.st.Commit([][]byte{checkpointKey(size), keyLatest}, [][]byte{cp.Note, be64(nil, size)}); err != nil {
			return nil, fmt.Errorf("%w: publishing checkpoint %d over the leaves after %d: %w", ErrStorage, size, cpSize, err)
		}
		l.logger.Info("ledger signed the leaves integrated after its last checkpoint", "from", cpSize, "size", size)
		s.cp = cp
	}
	l.seq.sealedAt = time.Now()
	l.logger.Info("ledger opened", "size", size, "root", fmt.Sprintf("%x", s.cp.Root))
	return s, nil
}

// rangeAt rebuilds the compact range of the tree of s.cp.Size from the
// tiles as of s.
func (l *Log) rangeAt(s *state) (*compact.Range, error) {
	hs, err := l.nodeHashes(s, compact.RangeNodes(0, s.cp.Size, nil))
	if err != nil {
		return nil, err
	}
	rng, err := l.rf.NewRange(0, s.cp.Size, hs)
	if err != nil {
		return nil, fmt.Errorf("%w: rebuilding the tree edge at size %d: %w", ErrCorrupt, s.cp.Size, err)
	}
	return rng, nil
}

// checkLeafHashes checks that the leaves from start hash to hashes.
func (l *Log) checkLeafHashes(start uint64, hashes []byte) error {
	n := uint64(len(hashes) / 32)
	keys := make([][]byte, n)
	for i := range keys {
		keys[i] = leafKey(start + uint64(i))
	}
	vals, err := l.st.Get(keys...)
	if err != nil {
		return fmt.Errorf("%w: reading leaves %d..%d: %w", ErrStorage, start, start+n, err)
	}
	for i, v := range vals {
		if v == nil {
			return fmt.Errorf("%w: leaf %d is missing; run grantline fsck", ErrCorrupt, start+uint64(i))
		}
		if h := LeafHash(v); !bytes.Equal(h[:], hashes[i*32:i*32+32]) {
			return fmt.Errorf("%w: leaf %d hashes to %x but tile 0/%d holds %x; run grantline fsck",
				ErrCorrupt, start+uint64(i), h, (start+uint64(i))/tileWidth, hashes[i*32:i*32+32])
		}
	}
	return nil
}

// initEmpty publishes the size-0 checkpoint of a new log, in an empty store
// only, and not with Options.MustExist.
func (l *Log) initEmpty() (*state, error) {
	nonEmpty := false
	if err := l.st.Scan(nil, nil, func(k, v []byte) error { nonEmpty = true; return errStop }); err != nil && err != errStop {
		return nil, fmt.Errorf("%w: scanning the store: %w", ErrStorage, err)
	}
	if nonEmpty {
		return nil, fmt.Errorf("%w: the store holds data but no latest tree size; run grantline fsck", ErrCorrupt)
	}
	if l.o.MustExist {
		return nil, fmt.Errorf("the store is empty although a log was created in it: %w", ErrNotFound)
	}
	if err := checkIndexAtomic(l.ix, l.split, l.o.SubjectMap); err != nil {
		return nil, err // before the store holds anything
	}
	cp, err := l.sign(0, [32]byte(hasher.EmptyRoot()))
	if err != nil {
		return nil, err
	}
	keys, vals := [][]byte{checkpointKey(0), keyLatest}, [][]byte{cp.Note, be64(nil, 0)}
	if l.o.SubjectMap {
		keys, vals = append(keys, keySubjectMap), append(vals, []byte{byte(mapCompact)})
		l.smapOn, l.seq.smap = true, newSubjectMap(l.ix, mapCompact)
	}
	if err := l.st.Commit(keys, vals); err != nil {
		return nil, fmt.Errorf("%w: publishing the first checkpoint: %w", ErrStorage, err)
	}
	l.seq.rng = l.rf.NewEmptyRange(0)
	l.seq.sealedAt = time.Now()
	l.logger.Info("ledger created", "origin", l.o.Signer.Name())
	return &state{cp: cp}, nil
}

func rootOf(r *compact.Range) [32]byte {
	root, err := r.GetRootHash(nil)
	if err != nil || root == nil {
		return [32]byte(hasher.EmptyRoot())
	}
	return [32]byte(root)
}

// sign makes the signed checkpoint of a tree.
func (l *Log) sign(size uint64, root [32]byte) (Checkpoint, error) {
	return SignCheckpoint(l.o.Signer, size, root)
}

// parseCheckpoint verifies a stored checkpoint note and checks its size.
func (l *Log) parseCheckpoint(n []byte, size uint64) (Checkpoint, error) {
	return parseCheckpoint(n, size, l.o.Verifier)
}

func parseCheckpoint(n []byte, size uint64, v note.Verifier) (Checkpoint, error) {
	c, err := OpenCheckpoint(n, v)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("%w: stored checkpoint %d does not verify with key %s: %w; check the log key or run grantline fsck",
			ErrCorrupt, size, v.Name(), err)
	}
	if c.Size != size {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint stored under size %d says size %d; run grantline fsck",
			ErrCorrupt, size, c.Size)
	}
	return c, nil
}

// sealTail signs the leaves a crash left after the latest checkpoint (at
// cpSize; published is its state) in a log with a subject map: like the
// seal stage, it appends the map leaf over them (their subjects are
// pending in the sequencer's map) and commits it with the checkpoint in one
// Store.Commit, so a crash here only repeats it at the next Open.
func (l *Log) sealTail(cpSize uint64, published *state) (*state, error) {
	l.seq.last = published
	w := newWrites(0)
	ix := w
	if l.split {
		// Called by openMap: the index store is complete up to the tree
		// size, and takes the map leaf's records after the main commit.
		ix = newWrites(0)
	}
	l.seq.tiles.begin()
	size, err := l.appendMapLeaf(w, ix)
	if err != nil {
		return nil, fmt.Errorf("%w: sealing the leaves after checkpoint %d: %w", ErrStorage, cpSize, err)
	}
	l.seq.tiles.flush(size, w)
	w.put(keyTree, be64(nil, size))
	s, err := l.seal(size, w)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStorage, err)
	}
	if err := l.st.Commit(w.keys, w.vals); err != nil {
		return nil, fmt.Errorf("%w: publishing checkpoint %d over the leaves after %d: %w", ErrStorage, size, cpSize, err)
	}
	if l.split {
		// A crash before this commit leaves the index store one leaf
		// short and its map one checkpoint behind: the next Open redoes
		// both from the leaves.
		ix.put(l.ixMark, be64(nil, size))
		if err := commitAtomic(l.ix, ix.keys, ix.vals); err != nil {
			return nil, fmt.Errorf("%w: indexing the map leaf of checkpoint %d: %w", ErrStorage, size, err)
		}
		if l.lh != nil {
			// The runs hold the leaves before it (openRuns); the map
			// leaf's keys go there as the indexer's would.
			if err := l.appendRuns(size-uint64(len(ix.leafHashes)), ix.leafHashes, ix.dedupeKeys); err != nil {
				return nil, fmt.Errorf("%w: indexing the map leaf of checkpoint %d: %w", ErrStorage, size, err)
			}
		}
	}
	l.logger.Info("ledger signed the leaves integrated after its last checkpoint", "from", cpSize, "size", size)
	return s, nil
}
