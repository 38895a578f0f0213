package ingest

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"

	"connectrpc.com/connect"

	"github.com/grantline/grantline/ingest/auth"
	"github.com/grantline/grantline/internal/pipeline"
	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/proto/gen/grantline/v1/grantlinev1connect"
)

// StreamWindow is how many batches of one AppendStream may be in the ledger
// at once. Batch k+1 is read and submitted while batch k is being made
// durable, so one stream feeds the group commit with several batches; acks
// still go out in order and only after the ledger reports durability.
const StreamWindow = 4

// streamPushbackWait bounds how long a stream batch waits for room in a full
// ledger queue before the stream fails with ResourceExhausted. Waiting slows
// the stream down (HTTP/2 flow control does the rest) instead of killing it.
const streamPushbackWait = 2 * time.Second

type ingestService struct {
	grantlinev1connect.UnimplementedIngestServiceHandler
	s *Server
}

func (h *ingestService) Append(ctx context.Context, req *connect.Request[pb.AppendRequest]) (*connect.Response[pb.AppendResponse], error) {
	b := batchOf(req.Msg.GetEvents())
	if err := h.s.checkBatch(ctx, b); err != nil {
		return nil, err
	}
	res, size, err := h.s.append(ctx, b)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.AppendResponse{Results: toPBResults(res), TreeSize: size}), nil
}

// streamBatch is one stream message after the ledger: its results or error.
type streamBatch struct {
	seq  uint64
	res  []ledger.AppendResult
	size uint64
	err  error
}

// received is one Receive of a stream: a message or the error that ended it.
type received struct {
	msg *pb.AppendStreamRequest
	err error
}

// checked is a stream message that passed checkBatch, with its events as
// checked.
type checked struct {
	seq   uint64
	batch *event.Batch
}

// AppendStream validates and appends the batches of a stream up to
// StreamWindow at a time and acknowledges them in order (pipeline.Ordered).
// A read or validation error is returned after the batches before it are
// acknowledged; a failed append or ack ends the stream at once.
func (h *ingestService) AppendStream(ctx context.Context, stream *connect.BidiStream[pb.AppendStreamRequest, pb.AppendStreamResponse]) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the receiver; returning also ends a Receive in progress
	msgs := h.s.receive(ctx, stream)
	read := func(ctx context.Context, emit func(checked) error) error {
		for {
			var r received
			select {
			case r = <-msgs:
			case <-ctx.Done():
				return context.Cause(ctx)
			}
			if errors.Is(r.err, io.EOF) {
				return nil
			}
			if r.err != nil {
				return r.err
			}
			b := batchOf(r.msg.GetEvents())
			if err := h.s.checkBatch(ctx, b); err != nil {
				return fmt.Errorf("batch seq %d: %w", r.msg.GetSeq(), err)
			}
			if err := emit(checked{r.msg.GetSeq(), b}); err != nil {
				return err
			}
		}
	}
	appendBatch := func(ctx context.Context, msg checked) (b streamBatch) {
		b.seq = msg.seq
		defer func() {
			if p := recover(); p != nil {
				b.err = h.s.recovered(ctx, connect.Spec{Procedure: grantlinev1connect.IngestServiceAppendStreamProcedure}, nil, p)
			}
		}()
		b.res, b.size, b.err = h.s.appendWaiting(ctx, msg.batch, streamPushbackWait)
		return b
	}
	ack := func(b streamBatch) error {
		if b.err != nil {
			return fmt.Errorf("batch seq %d: %w", b.seq, b.err)
		}
		return stream.Send(&pb.AppendStreamResponse{Seq: b.seq, Results: toPBResults(b.res), TreeSize: b.size})
	}
	return pipeline.Ordered(ctx, StreamWindow, StreamWindow, read, appendBatch, ack)
}

