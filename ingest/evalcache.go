package ingest

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/grantline/grantline/ledger/event"
	"github.com/grantline/grantline/rules"
)

// The evaluation cache (docs/design.md "Incremental evaluation") keeps, on
// disk, the per-subject results of full evaluations at a fixed as-of time or
// period, so that a later evaluation of the same log at a larger tree size,
// with the same as-of time or period and rule set, re-evaluates only the
// subjects whose findings may have changed and replays the others. A cache
// file holds, in subject order, each subject's results (before any rules
// filter of the request) and the subjects whose chains its rules may read
// (owners, credential holders). Each record is framed with its length and
// a CRC-32C; the file starts with its key and ends with a trailer counting
// the records, and is checked in full before it is used: a damaged or
// foreign file is ignored (and removed) with a warning, and the evaluation
// runs in full.

// EvaluateCache configures the evaluation cache (Config.EvaluateCache).
type EvaluateCache struct {
	// Dir holds the cache, in Dir/EvalCacheDirName. Empty: no cache.
	Dir string
	// MaxBytes bounds the cache's files on disk; the least recently used
	// are removed past it, and a single evaluation whose results exceed it
	// is not kept. 0 or less: no cache (New removes what is there).
	MaxBytes int64
}

// EvalCacheDirName is the directory under EvaluateCache.Dir holding the
// evaluation cache.
const EvalCacheDirName = "evaluate-cache"

// DefaultEvaluateCacheBytes is the cache bound `grantline serve` uses by
// default.
const DefaultEvaluateCacheBytes = 1 << 30

// evalCacheMagic starts every cache file; the digit is the format version.
const evalCacheMagic = "grantline evaluate-cache 1\n"

// evalCacheExt ends the name of a cache file; temporary files end in .tmp.
const evalCacheExt = ".evc"

// errCacheDamaged marks a cache file that fails its checks.
var errCacheDamaged = errors.New("damaged or foreign evaluation cache file")

func (c EvaluateCache) enabled() bool { return c.Dir != "" && c.MaxBytes > 0 }

func (c EvaluateCache) root() string { return filepath.Join(c.Dir, EvalCacheDirName) }

// prepareEvalCache removes the temporary files an interrupted evaluation
// left in the cache, or the whole cache when it is turned off.
func prepareEvalCache(c EvaluateCache, log *slog.Logger) error {
	if c.Dir == "" {
		return nil
	}
	root := c.root()
	if !c.enabled() {
		if _, err := os.Stat(root); err == nil {
			log.Info("removing the evaluation cache: it is turned off", "dir", root)
			if err := os.RemoveAll(root); err != nil {
				return fmt.Errorf("removing the evaluation cache %s: %w", root, err)
			}
		}
		return nil
	}
	ents, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading the evaluation cache %s: %w", root, err)
	}
	for _, d := range ents {
		if strings.HasSuffix(d.Name(), ".tmp") {
			if err := os.Remove(filepath.Join(root, d.Name())); err != nil {
				return fmt.Errorf("removing an interrupted evaluation's cache file: %w", err)
			}
		}
	}
	return nil
}

// cacheKey is what results are reused for: the log, the as-of time or
// period and the rule set. The tree size is kept beside it.
type cacheKey struct {
	origin string
	asOf   time.Time
	from   time.Time // zero: one instant
	rules  string    // ruleSetHash
}

func (k cacheKey) encode() []byte {
	var b []byte
	b = appendString(b, k.origin)
	b = appendTime(b, k.asOf)
	b = appendTime(b, k.from)
	b = appendString(b, k.rules)
	return b
}

// prefix names the key in file names: the files of one key differ only in
// their tree size.
func (k cacheKey) prefix() string {
	h := sha256.Sum256(k.encode())
	return hex.EncodeToString(h[:16])
}

// engineIdentity identifies the evaluating program: a digest of its
// executable, so that a cache written by another build (whose rules engine
// may evaluate differently) is never reused.
var engineIdentity = sync.OnceValue(func() string {
	h := sha256.New()
	if exe, err := os.Executable(); err == nil {
		if f, err := os.Open(exe); err == nil {
			_, err = io.Copy(h, f)
			f.Close()
			if err == nil {
				return "exe:" + hex.EncodeToString(h.Sum(nil))
			}
		}
	}
	// No readable executable: the build information, made unique to this
	// process so that nothing is reused across runs.
	if bi, ok := debug.ReadBuildInfo(); ok {
		h.Write([]byte(bi.String()))
	}
	fmt.Fprintf(h, "%d %d", os.Getpid(), time.Now().UnixNano())
	return "proc:" + hex.EncodeToString(h.Sum(nil))
})

