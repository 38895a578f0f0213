// Package verify is the Grantline evidence package: its export (Export, a
// streaming writer over a small Source interface) and its offline
// verification (Verify), which needs only the log's verifier key and the
// evidence public key. A package is a folder or a .tar.gz holding the files
// of docs/design.md, "The evidence package" (names and JSON shapes in verify/format):
// a C2SP signed checkpoint (https://c2sp.org/tlog-checkpoint), entries with
// RFC 6962 inclusion proofs, the findings with the rules that produced them,
// OSCAL assessment results, a human report, and a DSSE envelope
// (https://github.com/secure-systems-lab/dsse) over an in-toto Statement v1
// (https://in-toto.io/Statement/v1) listing the sha256 of every other file.
// It imports no server code.
package verify

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/grantline/grantline/internal/pipeline"
	"github.com/grantline/grantline/internal/textsafe"
	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/checkpoint"
	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/rules"
	"github.com/grantline/grantline/verify/format"
)

// Keys are the public keys an auditor verifies with.
type Keys struct {
	// LogKey is the log's signed-note verifier key (DATA/keys/log.vkey):
	// origin+hexid+base64key.
	LogKey string
	// EvidenceKey is the PEM public key of the evidence signer (DATA/keys/evidence.pub).
	EvidenceKey []byte
}

// Options tune Verify.
type Options struct {
	// Since is an older signed checkpoint note the auditor kept; when set the
	// package must prove (consistency.json) that the log only grew since.
	Since []byte
	// Evaluator re-runs the recorded rules; nil means DefaultEvaluator.
	Evaluator Evaluator
	// Progress, if set, is called after each check passes.
	Progress func(Check)
	// Limits bound what is unpacked from a .tar.gz; zero means DefaultLimits.
	Limits Limits
	// Witnesses, if set, must accept the package's checkpoint note once its
	// log signature verified (grantline verify --witness-policy passes
	// witness.VerifyQuorum); it returns what it found, for the report.
	Witnesses func(checkpointNote []byte, log note.Verifier) (string, error)
	// Sample, if set, is an auditor's sample (grantline sample) that must be
	// the one its seed and size draw from the package's population.
	Sample *format.Sample
	// RequireComplete fails a package that does not prove, for every
	// subject whose entries it includes, that none of the subject's entries
	// at the checkpoint is missing (Report.Kind KindAll or
	// KindSubjectsComplete); the failure wraps ErrIncomplete.
	RequireComplete bool
}

// Kind is what a package proves about the chains it includes
// (docs/completeness.md). Its value is what grantline verify prints.
type Kind string

const (
	// KindAll: every entry of the tree is present, so every chain is
	// complete by construction.
	KindAll Kind = "all entries"
	// KindSubjectsComplete: each included subject's chain is proven
	// complete against the subject map committed into the log
	// (docs/completeness.md; evidence export --subject).
	KindSubjectsComplete Kind = "subjects proven complete"
	// KindSelected: selected entries; a signer holding the evidence key
	// could have left out an entry that changes no finding.
	KindSelected Kind = "selected entries without a completeness claim"
)

// ErrIncomplete is wrapped by the CheckError of Options.RequireComplete
// when the package does not prove completeness.
var ErrIncomplete = errors.New("the package does not prove that the chains it covers are complete")

// Check is one passed check.
type Check struct {
	File   string // the package file checked
	Name   string // what was checked, e.g. "DSSE signature"
	Detail string // what was found, e.g. "1 signature by key 3f2a…"
}

// Report is what Verify checked.
type Report struct {
	Origin string
	Size   uint64
	Root   [32]byte
	AsOf   time.Time
	// From is the start of the audit period the package covers; zero for
	// one instant.
	From     time.Time
	Entries  uint64
	Subjects int
	Findings int
	Kind     Kind // what the package proves about completeness
	Checks   []Check
}

// Complete reports whether the package proves completeness for every
// subject it covers.
func (r *Report) Complete() bool { return r.Kind == KindAll || r.Kind == KindSubjectsComplete }

// CheckError is a failed check: the file, the check, and why.
type CheckError struct {
	File  string
	Check string
	Err   error
}

func (e *CheckError) Error() string {
	return fmt.Sprintf("%s: %s: %v", textsafe.Quote(e.File), e.Check, e.Err)
}
func (e *CheckError) Unwrap() error { return e.Err }

// ErrVerification is wrapped by every CheckError's Err when the package
// itself is wrong (as opposed to an I/O error).
var ErrVerification = errors.New("verification failed")

func fail(file, check, msg string, args ...any) error {
	return &CheckError{File: file, Check: check, Err: fmt.Errorf("%w: "+msg, append([]any{ErrVerification}, args...)...)}
}

