package ledger

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/transparency-dev/merkle/compact"
	"golang.org/x/mod/sumdb/note"

	"github.com/grantline/grantline/ledger/event"
)

// fsckChunk is how many leaves Fsck reads at a time.
const fsckChunk = 4096

// Fsck re-verifies the published log: it re-hashes every leaf, rebuilds
// every tile from scratch and compares it with the stored one, checks every
// stored checkpoint's signature and root, and the leaf-hash, dedupe and
// subject index entries of every leaf. report (may be nil) receives
// progress. The error names the first bad index, tile or checkpoint.
// On an open log it checks the tree of the published checkpoint; appends
// may go on meanwhile.
func (l *Log) Fsck(ctx context.Context, report func(format string, args ...any)) error {
	size := l.Latest().Size
	return fsck(ctx, l.st, l.ix, l.o.Verifier, size, size, true, report)
}

// Fsck checks the store of a log that is not open (it may be one Open
// refuses), as `grantline fsck` does, with v, the verifier of the log's key.
// With v nil (the keys are not at hand, e.g. right after a restore) it
// checks everything but the checkpoint signatures: each checkpoint's text
// is parsed and its root compared with the leaves, and all must name one
// origin; report is told that signatures were not checked. It does not
// close st.
func Fsck(ctx context.Context, st Store, v note.Verifier, report func(format string, args ...any)) error {
	if v == nil && report != nil {
		report("fsck: no log verifier key: checkpoint signatures are NOT checked, only the tree's structure")
	}
	vals, err := st.Get(keyLatest, keyTree, keySeparateIndex)
	if err != nil {
		return storageErr(err, "reading the latest tree size")
	}
	ix := st
	if vals[2] != nil {
		ix = nil
		if report != nil {
			report("fsck: the log keeps its indexes in a separate index store, which Open rebuilds from the leaves: indexes not checked")
		}
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
	return fsck(ctx, st, ix, v, cpSize, size, false, report)
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
// going on, so leaves beyond size are not an error. The index entries of
// every leaf are checked in ix (nil: not checked).
func fsck(ctx context.Context, st, ix Store, ver note.Verifier, cpSize, size uint64, live bool, report func(string, ...any)) error {
	if report == nil {
		report = func(string, ...any) {}
	}
	report("fsck: checking a tree of %d leaves: checkpoints first", size)
	// Checkpoints: every one verifies; none beyond size.
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
		return storageErr(err, "reading checkpoints")
	}
	if len(sizes) == 0 || sizes[len(sizes)-1] != cpSize {
		return fmt.Errorf("%w: the checkpoint of the latest tree size %d is missing", ErrCorrupt, cpSize)
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
	for start := uint64(0); start < size; start += fsckChunk {
		if err := ctx.Err(); err != nil {
			return err
		}
		end := min(start+fsckChunk, size)
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
		noSubject := make([]bool, len(leaves))
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
				keys = append(keys, keyLatest) // placeholder, not checked
				noSubject[j] = true
			}
		}
		vals := make([][]byte, len(keys))
		if ix != nil {
			if vals, err = ix.Get(keys...); err != nil {
				return storageErr(err, "reading indexes")
			}
		}
		for j := range leaves {
			i := start + uint64(j)
			hv, dv, sv := vals[3*j], vals[3*j+1], vals[3*j+2]
			if ix == nil {
				// not checked
			} else if hv == nil || len(hv) != 8 || binary.BigEndian.Uint64(hv) != i {
				return fmt.Errorf("%w: the leaf-hash index of leaf %d is missing or points elsewhere", ErrCorrupt, i)
			} else if dv == nil || len(dv) != 8 || binary.BigEndian.Uint64(dv) != i {
				return fmt.Errorf("%w: the dedupe record of leaf %d is missing or points elsewhere", ErrCorrupt, i)
			} else if sv == nil && !noSubject[j] {
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
		if end%(64*fsckChunk) == 0 || end == size {
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
