package runindex

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
)

// Verify reads every run in full and every buffered key. For each run it checks the CRC, that the
// records are sorted by (key, index), that its values are exactly [from, to) each once (a bitmap of
// count bits: memory count/8 bytes) and that the sparse section matches the records; and that the runs
// and buffers form one chain from leaf 0. It calls fn for each (key, index) with index < below (records
// at or beyond are skipped: they belong to appends after the caller's snapshot); fn may have been
// called for some records of a run before that run's damage is reported. Damage is an error wrapping
// ErrDamaged that names the file and byte offset; a failed read names the file; a cancelled ctx returns
// ctx.Err(). It works on a snapshot (reference-counted) so Appends and merges go on meanwhile. After
// Close it returns ErrClosed.
func (x *Index) Verify(ctx context.Context, below uint64, fn func(k Key, index uint64)) error {
	bufs, runs, err := x.snapshotInto(nil, nil)
	if err != nil {
		return err
	}
	defer releaseRuns(runs)
	var pos uint64
	for _, r := range runs {
		if r.from != pos {
			return damaged(r.path, 8, fmt.Sprintf("the chain of runs jumps from leaf %d to %d", pos, r.from))
		}
		if err := verifyRun(ctx, r, below, fn); err != nil {
			return err
		}
		pos = r.to
	}
	for _, b := range bufs {
		if b.base != pos {
			return fmt.Errorf("%w: the memory buffer of leaves from %d follows leaf %d (a bug)", ErrDamaged, b.base, pos)
		}
		for i, k := range b.keys {
			if idx := b.base + uint64(i); idx < below {
				fn(k, idx)
			}
		}
		pos += uint64(len(b.keys))
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return nil
}

// verifyRun reads r in one pass. The first inconsistency is kept while the
// CRC is computed to the end: a CRC mismatch is reported first (with the
// inconsistency it caused, if any), since it says the bytes changed.
func verifyRun(ctx context.Context, r *run, below uint64, fn func(Key, uint64)) error {
	size := r.size()
	crc := crc32.New(castagnoli)
	br := bufio.NewReaderSize(io.TeeReader(io.NewSectionReader(r.f, 0, size-trailerSize), crc), 256<<10)
	var problem string // the first inconsistency
	var problemOff int64
	note := func(off int64, what string) {
		if problem == "" {
			problem, problemOff = what, off
		}
	}
	var h [headerSize]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return fmt.Errorf("verifying run %s: %w", r.path, err)
	}
	if string(h[:8]) != magic || binary.BigEndian.Uint64(h[8:]) != r.from || binary.BigEndian.Uint64(h[16:]) != r.to ||
		binary.BigEndian.Uint64(h[24:]) != r.count() || binary.BigEndian.Uint32(h[32:]) != KeySize {
		note(0, "header changed since the run was opened")
	}
	n := r.count()
	seen := make([]uint64, (n+63)/64)
	var b [recordSize]byte
	var prev rec
	sparse := make([]uint64, 0, len(r.sparse))
	for i := range n {
		if i%65536 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		if _, err := io.ReadFull(br, b[:]); err != nil {
			return fmt.Errorf("verifying run %s: %w", r.path, err)
		}
		cur := decodeRec(b[:])
		off := headerSize + int64(i)*recordSize
		if i%sparseEvery == 0 {
			sparse = append(sparse, cur.hi)
		}
		switch {
		case cur.idx < r.from || cur.idx >= r.to:
			note(off, fmt.Sprintf("record %d: leaf %d outside the run's [%d, %d)", i, cur.idx, r.from, r.to))
			continue
		case i > 0 && cmpRec(prev, cur) >= 0:
			note(off, fmt.Sprintf("record %d (leaf %d) is not above record %d (leaf %d): out of order", i, cur.idx, i-1, prev.idx))
		}
		prev = cur
		bit := cur.idx - r.from
		if seen[bit/64]&(1<<(bit%64)) != 0 {
			note(off, fmt.Sprintf("record %d: leaf %d appears twice", i, cur.idx))
			continue
		}
		seen[bit/64] |= 1 << (bit % 64)
		if cur.idx < below {
			fn(cur.key(), cur.idx)
		}
	}
	// n records, each value in range and none twice, so every value of
	// [from, to) appears exactly once.
	soff := headerSize + int64(n)*recordSize
	for i := range sparseCount(n) {
		if _, err := io.ReadFull(br, b[:8]); err != nil {
			return fmt.Errorf("verifying run %s: %w", r.path, err)
		}
		v := binary.BigEndian.Uint64(b[:8])
		if v != sparse[i] || v != r.sparse[i] {
			note(soff+int64(i)*8, fmt.Sprintf("sparse entry %d does not match record %d", i, i*sparseEvery))
		}
	}
	var t [trailerSize]byte
	if _, err := r.f.ReadAt(t[:], size-trailerSize); err != nil {
		return fmt.Errorf("verifying run %s: %w", r.path, err)
	}
	if got, want := binary.BigEndian.Uint32(t[:]), crc.Sum32(); got != want {
		what := fmt.Sprintf("CRC-32C %08x, the contents give %08x", got, want)
		if problem != "" {
			what += fmt.Sprintf(" (first inconsistency, at offset %d: %s)", problemOff, problem)
		}
		return damaged(r.path, size-trailerSize, what)
	}
	if string(t[4:]) != endMagic {
		note(size-int64(len(endMagic)), "end magic changed since the run was opened")
	}
	if problem != "" {
		return damaged(r.path, problemOff, problem)
	}
	return nil
}