// Evaluator re-runs the rules recorded in a findings document.
type Evaluator interface {
	// Evaluate builds the rule set from doc.Rules (texts) and doc.Params,
	// evaluates it on subjects at doc.AsOf reading chains, and returns the
	// findings in the rules engine's order. Safe for concurrent use.
	Evaluate(ctx context.Context, doc *format.Findings, subjects []string, chains rules.ChainSource) ([]format.Finding, error)
}

// DefaultEvaluator is used when Options.Evaluator is nil.
var DefaultEvaluator Evaluator

// Limits on what Verify reads into memory.
const (
	maxSmallFile = 256 << 20 // findings.json, statement, assessment results
	maxLine      = 4 << 20   // one entries.jsonl line
)

// Verify checks the package at path (a folder, or a .tar.gz file) offline:
// the files present, the DSSE signature and every subject digest, the
// checkpoint signature, the optional consistency proof from opts.Since,
// every entry's inclusion proof and event, and the findings reproduced by
// re-running the recorded rules. It returns the report of passed checks, or
// a *CheckError naming the file and the check that failed.
func Verify(ctx context.Context, pkgPath string, keys Keys, opts Options) (*Report, error) {
	dir, cleanup, err := openPackage(pkgPath, opts.Limits)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	v := &verifier{dir: dir, opts: opts, rep: &Report{}}
	if err := v.run(ctx, keys); err != nil {
		return v.rep, err
	}
	return v.rep, nil
}

type verifier struct {
	dir  string
	opts Options
	rep  *Report
	// present files and their digests (hex sha256)
	digests map[string]string
	cp      ledger.Checkpoint
	pred    Predicate
	// chains by subject: the leaves, decoded on demand
	chains   map[string][]stored
	events   map[uint64]string   // index → event id
	mapRoots map[uint64][32]byte // index → root, of the map leaves present
}

type stored struct {
	index uint64
	leaf  []byte
}

func (v *verifier) pass(file, name, detail string, args ...any) {
	c := Check{File: file, Name: name, Detail: fmt.Sprintf(detail, args...)}
	v.rep.Checks = append(v.rep.Checks, c)
	if v.opts.Progress != nil {
		v.opts.Progress(c)
	}
}

func (v *verifier) run(ctx context.Context, keys Keys) error {
	if err := v.checkFiles(); err != nil {
		return err
	}
	if err := v.checkStatement(keys.EvidenceKey); err != nil {
		return err
	}
	if err := v.checkCheckpoint(keys.LogKey); err != nil {
		return err
	}
	if err := v.checkEntries(ctx); err != nil {
		return err
	}
	doc, err := v.checkFindings()
	if err != nil {
		return err
	}
	if err := v.checkSubjectsComplete(doc); err != nil {
		return err
	}
	if err := v.reproduce(ctx, doc); err != nil {
		return err
	}
	if err := v.checkPopulation(ctx, doc); err != nil {
		return err
	}
	if err := v.checkAssessment(); err != nil {
		return err
	}
	return v.checkComplete()
}

// checkComplete states the package's kind, and with
// Options.RequireComplete refuses one that does not prove completeness.
func (v *verifier) checkComplete() error {
	if v.opts.RequireComplete && !v.rep.Complete() {
		return &CheckError{File: format.FileFindings, Check: "completeness required", Err: fmt.Errorf(
			"%w: %w: the package holds %s (%d of %d entries); export it with --all, or with --subject ID for each subject (from a log with a subject map), to prove completeness",
			ErrVerification, ErrIncomplete, v.rep.Kind, v.rep.Entries, v.rep.Size)}
	}
	if v.rep.Complete() {
		v.pass(format.FileFindings, "completeness", "%s: no entry of an included subject is missing at size %d", v.rep.Kind, v.rep.Size)
	}
	return nil
}

