package runindex

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/grantline/grantline/internal/atomicfile"
)

// The run file format (docs/design.md, "The leaf-hash runs"); all integers
// big-endian:
//
//	header   magic "GLRUN1\n\x00", from u64, to u64, count u64 (== to-from), key length u32 (16)
//	records  count x (16-byte key, u64 index), sorted by (key, index)
//	sparse   ceil(count/sparseEvery) x u64: the first 8 bytes of the key of every sparseEvery-th record
//	trailer  CRC-32C (Castagnoli) u32 of everything before it, end magic "GLRUNEND"
const (
	magic       = "GLRUN1\n\x00"
	endMagic    = "GLRUNEND"
	headerSize  = 8 + 8 + 8 + 8 + 4
	recordSize  = KeySize + 8
	trailerSize = 4 + 8 // CRC, endMagic
	sparseEvery = 128
	tmpSuffix   = ".tmp"
	runPrefix   = "run-"
)

// KeySize is the length of a key in bytes.
const KeySize = 16

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// runName is the file name of the run covering leaves [from, to).
func runName(from, to uint64) string {
	return fmt.Sprintf("run-%020d-%020d", from, to)
}

// parseRunName returns the range of a run file's name, and false for any
// other name.
func parseRunName(name string) (from, to uint64, ok bool) {
	rest, found := strings.CutPrefix(name, runPrefix)
	if !found || len(rest) != 20+1+20 || rest[20] != '-' {
		return 0, 0, false
	}
	f, err1 := strconv.ParseUint(rest[:20], 10, 64)
	t, err2 := strconv.ParseUint(rest[21:], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return f, t, true
}

func sparseCount(count uint64) uint64 { return (count + sparseEvery - 1) / sparseEvery }

// fileSize is the size of a run file of count records.
func fileSize(count uint64) int64 {
	return headerSize + int64(count)*recordSize + int64(sparseCount(count))*8 + trailerSize
}

// rec is one record in memory: the key as two big-endian halves (so that
// comparing (hi, lo) compares the key's bytes) and the leaf index.
type rec struct{ hi, lo, idx uint64 }

func recOf(k *Key, idx uint64) rec {
	return rec{binary.BigEndian.Uint64(k[:8]), binary.BigEndian.Uint64(k[8:]), idx}
}

func (r rec) key() Key {
	var k Key
	binary.BigEndian.PutUint64(k[:8], r.hi)
	binary.BigEndian.PutUint64(k[8:], r.lo)
	return k
}

func cmpRec(a, b rec) int {
	switch {
	case a.hi != b.hi:
		if a.hi < b.hi {
			return -1
		}
		return 1
	case a.lo != b.lo:
		if a.lo < b.lo {
			return -1
		}
		return 1
	case a.idx != b.idx:
		if a.idx < b.idx {
			return -1
		}
		return 1
	}
	return 0
}

func decodeRec(b []byte) rec {
	return rec{binary.BigEndian.Uint64(b), binary.BigEndian.Uint64(b[8:]), binary.BigEndian.Uint64(b[16:])}
}

// run is one immutable run file, open for reading. The index holds one
// reference while the run is in its chain; snapshots hold one each. The last
// release closes the file, and removes it if the run was replaced.
type run struct {
	path      string
	from, to  uint64
	f         *os.File
	sparse    []uint64
	refs      atomic.Int32
	obsolete  atomic.Bool
	onRelease func(r *run) // logs a failed close or remove
}

func (r *run) count() uint64 { return r.to - r.from }
func (r *run) size() int64   { return fileSize(r.count()) }

func (r *run) acquire() { r.refs.Add(1) }

func (r *run) release() {
	if r.refs.Add(-1) == 0 {
		r.onRelease(r)
	}
}

// runWriter streams a run file: records in order, then the sparse section
// and the trailer.
type runWriter struct {
	f      *os.File
	path   string // final name; f is path+".tmp"
	bw     *bufio.Writer
	crc    hash.Hash32
	from   uint64
	to     uint64
	n      uint64
	last   rec
	sparse []uint64
	buf    [recordSize]byte
}

func createRun(dir string, from, to uint64) (*runWriter, error) {
	path := filepath.Join(dir, runName(from, to))
	f, err := os.OpenFile(path+tmpSuffix, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("creating run: %w", err)
	}
	w := &runWriter{f: f, path: path, crc: crc32.New(castagnoli), from: from, to: to,
		sparse: make([]uint64, 0, sparseCount(to-from))}
	w.bw = bufio.NewWriterSize(io.MultiWriter(f, w.crc), 256<<10)
	var h [headerSize]byte
	copy(h[:], magic)
	binary.BigEndian.PutUint64(h[8:], from)
	binary.BigEndian.PutUint64(h[16:], to)
	binary.BigEndian.PutUint64(h[24:], to-from)
	binary.BigEndian.PutUint32(h[32:], KeySize)
	w.bw.Write(h[:]) // errors surface at Flush
	return w, nil
}

func (w *runWriter) add(r rec) {
	if w.n%sparseEvery == 0 {
		w.sparse = append(w.sparse, r.hi)
	}
	binary.BigEndian.PutUint64(w.buf[:], r.hi)
	binary.BigEndian.PutUint64(w.buf[8:], r.lo)
	binary.BigEndian.PutUint64(w.buf[16:], r.idx)
	w.bw.Write(w.buf[:])
	w.n++
}

// abort removes the temporary file.
func (w *runWriter) abort() {
	w.f.Close()
	os.Remove(w.path + tmpSuffix)
}

// finish writes the sparse section and trailer, syncs, renames the file to
// its final name and syncs dir: once it returns the run survives a crash.
func (w *runWriter) finish() (*run, error) {
	if w.n != w.to-w.from {
		w.abort()
		return nil, fmt.Errorf("writing run %s: %d records for [%d, %d) (a bug)", w.path, w.n, w.from, w.to)
	}
	var b [8]byte
	for _, s := range w.sparse {
		binary.BigEndian.PutUint64(b[:], s)
		w.bw.Write(b[:])
	}
	if err := w.bw.Flush(); err != nil {
		w.abort()
		return nil, fmt.Errorf("writing run %s: %w", w.path+tmpSuffix, err)
	}
	var t [trailerSize]byte
	binary.BigEndian.PutUint32(t[:], w.crc.Sum32())
	copy(t[4:], endMagic)
	if _, err := w.f.Write(t[:]); err != nil {
		w.abort()
		return nil, fmt.Errorf("writing run %s: %w", w.path+tmpSuffix, err)
	}
	if err := w.f.Sync(); err != nil {
		w.abort()
		return nil, fmt.Errorf("syncing run %s: %w", w.path+tmpSuffix, err)
	}
	if err := os.Rename(w.path+tmpSuffix, w.path); err != nil {
		w.abort()
		return nil, fmt.Errorf("renaming run %s: %w", w.path+tmpSuffix, err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(w.path)); err != nil {
		// The run is in place but maybe not durably named: keep it (a
		// restart finds it or re-appends) and report the failure.
		w.f.Close()
		return nil, err
	}
	return &run{path: w.path, from: w.from, to: w.to, f: w.f, sparse: w.sparse}, nil
}

// damaged is the error for a run file that cannot come from a crash.
func damaged(path string, off int64, what string) error {
	return fmt.Errorf("%w: %s at offset %d: %s; delete the directory %s, it is rebuilt from the log (docs/design.md, \"The leaf-hash runs\")",
		ErrDamaged, path, off, what, filepath.Dir(path))
}

// openRun opens the run file at path, whose name says [from, to): it checks
// the header, the size and the end magic and loads the sparse section. It
// never reads the records.
func openRun(path string, from, to uint64) (*run, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening run: %w", err)
	}
	r, err := loadRun(f, path, from, to)
	if err != nil {
		f.Close()
		return nil, err
	}
	return r, nil
}

func loadRun(f *os.File, path string, from, to uint64) (*run, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("opening run: %w", err)
	}
	var h [headerSize]byte
	if _, err := f.ReadAt(h[:], 0); err != nil {
		return nil, damaged(path, 0, fmt.Sprintf("header unreadable (%v), file size %d", err, st.Size()))
	}
	if string(h[:8]) != magic {
		return nil, damaged(path, 0, fmt.Sprintf("magic %q, want %q", h[:8], magic))
	}
	hf, ht, hc := binary.BigEndian.Uint64(h[8:]), binary.BigEndian.Uint64(h[16:]), binary.BigEndian.Uint64(h[24:])
	if hf != from || ht != to {
		return nil, damaged(path, 8, fmt.Sprintf("header says leaves [%d, %d), the name [%d, %d)", hf, ht, from, to))
	}
	if hc != to-from {
		return nil, damaged(path, 24, fmt.Sprintf("count %d, want %d", hc, to-from))
	}
	if kl := binary.BigEndian.Uint32(h[32:]); kl != KeySize {
		return nil, damaged(path, 32, fmt.Sprintf("key length %d, want %d", kl, KeySize))
	}
	if want := fileSize(hc); st.Size() != want {
		return nil, damaged(path, st.Size(), fmt.Sprintf("file size %d, want %d for %d records", st.Size(), want, hc))
	}
	ns := sparseCount(hc)
	off := headerSize + int64(hc)*recordSize
	b := make([]byte, int(ns)*8+trailerSize)
	if _, err := f.ReadAt(b, off); err != nil {
		return nil, fmt.Errorf("reading run %s at offset %d: %w", path, off, err)
	}
	if !bytes.Equal(b[len(b)-len(endMagic):], []byte(endMagic)) {
		return nil, damaged(path, st.Size()-int64(len(endMagic)), "end magic missing")
	}
	sparse := make([]uint64, ns)
	for i := range sparse {
		sparse[i] = binary.BigEndian.Uint64(b[i*8:])
	}
	if !slices.IsSorted(sparse) {
		return nil, damaged(path, off, "sparse section out of order")
	}
	return &run{path: path, from: from, to: to, f: f, sparse: sparse}, nil
}

