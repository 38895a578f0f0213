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
	"hash"
	"io"
	"maps"
	"runtime"
	"slices"
	"time"

	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/grantline/grantline/internal/pipeline"
	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/event"
	"github.com/grantline/grantline/rules"
	"github.com/grantline/grantline/verify/format"
	"github.com/grantline/grantline/verify/oscal"
	"github.com/grantline/grantline/verify/report"
)

// Source is what Export needs from the server side. Every method may be
// called from one goroutine only, in this order: Checkpoint once, Evaluate
// once, Leaf any number of times, ConsistencyProof once per requested size,
// then Entries once, during which InclusionProof is called from inside fn
// (not for an All package: every leaf is present, so Export recomputes the
// root from the leaves instead, and the lines carry no proofs).
// The server's implementation must answer for the one checkpoint that
// Checkpoint returned, even while the log keeps growing.
type Source interface {
	// Checkpoint returns the published signed checkpoint the package is
	// anchored to (e.g. the latest, or the one at a requested size). Origin,
	// Size and Root must be those of the note text; Export checks it.
	Checkpoint(ctx context.Context) (ledger.Checkpoint, error)
	// Evaluate runs the rule set over every subject's chain in the tree of
	// the given size at the as-of time asOf, and returns the result with Rules
	// (id, title, severity, controls, text, sha256, effective params), Params
	// (the overrides, a JSON object or nil), the counts, Findings sorted by
	// (rule, subject, primary index) and Errors. Export sets Format, Origin,
	// CheckpointSize, CheckpointRoot, AsOf and All itself.
	Evaluate(ctx context.Context, size uint64, asOf time.Time) (*format.Findings, error)
	// Leaf returns the leaf bytes of entry index (< size) exactly as stored.
	// A missing entry is an error.
	Leaf(ctx context.Context, index uint64) ([]byte, error)
	// Entries calls fn for every entry in the tree of the given size whose
	// event's subject.id is in subjects — every entry when subjects is nil —
	// in strictly ascending index order, with the leaf bytes as stored. fn
	// must not retain leaf after it returns. Entries stops at and returns the
	// first error fn returns. It must stream: Export writes a line per call.
	Entries(ctx context.Context, size uint64, subjects []string, fn func(index uint64, leaf []byte) error) error
	// InclusionProof returns the RFC 6962 audit path of entry index in the
	// tree of the given size.
	InclusionProof(ctx context.Context, index, size uint64) ([][]byte, error)
	// ConsistencyProof returns the RFC 6962 consistency proof from tree size
	// from to tree size to (from <= to).
	ConsistencyProof(ctx context.Context, from, to uint64) ([][]byte, error)
}

// PeriodSource is a Source that can also evaluate an audit period: the
// rules over [from, to] as rules.Set.EvaluatePeriod does, the result as
// Evaluate's. Export needs it for ExportOptions.From.
type PeriodSource interface {
	EvaluatePeriod(ctx context.Context, size uint64, from, to time.Time) (*format.Findings, error)
}

// ErrNoPeriod reports a Source that cannot evaluate an audit period.
var ErrNoPeriod = errors.New("this evidence source cannot evaluate an audit period")

// Sink receives the files of a package one after another. Create is called
// for the next file only after the previous file's writer was closed; a
// file is complete when its Close returns nil. Export never calls Create
// twice with one name. A Sink need not be safe for concurrent use. Export
// does not finish the sink: the caller closes or discards it (DirSink,
// TarGzSink) after Export returns.
type Sink interface {
	Create(name string) (io.WriteCloser, error)
}