// checkFiles lists the package and hashes every file.
func (v *verifier) checkFiles() error {
	ents, err := os.ReadDir(v.dir)
	if err != nil {
		return err
	}
	v.digests = map[string]string{}
	for _, e := range ents {
		if !format.Known(e.Name()) {
			return fail(e.Name(), "no unlisted files", "%q is not a file of an evidence package (expected %s and optionally %s)", e.Name(), strings.Join(format.RequiredFiles, ", "), format.FileConsistency)
		}
		if !e.Type().IsRegular() {
			return fail(e.Name(), "no unlisted files", "not a regular file")
		}
		d, err := fileSHA256(filepath.Join(v.dir, e.Name()))
		if err != nil {
			return err
		}
		v.digests[e.Name()] = d
	}
	for _, f := range format.RequiredFiles {
		if _, ok := v.digests[f]; !ok {
			return fail(f, "required file present", "the file is missing from the package")
		}
	}
	v.pass(".", "files", "%d files, all known, none missing", len(v.digests))
	return nil
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func (v *verifier) readSmall(name string) ([]byte, error) {
	f, err := os.Open(filepath.Join(v.dir, name))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSmallFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxSmallFile {
		return nil, fail(name, "size", "larger than %d bytes", maxSmallFile)
	}
	return b, nil
}

func (v *verifier) checkStatement(evidenceKey []byte) error {
	const file = format.FileStatement
	ev, err := ParsePublicKey(evidenceKey)
	if err != nil {
		return err
	}
	b, err := v.readSmall(file)
	if err != nil {
		return err
	}
	var env Envelope
	if err := json.Unmarshal(b, &env); err != nil {
		return fail(file, "DSSE envelope", "not a DSSE JSON envelope: %v", err)
	}
	if env.PayloadType != PayloadType {
		return fail(file, "DSSE envelope", "payloadType %q, want %q", env.PayloadType, PayloadType)
	}
	if err := ev.Verify(&env); err != nil {
		return fail(file, "DSSE signature", "%v", err)
	}
	v.pass(file, "DSSE signature", "verified with the evidence key over the DSSE v1 PAE")
	var st Statement
	if err := json.Unmarshal(env.Payload, &st); err != nil {
		return fail(file, "in-toto statement", "payload is not an in-toto statement: %v", err)
	}
	if st.Type != StatementType || st.PredicateType != PredicateType {
		return fail(file, "in-toto statement", "_type %q predicateType %q, want %q and %q", st.Type, st.PredicateType, StatementType, PredicateType)
	}
	listed := map[string]bool{}
	for _, s := range st.Subject {
		if listed[s.Name] {
			return fail(file, "statement subjects", "%q is listed twice", s.Name)
		}
		listed[s.Name] = true
		got, ok := v.digests[s.Name]
		if !ok || s.Name == file {
			return fail(s.Name, "statement subjects", "the statement lists %q but the package has no such file", s.Name)
		}
		want := s.Digest["sha256"]
		if got != want {
			return fail(s.Name, "sha256 digest", "the file's sha256 is %s but the signed statement says %s: the file was altered", got, want)
		}
	}
	for name := range v.digests {
		if name != file && !listed[name] {
			return fail(name, "statement subjects", "the file is not listed in the signed statement")
		}
	}
	v.pass(file, "subject digests", "%d files, every sha256 matches", len(st.Subject))
	if err := json.Unmarshal(st.Predicate, &v.pred); err != nil {
		return fail(file, "in-toto statement", "predicate: %v", err)
	}
	return nil
}

func (v *verifier) checkCheckpoint(logKey string) error {
	const file = format.FileCheckpoint
	nv, err := checkpoint.NewNoteVerifier(strings.TrimSpace(logKey))
	if err != nil {
		return fmt.Errorf("log key: %w", err)
	}
	b, err := v.readSmall(file)
	if err != nil {
		return err
	}
	cp, err := ledger.OpenCheckpoint(b, nv)
	if err != nil {
		return fail(file, "checkpoint signature", "%v", err)
	}
	v.cp = cp
	if v.pred.Origin != cp.Origin || v.pred.CheckpointSize != cp.Size || !bytes.Equal(v.pred.CheckpointRoot, cp.Root[:]) {
		return fail(format.FileStatement, "anchored to the checkpoint", "the signed statement is for origin %q size %d, the checkpoint is origin %q size %d (or the roots differ)", v.pred.Origin, v.pred.CheckpointSize, cp.Origin, cp.Size)
	}
	v.rep.Origin, v.rep.Size, v.rep.Root = cp.Origin, cp.Size, cp.Root
	v.pass(file, "checkpoint signature", "origin %q, size %d, root %x", cp.Origin, cp.Size, cp.Root[:])
	if v.opts.Witnesses != nil {
		detail, err := v.opts.Witnesses(b, nv)
		if err != nil {
			return fail(file, "witness quorum", "%v", err)
		}
		v.pass(file, "witness quorum", "%s", detail)
	}

	if v.opts.Since == nil {
		return nil
	}
	old, err := ledger.OpenCheckpoint(v.opts.Since, nv)
	if err != nil {
		return fail("--since", "checkpoint signature", "%v", err)
	}
	switch {
	case old.Size > cp.Size:
		return fail(file, "consistency", "the package's checkpoint (size %d) is older than the --since checkpoint (size %d)", cp.Size, old.Size)
	case old.Size == cp.Size:
		if old.Root != cp.Root {
			return fail(file, "consistency", "same size %d as the --since checkpoint but a different root: the log forked", cp.Size)
		}
		v.pass(file, "consistency", "same tree as the --since checkpoint (size %d)", cp.Size)
		return nil
	}
	if _, ok := v.digests[format.FileConsistency]; !ok {
		return fail(format.FileConsistency, "consistency proof", "--since needs a proof from size %d, but the package has no %s: export again with --since and the same checkpoint file ('grantline evidence export --since OLD_CHECKPOINT ...')", old.Size, format.FileConsistency)
	}
	cb, err := v.readSmall(format.FileConsistency)
	if err != nil {
		return err
	}
	var c format.Consistency
	if err := json.Unmarshal(cb, &c); err != nil {
		return fail(format.FileConsistency, "consistency proof", "%v", err)
	}
	for _, p := range c.Proofs {
		if p.From != old.Size || p.To != cp.Size {
			continue
		}
		if err := proof.VerifyConsistency(rfc6962.DefaultHasher, old.Size, cp.Size, p.Proof, old.Root[:], cp.Root[:]); err != nil {
			return fail(format.FileConsistency, "consistency proof", "from size %d to %d: %v", old.Size, cp.Size, err)
		}
		v.pass(format.FileConsistency, "consistency proof", "the tree of the --since checkpoint (size %d) is a prefix of size %d", old.Size, cp.Size)
		return nil
	}
	return fail(format.FileConsistency, "consistency proof", "no proof from size %d to %d: export again with --since and the same checkpoint file ('grantline evidence export --since OLD_CHECKPOINT ...')", old.Size, cp.Size)
}

// ParseEntryLine parses one line of entries.jsonl strictly (unknown fields
// are refused).
func ParseEntryLine(line []byte) (format.EntryLine, error) {
	var e format.EntryLine
	d := json.NewDecoder(bytes.NewReader(line))
	d.DisallowUnknownFields()
	if err := d.Decode(&e); err != nil {
		return e, err
	}
	if d.More() {
		return e, errors.New("more than one JSON value on the line")
	}
	if len(e.Leaf) == 0 {
		return e, errors.New(`missing "leaf"`)
	}
	if len(e.Event) == 0 {
		return e, errors.New(`missing "event"`) // null only for a map leaf, which checkLine checks
	}
	return e, nil
}

// entryBatch is a run of consecutive entries.jsonl lines, checked by one
// worker into out.
type entryBatch struct {
	firstLine uint64
	lines     [][]byte
	out       []checkedEntry
}

// checkedEntry is one line after the order-independent checks.
type checkedEntry struct {
	index   uint64
	leaf    []byte
	hash    []byte // the RFC 6962 leaf hash
	proved  bool   // by its own inclusion proof; else only the recomputed root proves it
	subject string
	eventID string
	isMap   bool     // a map leaf (docs/completeness.md): no event, in no chain
	mapRoot [32]byte // its subject map root
	err     error
}

const entryBatchSize = 256

// checkEntries reads entries.jsonl once. Lines are checked in parallel
// (parse, inclusion proof, leaf decoding, event comparison) in batches, and
// the results consumed in file order (index order, chains), so memory holds
// the chains plus a few batches.
func (v *verifier) checkEntries(ctx context.Context) error {
	const file = format.FileEntries
	f, err := os.Open(filepath.Join(v.dir, file))
	if err != nil {
		return err
	}
	defer f.Close()
	workers := max(1, runtime.GOMAXPROCS(0))
	read := func(ctx context.Context, emit func(*entryBatch) error) error {
		return readLines(ctx, f, func(first uint64, lines [][]byte) error {
			return emit(&entryBatch{firstLine: first, lines: lines})
		})
	}
	check := func(_ context.Context, b *entryBatch) *entryBatch {
		b.out = make([]checkedEntry, len(b.lines))
		for i, line := range b.lines {
			b.out[i] = v.checkLine(b.firstLine+uint64(i), line)
		}
		return b
	}
	v.chains = map[string][]stored{}
	v.events = map[uint64]string{}
	v.mapRoots = map[uint64][32]byte{}
	var count, next uint64
	// Every leaf from index 0 on, while the lines are 0, 1, 2, ...: when
	// they are the whole tree, the root recomputed from them proves every
	// line, and lines may then omit their proofs.
	rng := (&compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}).NewEmptyRange(0)
	contiguous := true
	var firstUnproved uint64 // line number of the first line without a proof
	collect := func(b *entryBatch) error {
		for i, c := range b.out {
			lineNo := b.firstLine + uint64(i)
			if c.err != nil {
				return c.err
			}
			if count > 0 && c.index < next {
				return fail(file, "entry order", "line %d (index %d): indexes must be strictly ascending (previous index %d)", lineNo, c.index, next-1)
			}
			next = c.index + 1
			if !c.proved && firstUnproved == 0 {
				firstUnproved = lineNo
			}
			if contiguous = contiguous && c.index == count; contiguous {
				if err := rng.Append(c.hash, nil); err != nil {
					return err
				}
			}
			count++
			if c.isMap {
				v.mapRoots[c.index] = c.mapRoot
				continue
			}
			v.chains[c.subject] = append(v.chains[c.subject], stored{index: c.index, leaf: c.leaf})
			v.events[c.index] = c.eventID
		}
		return nil
	}
	if err := pipeline.Ordered(ctx, workers, 3*workers, read, check, collect); err != nil {
		return err
	}
	v.rep.Entries = count
	v.rep.Subjects = len(v.chains)
	if firstUnproved != 0 {
		if !contiguous || count != v.cp.Size {
			return fail(file, "inclusion proof", "line %d has no inclusion proof; only a package of every entry (0..%d, in order) may omit them, and this one has %d lines", firstUnproved, v.cp.Size-1, count)
		}
		root, err := rng.GetRootHash(nil)
		if err != nil {
			return err
		}
		if !bytes.Equal(root, v.cp.Root[:]) {
			return fail(file, "tree recomputed", "the %d leaves hash to root %x, the checkpoint's root is %x", count, root, v.cp.Root[:])
		}
		v.pass(file, "tree recomputed", "every entry 0..%d present; their leaves hash to the checkpoint's root", count-1)
	}
	v.pass(file, "inclusion proofs", "%d entries of %d subjects, each in the tree of size %d", count, len(v.chains), v.cp.Size)
	v.pass(file, "events match leaves", "%d events equal their decoded leaves", count)
	return nil
}

