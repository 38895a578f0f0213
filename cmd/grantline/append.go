package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/grantline/grantline/ingest"
	"github.com/grantline/grantline/ingest/source"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/proto/gen/grantline/v1/grantlinev1connect"
)

func init() {
	register(&command{
		name:    "append",
		usage:   "[--server URL --token T] [--batch N] [--streams K] [--format NAME --source SYSTEM] FILE|- ...",
		summary: "stream events (JSON lines, or vendor records with --format) to a server over AppendStream and report what was stored",
		run:     runAppendCmd,
	})
}

const (
	defaultAppendBatch = 1000
	defaultWindow      = 8       // batches in flight per stream
	maxLineBytes       = 1 << 20 // one JSON line; events are at most 32 KiB once encoded
	maxShownBadLines   = 10
	// maxBatchBytes keeps a stream message well inside the server's limit
	// (ingest.MaxMessageBytes) whatever the events' sizes.
	maxBatchBytes = 4 << 20
)

// validateEvent is the local check run on every decoded event before anything
// is sent: the server's own validation (ingest.ValidateEvent), reported as
// "field x.y: problem".
func validateEvent(ev *pb.Event) error {
	err := ingest.ValidateEvent(ev)
	var fe *ingest.FieldError
	if errors.As(err, &fe) {
		return fmt.Errorf("field %s: %s", fe.Path, fe.Msg)
	}
	return err
}

func runAppendCmd(ctx context.Context, env *cmdEnv, args []string) error {
	c := commands["append"]
	fs := newFlagSet(env, c)
	var cf clientFlags
	cf.register(fs, env)
	cfg := streamConfig{}
	fs.IntVar(&cfg.batch, "batch", defaultAppendBatch, "events per AppendStream message")
	fs.IntVar(&cfg.streams, "streams", 1, "concurrent AppendStream streams")
	fs.IntVar(&cfg.window, "window", defaultWindow, "batches in flight per stream before waiting for an acknowledgement")
	fs.IntVar(&cfg.retries, "retries", 8, "consecutive retries of a stream refused with ResourceExhausted or Unavailable before giving up")
	quiet := fs.Bool("quiet", false, "no progress display even on a terminal")
	formatName := fs.String("format", "", "read vendor records of this format (grantline adapters lists them; docs/sources.md) instead of Grantline JSON lines")
	system := fs.String("source", "", "with --format: the source.system of every event made (the name your token may send)")
	files, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	format, err := sourceFormat(*formatName, *system)
	if err != nil {
		return err
	}
	if len(files) == 0 {
		fs.Usage()
		return &exitError{code: 2, msg: "no input: name one or more JSON-lines files, or - for stdin"}
	}
	if err := cfg.check(); err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	cl, err := cf.dial()
	if err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}

	// Pass 1: decode and validate everything; send nothing if any line is bad.
	inputs := make([]*inputFile, 0, len(files))
	stdinUsed := false
	for _, name := range files {
		in, err := openInput(name, env.stdin, &stdinUsed)
		if err != nil {
			return err
		}
		in.format, in.system = format, *system
		inputs = append(inputs, in)
	}
	defer func() {
		for _, in := range inputs {
			in.close()
		}
	}()
	var total int
	bad := false
	for _, in := range inputs {
		n, lerrs, nbad, err := in.check()
		if err != nil {
			return err
		}
		in.reportRecords(env.stderr)
		total += n
		if nbad > 0 {
			bad = true
			for _, le := range lerrs {
				fmt.Fprintln(env.stderr, le)
			}
			if nbad > len(lerrs) {
				fmt.Fprintf(env.stderr, "... and %d more\n", nbad-len(lerrs))
			}
			fmt.Fprintf(env.stderr, "%s: %d bad line(s) of %d; fix them and run again (nothing was sent)\n", in.name, nbad, n+nbad)
		}
	}
	if bad {
		return &exitError{code: 1, msg: "refusing to send: input has bad lines"}
	}

	// Pass 2: stream the events.
	batches := make(chan *batch, cfg.streams*cfg.window)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	readErr := make(chan error, 1)
	go func() {
		defer close(batches)
		readErr <- produceBatches(ctx, inputs, cfg.batch, batches)
	}()

	var st appendStats
	prog := newProgress(env.stderr, total, *quiet)
	var notifyMu sync.Mutex
	cfg.notify = func(msg string) {
		notifyMu.Lock()
		defer notifyMu.Unlock()
		fmt.Fprintf(env.stderr, "grantline append: %s\n", msg)
	}
	err = sendBatches(ctx, cl.ingest, cfg, batches, func(b *batch, resp *pb.AppendStreamResponse, _ time.Duration) {
		st.add(resp)
		prog.set(st.acked.Load())
	})
	prog.done()
	cancel()
	if rerr := <-readErr; rerr != nil && !errors.Is(rerr, context.Canceled) {
		return rerr
	}
	acked := st.acked.Load()
	fmt.Fprintf(env.stdout, "appended %d events: %d new, %d duplicate (tree size %d)\n",
		acked, st.fresh.Load(), st.dup.Load(), st.treeSize.Load())
	if err != nil {
		return &exitError{code: 1, msg: fmt.Sprintf("%d of %d events not acknowledged: %v", uint64(total)-acked, total, describeRPCError(err))}
	}
	if acked != uint64(total) {
		return &exitError{code: 1, msg: fmt.Sprintf("%d of %d events not acknowledged", uint64(total)-acked, total)}
	}
	return nil
}

