package ledger

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"

	"github.com/transparency-dev/merkle/compact"
	"golang.org/x/mod/sumdb/note"

	"github.com/grantline/grantline/ledger/event"
)

const fsckSerialChunk = 4096

// fsckSerial is the serial fsck this package had before the parallel one
// (ledger/fsck.go), kept for BenchmarkFsck to measure against. It checks the tree of size leaves whose latest checkpoint is at cpSize
// (below size when leaves wait for their checkpoint). live: appends may be
// going on, so leaves beyond size are not an error.
func fsckSerial(ctx context.Context, st Store, ver note.Verifier, cpSize, size uint64, live bool, report func(string, ...any)) error {
	if report == nil {
		report = func(string, ...any) {}
	}
	report("fsck: checking a tree of %d leaves: checkpoints first", size)
	// Checkpoints: every one verifies; none beyond size (shared with the
	// parallel pass: the benchmark compares the leaf and index passes).
	sizes, roots, err := fsckCheckpoints(st, ver, cpSize, live)
	if err != nil {
		return err
	}
	if size > cpSize {
		report("fsck: %d leaves after the latest checkpoint wait for the next one (Open signs them)", size-cpSize)
	}
	report("fsck: %d checkpoints verify; checking %d leaves", len(sizes), size)

	rf := &compact.RangeFactory{Hash: hasher.HashChildren}
	rng := rf.NewEmptyRange(0)
	var rows [][]byte
	var tileErr error
	checkTile := func(level, index uint64, row []byte) {
		if tileErr != nil {
			return
		}
		vals, err := st.Get(tileKey(level, index))
		switch {
		case err != nil:
			tileErr = storageErr(err, fmt.Sprintf("reading tile %d/%d", level, index))
		case vals[0] == nil:
			tileErr = fmt.Errorf("%w: tile %d/%d is missing", ErrCorrupt, level, index)
		case !bytes.Equal(vals[0], row) && !(live && bytes.HasPrefix(vals[0], row)): // a live tile may have grown
			tileErr = fmt.Errorf("%w: tile %d/%d (%d bytes) differs from the one rebuilt from the leaves (%d bytes)", ErrCorrupt, level, index, len(vals[0]), len(row))
		}
	}
	visit := func(id compact.NodeID, h []byte) {
		if id.Level%TileHeight != 0 {
			return
		}
		lv := id.Level / TileHeight
		for uint(len(rows)) <= lv {
			rows = append(rows, nil)
		}
		rows[lv] = append(rows[lv], h...)
		if len(rows[lv]) == tileWidth*32 {
			checkTile(uint64(lv), id.Index/tileWidth, rows[lv])
			rows[lv] = nil
		}
	}
	ci := 0
	checkRoot := func() error {
		for ci < len(sizes) && sizes[ci] == rng.End() {
			if root := rootOf(rng); root != roots[ci] {
				return fmt.Errorf("%w: checkpoint %d has root %x but the leaves give %x", ErrCorrupt, sizes[ci], roots[ci], root)
			}
			ci++
		}
		return nil
	}
	if err := checkRoot(); err != nil {
		return err
	}
	for start := uint64(0); start < size; start += fsckSerialChunk {
		if err := ctx.Err(); err != nil {
			return err
		}
		end := min(start+fsckSerialChunk, size)
		var leaves [][]byte
		next := start
		err := st.Scan(leafKey(start), leafKey(end), func(k, v []byte) error {
			if i := binary.BigEndian.Uint64(k[1:]); i != next {
				return fmt.Errorf("%w: leaf %d is missing", ErrCorrupt, next)
			}
			next++
			leaves = append(leaves, append([]byte(nil), v...))
			return nil
		})
		if err != nil {
			return storageErr(err, "reading leaves")
		}
		if next != end {
			return fmt.Errorf("%w: leaf %d is missing", ErrCorrupt, next)
		}
		// Each leaf against its hash in the stored level-0 tile first, to
		// name a damaged leaf as such (a missing or short tile is reported
		// when the tiles are rebuilt below).
		for ti := start / tileWidth; ti <= (end-1)/tileWidth; ti++ {
			tv, err := st.Get(tileKey(0, ti))
			if err != nil {
				return storageErr(err, fmt.Sprintf("reading tile 0/%d", ti))
			}
			for i := max(start, ti*tileWidth); i < min(end, (ti+1)*tileWidth); i++ {
				if p := (i % tileWidth) * 32; uint64(len(tv[0])) >= p+32 {
					if err := checkLeaf(Entry{Index: i, Leaf: leaves[i-start]}, tv[0][p:p+32]); err != nil {
						return err
					}
				}
			}
		}
		keys := make([][]byte, 0, 3*len(leaves))
		hashes := make([][32]byte, len(leaves))
		dedupes := make([][32]byte, len(leaves))
		for j, leaf := range leaves {
			i := start + uint64(j)
			e, err := event.DecodeLeaf(leaf)
			if err != nil {
				return fmt.Errorf("%w: leaf %d does not decode: %w", ErrCorrupt, i, err)
			}
			hashes[j] = LeafHash(leaf)
			dedupes[j] = event.DedupeKey(e.GetEvent().GetSource().GetSystem(), e.GetEvent().GetId())
			keys = append(keys, hashKey(hashes[j][:]), dedupeKey(dedupes[j]))
			if s := e.GetEvent().GetSubject().GetId(); s != "" {
				keys = append(keys, subjectKey(s, i))
			} else {
				keys = append(keys, keyLatest) // placeholder that always exists
			}
		}
		vals, err := st.Get(keys...)
		if err != nil {
			return storageErr(err, "reading indexes")
		}
		for j := range leaves {
			i := start + uint64(j)
			hv, dv, sv := vals[3*j], vals[3*j+1], vals[3*j+2]
			if hv == nil || len(hv) != 8 || binary.BigEndian.Uint64(hv) != i {
				return fmt.Errorf("%w: the leaf-hash index of leaf %d is missing or points elsewhere", ErrCorrupt, i)
			}
			if dv == nil || len(dv) != 8 || binary.BigEndian.Uint64(dv) != i {
				return fmt.Errorf("%w: the dedupe record of leaf %d is missing or points elsewhere", ErrCorrupt, i)
			}
			if sv == nil {
				return fmt.Errorf("%w: the subject index entry of leaf %d is missing", ErrCorrupt, i)
			}
			if err := rng.Append(hashes[j][:], visit); err != nil {
				return fmt.Errorf("rebuilding the tree at leaf %d: %w", i, err)
			}
			if tileErr != nil {
				return tileErr
			}
			if err := checkRoot(); err != nil {
				return err
			}
		}
		if end%(64*fsckSerialChunk) == 0 || end == size {
			report("fsck: %d/%d leaves verified", end, size)
		}
	}
	for lv, row := range rows {
		if len(row) > 0 {
			checkTile(uint64(lv), (size>>(uint(lv)*TileHeight))/tileWidth, row)
		}
	}
	if tileErr != nil {
		return tileErr
	}
	if ci != len(sizes) {
		return fmt.Errorf("%w: checkpoint %d was not reached by the leaves", ErrCorrupt, sizes[ci])
	}
	vals, err := st.Get(leafKey(size))
	if err != nil {
		return storageErr(err, "reading leaves")
	}
	if vals[0] != nil && !live {
		return fmt.Errorf("%w: leaf %d exists beyond the tree (size %d)", ErrCorrupt, size, size)
	}
	report("fsck: ok: %d leaves, %d checkpoints, root %x", size, len(sizes), rootOf(rng))
	return nil
}