// ExportOptions tune an export.
type ExportOptions struct {
	// AsOf is the evaluation time; zero means time.Now(). With From it is
	// the end of the audit period.
	AsOf time.Time
	// From, when set, makes the package cover the audit period [From, AsOf]
	// (docs/rules.md "Periods"); the Source must be a PeriodSource.
	From time.Time
	// Framework names the control catalog the report and OSCAL are
	// written in ("" for the default; see verify/oscal).
	Framework string
	// All includes every entry of the tree, not only the chains the findings need.
	All bool
	// SinceSizes adds consistency.json with a proof from each of these earlier
	// tree sizes (each <= the checkpoint size) to the checkpoint size.
	SinceSizes []uint64
	// Signer signs the statement. Required.
	Signer *EvidenceSigner
	// GeneratedAt is the generation time the report states; zero means
	// time.Now(). Version is the Grantline version (default: the build's).
	GeneratedAt time.Time
	Version     string
	// LogKey is the log's verifier key (signed-note form), for the report.
	LogKey string
	// Evaluator derives population.jsonl as verify will (a
	// PopulationEvaluator); nil means DefaultEvaluator.
	Evaluator Evaluator
	// PackageName is how the report's verify command names the package
	// (e.g. the output folder); "" means "evidence".
	PackageName string
}

// ErrSource reports that the Source broke its contract (an entry out of
// order, a proof that does not verify, a cited entry missing).
var ErrSource = errors.New("evidence source broke its contract")

