package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/proto/gen/grantline/v1/grantlinev1connect"
)

// RetryAfterKey is the response metadata key (an HTTP header for the
// Connect protocol, trailer metadata for gRPC) in which the server suggests,
// in milliseconds, when to retry a refused append (with ResourceExhausted, next
// to a google.rpc.RetryInfo detail).
const RetryAfterKey = "Retry-After-Ms"

// Batch is one AppendStream message's worth of events.
type Batch struct {
	Seq    uint64 // unique per AppendStream call, increasing
	Events []*pb.Event
	Where  string // where the first event came from (e.g. "FILE:LINE"), for error messages
	// Origins, when set, says where each event came from (Origins[i] for
	// Events[i]), so that a caller can name the events the server
	// answered with a conflict (see Conflicts). Packer sets it.
	Origins []string
	// Encoded, when set, is the batch already encoded, for a caller that
	// makes its events as bytes (grantline bench's load generator): Count
	// events, each as an AppendStreamRequest events field (tag 2, length,
	// the Event's encoding), in order, which event.MarshalBatch(nil, 0, 0,
	// 2, events) writes. The client sends these bytes as they are, and
	// Events may be nil (Conflicts then names no events).
	Encoded []byte
	Count   int
}

// Len is the number of events in b.
func (b *Batch) Len() int {
	if b.Encoded != nil {
		return b.Count
	}
	return len(b.Events)
}

// request is b's AppendStreamRequest. An encoded batch's bytes go out as
// the message's unknown fields, which the protobuf runtime writes verbatim
// after seq: on the wire it is the AppendStreamRequest holding those
// events, which the server decodes as any other.
func (b *Batch) request() *pb.AppendStreamRequest {
	req := &pb.AppendStreamRequest{Seq: b.Seq, Events: b.Events}
	if b.Encoded != nil {
		req.Events = nil
		req.ProtoReflect().SetUnknown(b.Encoded)
	}
	return req
}

// Conflict is an event the server answered with a conflict: its
// (source.system, id) is stored with other content at Index, and nothing
// was stored for it.
type Conflict struct {
	Where    string // Batch.Origins[i], or "Batch.Where event i+1" without origins
	SourceID string // source.system and id, as "system/id"
	Index    uint64 // the stored entry's index
	LeafHash []byte // the stored entry's leaf hash
}

// Conflicts returns the events of b that resp, b's acknowledgement,
// answered with a conflict, in batch order.
func Conflicts(b *Batch, resp *pb.AppendStreamResponse) []Conflict {
	var out []Conflict
	for i, r := range resp.GetResults() {
		if !r.GetConflict() || i >= len(b.Events) {
			continue
		}
		where := fmt.Sprintf("%s event %d", b.Where, i+1)
		if i < len(b.Origins) {
			where = b.Origins[i]
		}
		ev := b.Events[i]
		out = append(out, Conflict{
			Where: where, SourceID: ev.GetSource().GetSystem() + "/" + ev.GetId(),
			Index: r.GetIndex(), LeafHash: r.GetLeafHash(),
		})
	}
	return out
}

// Stats counts acknowledged events: Acked in all, Fresh newly stored, Dup
// already stored with the same content (sent before), Conflict already
// stored with other content (not stored; see Conflicts), and the largest
// TreeSize acknowledged. Safe for concurrent use; the zero value is ready.
type Stats struct {
	Acked, Fresh, Dup, Conflict, TreeSize atomic.Uint64
}

// Add counts one acknowledgement.
func (s *Stats) Add(resp *pb.AppendStreamResponse) {
	var d, c uint64
	for _, r := range resp.GetResults() {
		switch {
		case r.GetDuplicate():
			d++
		case r.GetConflict():
			c++
		}
	}
	n := uint64(len(resp.GetResults()))
	s.Acked.Add(n)
	s.Dup.Add(d)
	s.Conflict.Add(c)
	s.Fresh.Add(n - d - c)
	for {
		cur := s.TreeSize.Load()
		if resp.GetTreeSize() <= cur || s.TreeSize.CompareAndSwap(cur, resp.GetTreeSize()) {
			return
		}
	}
}

// StreamOptions tune AppendStream.
type StreamOptions struct {
	Streams int // concurrent streams (at least 1)
	Window  int // unacknowledged batches per stream (at least 1)
	Retries int // consecutive failed attempts per stream before giving up
	// RetryFor, if positive, also bounds the time a stream keeps retrying
	// without an acknowledgement: a retry that would start later than
	// RetryFor after the first failure of the run is not made.
	RetryFor time.Duration
	// Notify, if set, hears about each retry; it may be called concurrently.
	Notify func(msg string)
}

