package ingest

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"iter"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/proto/gen/grantline/v1/grantlinev1connect"
	"github.com/grantline/grantline/rules"
	"github.com/grantline/grantline/verify/oscal"
)

// MaxEvaluateSubjects bounds the subjects one Evaluate request may name.
const MaxEvaluateSubjects = 100_000

// exportChunk is the largest data field of one ExportEvidenceResponse.
const exportChunk = 1 << 20

type evidenceService struct {
	grantlinev1connect.UnimplementedEvidenceServiceHandler
	s *Server
}

// evaluation is a validated Evaluate or EvaluateStream request.
type evaluation struct {
	cp       ledger.Checkpoint
	from     time.Time // zero: one instant
	asOf     time.Time
	want     []string // rules whose results are kept; empty: all
	subjects iter.Seq2[string, error]
	src      rules.ChainSource
	part     *partSource // a partitioned evaluation's source, nil for point reads
	// inc is the evaluation cache's part (incremental.go); nil when
	// subjects are named.
	inc *incremental
}

// Close removes a partitioned evaluation's spill files; the handlers call
// it whatever way the evaluation ended.
func (e *evaluation) Close() {
	if e.inc != nil {
		e.inc.close()
	}
	if e.part != nil {
		if err := e.part.Close(); err != nil {
			e.part.log.Warn("spill files left behind (removed at the next start)", "err", err)
		}
	}
}

// plan validates an evaluation request. The subjects are not listed here:
// with none named, evaluation reads them from the subject index as it goes.
func (h *evidenceService) plan(ctx context.Context, req *pb.EvaluateRequest) (*evaluation, error) {
	ev := h.s.cfg.Evaluator
	if ev == nil {
		return nil, connect.NewError(connect.CodeUnimplemented, fmt.Errorf("this server has no rule set loaded"))
	}
	cp, err := h.s.checkpoint(ctx, "tree_size", req.GetTreeSize())
	if err != nil {
		return nil, err
	}
	from, asOf, err := h.s.period(req.GetAsOf(), req.GetFrom(), req.GetTo())
	if err != nil {
		return nil, err
	}
	want := req.GetRules()
	var known []string
	for _, r := range ev.Rules() {
		known = append(known, r.ID)
	}
	for i, id := range want {
		if !slices.Contains(known, id) {
			return nil, &event.FieldError{Path: fmt.Sprintf("rules[%d]", i), Msg: fmt.Sprintf("unknown rule %q; loaded rules: %v", event.Clip(id), known)}
		}
	}
	cs := &chainSource{l: h.s.cfg.Ledger, size: cp.Size}
	e := &evaluation{cp: cp, from: from, asOf: asOf, want: want, src: cs}
	if named := req.GetSubjects(); len(named) > 0 {
		list, err := h.s.subjects(ctx, cp.Size, named)
		if err != nil {
			return nil, err
		}
		e.subjects = rules.Subjects(list)
		return e, nil
	}
	// A full evaluation: reuse what a cached evaluation of a smaller tree
	// holds (incremental.go).
	fixed := fixedTime(req.GetAsOf(), req.GetFrom(), req.GetTo())
	if e.inc, err = h.s.planIncremental(ctx, fixed, cp, from, asOf, cs); err != nil {
		return nil, err
	}
	switch {
	case e.inc.base != nil:
		// Only the subjects that may have changed, by point reads.
		e.subjects = rules.Subjects(e.inc.dirty)
	case h.s.usePartitions(cs):
		// A full evaluation of a store larger than the mapped bound: one
		// sequential read of the log (partition.go).
		if e.part, err = h.s.newPartSource(ctx, cs); err != nil {
			e.Close() // the cache file planIncremental opened
			return nil, err
		}
		e.src, e.subjects = e.part, e.part.subjects(ctx)
	default:
		e.subjects = h.s.eachSubject(ctx, cp.Size)
	}
	return e, nil
}