// ruleSetHash is a digest of the loaded rules (text, params, metadata) and
// of the program evaluating them.
func ruleSetHash(infos []rules.RuleInfo) string {
	h := sha256.New()
	b := appendString(nil, engineIdentity())
	for _, r := range infos {
		b = appendString(b, r.ID)
		b = appendString(b, r.SHA256)
		b = appendString(b, r.Title)
		b = appendString(b, r.Severity)
		b = appendStrings(b, r.Controls)
		names := make([]string, 0, len(r.Params))
		for n := range r.Params {
			names = append(names, n)
		}
		slices.Sort(names)
		b = binary.AppendUvarint(b, uint64(len(names)))
		for _, n := range names {
			b = appendString(b, n)
			b = appendString(b, r.Params[n])
		}
	}
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}

// evalCache is the cache of one server. Safe for concurrent use.
type evalCache struct {
	cfg EvaluateCache
	log *slog.Logger
	mu  sync.Mutex // serialises pruning
}

// cacheFileName is the name of the file of key at size.
func cacheFileName(k cacheKey, size uint64) string {
	return fmt.Sprintf("%s-%020d%s", k.prefix(), size, evalCacheExt)
}

// best returns the path and tree size of the cache file of key with the
// largest size at most size; ok false when there is none.
func (c *evalCache) best(k cacheKey, size uint64) (path string, base uint64, ok bool) {
	ents, err := os.ReadDir(c.cfg.root())
	if err != nil {
		return "", 0, false
	}
	pre := k.prefix() + "-"
	for _, d := range ents {
		name := d.Name()
		if !strings.HasPrefix(name, pre) || !strings.HasSuffix(name, evalCacheExt) {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(name, pre), evalCacheExt), 10, 64)
		if err != nil || n > size || (ok && n <= base) {
			continue
		}
		path, base, ok = filepath.Join(c.cfg.root(), name), n, true
	}
	return path, base, ok
}

// prune removes the files of key at sizes other than keep (usually older
// ones, superseded; when evaluations of the same key at two tree sizes end
// out of order, the larger one goes, which costs only its reuse), then the
// least recently used cache files until they fit MaxBytes.
func (c *evalCache) prune(k cacheKey, keep uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ents, err := os.ReadDir(c.cfg.root())
	if err != nil {
		return
	}
	type file struct {
		path string
		size int64
		used time.Time
	}
	var files []file
	var total int64
	superseded := k.prefix() + "-"
	keepName := cacheFileName(k, keep)
	for _, d := range ents {
		name := d.Name()
		if !strings.HasSuffix(name, evalCacheExt) {
			continue
		}
		p := filepath.Join(c.cfg.root(), name)
		if strings.HasPrefix(name, superseded) && name != keepName {
			os.Remove(p)
			continue
		}
		fi, err := d.Info()
		if err != nil {
			continue
		}
		files = append(files, file{p, fi.Size(), fi.ModTime()})
		total += fi.Size()
	}
	slices.SortFunc(files, func(a, b file) int { return a.used.Compare(b.used) })
	for _, f := range files {
		if total <= c.cfg.MaxBytes {
			break
		}
		if os.Remove(f.path) == nil {
			c.log.Info("evaluation cache: removed the least recently used entry to stay within its bound", "file", filepath.Base(f.path), "bytes", f.size, "max_bytes", c.cfg.MaxBytes)
		}
		total -= f.size
	}
}

// cacheRecord is one subject's results as the cache keeps them.
type cacheRecord struct {
	subject string
	related []string // chains its rules may read besides its own
	result  rules.SubjectResult
}