// AckFunc is called once per acknowledged batch with the ack latency (from
// its last send to its acknowledgement). It may be called concurrently.
type AckFunc func(b *Batch, resp *pb.AppendStreamResponse, latency time.Duration)

// AppendStream streams every batch from in over o.Streams concurrent
// AppendStream calls of svc (Client.Ingest, or any implementation), keeping
// up to o.Window batches unacknowledged per stream. A stream refused with
// ResourceExhausted or Unavailable, or cut, is reopened after a backoff (or
// the server's retry hint), up to o.Retries times in a row (and for at most
// o.RetryFor, if set), and its
// unacknowledged batches are sent again; the ledger's idempotency makes that
// safe (a batch stored before its ack was lost comes back as duplicates).
// onAck is called once per batch. It returns nil only when every batch was
// acknowledged; in must be closed when the input ends. Any other failure
// (Unauthenticated, PermissionDenied, InvalidArgument, ...) is returned at
// once: retrying cannot fix it.
func AppendStream(ctx context.Context, svc grantlinev1connect.IngestServiceClient, o StreamOptions, in <-chan *Batch, onAck AckFunc) error {
	o.Streams, o.Window = max(o.Streams, 1), max(o.Window, 1)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, o.Streams)
	var wg sync.WaitGroup
	for range o.Streams {
		wg.Go(func() {
			s := &streamWorker{client: svc, cfg: o, in: in, onAck: onAck}
			if err := s.run(ctx); err != nil {
				errs <- err
				cancel() // one stream giving up ends the run
			}
		})
	}
	wg.Wait()
	close(errs)
	var first error
	for err := range errs {
		if first == nil || errors.Is(first, context.Canceled) {
			first = err
		}
	}
	if first == nil {
		// Without a stream error the input is drained, unless cancelled.
		first = ctx.Err()
	}
	return first
}

type streamWorker struct {
	client  grantlinev1connect.IngestServiceClient
	cfg     StreamOptions
	in      <-chan *Batch
	onAck   AckFunc
	pending []*Batch // unacknowledged batches from a failed stream, by seq
}