// readLines calls batch with runs of up to entryBatchSize lines (copies)
// of r, numbering lines from 1; it stops at the first error batch returns.
func readLines(ctx context.Context, r io.Reader, batch func(first uint64, lines [][]byte) error) error {
	const file = format.FileEntries
	br := bufio.NewReaderSize(r, 1<<20)
	var lines [][]byte
	var lineNo uint64
	first := uint64(1)
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			buf := append([]byte(nil), line...)
			for errors.Is(err, bufio.ErrBufferFull) && len(buf) <= maxLine {
				line, err = br.ReadSlice('\n')
				buf = append(buf, line...)
			}
			if len(buf) > maxLine {
				return fail(file, "entry line", "line %d is longer than %d bytes", lineNo+1, maxLine)
			}
			line = buf
		} else {
			line = append([]byte(nil), line...)
		}
		if err != nil && err != io.EOF {
			return err
		}
		if len(line) > 0 {
			lineNo++
			lines = append(lines, line)
		}
		if len(lines) == entryBatchSize || err == io.EOF && len(lines) > 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := batch(first, lines); err != nil {
				return err
			}
			first, lines = lineNo+1, nil
		}
		if err == io.EOF {
			return nil
		}
	}
}

// checkLine does the checks of one entries.jsonl line that need no other
// line. Safe for concurrent use.
func (v *verifier) checkLine(lineNo uint64, line []byte) checkedEntry {
	const file = format.FileEntries
	e, perr := ParseEntryLine(line)
	if perr != nil {
		return checkedEntry{err: fail(file, "entry line", "line %d: %v", lineNo, perr)}
	}
	where := fmt.Sprintf("line %d (index %d)", lineNo, e.Index)
	if e.Index >= v.cp.Size {
		return checkedEntry{err: fail(file, "inclusion proof", "%s: index outside the checkpoint's tree of size %d", where, v.cp.Size)}
	}
	lh := rfc6962.DefaultHasher.HashLeaf(e.Leaf)
	// A line without a proof is proven only by the root recomputed from
	// every leaf (checkEntries); in a tree of one leaf the proof is empty.
	proved := len(e.InclusionProof) > 0 || v.cp.Size == 1
	if proved {
		if err := proof.VerifyInclusion(rfc6962.DefaultHasher, e.Index, v.cp.Size, lh, e.InclusionProof, v.cp.Root[:]); err != nil {
			return checkedEntry{err: fail(file, "inclusion proof", "%s: the leaf is not in the checkpoint's tree: %v", where, err)}
		}
	}
	ent, err := event.DecodeLeaf(e.Leaf)
	if errors.Is(err, event.ErrMapLeaf) {
		root, covers, err := event.DecodeMapLeaf(e.Leaf)
		if err != nil {
			return checkedEntry{err: fail(file, "leaf decoding", "%s: %v", where, err)}
		}
		if covers != e.Index {
			return checkedEntry{err: fail(file, "leaf decoding", "%s: a map leaf must cover the leaves before its own index, this one says %d", where, covers)}
		}
		if !bytes.Equal(bytes.TrimSpace(e.Event), []byte("null")) {
			return checkedEntry{err: fail(file, "event matches leaf", "%s: the leaf is a map leaf, so \"event\" must be null", where)}
		}
		return checkedEntry{index: e.Index, leaf: e.Leaf, hash: lh, proved: proved, isMap: true, mapRoot: root}
	}
	if err != nil {
		return checkedEntry{err: fail(file, "leaf decoding", "%s: %v", where, err)}
	}
	if bytes.Equal(bytes.TrimSpace(e.Event), []byte("null")) {
		return checkedEntry{err: fail(file, "entry line", "line %d: missing \"event\" (null is only for a map leaf)", lineNo)}
	}
	var shown pb.Event
	if err := protojson.Unmarshal(e.Event, &shown); err != nil {
		return checkedEntry{err: fail(file, "event matches leaf", "%s: \"event\" is not a valid event: %v", where, err)}
	}
	if !proto.Equal(&shown, ent.GetEvent()) {
		return checkedEntry{err: fail(file, "event matches leaf", "%s: \"event\" differs from the event decoded from \"leaf\"", where)}
	}
	return checkedEntry{index: e.Index, leaf: e.Leaf, hash: lh, proved: proved, subject: ent.GetEvent().GetSubject().GetId(), eventID: ent.GetEvent().GetId()}
}