// Export writes a complete evidence package to sink, streaming entries.jsonl
// so that memory does not grow with the number of entries.
func Export(ctx context.Context, src Source, opts ExportOptions, sink Sink) error {
	if opts.Signer == nil {
		return errors.New("export: no evidence signer")
	}
	if _, err := oscal.LoadCatalog(opts.Framework); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	asOf := opts.AsOf
	if asOf.IsZero() {
		asOf = time.Now()
	}
	asOf = asOf.UTC()
	cp, err := src.Checkpoint(ctx)
	if err != nil {
		return fmt.Errorf("export: checkpoint: %w", err)
	}
	if err := checkNoteMatches(cp); err != nil {
		return err
	}
	var doc *format.Findings
	if opts.From.IsZero() {
		doc, err = src.Evaluate(ctx, cp.Size, asOf)
	} else {
		from := opts.From.UTC()
		if asOf.Before(from) {
			return fmt.Errorf("export: the period starts at %s, after its end %s", from.Format(time.RFC3339), asOf.Format(time.RFC3339))
		}
		ps, ok := src.(PeriodSource)
		if !ok {
			return fmt.Errorf("export: %w", ErrNoPeriod)
		}
		if doc, err = ps.EvaluatePeriod(ctx, cp.Size, from, asOf); err == nil {
			doc.From = &from
		}
	}
	if err != nil {
		return fmt.Errorf("export: evaluating rules at size %d: %w", cp.Size, err)
	}
	doc.Format = format.FindingsFormat
	doc.Origin = cp.Origin
	doc.CheckpointSize = cp.Size
	doc.CheckpointRoot = cp.Root[:]
	doc.AsOf = asOf
	doc.All = opts.All
	doc.Framework = opts.Framework
	SortFindings(doc.Findings)

	w := &pkgWriter{sink: sink}
	var subjects []string
	if !opts.All {
		if subjects, err = neededSubjects(ctx, src, doc); err != nil {
			return err
		}
	}
	if err := w.file(format.FileCheckpoint, func(out io.Writer) error {
		_, err := out.Write(cp.Note)
		return err
	}); err != nil {
		return err
	}
	if len(opts.SinceSizes) > 0 {
		c := format.Consistency{Format: format.ConsistencyFormat, Size: cp.Size}
		sizes := slices.Clone(opts.SinceSizes)
		slices.Sort(sizes)
		for _, from := range slices.Compact(sizes) {
			if from > cp.Size {
				return fmt.Errorf("export: since size %d is larger than the checkpoint size %d", from, cp.Size)
			}
			p, err := src.ConsistencyProof(ctx, from, cp.Size)
			if err != nil {
				return fmt.Errorf("export: consistency proof %d→%d: %w", from, cp.Size, err)
			}
			c.Proofs = append(c.Proofs, format.ConsistencyProof{From: from, To: cp.Size, Proof: p})
		}
		if err := w.json(format.FileConsistency, c); err != nil {
			return err
		}
	}

	scope := &format.Scope{Findings: doc, SourceOf: map[uint64]string{}, DisplayOf: map[string]string{},
		Events: map[uint64]format.EventRow{}, ApproverOf: map[string]string{},
		GeneratedAt: opts.GeneratedAt.UTC(), Version: opts.Version, LogKey: opts.LogKey, EvidenceKeyID: opts.Signer.KeyID()}
	if scope.GeneratedAt.IsZero() {
		scope.GeneratedAt = time.Now().UTC()
	}
	if scope.Version == "" {
		scope.Version = BuildVersion()
	}
	cited := map[uint64]string{} // index → event id
	for _, f := range doc.Findings {
		for _, e := range f.Entries {
			cited[e.Index] = e.EventID
		}
	}
	// The population is derived like verify derives it: from the recorded
	// rule texts, over the chains written to entries.jsonl (kept in memory
	// only when some rule declares a population).
	ev := opts.Evaluator
	if ev == nil {
		ev = DefaultEvaluator
	}
	var chains packageChains
	if pe, ok := ev.(PopulationEvaluator); ok {
		populated, err := pe.Populated(doc)
		if err != nil {
			return fmt.Errorf("export: %s: %w", format.FilePopulation, err)
		}
		if populated {
			chains = packageChains{}
		}
	}
	err = w.file(format.FileEntries, func(out io.Writer) error {
		return writeEntries(ctx, src, cp, opts.All, subjects, cited, scope, chains, out)
	})
	if err != nil {
		return err
	}
	for idx, id := range cited {
		return fmt.Errorf("export: %w: a finding cites entry %d (event %q), which Entries did not yield", ErrSource, idx, id)
	}
	if err := w.json(format.FileFindings, doc); err != nil {
		return err
	}
	rows, err := populationOf(ctx, ev, doc, chains.subjects(), chains)
	if err != nil {
		return fmt.Errorf("export: %s: %w", format.FilePopulation, err)
	}
	pop, err := EncodePopulation(rows)
	if err != nil {
		return fmt.Errorf("export: %s: %w", format.FilePopulation, err)
	}
	if err := w.file(format.FilePopulation, func(out io.Writer) error {
		_, err := out.Write(pop)
		return err
	}); err != nil {
		return err
	}
	scope.Files, scope.Population = w.digests, rows
	if err := w.file(format.FileCSV, func(out io.Writer) error { return report.WriteCSV(out, scope) }); err != nil {
		return err
	}
	name := opts.PackageName
	if name == "" {
		name = "evidence"
	}
	scope.Files = w.digests
	if err := w.file(format.FileReport, func(out io.Writer) error {
		return report.WriteHTML(out, scope, report.Options{PackageName: name})
	}); err != nil {
		return err
	}
	scope.Files = w.digests
	ar, err := oscal.Build(scope)
	if err != nil {
		return fmt.Errorf("export: assessment results: %w", err)
	}
	if err := w.json(format.FileAssessment, ar); err != nil {
		return err
	}

	st := Statement{Type: StatementType, PredicateType: PredicateType}
	for _, d := range w.digests {
		st.Subject = append(st.Subject, Subject{Name: d.Name, Digest: map[string]string{"sha256": d.SHA256}})
	}
	pred, err := json.Marshal(Predicate{
		Origin: cp.Origin, CheckpointSize: cp.Size, CheckpointRoot: cp.Root[:],
		AsOf: asOf.Format(time.RFC3339Nano), Entries: scope.Entries, Findings: len(doc.Findings), All: opts.All,
	})
	if err != nil {
		return err
	}
	st.Predicate = pred
	payload, err := json.Marshal(st)
	if err != nil {
		return err
	}
	env, err := opts.Signer.Sign(PayloadType, payload)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	return w.json(format.FileStatement, env)
}