// parseFlags parses fs and maps -h to errFlagHelp.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return errFlagHelp
		}
		return &exitError{code: 2}
	}
	return nil
}

// appendStats counts acknowledged events; safe for concurrent use.
type appendStats struct {
	acked, fresh, dup, treeSize atomic.Uint64
}

func (s *appendStats) add(resp *pb.AppendStreamResponse) {
	var d uint64
	for _, r := range resp.GetResults() {
		if r.GetDuplicate() {
			d++
		}
	}
	n := uint64(len(resp.GetResults()))
	s.acked.Add(n)
	s.dup.Add(d)
	s.fresh.Add(n - d)
	for {
		cur := s.treeSize.Load()
		if resp.GetTreeSize() <= cur || s.treeSize.CompareAndSwap(cur, resp.GetTreeSize()) {
			return
		}
	}
}

// inputFile is one JSON-lines input: a regular file read twice (check, then
// send) or stdin held in memory.
type inputFile struct {
	name string
	f    *os.File      // nil for stdin
	mem  *bytes.Reader // stdin contents
	// format, when set, reads vendor records (append_format.go) whose
	// events get source.system = system.
	format            *source.Format
	system            string
	records, unmapped int // of the last read, for --format inputs
}

func openInput(name string, stdin io.Reader, stdinUsed *bool) (*inputFile, error) {
	if name == "-" {
		if *stdinUsed {
			return nil, &exitError{code: 2, msg: "- (stdin) named twice"}
		}
		*stdinUsed = true
		data, err := io.ReadAll(stdin)
		if err != nil {
			return nil, fmt.Errorf("reading stdin: %w", err)
		}
		return &inputFile{name: "-", mem: bytes.NewReader(data)}, nil
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("opening input: %w", err)
	}
	return &inputFile{name: name, f: f}, nil
}

func (in *inputFile) close() {
	if in.f != nil {
		in.f.Close()
	}
}

func (in *inputFile) rewind() (io.Reader, error) {
	if in.f == nil {
		_, err := in.mem.Seek(0, io.SeekStart)
		return in.mem, err
	}
	if _, err := in.f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("%s: rewinding: %w (pipe it through - instead)", in.name, err)
	}
	return in.f, nil
}

// eachEvent calls fn for every non-blank line, decoded, with its 1-based
// line number; decode and validation problems arrive as lerr.
func (in *inputFile) eachEvent(fn func(line int, ev *pb.Event, lerr error) error) error {
	r, err := in.rewind()
	if err != nil {
		return err
	}
	if in.format != nil {
		return in.eachRecordEvent(r, fn)
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxLineBytes)
	line := 0
	for sc.Scan() {
		line++
		text := bytes.TrimSpace(sc.Bytes())
		if len(text) == 0 {
			continue
		}
		ev, lerr := decodeEventLine(text)
		if lerr != nil {
			lerr = fmt.Errorf("%s:%d: %w", in.name, line, lerr)
		}
		if err := fn(line, ev, lerr); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("%s:%d: line longer than %d bytes: one event per line, each at most 32 KiB encoded", in.name, line+1, maxLineBytes)
		}
		return fmt.Errorf("reading %s: %w", in.name, err)
	}
	return nil
}