// ParseFindings parses findings.json strictly.
func ParseFindings(b []byte) (*format.Findings, error) {
	var doc format.Findings
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(&doc); err != nil {
		return nil, err
	}
	if doc.Format != format.FindingsFormat {
		return nil, fmt.Errorf("format %q, want %q", doc.Format, format.FindingsFormat)
	}
	for i, f := range doc.Findings {
		if len(f.Entries) == 0 {
			return nil, fmt.Errorf("finding %d (rule %q, subject %q) cites no entries", i, f.Rule, f.Subject)
		}
	}
	return &doc, nil
}

func (v *verifier) checkFindings() (*format.Findings, error) {
	const file = format.FileFindings
	b, err := v.readSmall(file)
	if err != nil {
		return nil, err
	}
	doc, err := ParseFindings(b)
	if err != nil {
		return nil, fail(file, "findings document", "%v", err)
	}
	if doc.Origin != v.cp.Origin || doc.CheckpointSize != v.cp.Size || !bytes.Equal(doc.CheckpointRoot, v.cp.Root[:]) {
		return nil, fail(file, "anchored to the checkpoint", "findings are for origin %q size %d, the checkpoint is origin %q size %d (or the roots differ)", doc.Origin, doc.CheckpointSize, v.cp.Origin, v.cp.Size)
	}
	if doc.All && v.rep.Entries != v.cp.Size {
		return nil, fail(format.FileEntries, "all entries present", "findings.json says the package holds every entry, but entries.jsonl has %d of %d", v.rep.Entries, v.cp.Size)
	}
	// Entries are strictly ascending below the size, so as many as the
	// size are exactly 0..size-1.
	v.rep.Kind = KindSelected
	if doc.All {
		v.rep.Kind = KindAll
	}
	for _, r := range doc.Rules {
		sum := sha256.Sum256([]byte(r.Text))
		if got := hex.EncodeToString(sum[:]); got != r.SHA256 {
			return nil, fail(file, "rule sha256", "rule %q: the text's sha256 is %s, the document says %s", r.ID, got, r.SHA256)
		}
	}
	for i, f := range doc.Findings {
		for _, e := range f.Entries {
			id, ok := v.events[e.Index]
			if !ok {
				return nil, fail(file, "cited entries present", "finding %d (rule %q, subject %q) cites entry %d, which is not in %s", i, f.Rule, f.Subject, e.Index, format.FileEntries)
			}
			if id != e.EventID {
				return nil, fail(file, "cited entries present", "finding %d (rule %q, subject %q) cites entry %d as event %q, but it is event %q", i, f.Rule, f.Subject, e.Index, e.EventID, id)
			}
		}
	}
	v.rep.AsOf = doc.AsOf
	if doc.From != nil {
		v.rep.From = *doc.From
	}
	v.rep.Findings = len(doc.Findings)
	v.pass(file, "rules and citations", "%d rules (texts match their sha256), %d findings citing included entries, as of %s", len(doc.Rules), len(doc.Findings), doc.AsOf.Format(time.RFC3339))
	return doc, nil
}