// The frames of a cache file: uvarint length, payload, CRC-32C of the
// payload (4 bytes, big-endian). The first frame is the header, the last
// the trailer; the payload's first byte says which.
const (
	frameHeader  = 'H'
	frameSubject = 'S'
	frameTrailer = 'T'
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// maxFrame bounds a frame's length: a length past it is damage.
const maxFrame = 1 << 30

// cacheWriter writes a new cache file. Not safe for concurrent use.
type cacheWriter struct {
	c       *evalCache
	key     cacheKey
	size    uint64
	f       *os.File
	w       *bufio.Writer
	buf     []byte
	written int64
	records uint64
	last    string
	over    bool // past MaxBytes: abandoned
}

// create starts the cache file of key at tree size with root.
func (c *evalCache) create(k cacheKey, size uint64, root [32]byte) (*cacheWriter, error) {
	if err := os.MkdirAll(c.cfg.root(), 0o700); err != nil {
		return nil, fmt.Errorf("making the evaluation cache directory: %w", err)
	}
	f, err := os.CreateTemp(c.cfg.root(), "eval-*.tmp")
	if err != nil {
		return nil, fmt.Errorf("creating an evaluation cache file: %w", err)
	}
	cw := &cacheWriter{c: c, key: k, size: size, f: f, w: bufio.NewWriterSize(f, 256<<10)}
	if _, err := cw.w.WriteString(evalCacheMagic); err != nil {
		cw.abort()
		return nil, err
	}
	h := append([]byte{frameHeader}, k.encode()...)
	h = binary.BigEndian.AppendUint64(h, size)
	h = append(h, root[:]...)
	if err := cw.frame(h); err != nil {
		cw.abort()
		return nil, err
	}
	return cw, nil
}

func (cw *cacheWriter) frame(p []byte) error {
	if cw.over {
		return nil
	}
	var hdr [binary.MaxVarintLen64]byte
	n := binary.PutUvarint(hdr[:], uint64(len(p)))
	cw.written += int64(n + len(p) + 4)
	if cw.written > cw.c.cfg.MaxBytes {
		cw.over = true
		return nil
	}
	cw.w.Write(hdr[:n])
	cw.w.Write(p)
	_, err := cw.w.Write(binary.BigEndian.AppendUint32(nil, crc32.Checksum(p, castagnoli)))
	if err != nil {
		return fmt.Errorf("writing the evaluation cache: %w", err)
	}
	return nil
}

// add appends one subject's record; subjects must come in increasing
// order.
func (cw *cacheWriter) add(r *cacheRecord) error {
	if cw.records > 0 && r.subject <= cw.last {
		return fmt.Errorf("evaluation cache: subject %q after %q, out of order", r.subject, cw.last)
	}
	cw.last = r.subject
	cw.records++
	cw.buf = encodeRecord(cw.buf[:0], r)
	return cw.frame(cw.buf)
}

// commit ends the file and puts it in place; it reports whether it was
// kept (false when larger than the bound).
func (cw *cacheWriter) commit() (bool, int64, error) {
	t := binary.AppendUvarint([]byte{frameTrailer}, cw.records)
	if err := cw.frame(t); err != nil {
		cw.abort()
		return false, 0, err
	}
	if cw.over {
		cw.abort()
		return false, cw.written, nil
	}
	if err := cw.w.Flush(); err != nil {
		cw.abort()
		return false, 0, fmt.Errorf("writing the evaluation cache: %w", err)
	}
	if err := cw.f.Close(); err != nil {
		os.Remove(cw.f.Name())
		return false, 0, fmt.Errorf("writing the evaluation cache: %w", err)
	}
	if err := os.Rename(cw.f.Name(), filepath.Join(cw.c.cfg.root(), cacheFileName(cw.key, cw.size))); err != nil {
		os.Remove(cw.f.Name())
		return false, 0, fmt.Errorf("putting the evaluation cache file in place: %w", err)
	}
	cw.c.prune(cw.key, cw.size)
	return true, cw.written, nil
}

// abort removes the unfinished file.
func (cw *cacheWriter) abort() {
	cw.f.Close()
	os.Remove(cw.f.Name())
}

// cacheReader reads a cache file's records in order, checking each.
type cacheReader struct {
	path    string
	f       *os.File
	r       *bufio.Reader
	size    uint64
	root    [32]byte
	buf     []byte
	records uint64 // read so far
	ended   bool   // the trailer was read
	last    string
	// fileSize bounds a frame's length: a damaged length is never
	// allocated for.
	fileSize int64
}

// openCache opens a cache file and checks its header against key.
func openCache(path string, k cacheKey) (*cacheReader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	cr := &cacheReader{path: path, f: f, r: bufio.NewReaderSize(f, 256<<10), fileSize: fi.Size()}
	magic := make([]byte, len(evalCacheMagic))
	if _, err := io.ReadFull(cr.r, magic); err != nil || string(magic) != evalCacheMagic {
		f.Close()
		return nil, fmt.Errorf("%w: %s does not start as a cache file of this version", errCacheDamaged, path)
	}
	p, err := cr.frame()
	if err != nil {
		f.Close()
		return nil, err
	}
	want := append([]byte{frameHeader}, k.encode()...)
	if len(p) != len(want)+8+32 || !bytes.Equal(p[:len(want)], want) {
		f.Close()
		return nil, fmt.Errorf("%w: %s is the cache of another log, as-of time, period or rule set", errCacheDamaged, path)
	}
	cr.size = binary.BigEndian.Uint64(p[len(want):])
	copy(cr.root[:], p[len(want)+8:])
	return cr, nil
}

func (cr *cacheReader) Close() error { return cr.f.Close() }

// rewind goes back to the first record (the same open file: one removed
// or replaced meanwhile is still read whole).
func (cr *cacheReader) rewind() error {
	if _, err := cr.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("%w: rewinding %s: %w", errCacheDamaged, cr.path, err)
	}
	cr.r.Reset(cr.f)
	if _, err := cr.r.Discard(len(evalCacheMagic)); err != nil {
		return fmt.Errorf("%w: %s is cut short", errCacheDamaged, cr.path)
	}
	if _, err := cr.frame(); err != nil {
		return err
	}
	cr.records, cr.ended, cr.last = 0, false, ""
	return nil
}