// check decodes every line and returns the number of good events, the first
// few line errors and the number of bad lines.
func (in *inputFile) check() (good int, shown []error, bad int, err error) {
	err = in.eachEvent(func(_ int, _ *pb.Event, lerr error) error {
		if lerr != nil {
			bad++
			if len(shown) < maxShownBadLines {
				shown = append(shown, lerr)
			}
			return nil
		}
		good++
		return nil
	})
	return good, shown, bad, err
}

var protojsonPos = regexp.MustCompile(`^proto:[\s\x{00a0}]*(?:syntax error[\s\x{00a0}]*)?\(line (\d+):(\d+)\):[\s\x{00a0}]*`)

// decodeEventLine decodes one protojson event and validates it locally. Its
// errors read "field x.y: problem (byte N)" or "byte N: problem".
func decodeEventLine(text []byte) (*pb.Event, error) {
	ev := &pb.Event{}
	if err := (protojson.UnmarshalOptions{}).Unmarshal(text, ev); err != nil {
		msg := err.Error()
		// protojson's messages carry "(line 1:COL)"; turn the column into a
		// byte offset and a field path the user can find.
		m := protojsonPos.FindStringSubmatch(msg)
		if m == nil {
			msg = strings.TrimLeft(strings.TrimPrefix(msg, "proto:"), " \u00a0")
			return nil, fmt.Errorf("byte %d: %s: is the JSON object complete and on one line?", len(text), msg)
		}
		problem := msg[len(m[0]):]
		col, _ := strconv.Atoi(m[2])
		off := runeColumnToByte(text, col)
		if path := jsonPathAt(text, off); path != "" {
			return nil, fmt.Errorf("field %s: %s (byte %d)", path, problem, off+1)
		}
		return nil, fmt.Errorf("byte %d: %s", off+1, problem)
	}
	if err := validateEvent(ev); err != nil {
		return nil, err
	}
	return ev, nil
}

// runeColumnToByte converts a 1-based rune column into a 0-based byte offset.
func runeColumnToByte(b []byte, col int) int {
	off := 0
	for i := 1; i < col && off < len(b); i++ {
		_, n := utf8.DecodeRune(b[off:])
		off += n
	}
	return off
}

// jsonPathAt returns the dotted field path (with [i] for array elements) of
// the JSON token at byte offset off, or "" at the top level or when the
// line does not tokenise that far.
func jsonPathAt(b []byte, off int) string {
	type frame struct {
		obj       bool
		key       string
		expectKey bool
		idx       int
	}
	var stack []*frame
	path := func() string {
		var sb strings.Builder
		for _, f := range stack {
			if f.obj {
				if f.key == "" {
					continue
				}
				if sb.Len() > 0 {
					sb.WriteByte('.')
				}
				sb.WriteString(f.key)
			} else {
				fmt.Fprintf(&sb, "[%d]", f.idx)
			}
		}
		return sb.String()
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	for {
		tok, err := dec.Token()
		if err != nil {
			return path()
		}
		end := int(dec.InputOffset())
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.obj && top.expectKey {
			if d, ok := tok.(json.Delim); ok && d == '}' {
				stack = stack[:len(stack)-1]
				if len(stack) > 0 && stack[len(stack)-1].obj {
					stack[len(stack)-1].expectKey = true
				}
				continue
			}
			top.key, _ = tok.(string)
			top.expectKey = false
			if off < end {
				return path()
			}
			continue
		}
		if top != nil && !top.obj {
			if d, ok := tok.(json.Delim); !ok || d != ']' {
				top.idx++
			}
		}
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{':
				if off < end {
					return path()
				}
				stack = append(stack, &frame{obj: true, expectKey: true})
			case '[':
				if off < end {
					return path()
				}
				stack = append(stack, &frame{idx: -1})
			case ']', '}':
				stack = stack[:len(stack)-1]
				if len(stack) > 0 && stack[len(stack)-1].obj {
					stack[len(stack)-1].expectKey = true
				}
			}
			continue
		}
		if off < end {
			return path()
		}
		if top != nil && top.obj {
			top.expectKey = true
		}
	}
}