// checkNoteMatches checks that the note text commits to the values the
// Source gave, without verifying the signature (the server signed it).
func checkNoteMatches(cp ledger.Checkpoint) error {
	body, _, ok := bytes.Cut(cp.Note, []byte("\n\n"))
	if !ok {
		return fmt.Errorf("export: %w: checkpoint note has no signature block", ErrSource)
	}
	var c log.Checkpoint
	if _, err := c.Unmarshal(append(body, '\n')); err != nil {
		return fmt.Errorf("export: %w: checkpoint note: %w", ErrSource, err)
	}
	if c.Origin != cp.Origin || c.Size != cp.Size || !bytes.Equal(c.Hash, cp.Root[:]) {
		return fmt.Errorf("export: %w: checkpoint note says origin %q size %d, Source says origin %q size %d (or roots differ)",
			ErrSource, c.Origin, c.Size, cp.Origin, cp.Size)
	}
	return nil
}

// neededSubjects returns the sorted subjects whose chains the findings need:
// each finding's subject and the subject of every entry a finding cites
// (e.g. an owner's termination read by orphaned-nhi).
func neededSubjects(ctx context.Context, src Source, doc *format.Findings) ([]string, error) {
	set := map[string]bool{}
	for _, f := range doc.Findings {
		set[f.Subject] = true
	}
	seen := map[uint64]bool{}
	for _, f := range doc.Findings {
		for i, e := range f.Entries {
			if i == 0 || seen[e.Index] {
				continue // the primary entry is the finding's subject's own
			}
			seen[e.Index] = true
			leaf, err := src.Leaf(ctx, e.Index)
			if err != nil {
				return nil, fmt.Errorf("export: reading cited entry %d: %w", e.Index, err)
			}
			ent, err := event.DecodeLeaf(leaf)
			if err != nil {
				return nil, fmt.Errorf("export: %w: cited entry %d does not decode: %w", ErrSource, e.Index, err)
			}
			set[ent.GetEvent().GetSubject().GetId()] = true
		}
	}
	out := make([]string, 0, len(set))
	for s := range set {
		out = append(out, s)
	}
	slices.Sort(out)
	return out, nil
}

// exportItem is one entry on its way to entries.jsonl.
type exportItem struct {
	index   uint64
	leaf    []byte
	proof   [][]byte
	noProof bool   // an export of every entry: no proof, the root proves it
	line    []byte // the encoded line, filled by a worker
	eventID string
	source  string
	subject string
	display string
	row     format.EventRow
	err     error
}