// Chain implements rules.ChainSource over the package's entries, decoded.
func (v *verifier) Chain(_ context.Context, subject string) ([]rules.Entry, error) {
	st := v.chains[subject]
	out := make([]rules.Entry, 0, len(st))
	for _, s := range st {
		ent, err := event.DecodeLeaf(s.leaf)
		if err != nil {
			return nil, err
		}
		var observed time.Time
		if ent.GetObservedTime() != nil {
			observed = ent.GetObservedTime().AsTime()
		}
		out = append(out, rules.Entry{Index: s.index, Event: ent.GetEvent(), Observed: observed})
	}
	return out, nil
}

func (v *verifier) reproduce(ctx context.Context, doc *format.Findings) error {
	const file = format.FileFindings
	ev := v.opts.Evaluator
	if ev == nil {
		ev = DefaultEvaluator
	}
	if ev == nil {
		return fail(file, "findings reproduced", "no rules engine is built into this verifier")
	}
	subjects := make([]string, 0, len(v.chains))
	for s := range v.chains {
		subjects = append(subjects, s)
	}
	slices.Sort(subjects)
	got, err := ev.Evaluate(ctx, doc, subjects, v)
	if err != nil {
		return fail(file, "findings reproduced", "re-running the recorded rules: %v", err)
	}
	if err := CompareFindings(doc.Findings, got); err != nil {
		return fail(file, "findings reproduced", "%v", err)
	}
	v.pass(file, "findings reproduced", "re-running %d rules on %d subjects gives the same %d findings", len(doc.Rules), len(subjects), len(got))
	return nil
}