// batch is one AppendStream message's worth of events.
type batch struct {
	seq    uint64
	events []*pb.Event
	where  string // "FILE:LINE" of the first event, for error messages
}

// produceBatches reads every input again and sends its events in batches of
// n events or maxBatchBytes, whichever comes first. It returns ctx.Err() when cancelled.
func produceBatches(ctx context.Context, inputs []*inputFile, n int, out chan<- *batch) error {
	var seq uint64
	bytes := 0
	cur := &batch{seq: seq}
	flush := func() error {
		if len(cur.events) == 0 {
			return nil
		}
		select {
		case out <- cur:
		case <-ctx.Done():
			return ctx.Err()
		}
		seq++
		cur = &batch{seq: seq, events: make([]*pb.Event, 0, n)}
		return nil
	}
	for _, in := range inputs {
		err := in.eachEvent(func(line int, ev *pb.Event, lerr error) error {
			if lerr != nil {
				return fmt.Errorf("input changed since it was checked: %w", lerr)
			}
			if len(cur.events) == 0 {
				cur.where = fmt.Sprintf("%s:%d", in.name, line)
			}
			cur.events = append(cur.events, ev)
			bytes += proto.Size(ev)
			if len(cur.events) >= n || bytes >= maxBatchBytes {
				bytes = 0
				return flush()
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return flush()
}

// streamConfig tunes sendBatches.
type streamConfig struct {
	batch   int // events per message
	streams int // concurrent streams
	window  int // unacknowledged messages per stream
	retries int // consecutive failed attempts per stream before giving up
	// notify, if set, hears about each retry; it may be called concurrently.
	notify func(msg string)
}

func (c streamConfig) check() error {
	switch {
	case c.batch < 1 || c.batch > ingest.MaxBatchEvents:
		return fmt.Errorf("--batch %d: want 1..%d (the server's limit per message)", c.batch, ingest.MaxBatchEvents)
	case c.streams < 1 || c.streams > 256:
		return fmt.Errorf("--streams %d: want 1..256", c.streams)
	case c.window < 1 || c.window > 1024:
		return fmt.Errorf("--window %d: want 1..1024", c.window)
	case c.retries < 0:
		return fmt.Errorf("--retries %d: want 0 or more", c.retries)
	}
	return nil
}

// ackFunc is called once per acknowledged batch with the ack latency (from
// its last send to its acknowledgement). It may be called concurrently.
type ackFunc func(b *batch, resp *pb.AppendStreamResponse, latency time.Duration)

// sendBatches streams every batch from in over cfg.streams concurrent
// AppendStream calls, keeping up to cfg.window batches unacknowledged per
// stream. A stream refused with ResourceExhausted or Unavailable is reopened
// after a backoff (or the server's retry hint) and its unacknowledged batches
// are sent again; the ledger's idempotency makes that safe (a batch stored
// before its ack was lost comes back as duplicates). It returns nil only when
// every batch was acknowledged.
func sendBatches(ctx context.Context, client grantlinev1connect.IngestServiceClient, cfg streamConfig, in <-chan *batch, onAck ackFunc) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, cfg.streams)
	var wg sync.WaitGroup
	for range cfg.streams {
		wg.Go(func() {
			s := &streamWorker{client: client, cfg: cfg, in: in, onAck: onAck}
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
	cfg     streamConfig
	in      <-chan *batch
	onAck   ackFunc
	pending []*batch // unacknowledged batches from a failed stream, by seq
}

func (s *streamWorker) run(ctx context.Context) error {
	failures := 0
	for {
		progress, err := s.once(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if progress {
			failures = 0
		}
		failures++
		if !retryable(err) || failures > s.cfg.retries {
			return err
		}
		wait := retryDelay(err, failures)
		if s.cfg.notify != nil {
			s.cfg.notify(fmt.Sprintf("stream failed (%v); retrying in %s (retry %d of %d)", err, wait, failures, s.cfg.retries))
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
	b    *batch
	sent time.Time
}

// once runs one AppendStream call until the input is drained and acked, or
// the stream fails. progress reports whether any batch was acknowledged.
func (s *streamWorker) once(ctx context.Context) (progress bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream := s.client.AppendStream(ctx)

	var mu sync.Mutex
	open := make(map[uint64]inflight)
	slots := make(chan struct{}, s.cfg.window)
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
			if len(resp.GetResults()) != len(f.b.events) {
				recvErr = connect.NewError(connect.CodeInternal, fmt.Errorf("batch from %s: server returned %d results for %d events", f.b.where, len(resp.GetResults()), len(f.b.events)))
				return
			}
			acked.Store(true)
			s.onAck(f.b, resp, time.Since(f.sent))
			<-slots
		}
	}()

	// send one batch; false when the stream is finished.
	send := func(b *batch) bool {
		mu.Lock()
		open[b.seq] = inflight{b: b}
		mu.Unlock()
		select {
		case slots <- struct{}{}:
		case <-recvDone:
			return false
		}
		mu.Lock()
		open[b.seq] = inflight{b: b, sent: time.Now()}
		mu.Unlock()
		// A failed Send means the stream ended; Receive has the reason.
		return stream.Send(&pb.AppendStreamRequest{Seq: b.seq, Events: b.events}) == nil
	}

	ok := true
	pending := s.pending
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

func sortBatches(bs []*batch) {
	for i := 1; i < len(bs); i++ {
		for j := i; j > 0 && bs[j].seq < bs[j-1].seq; j-- {
			bs[j], bs[j-1] = bs[j-1], bs[j]
		}
	}
}

// retryable reports whether a stream failure may succeed when tried again:
// the server pushed back or was unreachable, or the connection broke (a
// reset reads as Canceled, a cut message as an unexpected EOF). Callers
// check their own context first, so Canceled here is not the user's.
func retryable(err error) bool {
	switch connect.CodeOf(err) {
	case connect.CodeResourceExhausted, connect.CodeUnavailable, connect.CodeAborted, connect.CodeCanceled:
		return true
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
	if s := ce.Meta().Get(ingest.RetryAfterKey); s != "" {
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

// describeRPCError renders a Connect error with a hint for the usual causes.
func describeRPCError(err error) string {
	switch connect.CodeOf(err) {
	case connect.CodeUnauthenticated:
		return err.Error() + " (check --token or GRANTLINE_TOKEN)"
	case connect.CodePermissionDenied:
		return err.Error() + " (the token's role may not do this, or a source token sent another source.system)"
	case connect.CodeUnavailable:
		return err.Error() + " (is the server running at --server?)"
	}
	return err.Error()
}

// progress draws "appended N/T events" on a terminal, at most 10 times a second.
type progress struct {
	w      io.Writer
	total  int
	on     bool
	mu     sync.Mutex
	last   time.Time
	start  time.Time
	drawn  bool
	latest uint64
}

func newProgress(w io.Writer, total int, quiet bool) *progress {
	return &progress{w: w, total: total, on: !quiet && isTerminal(w), start: time.Now()}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func (p *progress) set(n uint64) {
	if !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.latest = n
	if time.Since(p.last) < 100*time.Millisecond {
		return
	}
	p.last = time.Now()
	p.draw()
}

func (p *progress) draw() {
	rate := float64(p.latest) / max(time.Since(p.start).Seconds(), 1e-3)
	pct := 100.0
	if p.total > 0 {
		pct = 100 * float64(p.latest) / float64(p.total)
	}
	fmt.Fprintf(p.w, "\rappended %d/%d events (%.0f%%, %.0f/s)   ", p.latest, p.total, pct, rate)
	p.drawn = true
}

func (p *progress) done() {
	if !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		p.draw()
		fmt.Fprintln(p.w)
	}
}