// writeEntries streams entries.jsonl. The Source is read from one goroutine
// only (Entries, and InclusionProof inside its callback); the per-entry work
// (proof check, decoding, JSON encoding) runs on GOMAXPROCS workers in
// batches (pipeline.Ordered), and the lines are written in index order.
//
// With all, every entry 0..size-1 must come, in order, without inclusion
// proofs: the leaves folded into a compact range must give the checkpoint's
// root, which proves every line at once (verify/FORMAT.md).
func writeEntries(ctx context.Context, src Source, cp ledger.Checkpoint, all bool, subjects []string, cited map[uint64]string, scope *format.Scope, chains packageChains, out io.Writer) error {
	workers := max(1, runtime.GOMAXPROCS(0))
	bw := bufio.NewWriterSize(out, 256<<10)
	seenSubjects := map[string]struct{}{}
	produce := func(ctx context.Context, emit func([]exportItem) error) error {
		var next uint64
		first := true
		var cur []exportItem
		rng := (&compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}).NewEmptyRange(0)
		err := src.Entries(ctx, cp.Size, subjects, func(index uint64, leaf []byte) error {
			if !first && index < next || index >= cp.Size {
				return fmt.Errorf("%w: entry %d out of order or outside the tree of size %d", ErrSource, index, cp.Size)
			}
			first, next = false, index+1
			var p [][]byte
			if all {
				if index != rng.End() {
					return fmt.Errorf("%w: entry %d came after entry %d in an export of every entry", ErrSource, index, rng.End()-1)
				}
				if err := rng.Append(rfc6962.DefaultHasher.HashLeaf(leaf), nil); err != nil {
					return err
				}
			} else {
				var err error
				if p, err = src.InclusionProof(ctx, index, cp.Size); err != nil {
					return fmt.Errorf("inclusion proof of entry %d at size %d: %w", index, cp.Size, err)
				}
			}
			cur = append(cur, exportItem{index: index, leaf: bytes.Clone(leaf), proof: p, noProof: all})
			if len(cur) == entryBatchSize {
				b := cur
				cur = nil
				return emit(b)
			}
			return nil
		})
		if err == nil && all {
			err = checkAllRoot(rng, cp)
		}
		if err == nil && len(cur) > 0 {
			err = emit(cur)
		}
		return err
	}
	encode := func(_ context.Context, items []exportItem) []exportItem {
		for i := range items {
			encodeItem(&items[i], cp)
		}
		return items
	}
	write := func(items []exportItem) error { return writeItems(items, bw, cited, scope, seenSubjects, chains) }
	err := pipeline.Ordered(ctx, workers, 3*workers, produce, encode, write)
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		return fmt.Errorf("export: %s: %w", format.FileEntries, err)
	}
	scope.Subjects = uint64(len(seenSubjects))
	return nil
}

// writeItems writes the encoded lines of a batch and gathers the scope
// facts; it owns cited, scope and seenSubjects while the pipeline runs.
func writeItems(items []exportItem, bw *bufio.Writer, cited map[uint64]string, scope *format.Scope, seenSubjects map[string]struct{}, chains packageChains) error {
	for i := range items {
		it := &items[i]
		if it.err != nil {
			return it.err
		}
		if chains != nil {
			chains[it.subject] = append(chains[it.subject], rules.Entry{Index: it.index, Leaf: it.leaf})
		}
		it.leaf = nil
		if id, ok := cited[it.index]; ok {
			if id != it.eventID {
				return fmt.Errorf("%w: a finding cites entry %d as event %q but it holds event %q", ErrSource, it.index, id, it.eventID)
			}
			delete(cited, it.index)
			scope.SourceOf[it.index] = it.source
			scope.Events[it.index] = it.row
		}
		if it.row.Type == "access.approved" && it.row.Request != "" {
			scope.ApproverOf[format.ApprovalKey(it.subject, it.row.Request)] = it.row.Actor
		}
		seenSubjects[it.subject] = struct{}{}
		if it.display != "" {
			if _, ok := scope.DisplayOf[it.subject]; !ok {
				scope.DisplayOf[it.subject] = it.display
			}
		}
		scope.Entries++
		if _, err := bw.Write(it.line); err != nil {
			return err
		}
	}
	return nil
}

// checkAllRoot checks that rng, every leaf of an export of every entry,
// is the checkpoint's tree.
func checkAllRoot(rng *compact.Range, cp ledger.Checkpoint) error {
	if rng.End() != cp.Size {
		return fmt.Errorf("%w: an export of every entry got %d of %d entries", ErrSource, rng.End(), cp.Size)
	}
	root := rfc6962.DefaultHasher.EmptyRoot()
	if cp.Size > 0 {
		var err error
		if root, err = rng.GetRootHash(nil); err != nil {
			return err
		}
	}
	if !bytes.Equal(root, cp.Root[:]) {
		return fmt.Errorf("%w: the %d leaves do not hash to the checkpoint's root", ErrSource, cp.Size)
	}
	return nil
}