// run evaluates e, handing each subject's results, reduced to the wanted
// rules, to emit in subject order.
func (h *evidenceService) run(ctx context.Context, e *evaluation, emit func(*rules.SubjectResult) error) (rules.Summary, error) {
	start := time.Now()
	findings, errs := 0, 0 // of the wanted rules
	subjects, entries := 0, 0
	out := func(r *rules.SubjectResult) error {
		subjects++
		entries += r.Entries
		if len(e.want) > 0 {
			r.Findings = slices.DeleteFunc(r.Findings, func(f rules.Finding) bool { return !slices.Contains(e.want, f.Rule) })
			r.Errors = slices.DeleteFunc(r.Errors, func(x rules.RuleError) bool { return !slices.Contains(e.want, x.Rule) })
			// Only the chosen rules' findings: their own union.
			r.Exposure = rules.ExposureBySubject(r.Findings, e.asOf)[r.Subject]
		}
		findings += len(r.Findings)
		errs += len(r.Errors)
		return emit(r)
	}
	var sum rules.Summary
	var err error
	inc := e.inc
	switch {
	case inc == nil:
		sum, err = h.s.cfg.Evaluator.Stream(ctx, e.subjects, e.src, e.from, e.asOf, !e.from.IsZero(), out)
	case inc.base != nil && len(inc.dirty) == 0:
		// Nothing to evaluate again: no rule runs (and backdated-closure
		// builds no source index).
		err = inc.finish(out)
	default:
		src, subs := inc.wrap(e.src, e.subjects)
		sum, err = h.s.cfg.Evaluator.Stream(ctx, subs, src, e.from, e.asOf, !e.from.IsZero(), func(r *rules.SubjectResult) error {
			return inc.emit(r, out)
		})
		if err == nil {
			err = inc.finish(out)
		}
	}
	// The subjects emitted, evaluated or replayed; the wanted rules' results.
	sum.Subjects, sum.Entries, sum.Findings, sum.Errors = subjects, entries, findings, errs
	h.s.m.evalSeconds.Observe(time.Since(start).Seconds())
	if inc != nil {
		h.s.m.evalSubjects.WithLabelValues("reused").Add(float64(inc.reused))
		h.s.m.evalSubjects.WithLabelValues("evaluated").Add(float64(subjects - inc.reused))
		attrs := []any{"tree_size", e.cp.Size, "as_of", e.asOf, "subjects", subjects,
			"subjects_reused", inc.reused, "subjects_evaluated", subjects - inc.reused,
			"cache", inc.cacheState(), "seconds", time.Since(start).Seconds()}
		if !e.from.IsZero() {
			attrs = append(attrs, "from", e.from)
		}
		if inc.base != nil {
			attrs = append(attrs, "cache_base_size", inc.base.size, "changed_subjects", inc.changed,
				"related_changed_subjects", inc.related, "errored_subjects", inc.errored)
		}
		if inc.kept {
			attrs = append(attrs, "cache_written_bytes", inc.written)
		}
		if err != nil {
			attrs = append(attrs, "err", err)
		}
		h.s.log.Info("evaluation", attrs...)
	}
	if err != nil {
		return sum, fmt.Errorf("evaluating rules at tree size %d: %w", e.cp.Size, err)
	}
	return sum, nil
}

// ErrEvaluateTooLarge is Evaluate's refusal of a result larger than one
// response may be (Config.UnaryEvaluateMaxBytes): EvaluateStream has no
// such limit.
var ErrEvaluateTooLarge = errors.New("the result is too large for one Evaluate response")

