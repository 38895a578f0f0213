package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"connectrpc.com/connect"
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

func (h *evidenceService) Evaluate(ctx context.Context, req *connect.Request[pb.EvaluateRequest]) (*connect.Response[pb.EvaluateResponse], error) {
	ev := h.s.cfg.Evaluator
	if ev == nil {
		return nil, connect.NewError(connect.CodeUnimplemented, fmt.Errorf("this server has no rule set loaded"))
	}
	cp, err := h.s.checkpoint(ctx, "tree_size", req.Msg.GetTreeSize())
	if err != nil {
		return nil, err
	}
	from, asOf, err := h.s.period(req.Msg.GetAsOf(), req.Msg.GetFrom(), req.Msg.GetTo())
	if err != nil {
		return nil, err
	}
	want := req.Msg.GetRules()
	var known []string
	for _, r := range ev.Rules() {
		known = append(known, r.ID)
	}
	for i, id := range want {
		if !slices.Contains(known, id) {
			return nil, &event.FieldError{Path: fmt.Sprintf("rules[%d]", i), Msg: fmt.Sprintf("unknown rule %q; loaded rules: %v", event.Clip(id), known)}
		}
	}
	subjects, err := h.s.subjects(ctx, cp.Size, req.Msg.GetSubjects())
	if err != nil {
		return nil, err
	}
	start := time.Now()
	var res *rules.Result
	src := &chainSource{l: h.s.cfg.Ledger, size: cp.Size}
	if from.IsZero() {
		res, err = ev.Evaluate(ctx, subjects, src, asOf)
	} else {
		res, err = ev.EvaluatePeriod(ctx, subjects, src, from, asOf)
	}
	h.s.m.evalSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		return nil, fmt.Errorf("evaluating rules at tree size %d: %w", cp.Size, err)
	}
	resp := &pb.EvaluateResponse{
		Checkpoint: string(cp.Note), AsOf: timestamppb.New(asOf),
		SubjectsEvaluated: uint64(res.Subjects), EntriesEvaluated: uint64(res.Entries),
		ExposureBySubject: res.ExposureBySubject,
	}
	if !from.IsZero() {
		resp.From = timestamppb.New(from)
	}
	var kept []rules.Finding
	for _, f := range res.Findings {
		if len(want) == 0 || slices.Contains(want, f.Rule) {
			kept = append(kept, f)
			pf := &pb.Finding{Rule: f.Rule, Subject: f.Subject, Severity: f.Severity, Message: f.Message,
				ExposureSeconds: f.ExposureSeconds, Title: f.Title, Controls: f.Controls,
				OpenedAt: timestamppb.New(f.OpenedAt), SharesPrimaryWith: f.SharesPrimaryWith}
			if !f.Open() {
				pf.ClosedAt = timestamppb.New(f.ClosedAt)
			}
			for _, e := range f.Entries {
				pf.Entries = append(pf.Entries, &pb.EntryRef{Index: e.Index, EventId: e.EventID})
			}
			resp.Findings = append(resp.Findings, pf)
		}
	}
	if len(want) > 0 {
		// Only the chosen rules' findings: their own union.
		resp.ExposureBySubject = rules.ExposureBySubject(kept, asOf)
	}
	for _, e := range res.Errors {
		if len(want) == 0 || slices.Contains(want, e.Rule) {
			resp.Errors = append(resp.Errors, &pb.RuleError{Rule: e.Rule, Subject: e.Subject, Message: e.Message})
		}
	}
	return connect.NewResponse(resp), nil
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
	return ex.Export(ctx, ExportRequest{
		Checkpoint: cp, AsOf: asOf, From: from, Framework: req.Msg.GetFramework(),
		All: req.Msg.GetAll(), SinceSizes: req.Msg.GetSinceSizes(),
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

func (c *chainSource) Chain(ctx context.Context, subject string) ([]rules.Entry, error) {
	var out []rules.Entry
	start := uint64(0)
	for {
		ents, err := c.l.SubjectEntries(ctx, subject, c.size, start, MaxPageSize)
		if err != nil {
			return nil, fmt.Errorf("reading the chain of %q: %w", subject, err)
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