// encodeItem checks one entry's proof (unless noProof: then the root
// recomputed from every leaf proves it), decodes it and encodes its line.
// Safe for concurrent use on distinct items.
func encodeItem(it *exportItem, cp ledger.Checkpoint) {
	if !it.noProof {
		lh := rfc6962.DefaultHasher.HashLeaf(it.leaf)
		if err := proof.VerifyInclusion(rfc6962.DefaultHasher, it.index, cp.Size, lh, it.proof, cp.Root[:]); err != nil {
			it.err = fmt.Errorf("%w: inclusion proof of entry %d does not lead to the checkpoint root: %w", ErrSource, it.index, err)
			return
		}
	}
	ent, err := event.DecodeLeaf(it.leaf)
	if err != nil {
		it.err = fmt.Errorf("%w: entry %d does not decode: %w", ErrSource, it.index, err)
		return
	}
	ev := ent.GetEvent()
	evJSON, err := protojson.Marshal(ev)
	if err != nil {
		it.err = fmt.Errorf("entry %d: encoding event: %w", it.index, err)
		return
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(format.EntryLine{Index: it.index, Leaf: it.leaf, InclusionProof: it.proof, Event: evJSON}); err != nil {
		it.err = fmt.Errorf("entry %d: %w", it.index, err)
		return
	}
	it.line = buf.Bytes()
	it.eventID = ev.GetId()
	it.source = ev.GetSource().GetSystem()
	it.subject = ev.GetSubject().GetId()
	it.display = ev.GetSubject().GetDisplay()
	it.row = format.EventRow{Index: it.index, EventID: ev.GetId(), Type: ev.GetType(), Time: ev.GetTime().AsTime(),
		ObservedTime: ent.GetObservedTime().AsTime(), Source: ev.GetSource().GetSystem(), Actor: ev.GetActor().GetId(),
		Request: ev.GetRefs().GetRequest(), Breakglass: ev.GetBreakglass()}
	it.proof = nil // the leaf is dropped by writeItems, after the population kept it
}

// packageChains are the leaves written to entries.jsonl by subject, a
// rules.ChainSource for the population; nil when none is needed.
type packageChains map[string][]rules.Entry

// Chain implements rules.ChainSource.
func (c packageChains) Chain(_ context.Context, subject string) ([]rules.Entry, error) {
	return c[subject], nil
}

func (c packageChains) subjects() []string { return slices.Sorted(maps.Keys(c)) }

// SortFindings sorts findings by (rule, subject, primary index), the order
// of the rules engine.
func SortFindings(fs []format.Finding) {
	slices.SortStableFunc(fs, func(a, b format.Finding) int {
		if c := cmp.Compare(a.Rule, b.Rule); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Subject, b.Subject); c != 0 {
			return c
		}
		ai, _ := a.Primary()
		bi, _ := b.Primary()
		return cmp.Compare(ai, bi)
	})
}

// pkgWriter writes files to a sink and records their digests.
type pkgWriter struct {
	sink    Sink
	digests []format.FileDigest
}

func (w *pkgWriter) file(name string, fill func(io.Writer) error) error {
	f, err := w.sink.Create(name)
	if err != nil {
		return fmt.Errorf("export: creating %s: %w", name, err)
	}
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(f, h), h: h}
	if err := fill(cw); err != nil {
		f.Close()
		return fmt.Errorf("export: writing %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("export: finishing %s: %w", name, err)
	}
	w.digests = append(w.digests, format.FileDigest{Name: name, SHA256: hex.EncodeToString(h.Sum(nil)), Size: cw.n})
	return nil
}

func (w *pkgWriter) json(name string, v any) error {
	return w.file(name, func(out io.Writer) error {
		bw := bufio.NewWriterSize(out, 256<<10)
		enc := json.NewEncoder(bw)
		enc.SetEscapeHTML(false)
		enc.SetIndent("", "  ")
		if err := enc.Encode(v); err != nil {
			return err
		}
		return bw.Flush()
	})
}

type countWriter struct {
	w io.Writer
	h hash.Hash
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