func (h *evidenceService) Evaluate(ctx context.Context, req *connect.Request[pb.EvaluateRequest]) (*connect.Response[pb.EvaluateResponse], error) {
	e, err := h.plan(ctx, req.Msg)
	if err != nil {
		return nil, err
	}
	defer e.Close()
	resp := &pb.EvaluateResponse{Checkpoint: string(e.cp.Note), AsOf: timestamppb.New(e.asOf), ExposureBySubject: map[string]int64{}}
	if !e.from.IsZero() {
		resp.From = timestamppb.New(e.from)
	}
	limit := h.s.unaryEvalMax
	size, subjects := proto.Size(resp), 0
	sum, err := h.run(ctx, e, func(r *rules.SubjectResult) error {
		subjects++
		for _, f := range r.Findings {
			pf := findingPB(f)
			size += protowire.SizeTag(3) + protowire.SizeBytes(proto.Size(pf))
			resp.Findings = append(resp.Findings, pf)
		}
		for _, x := range r.Errors {
			pe := &pb.RuleError{Rule: x.Rule, Subject: x.Subject, Message: x.Message}
			size += protowire.SizeTag(4) + protowire.SizeBytes(proto.Size(pe))
			resp.Errors = append(resp.Errors, pe)
		}
		if r.Exposure > 0 {
			resp.ExposureBySubject[r.Subject] = r.Exposure
			size += exposureEntrySize(11, r.Subject, r.Exposure)
		}
		if size > limit {
			return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("%w: it exceeds %d bytes after %d subject(s); call EvaluateStream, which sends it in chunks (grantline evaluate does), or name fewer subjects or rules (docs/design.md \"API\")", ErrEvaluateTooLarge, limit, subjects))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	resp.SubjectsEvaluated, resp.EntriesEvaluated = uint64(sum.Subjects), uint64(sum.Entries)
	// One response keeps Evaluate's documented order: by (rule, subject,
	// primary index); errors by (rule, subject).
	slices.SortStableFunc(resp.Findings, func(a, b *pb.Finding) int {
		return cmp.Or(strings.Compare(a.GetRule(), b.GetRule()), strings.Compare(a.GetSubject(), b.GetSubject()),
			cmp.Compare(a.GetEntries()[0].GetIndex(), b.GetEntries()[0].GetIndex()))
	})
	slices.SortStableFunc(resp.Errors, func(a, b *pb.RuleError) int {
		return cmp.Or(strings.Compare(a.GetRule(), b.GetRule()), strings.Compare(a.GetSubject(), b.GetSubject()))
	})
	return connect.NewResponse(resp), nil
}

// EvaluateStream sends a header, the results subject by subject in chunks
// of at most Config.EvaluateChunkBytes, and a trailer (docs/design.md
// "API"). The server holds only the subjects being evaluated and one
// chunk.
func (h *evidenceService) EvaluateStream(ctx context.Context, req *connect.Request[pb.EvaluateStreamRequest], stream *connect.ServerStream[pb.EvaluateStreamResponse]) error {
	if req.Msg.GetRequest() == nil {
		return &event.FieldError{Path: "request", Msg: "missing: EvaluateStream takes the EvaluateRequest in its request field"}
	}
	e, err := h.plan(ctx, req.Msg.GetRequest())
	if err != nil {
		return err
	}
	defer e.Close()
	head := &pb.EvaluateHeader{Checkpoint: string(e.cp.Note), AsOf: timestamppb.New(e.asOf)}
	if !e.from.IsZero() {
		head.From = timestamppb.New(e.from)
	}
	if err := stream.Send(&pb.EvaluateStreamResponse{Part: &pb.EvaluateStreamResponse_Header{Header: head}}); err != nil {
		return err
	}
	c := &chunker{limit: h.s.evalChunk, maxAge: evalChunkMaxAge, send: func(ch *pb.EvaluateChunk) error {
		return stream.Send(&pb.EvaluateStreamResponse{Part: &pb.EvaluateStreamResponse_Chunk{Chunk: ch}})
	}}
	sum, err := h.run(ctx, e, c.add)
	if err == nil {
		err = c.flush()
	}
	if err != nil {
		return err
	}
	return stream.Send(&pb.EvaluateStreamResponse{Part: &pb.EvaluateStreamResponse_Trailer{Trailer: &pb.EvaluateTrailer{
		SubjectsEvaluated: uint64(sum.Subjects), EntriesEvaluated: uint64(sum.Entries),
		Findings: uint64(sum.Findings), Errors: uint64(sum.Errors),
	}}})
}

// chunkOverhead is what an EvaluateStreamResponse adds around its chunk:
// the oneof field's tag and length.
const chunkOverhead = 1 + binary.MaxVarintLen64

// evalChunkMaxAge is how long a chunk of findings may wait to fill up: on a
// large log with few findings a client hears of them within about this
// long instead of when a whole chunk's worth has been found.
const evalChunkMaxAge = time.Second

// chunker packs subjects' results into EvaluateChunks whose
// EvaluateStreamResponse stays within limit bytes; a single finding or
// error larger than that travels alone. A chunk is also sent, after a
// subject's results, once it is maxAge old (0: only when full).
type chunker struct {
	limit   int
	maxAge  time.Duration
	send    func(*pb.EvaluateChunk) error
	cur     *pb.EvaluateChunk
	size    int
	started time.Time // when cur was begun
}

// room makes room for n more bytes, sending the current chunk if they
// would not fit and it is not empty.
func (c *chunker) room(n int) error {
	if c.cur != nil && c.size+n+chunkOverhead > c.limit {
		if err := c.flush(); err != nil {
			return err
		}
	}
	if c.cur == nil {
		c.cur, c.started = &pb.EvaluateChunk{}, time.Now()
	}
	c.size += n
	return nil
}

func (c *chunker) add(r *rules.SubjectResult) error {
	for _, f := range r.Findings {
		pf := findingPB(f)
		if err := c.room(protowire.SizeTag(1) + protowire.SizeBytes(proto.Size(pf))); err != nil {
			return err
		}
		c.cur.Findings = append(c.cur.Findings, pf)
	}
	for _, x := range r.Errors {
		pe := &pb.RuleError{Rule: x.Rule, Subject: x.Subject, Message: x.Message}
		if err := c.room(protowire.SizeTag(2) + protowire.SizeBytes(proto.Size(pe))); err != nil {
			return err
		}
		c.cur.Errors = append(c.cur.Errors, pe)
	}
	if r.Exposure > 0 {
		if err := c.room(exposureEntrySize(3, r.Subject, r.Exposure)); err != nil {
			return err
		}
		if c.cur.ExposureBySubject == nil {
			c.cur.ExposureBySubject = map[string]int64{}
		}
		c.cur.ExposureBySubject[r.Subject] = r.Exposure
	}
	if c.cur != nil && c.maxAge > 0 && time.Since(c.started) >= c.maxAge {
		return c.flush()
	}
	return nil
}

// flush sends the current chunk, if any.
func (c *chunker) flush() error {
	if c.cur == nil {
		return nil
	}
	ch := c.cur
	c.cur, c.size = nil, 0
	return c.send(ch)
}

// exposureEntrySize is the encoded size of one entry of a map<string,
// int64> field.
func exposureEntrySize(field protowire.Number, key string, v int64) int {
	n := protowire.SizeTag(1) + protowire.SizeBytes(len(key)) + protowire.SizeTag(2) + protowire.SizeVarint(uint64(v))
	return protowire.SizeTag(field) + protowire.SizeBytes(n)
}

// findingPB is a finding on the wire.
func findingPB(f rules.Finding) *pb.Finding {
	pf := &pb.Finding{Rule: f.Rule, Subject: f.Subject, Severity: f.Severity, Message: f.Message,
		ExposureSeconds: f.ExposureSeconds, Title: f.Title, Controls: f.Controls,
		OpenedAt: timestamppb.New(f.OpenedAt), SharesPrimaryWith: f.SharesPrimaryWith}
	if !f.Open() {
		pf.ClosedAt = timestamppb.New(f.ClosedAt)
	}
	for _, e := range f.Entries {
		pf.Entries = append(pf.Entries, &pb.EntryRef{Index: e.Index, EventId: e.EventID})
	}
	return pf
}

func (h *evidenceService) ExportEvidence(ctx context.Context, req *connect.Request[pb.ExportEvidenceRequest], stream *connect.ServerStream[pb.ExportEvidenceResponse]) error {
	ex := h.s.cfg.Exporter
	if ex == nil {
		return connect.NewError(connect.CodeUnimplemented, fmt.Errorf("evidence export is not available on this server yet"))
	}
	cp, err := h.s.anchor(ctx, req.Msg.GetTreeSize())
	if err != nil {
		return err
	}
	from, asOf, err := h.s.period(req.Msg.GetAsOf(), req.Msg.GetFrom(), req.Msg.GetTo())
	if err != nil {
		return err
	}
	if _, err := oscal.LoadCatalog(req.Msg.GetFramework()); err != nil {
		return &event.FieldError{Path: "framework", Msg: err.Error()}
	}
	for i, s := range req.Msg.GetSubjects() {
		if s == "" {
			return &event.FieldError{Path: fmt.Sprintf("subjects[%d]", i), Msg: "empty: name each subject to prove complete"}
		}
	}
	if len(req.Msg.GetSubjects()) > 0 && req.Msg.GetAll() {
		return &event.FieldError{Path: "subjects", Msg: "a package of every entry (all) and one of chosen subjects exclude each other: ask for one"}
	}
	return ex.Export(ctx, ExportRequest{
		Checkpoint: cp, AsOf: asOf, From: from, Framework: req.Msg.GetFramework(),
		All: req.Msg.GetAll(), SinceSizes: req.Msg.GetSinceSizes(), Subjects: req.Msg.GetSubjects(),
		Chains: &chainSource{l: h.s.cfg.Ledger, size: cp.Size},
	}, func(path string) (io.WriteCloser, error) {
		return &exportWriter{stream: stream, path: path}, nil
	})
}

// exportWriter sends one file of a package as ExportEvidenceResponse chunks
// of at most exportChunk bytes; Close sends the last one, with eof set.
type exportWriter struct {
	stream *connect.ServerStream[pb.ExportEvidenceResponse]
	path   string
	buf    []byte
	closed bool
}

func (w *exportWriter) Write(p []byte) (int, error) {
	if w.closed {
		return 0, fmt.Errorf("export file %s: write after close", w.path)
	}
	n := len(p)
	for len(p) > 0 {
		k := min(len(p), exportChunk-len(w.buf))
		w.buf = append(w.buf, p[:k]...)
		p = p[k:]
		if len(w.buf) == exportChunk {
			if err := w.stream.Send(&pb.ExportEvidenceResponse{Path: w.path, Data: w.buf}); err != nil {
				return 0, err
			}
			w.buf = nil // the sent message keeps the old slice
		}
	}
	return n, nil
}

func (w *exportWriter) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	return w.stream.Send(&pb.ExportEvidenceResponse{Path: w.path, Data: w.buf, Eof: true})
}

// period resolves the as-of time and, for an audit period, its start (zero
// for none): with from or to set, the period is [from, to] (to unset: now)
// and as_of must be unset.
func (s *Server) period(asOfTS, fromTS, toTS *timestamppb.Timestamp) (from, asOf time.Time, err error) {
	if fromTS == nil && toTS == nil {
		asOf, err = s.asOf(asOfTS)
		return time.Time{}, asOf, err
	}
	if asOfTS != nil {
		return from, asOf, &event.FieldError{Path: "as_of", Msg: "give either as_of (one instant) or from/to (a period), not both"}
	}
	if fromTS == nil {
		return from, asOf, &event.FieldError{Path: "from", Msg: "a period needs its start: set from as well as to"}
	}
	if err := fromTS.CheckValid(); err != nil {
		return from, asOf, &event.FieldError{Path: "from", Msg: "not a valid timestamp"}
	}
	from = fromTS.AsTime()
	if asOf, err = s.asOf(toTS); err != nil {
		return from, asOf, &event.FieldError{Path: "to", Msg: "not a valid timestamp"}
	}
	if asOf.Before(from) {
		return from, asOf, &event.FieldError{Path: "to", Msg: fmt.Sprintf("the period ends (%s) before it starts (%s)", asOf.Format(time.RFC3339), from.Format(time.RFC3339))}
	}
	return from, asOf, nil
}

// asOf resolves an as-of time: unset is now.
func (s *Server) asOf(ts *timestamppb.Timestamp) (time.Time, error) {
	if ts == nil {
		return s.now(), nil
	}
	if err := ts.CheckValid(); err != nil {
		return time.Time{}, &event.FieldError{Path: "as_of", Msg: "not a valid timestamp"}
	}
	return ts.AsTime(), nil
}

// subjects returns the requested subjects, validated, or every subject in the
// tree of size.
func (s *Server) subjects(ctx context.Context, size uint64, want []string) ([]string, error) {
	if len(want) > MaxEvaluateSubjects {
		return nil, &event.FieldError{Path: "subjects", Msg: fmt.Sprintf("%d subjects exceed the limit of %d; leave it empty for all", len(want), MaxEvaluateSubjects)}
	}
	if len(want) > 0 {
		for i, sub := range want {
			if err := event.ValidateID(fmt.Sprintf("subjects[%d]", i), sub); err != nil {
				return nil, err
			}
		}
		return want, nil
	}
	var all []string
	err := s.cfg.Ledger.ForEachSubject(ctx, size, func(sub string) error {
		all = append(all, sub)
		return nil
	})
	return all, err
}

// errStopSubjects ends ForEachSubject when the evaluation stops pulling.
var errStopSubjects = errors.New("stop listing subjects")

// eachSubject yields every subject of the tree of size (LedgerSubjects).
func (s *Server) eachSubject(ctx context.Context, size uint64) iter.Seq2[string, error] {
	return LedgerSubjects(ctx, s.cfg.Ledger, size)
}

// LedgerSubjects yields every subject of the tree of size from l's subject
// index, as the index reads them (by subject id, in byte order), without
// listing them all first: evaluation pulls them as it goes
// (rules.Set.Stream).
func LedgerSubjects(ctx context.Context, l Ledger, size uint64) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		err := l.ForEachSubject(ctx, size, func(sub string) error {
			if !yield(sub, nil) {
				return errStopSubjects
			}
			return nil
		})
		if err != nil && !errors.Is(err, errStopSubjects) {
			yield("", fmt.Errorf("reading the subject index: %w", err))
		}
	}
}