// CompareFindings reports the first difference between recorded and
// re-evaluated findings, compared in (rule, subject, primary index) order.
func CompareFindings(recorded, got []format.Finding) error {
	a, b := slices.Clone(recorded), slices.Clone(got)
	SortFindings(a)
	SortFindings(b)
	for i := 0; i < len(a) || i < len(b); i++ {
		switch {
		case i >= len(a):
			return fmt.Errorf("re-evaluation finds %s, which the package does not record", describe(b[i]))
		case i >= len(b):
			return fmt.Errorf("the package records %s, which re-evaluation does not find", describe(a[i]))
		}
		if c := compareKey(a[i], b[i]); c < 0 {
			return fmt.Errorf("the package records %s, which re-evaluation does not find", describe(a[i]))
		} else if c > 0 {
			return fmt.Errorf("re-evaluation finds %s, which the package does not record", describe(b[i]))
		}
		if d := diffFinding(a[i], b[i]); d != "" {
			return fmt.Errorf("%s: recorded %s", describe(a[i]), d)
		}
	}
	return nil
}

func timeOrNull(t *time.Time) string {
	if t == nil {
		return "null"
	}
	return t.Format(time.RFC3339Nano)
}

func compareKey(a, b format.Finding) int {
	if c := cmp.Compare(a.Rule, b.Rule); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Subject, b.Subject); c != 0 {
		return c
	}
	ai, _ := a.Primary()
	bi, _ := b.Primary()
	return cmp.Compare(ai, bi)
}

func describe(f format.Finding) string {
	p, _ := f.Primary()
	return fmt.Sprintf("finding (rule %q, subject %q, entry %d)", f.Rule, f.Subject, p)
}

func diffFinding(a, b format.Finding) string {
	switch {
	case a.Severity != b.Severity:
		return fmt.Sprintf("severity %q, re-evaluated %q", a.Severity, b.Severity)
	case a.Title != b.Title:
		return fmt.Sprintf("title %q, re-evaluated %q", a.Title, b.Title)
	case !slices.Equal(a.Controls, b.Controls):
		return fmt.Sprintf("controls %q, re-evaluated %q", a.Controls, b.Controls)
	case !slices.Equal(a.Entries, b.Entries):
		return fmt.Sprintf("entries %v, re-evaluated %v", a.Entries, b.Entries)
	case a.Message != b.Message:
		return fmt.Sprintf("message %q, re-evaluated %q", a.Message, b.Message)
	case a.ExposureSeconds != b.ExposureSeconds:
		return fmt.Sprintf("exposure %ds, re-evaluated %ds", a.ExposureSeconds, b.ExposureSeconds)
	case !a.OpenedAt.Equal(b.OpenedAt):
		return fmt.Sprintf("opened_at %s, re-evaluated %s", a.OpenedAt.Format(time.RFC3339Nano), b.OpenedAt.Format(time.RFC3339Nano))
	case (a.ClosedAt == nil) != (b.ClosedAt == nil) || (a.ClosedAt != nil && !a.ClosedAt.Equal(*b.ClosedAt)):
		return fmt.Sprintf("closed_at %s, re-evaluated %s", timeOrNull(a.ClosedAt), timeOrNull(b.ClosedAt))
	case a.SharesPrimaryWith != b.SharesPrimaryWith:
		return fmt.Sprintf("shares_primary_with %q, re-evaluated %q", a.SharesPrimaryWith, b.SharesPrimaryWith)
	}
	return ""
}

// checkAssessment checks that the OSCAL document is JSON whose back-matter
// hashes agree with the files (its digest was already checked).
func (v *verifier) checkAssessment() error {
	const file = format.FileAssessment
	b, err := v.readSmall(file)
	if err != nil {
		return err
	}
	var doc struct {
		AR *struct {
			BackMatter struct {
				Resources []struct {
					Title  string `json:"title"`
					RLinks []struct {
						Href   string `json:"href"`
						Hashes []struct {
							Algorithm string `json:"algorithm"`
							Value     string `json:"value"`
						} `json:"hashes"`
					} `json:"rlinks"`
				} `json:"resources"`
			} `json:"back-matter"`
		} `json:"assessment-results"`
	}
	if err := json.Unmarshal(b, &doc); err != nil || doc.AR == nil {
		return fail(file, "OSCAL document", "not an OSCAL assessment-results JSON document (%v)", err)
	}
	n := 0
	for _, r := range doc.AR.BackMatter.Resources {
		for _, l := range r.RLinks {
			want, ok := v.digests[l.Href]
			if !ok {
				continue
			}
			for _, h := range l.Hashes {
				if h.Algorithm == "SHA-256" {
					if !strings.EqualFold(h.Value, want) {
						return fail(file, "back-matter hashes", "resource %q: SHA-256 %s, but %s has %s", r.Title, h.Value, l.Href, want)
					}
					n++
				}
			}
		}
	}
	v.pass(file, "back-matter hashes", "%d package files referenced with matching SHA-256", n)
	return nil
}