// lookup calls fn for every record of r whose key is k, until fn returns
// false; it returns false if fn did.
func (r *run) lookup(k *Key, fn func(uint64) bool) (bool, error) {
	want := recOf(k, 0)
	p := want.hi
	// Block i holds records [i*sparseEvery, (i+1)*sparseEvery) and begins
	// with prefix sparse[i]. A record with prefix p can lie in the last
	// block that begins below p and in every block that begins with p.
	j, _ := slices.BinarySearch(r.sparse, p) // first block beginning >= p
	e := j
	for e < len(r.sparse) && r.sparse[e] == p {
		e++
	}
	start := j
	if j > 0 {
		start = j - 1
	}
	if start == e {
		return true, nil
	}
	lo := uint64(start) * sparseEvery
	hi := min(uint64(e)*sparseEvery, r.count())
	buf := make([]byte, (hi-lo)*recordSize)
	off := headerSize + int64(lo)*recordSize
	if _, err := r.f.ReadAt(buf, off); err != nil {
		return false, fmt.Errorf("reading run %s at offset %d: %w", r.path, off, err)
	}
	n := int(hi - lo)
	i := searchRecords(buf, n, want)
	for ; i < n; i++ {
		got := decodeRec(buf[i*recordSize:])
		if got.hi != want.hi || got.lo != want.lo {
			break
		}
		if !fn(got.idx) {
			return false, nil
		}
	}
	return true, nil
}

// searchRecords returns the first of the n encoded records in buf that is
// not below want.
func searchRecords(buf []byte, n int, want rec) int {
	lo, hi := 0, n
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if cmpRec(decodeRec(buf[m*recordSize:]), want) < 0 {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}