// receive reads the stream on its own goroutine until it ends or ctx does,
// so that the reader above can stop waiting for a message: a Receive in
// progress ends only when the handler returns. A panic while reading
// arrives as an Internal error.
func (s *Server) receive(ctx context.Context, stream *connect.BidiStream[pb.AppendStreamRequest, pb.AppendStreamResponse]) <-chan received {
	out := make(chan received)
	go func() {
		var r received
		defer func() {
			if p := recover(); p != nil {
				r = received{err: s.recovered(ctx, connect.Spec{Procedure: grantlinev1connect.IngestServiceAppendStreamProcedure}, nil, p)}
				select {
				case out <- r:
				case <-ctx.Done():
				}
			}
		}()
		for {
			msg, err := stream.Receive()
			r = received{msg: msg, err: err}
			select {
			case out <- r:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return out
}

// checkBatch validates a whole batch and the caller's right to append each
// event, before anything is stored.
func (s *Server) checkBatch(ctx context.Context, b *event.Batch) error {
	if err := b.Validate("events", s.now()); err != nil {
		return err
	}
	evs := b.Events()
	p, ok := PrincipalFrom(ctx)
	if !ok {
		return fmt.Errorf("%w: no principal", ErrUnauthenticated)
	}
	if p.Role == auth.RoleSource {
		for i, ev := range evs {
			if sys := ev.GetSource().GetSystem(); sys != p.Name {
				return fmt.Errorf("%w: events[%d].source.system: %q is not %q, the source this token belongs to; a source token may append only its own events",
					ErrPermission, i, event.Clip(sys), p.Name)
			}
		}
	}
	return nil
}

// BatchAppender is a Ledger that also takes a batch with what decoding and
// validation know of its events (event.Batch), so that it does not check
// or encode them again: *ledger.Log. The server uses it when the Ledger
// has it, with the results and errors of Append.
type BatchAppender interface {
	AppendBatch(ctx context.Context, b *event.Batch) ([]ledger.AppendResult, uint64, error)
}

// append sends a validated batch to the ledger and records metrics.
func (s *Server) append(ctx context.Context, b *event.Batch) ([]ledger.AppendResult, uint64, error) {
	evs := b.Events()
	n := len(evs)
	s.m.inflight.Add(float64(n))
	defer s.m.inflight.Sub(float64(n))
	start := time.Now()
	var res []ledger.AppendResult
	var size uint64
	var err error
	if ba, ok := s.cfg.Ledger.(BatchAppender); ok {
		res, size, err = ba.AppendBatch(ctx, b)
	} else {
		res, size, err = s.cfg.Ledger.Append(ctx, evs)
	}
	if err != nil {
		s.m.appendErrors.Inc()
		return nil, 0, err
	}
	if len(res) != n {
		return nil, 0, fmt.Errorf("ledger returned %d results for %d events", len(res), n)
	}
	s.m.batchSize.Observe(float64(n))
	s.m.appendLatency.Observe(time.Since(start).Seconds())
	dups, conflicts := 0, 0
	for i, r := range res {
		switch {
		case r.Duplicate:
			dups++
		case r.Conflict:
			conflicts++
			// Ids only: the event's content may be personal data.
			s.log.WarnContext(ctx, "append conflict: (source.system, id) is stored with other content; nothing stored",
				"source_system", evs[i].GetSource().GetSystem(), "id", evs[i].GetId(),
				"stored_index", r.Index, "stored_leaf_hash", hex.EncodeToString(r.LeafHash[:]))
		}
	}
	s.m.appended.WithLabelValues("new").Add(float64(n - dups - conflicts))
	s.m.appended.WithLabelValues("duplicate").Add(float64(dups))
	s.m.appended.WithLabelValues("conflict").Add(float64(conflicts))
	s.m.ages.age(size)
	return res, size, nil
}

// appendWaiting is append that retries on ledger.ErrPushback, with growing pauses,
// for at most wait.
func (s *Server) appendWaiting(ctx context.Context, b *event.Batch, wait time.Duration) ([]ledger.AppendResult, uint64, error) {
	deadline := time.Now().Add(wait)
	pause := 5 * time.Millisecond
	for {
		res, size, err := s.append(ctx, b)
		if !errors.Is(err, ledger.ErrPushback) || time.Now().Add(pause).After(deadline) {
			return res, size, err
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, 0, ctx.Err()
		case <-t.C:
		}
		pause = min(2*pause, 200*time.Millisecond)
	}
}

func toPBResults(res []ledger.AppendResult) []*pb.AppendResult {
	// One allocation for the messages, instead of one per event; the leaf
	// hashes point into res (a copy of each result, sliced, would be moved
	// to the heap one by one).
	out, msgs := make([]*pb.AppendResult, len(res)), make([]pb.AppendResult, len(res))
	for i := range res {
		r, m := &res[i], &msgs[i]
		m.Index, m.LeafHash, m.Duplicate, m.Conflict = r.Index, r.LeafHash[:], r.Duplicate, r.Conflict
		out[i] = m
	}
	return out
}