// checkSubjectsComplete checks completeness.json of a package of subjects
// proven complete (docs/completeness.md): the map leaf at the checkpoint's
// last index is present and proven, and each subject's chain as the package
// holds it (count, newest index, chain of leaf hashes) is the one the
// subject map commits to. Every subject with entries in the package must
// have a proof, else the package is selected without a completeness claim.
func (v *verifier) checkSubjectsComplete(doc *format.Findings) error {
	const file = format.FileCompleteness
	_, present := v.digests[file]
	claimed := len(doc.CompleteSubjects) > 0
	switch {
	case !present && !claimed:
		return nil
	case !present:
		return fail(format.FileFindings, "subjects proven complete", "findings.json names %d subjects proven complete, but the package has no %s", len(doc.CompleteSubjects), file)
	case !claimed:
		return fail(file, "subjects proven complete", "the package holds %s, but findings.json names no complete_subjects", file)
	case doc.All:
		return fail(format.FileFindings, "subjects proven complete", "a package of every entry (all) has no complete_subjects")
	}
	b, err := v.readSmall(file)
	if err != nil {
		return err
	}
	var c format.Completeness
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(&c); err != nil {
		return fail(file, "completeness document", "%v", err)
	}
	if c.Format != format.CompletenessFormat {
		return fail(file, "completeness document", "format %q, want %q", c.Format, format.CompletenessFormat)
	}
	var root [32]byte
	if v.cp.Size > 0 {
		if c.MapIndex != v.cp.Size-1 {
			return fail(file, "map leaf", "map_index is %d; the map leaf of a checkpoint of size %d is its last leaf, %d", c.MapIndex, v.cp.Size, v.cp.Size-1)
		}
		r, ok := v.mapRoots[c.MapIndex]
		if !ok {
			return fail(file, "map leaf", "the map leaf %d is not in %s; without it no subject is proven complete", c.MapIndex, format.FileEntries)
		}
		root = r
	} else if c.MapIndex != 0 {
		return fail(file, "map leaf", "map_index is %d at checkpoint size 0, which has no map leaf", c.MapIndex)
	}
	names := make([]string, len(c.Subjects))
	for i, s := range c.Subjects {
		names[i] = s.Subject
	}
	if !slices.Equal(names, doc.CompleteSubjects) {
		return fail(file, "subjects proven complete", "the proofs are for subjects %q, findings.json names %q", names, doc.CompleteSubjects)
	}
	for i, s := range c.Subjects {
		where := fmt.Sprintf("subject %d (%s)", i, textsafe.Quote(s.Subject))
		if i > 0 && s.Subject <= c.Subjects[i-1].Subject {
			return fail(file, "subjects proven complete", "%s: subjects must be sorted and distinct", where)
		}
		// The chain as the package holds it.
		var count, last uint64
		var chain [32]byte
		for _, e := range v.chains[s.Subject] {
			count++
			last = e.index
			chain = ledger.ChainNext(chain, ledger.LeafHash(e.leaf))
		}
		if count != s.Count || last != s.Last || !bytes.Equal(chain[:], s.Chain) {
			return fail(file, "subject chain complete", "%s: the package holds %d of its entries (newest %d) chaining to %x, the proof is for %d entries (newest %d) chaining to %x: an entry is missing, added or altered",
				where, count, last, chain, s.Count, s.Last, s.Chain)
		}
		if v.cp.Size == 0 {
			if s.Count != 0 || len(s.Proof) != 0 {
				return fail(file, "subject chain complete", "%s: at checkpoint size 0 every subject has no entries and an empty proof", where)
			}
			continue
		}
		p := ledger.SubjectProof{Subject: s.Subject, Size: v.cp.Size, MapIndex: c.MapIndex, Root: root, Count: s.Count, Last: s.Last, Chain: chain}
		for j, n := range s.Proof {
			if len(n.Label) != 32 || len(n.Hash) != 32 {
				return fail(file, "subject map proof", "%s: proof node %d has a %d-byte label and a %d-byte hash, want 32 each", where, j, len(n.Label), len(n.Hash))
			}
			p.Proof = append(p.Proof, ledger.MapProofNode{Label: [32]byte(n.Label), Bits: n.Bits, Hash: [32]byte(n.Hash)})
		}
		if err := ledger.VerifySubjectProof(p, root); err != nil {
			return fail(file, "subject map proof", "%s: %v", where, err)
		}
	}
	for s := range v.chains {
		if !slices.Contains(doc.CompleteSubjects, s) {
			v.pass(file, "subjects proven complete", "%d subjects proven complete, but the package also holds entries of subject %s without a proof: selected entries without a completeness claim", len(c.Subjects), textsafe.Quote(s))
			return nil
		}
	}
	v.rep.Kind = KindSubjectsComplete
	v.pass(file, "subjects proven complete", "%d subjects: each chain as included matches its count, newest index and chain hash, proven in the subject map of map leaf %d", len(c.Subjects), c.MapIndex)
	return nil
}