// frame reads the next frame's payload (valid until the next call).
func (cr *cacheReader) frame() ([]byte, error) {
	n, err := binary.ReadUvarint(cr.r)
	if err != nil || n > maxFrame || n > uint64(cr.fileSize) {
		return nil, fmt.Errorf("%w: %s is cut short or has a bad frame length", errCacheDamaged, cr.path)
	}
	if uint64(cap(cr.buf)) < n+4 {
		cr.buf = make([]byte, n+4)
	}
	b := cr.buf[:n+4]
	if _, err := io.ReadFull(cr.r, b); err != nil {
		return nil, fmt.Errorf("%w: %s is cut short", errCacheDamaged, cr.path)
	}
	if crc32.Checksum(b[:n], castagnoli) != binary.BigEndian.Uint32(b[n:]) {
		return nil, fmt.Errorf("%w: %s fails its checksum after %d records", errCacheDamaged, cr.path, cr.records)
	}
	return b[:n], nil
}

// next returns the next record, or io.EOF after the trailer, which must
// count the records read and end the file.
func (cr *cacheReader) next(r *cacheRecord) error {
	if cr.ended {
		return io.EOF
	}
	p, err := cr.frame()
	if err != nil {
		return err
	}
	switch {
	case len(p) > 0 && p[0] == frameTrailer:
		n, k := binary.Uvarint(p[1:])
		if k <= 0 || 1+k != len(p) || n != cr.records {
			return fmt.Errorf("%w: %s's trailer counts other records than it holds", errCacheDamaged, cr.path)
		}
		if _, err := cr.r.ReadByte(); err != io.EOF {
			return fmt.Errorf("%w: %s goes on after its trailer", errCacheDamaged, cr.path)
		}
		cr.ended = true
		return io.EOF
	case len(p) > 0 && p[0] == frameSubject:
		if err := decodeRecord(p, r); err != nil {
			return fmt.Errorf("%w: %s: record %d: %w", errCacheDamaged, cr.path, cr.records, err)
		}
		if cr.records > 0 && r.subject <= cr.last {
			return fmt.Errorf("%w: %s: subject %q out of order", errCacheDamaged, cr.path, r.subject)
		}
		cr.last = r.subject
		cr.records++
		return nil
	}
	return fmt.Errorf("%w: %s: unknown frame", errCacheDamaged, cr.path)
}

// The encoding of a record, after frameSubject: subject, related, entries,
// exposure, errors (rule, message), findings (rule, title, severity,
// controls, entries (index, event id), message, exposure seconds, opened,
// closed, shares primary with). Strings are uvarint length and bytes,
// lists uvarint count and items, times a presence byte, then Unix seconds
// (varint) and nanoseconds (uvarint).
func encodeRecord(b []byte, r *cacheRecord) []byte {
	b = append(b, frameSubject)
	b = appendString(b, r.subject)
	b = appendStrings(b, r.related)
	b = binary.AppendUvarint(b, uint64(r.result.Entries))
	b = binary.AppendVarint(b, r.result.Exposure)
	b = binary.AppendUvarint(b, uint64(len(r.result.Errors)))
	for _, e := range r.result.Errors {
		b = appendString(b, e.Rule)
		b = appendString(b, e.Message)
	}
	b = binary.AppendUvarint(b, uint64(len(r.result.Findings)))
	for _, f := range r.result.Findings {
		b = appendString(b, f.Rule)
		b = appendString(b, f.Title)
		b = appendString(b, f.Severity)
		b = appendStrings(b, f.Controls)
		b = binary.AppendUvarint(b, uint64(len(f.Entries)))
		for _, e := range f.Entries {
			b = binary.AppendUvarint(b, e.Index)
			b = appendString(b, e.EventID)
		}
		b = appendString(b, f.Message)
		b = binary.AppendVarint(b, f.ExposureSeconds)
		b = appendTime(b, f.OpenedAt)
		b = appendTime(b, f.ClosedAt)
		b = appendString(b, f.SharesPrimaryWith)
	}
	return b
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendStrings(b []byte, ss []string) []byte {
	b = binary.AppendUvarint(b, uint64(len(ss)))
	for _, s := range ss {
		b = appendString(b, s)
	}
	return b
}

func appendTime(b []byte, t time.Time) []byte {
	if t.IsZero() {
		return append(b, 0)
	}
	b = append(b, 1)
	b = binary.AppendVarint(b, t.Unix())
	return binary.AppendUvarint(b, uint64(t.Nanosecond()))
}

// recordDecoder reads a record's fields, remembering the first error.
type recordDecoder struct {
	b   []byte
	err error
}

var errShortRecord = errors.New("record cut short")

func (d *recordDecoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err, d.b = errShortRecord, nil
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *recordDecoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err, d.b = errShortRecord, nil
		return 0
	}
	d.b = d.b[n:]
	return v
}