// chainSource is the rules engine's ChainSource over the ledger at a fixed
// tree size. It hands over leaves undecoded: the engine decodes them
// straight into its views.
type chainSource struct {
	l    Ledger
	size uint64
}

// Subjects lists every subject of the tree, so that rules comparing entries
// across subjects (backdated-closure) see them all even when only some
// subjects are evaluated (rules.SubjectLister).
func (c *chainSource) Subjects(ctx context.Context) ([]string, error) {
	var all []string
	err := c.l.ForEachSubject(ctx, c.size, func(sub string) error {
		all = append(all, sub)
		return nil
	})
	return all, err
}

// LogSize and ScanLog let rules comparing entries across subjects
// (backdated-closure) index them from one sequential read of the log
// rather than from every subject's chain (rules.LogScanner).
func (c *chainSource) LogSize() uint64 { return c.size }

func (c *chainSource) ScanLog(ctx context.Context, start, end uint64, fn func(rules.Entry) error) error {
	if sc, ok := c.l.(entryScanner); ok {
		// The ledger's own scan: leaves checked in place, not copied.
		err := sc.ScanEntries(ctx, start, end, func(e ledger.Entry) error {
			return fn(rules.Entry{Index: e.Index, Leaf: e.Leaf})
		})
		if err != nil && isLedgerReadErr(err) {
			return fmt.Errorf("reading the log from entry %d: %w", start, err)
		}
		return err
	}
	const page = 1024 // leaves per read: bounds what one scan holds
	for start < end {
		if err := ctx.Err(); err != nil {
			return err
		}
		ents, err := c.l.Entries(ctx, start, min(page, end-start))
		if err != nil {
			return fmt.Errorf("reading the log from entry %d: %w", start, err)
		}
		if len(ents) == 0 {
			return fmt.Errorf("reading the log from entry %d: no entries below %d", start, end)
		}
		for _, e := range ents {
			if err := fn(rules.Entry{Index: e.Index, Leaf: e.Leaf}); err != nil {
				return err
			}
		}
		start = ents[len(ents)-1].Index + 1
	}
	return nil
}