func (s *streamWorker) run(ctx context.Context) error {
	failures := 0
	var firstFailure time.Time
	for {
		progress, err := s.once(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if len(s.pending) == 0 && retryable(err) {
			// The server ended the stream with every batch acknowledged:
			// its idle timeout or the stream's maximum lifetime, or a
			// restart between batches. Nothing is lost and nothing waits,
			// so it is not a failure: the next call opens a new stream
			// only when the next batch arrives, so a feed silent for
			// hours reconnects once, not every idle timeout.
			failures = 0
			continue
		}
		if progress {
			failures = 0
		}
		failures++
		if failures == 1 {
			firstFailure = time.Now()
		}
		if !retryable(err) || failures > s.cfg.Retries {
			return err
		}
		wait := retryDelay(err, failures)
		if s.cfg.RetryFor > 0 && time.Since(firstFailure)+wait > s.cfg.RetryFor {
			return err
		}
		if s.cfg.Notify != nil {
			bound := ""
			if s.cfg.RetryFor > 0 {
				bound = fmt.Sprintf(", giving up %s after the first failure", s.cfg.RetryFor)
			}
			s.cfg.Notify(fmt.Sprintf("stream failed (%v); retrying in %s (retry %d of %d%s)", err, wait, failures, s.cfg.Retries, bound))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

type inflight struct {
	b    *Batch
	sent time.Time
}

// once runs one AppendStream call until the input is drained and acked, or
// the stream fails. progress reports whether any batch was acknowledged.
// With no batch left over from a failed stream, it opens the stream only
// once the next batch arrives (and returns nil at once if the input ends
// first), so that a silent feed holds no stream open for the server to
// close as idle.
func (s *streamWorker) once(ctx context.Context) (progress bool, err error) {
	var first *Batch
	if len(s.pending) == 0 {
		select {
		case b, more := <-s.in:
			if !more {
				return false, nil
			}
			first = b
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream := s.client.AppendStream(ctx)

	var mu sync.Mutex
	open := make(map[uint64]inflight)
	slots := make(chan struct{}, s.cfg.Window)
	recvDone := make(chan struct{})
	var recvErr error
	var acked atomic.Bool

	go func() {
		defer close(recvDone)
		for {
			resp, err := stream.Receive()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					recvErr = err
				}
				return
			}
			mu.Lock()
			f, ok := open[resp.GetSeq()]
			delete(open, resp.GetSeq())
			mu.Unlock()
			if !ok {
				recvErr = connect.NewError(connect.CodeInternal, fmt.Errorf("server acknowledged unknown batch %d", resp.GetSeq()))
				return
			}
			if len(resp.GetResults()) != f.b.Len() {
				recvErr = connect.NewError(connect.CodeInternal, fmt.Errorf("batch from %s: server returned %d results for %d events", f.b.Where, len(resp.GetResults()), f.b.Len()))
				return
			}
			acked.Store(true)
			s.onAck(f.b, resp, time.Since(f.sent))
			<-slots
		}
	}()

	// send one batch; false when the stream is finished.
	send := func(b *Batch) bool {
		mu.Lock()
		open[b.Seq] = inflight{b: b}
		mu.Unlock()
		select {
		case slots <- struct{}{}:
		case <-recvDone:
			return false
		}
		mu.Lock()
		open[b.Seq] = inflight{b: b, sent: time.Now()}
		mu.Unlock()
		// A failed Send means the stream ended; Receive has the reason.
		return stream.Send(b.request()) == nil
	}

	ok := true
	pending := s.pending
	if first != nil {
		pending = []*Batch{first}
	}
	s.pending = nil
	for i, b := range pending {
		if ok = send(b); !ok {
			s.pending = append(s.pending, pending[i+1:]...) // not sent: keep for the next attempt
			break
		}
	}
	drained := false
	for ok && !drained {
		select {
		case b, more := <-s.in:
			if !more {
				drained = true
				break
			}
			ok = send(b)
		case <-recvDone:
			ok = false
		case <-ctx.Done():
			ok = false
		}
	}
	if ok {
		// Everything is sent: half-close and wait for the last acks.
		_ = stream.CloseRequest()
	}
	select {
	case <-recvDone:
	case <-ctx.Done():
		cancel()
		<-recvDone
	}
	_ = stream.CloseResponse()

	mu.Lock()
	for _, f := range open {
		s.pending = append(s.pending, f.b)
	}
	mu.Unlock()
	sortBatches(s.pending)
	// Batches not yet picked up by a stream stay in the channel for others.
	if recvErr != nil {
		return acked.Load(), recvErr
	}
	if err := ctx.Err(); err != nil && len(s.pending) > 0 {
		return acked.Load(), err
	}
	if len(s.pending) > 0 {
		return acked.Load(), connect.NewError(connect.CodeUnavailable, fmt.Errorf("server closed the stream with %d batch(es) unacknowledged", len(s.pending)))
	}
	if !drained {
		return acked.Load(), connect.NewError(connect.CodeUnavailable, errors.New("server closed the stream before the input was sent"))
	}
	return acked.Load(), nil
}

func sortBatches(bs []*Batch) {
	for i := 1; i < len(bs); i++ {
		for j := i; j > 0 && bs[j].Seq < bs[j-1].Seq; j-- {
			bs[j], bs[j-1] = bs[j-1], bs[j]
		}
	}
}

// retryable reports whether a stream failure may succeed when tried again:
// the server pushed back or was unreachable, or the connection broke (a
// reset reads as Canceled, a cut message as an unexpected EOF, or, when the
// HTTP/2 connection closes under a message being read, as connect's Internal
// "protocol error: incomplete envelope"). Callers check their own context
// first, so Canceled here is not the user's.
func retryable(err error) bool {
	switch connect.CodeOf(err) {
	case connect.CodeResourceExhausted, connect.CodeUnavailable, connect.CodeAborted, connect.CodeCanceled:
		return true
	case connect.CodeInternal:
		if strings.Contains(err.Error(), "protocol error: incomplete envelope") {
			return true
		}
	}
	return errors.Is(err, io.ErrUnexpectedEOF)
}

// retryDelay honours a server retry hint (a google.rpc.RetryInfo detail, or
// Retry-After-Ms or Retry-After metadata) and otherwise backs off exponentially from
// 100 ms to 5 s.
func retryDelay(err error, attempt int) time.Duration {
	if hint, ok := retryHint(err); ok {
		return min(hint, 30*time.Second)
	}
	d := 100 * time.Millisecond << min(attempt-1, 6)
	return min(d, 5*time.Second)
}

func retryHint(err error) (time.Duration, bool) {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return 0, false
	}
	for _, d := range ce.Details() {
		v, derr := d.Value()
		if derr != nil {
			continue
		}
		if ri, ok := v.(*errdetails.RetryInfo); ok && ri.GetRetryDelay() != nil {
			return ri.GetRetryDelay().AsDuration(), true
		}
	}
	if s := ce.Meta().Get(RetryAfterKey); s != "" {
		if ms, perr := strconv.ParseInt(s, 10, 64); perr == nil && ms >= 0 {
			return time.Duration(ms) * time.Millisecond, true
		}
	}
	if s := ce.Meta().Get("Retry-After"); s != "" {
		if secs, perr := strconv.ParseFloat(s, 64); perr == nil && secs >= 0 {
			return time.Duration(secs * float64(time.Second)), true
		}
	}
	return 0, false
}