// count reads a list length, at most what the rest of the record can hold.
func (d *recordDecoder) count() int {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.err, d.b = errShortRecord, nil
		return 0
	}
	return int(n)
}

func (d *recordDecoder) string() string {
	n := d.count()
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

func (d *recordDecoder) strings() []string {
	n := d.count()
	if n == 0 {
		return nil
	}
	out := make([]string, n)
	for i := range out {
		out[i] = d.string()
	}
	return out
}

func (d *recordDecoder) time() time.Time {
	if len(d.b) == 0 {
		d.err = errShortRecord
		return time.Time{}
	}
	set := d.b[0]
	d.b = d.b[1:]
	if set == 0 {
		return time.Time{}
	}
	sec := d.varint()
	nsec := d.uvarint()
	if nsec >= 1e9 {
		d.err = errors.New("bad nanoseconds")
	}
	return time.Unix(sec, int64(nsec)).UTC()
}

func decodeRecord(p []byte, r *cacheRecord) error {
	d := &recordDecoder{b: p[1:]}
	r.subject = d.string()
	r.related = d.strings()
	res := rules.SubjectResult{Subject: r.subject}
	res.Entries = int(d.uvarint())
	res.Exposure = d.varint()
	res.Errors = make([]rules.RuleError, d.count())
	for i := range res.Errors {
		res.Errors[i] = rules.RuleError{Rule: d.string(), Subject: r.subject, Message: d.string()}
	}
	res.Findings = make([]rules.Finding, d.count())
	for i := range res.Findings {
		f := &res.Findings[i]
		f.Rule, f.Title, f.Severity = d.string(), d.string(), d.string()
		f.Controls = d.strings()
		f.Subject = r.subject
		f.Entries = make([]rules.EntryRef, d.count())
		for j := range f.Entries {
			f.Entries[j] = rules.EntryRef{Index: d.uvarint(), EventID: d.string()}
		}
		f.Message = d.string()
		f.ExposureSeconds = d.varint()
		f.OpenedAt, f.ClosedAt = d.time(), d.time()
		f.SharesPrimaryWith = d.string()
		if len(f.Entries) == 0 && d.err == nil {
			d.err = errors.New("a finding without entries")
		}
	}
	if d.err == nil && len(d.b) != 0 {
		d.err = errors.New("trailing bytes")
	}
	r.result = res
	return d.err
}

// relatedVisitor collects, from a chain's leaves, the subjects whose
// chains the rules may read when evaluating it: every owner it names and
// every actor of a credential checkout (docs/design.md "Incremental
// evaluation"). It over-approximates what the engine reads (the owner and
// holders as of the evaluation time): more re-evaluation, never less.
type relatedVisitor struct {
	event.Ignore
	typ, actor, owner []byte
}

func (v *relatedVisitor) String(f event.Field, b []byte) {
	switch f {
	case event.Type:
		v.typ = b
	case event.ActorID:
		v.actor = b
	case event.SubjectOwnerID:
		v.owner = b
	}
}

// relatedOf returns the sorted subjects other than subject that chain's
// rules may read.
func relatedOf(subject string, chain []rules.Entry) []string {
	var out []string
	add := func(b []byte) {
		if len(b) > 0 && string(b) != subject && !slices.Contains(out, string(b)) {
			out = append(out, string(b))
		}
	}
	var v relatedVisitor
	for _, e := range chain {
		v = relatedVisitor{}
		if err := event.VisitLeaf(e.Leaf, &v); err != nil {
			continue // the engine reports it; the subject is no one's reader
		}
		add(v.owner)
		if string(v.typ) == "credential.checked_out" {
			add(v.actor)
		}
	}
	slices.Sort(out)
	return out
}