// entryScanner is the optional upgrade of a Ledger that ScanLog prefers
// (ledger.Log.ScanEntries): the leaves of a range, checked, each valid
// only during fn.
type entryScanner interface {
	ScanEntries(ctx context.Context, start, end uint64, fn func(ledger.Entry) error) error
}

// isLedgerReadErr tells a failed read of the log (a ledger sentinel) from
// an error of ScanLog's fn, which is returned as is.
func isLedgerReadErr(err error) bool {
	for _, s := range []error{ledger.ErrCorrupt, ledger.ErrStorage, ledger.ErrOutOfRange, ledger.ErrNotFound, ledger.ErrClosed} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

func (c *chainSource) Chain(ctx context.Context, subject string) ([]rules.Entry, error) {
	var out []rules.Entry
	start := uint64(0)
	for {
		ents, err := c.l.SubjectEntries(ctx, subject, c.size, start, MaxPageSize)
		if err != nil {
			return nil, fmt.Errorf("reading the chain of %q: %w", subject, err)
		}
		if out == nil {
			out = make([]rules.Entry, 0, len(ents))
		}
		for _, e := range ents {
			out = append(out, rules.Entry{Index: e.Index, Leaf: e.Leaf})
		}
		if len(ents) < MaxPageSize {
			return out, nil
		}
		start = ents[len(ents)-1].Index + 1
	}
}

// anchor resolves the checkpoint an evidence package is anchored to. With
// witnessing configured it is the newest witnessed checkpoint (size 0 or its
// size), so the package carries the witnesses' cosignatures; without, any
// published checkpoint.
func (s *Server) anchor(ctx context.Context, size uint64) (ledger.Checkpoint, error) {
	if s.cfg.Witnessed == nil {
		return s.checkpoint(ctx, "tree_size", size)
	}
	cp, ok := s.cfg.Witnessed()
	switch {
	case !ok:
		return ledger.Checkpoint{}, connect.NewError(connect.CodeUnavailable,
			errors.New("no checkpoint has reached the witnesses' quorum yet, and evidence is anchored to a witnessed checkpoint; retry shortly (see docs/witnessing.md)"))
	case size != 0 && size != cp.Size:
		return ledger.Checkpoint{}, &event.FieldError{Path: "tree_size", Msg: fmt.Sprintf("evidence is anchored to the newest witnessed checkpoint (size %d) when witnessing is on; omit tree_size or give %d", cp.Size, cp.Size)}
	}
	return cp, nil
}

// witnessed answers GetCheckpoint with witnessed set: the newest witnessed
// checkpoint, whose size must be size when size is not 0.
func (s *Server) witnessed(size uint64) (ledger.Checkpoint, error) {
	if s.cfg.Witnessed == nil {
		return ledger.Checkpoint{}, connect.NewError(connect.CodeFailedPrecondition,
			errors.New("witnessed: this server has no witness policy (serve --witness-policy), so no checkpoint is witnessed; ask without witnessed for the log's own checkpoint"))
	}
	cp, ok := s.cfg.Witnessed()
	switch {
	case !ok:
		return ledger.Checkpoint{}, connect.NewError(connect.CodeUnavailable,
			errors.New("no checkpoint has reached the witnesses' quorum yet; retry shortly (see docs/witnessing.md)"))
	case size != 0 && size != cp.Size:
		return ledger.Checkpoint{}, &event.FieldError{Path: "tree_size", Msg: fmt.Sprintf("the newest witnessed checkpoint has size %d; with witnessed, omit tree_size or give %d (older witnessed checkpoints are not kept)", cp.Size, cp.Size)}
	}
	return cp, nil
}
