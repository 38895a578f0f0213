package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/grantline/grantline/ingest/client"
	"github.com/grantline/grantline/ingest/source"
	"github.com/grantline/grantline/internal/textsafe"
	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
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
	defaultWindow      = 8 // batches in flight per stream
	defaultRetryFor    = 15 * time.Second
	maxShownBadLines   = 10
)

func runAppendCmd(ctx context.Context, env *cmdEnv, args []string) error {
	c := commands["append"]
	fs := newFlagSet(env, c)
	var cf clientFlags
	cf.register(fs, env)
	cfg := streamConfig{}
	fs.IntVar(&cfg.batch, "batch", defaultAppendBatch, "events per AppendStream message")
	fs.IntVar(&cfg.Streams, "streams", 1, "concurrent AppendStream streams")
	fs.IntVar(&cfg.Window, "window", defaultWindow, "batches in flight per stream before waiting for an acknowledgement")
	fs.IntVar(&cfg.Retries, "retries", 8, "consecutive retries of a stream refused with ResourceExhausted or Unavailable before giving up")
	fs.DurationVar(&cfg.RetryFor, "retry-for", defaultRetryFor, "give up when the server has been unreachable or refusing with ResourceExhausted for this long")
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
	if total == 0 {
		names := make([]string, len(inputs))
		for i, in := range inputs {
			names[i] = in.name
		}
		return &exitError{code: 1, msg: fmt.Sprintf("no events in %s (empty, or only blank lines); nothing was sent", strings.Join(names, ", "))}
	}

	// Pass 2: stream the events.
	batches := make(chan *client.Batch, cfg.Streams*cfg.Window)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	readErr := make(chan error, 1)
	go func() {
		defer close(batches)
		readErr <- produceBatches(ctx, inputs, cfg.batch, batches)
	}()

	var st client.Stats
	prog := newProgress(env.stderr, total, *quiet)
	var notifyMu sync.Mutex
	cfg.Notify = func(msg string) {
		notifyMu.Lock()
		defer notifyMu.Unlock()
		fmt.Fprintf(env.stderr, "grantline append: %s\n", msg)
	}
	var conflictsMu sync.Mutex
	conflicts := map[uint64][]client.Conflict{} // by batch seq
	err = client.AppendStream(ctx, cl.Ingest(), cfg.StreamOptions, batches, func(b *client.Batch, resp *pb.AppendStreamResponse, _ time.Duration) {
		st.Add(resp)
		if c := client.Conflicts(b, resp); len(c) > 0 {
			conflictsMu.Lock()
			conflicts[b.Seq] = c
			conflictsMu.Unlock()
		}
		prog.set(st.Acked.Load())
	})
	prog.done()
	cancel()
	if rerr := <-readErr; rerr != nil && !errors.Is(rerr, context.Canceled) {
		return rerr
	}
	acked := st.Acked.Load()
	nconflict := st.Conflict.Load()
	// The tree size is known only from an acknowledgement: print no
	// summary (and no size) when nothing was acknowledged.
	if acked > 0 {
		conflictNote := ""
		if nconflict > 0 {
			conflictNote = fmt.Sprintf(", %d conflicting", nconflict)
		}
		fmt.Fprintf(env.stdout, "appended %d events: %d new, %d duplicate%s (tree size %d)\n",
			acked, st.Fresh.Load(), st.Dup.Load(), conflictNote, st.TreeSize.Load())
	}
	// In input order: batches are numbered in input order.
	for _, seq := range slices.Sorted(maps.Keys(conflicts)) {
		for _, c := range conflicts[seq] {
			fmt.Fprintf(env.stderr, "%s: conflict: %s is already stored at index %d with other content; this event was not stored (send a new id for a new event)\n",
				c.Where, textsafe.Quote(c.SourceID), c.Index)
		}
	}
	if err != nil {
		lost := "nothing was appended"
		if acked > 0 {
			lost = fmt.Sprintf("%d of %d events not acknowledged", uint64(total)-acked, total)
		}
		return &exitError{code: 1, msg: fmt.Sprintf("%s: %s", lost, describeAppendError(err, cf.server, cfg))}
	}
	if acked != uint64(total) {
		return &exitError{code: 1, msg: fmt.Sprintf("%d of %d events not acknowledged", uint64(total)-acked, total)}
	}
	if nconflict > 0 {
		return &exitError{code: 1, msg: fmt.Sprintf("%d of %d events conflict with stored events (listed above) and were not stored", nconflict, total)}
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

// eachEvent reads the input from its start with client.ReadEvents.
func (in *inputFile) eachEvent(fn func(line int, ev *pb.Event, lerr error) error) error {
	r, err := in.rewind()
	if err != nil {
		return err
	}
	if in.format != nil {
		return in.eachRecordEvent(r, fn)
	}
	return client.ReadEvents(in.name, r, fn)
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

// produceBatches reads every input again and packs its events into batches
// of n events (client.Packer). It returns ctx.Err() when cancelled.
func produceBatches(ctx context.Context, inputs []*inputFile, n int, out chan<- *client.Batch) error {
	p := client.NewPacker(n, out)
	for _, in := range inputs {
		err := in.eachEvent(func(line int, ev *pb.Event, lerr error) error {
			if lerr != nil {
				return fmt.Errorf("input changed since it was checked: %w", lerr)
			}
			return p.Add(ctx, fmt.Sprintf("%s:%d", in.name, line), ev)
		})
		if err != nil {
			return err
		}
	}
	return p.Flush(ctx)
}

// streamConfig is what the append and bench flags set: the batch size and
// the client's stream options.
type streamConfig struct {
	batch int // events per message
	client.StreamOptions
}

func (c streamConfig) check() error {
	switch {
	case c.batch < 1 || c.batch > event.MaxBatchEvents:
		return fmt.Errorf("--batch %d: want 1..%d (the server's limit per message)", c.batch, event.MaxBatchEvents)
	case c.Streams < 1 || c.Streams > 256:
		return fmt.Errorf("--streams %d: want 1..256", c.Streams)
	case c.Window < 1 || c.Window > 1024:
		return fmt.Errorf("--window %d: want 1..1024", c.Window)
	case c.Retries < 0:
		return fmt.Errorf("--retries %d: want 0 or more", c.Retries)
	case c.RetryFor < 0:
		return fmt.Errorf("--retry-for %s: want 0 (no time bound) or more", c.RetryFor)
	}
	return nil
}

// describeAppendError says why an append stream failed, in the words of
// the usual causes: an unreachable server (after retrying for how long), a
// refused token, a token that may not append these events, input the server
// refused, or retries used up.
func describeAppendError(err error, server string, cfg streamConfig) string {
	// msg is "code: message", the code named once.
	msg := err.Error()
	var ce *connect.Error
	if errors.As(err, &ce) {
		code := ce.Code().String()
		msg = code + ": " + strings.TrimPrefix(ce.Message(), code+": ")
	}
	switch code := connect.CodeOf(err); {
	case code == connect.CodeUnauthenticated:
		return fmt.Sprintf("the server at %s refused the token (%s); check --token or GRANTLINE_TOKEN", server, msg)
	case code == connect.CodePermissionDenied:
		return fmt.Sprintf("the server at %s refused these events for this token (%s); a source token may append only the source.system it is named after, an auditor token none", server, msg)
	case code == connect.CodeInvalidArgument:
		return fmt.Sprintf("the server at %s refused the input (%s); fix it and run again", server, msg)
	case unreachable(err):
		return fmt.Sprintf("server unreachable at %s (%s); gave up after retrying for up to %s (--retry-for, --retries); is grantline serve running there?", server, msg, cfg.RetryFor)
	case code == connect.CodeResourceExhausted || code == connect.CodeUnavailable:
		return fmt.Sprintf("%s; gave up after retrying for up to %s (--retry-for, --retries)", msg, cfg.RetryFor)
	}
	return describeRPCError(err)
}

// unreachable reports whether err is a failure to reach the server at all:
// no connection (refused, no route, timeout) or an unknown host name.
func unreachable(err error) bool {
	var op *net.OpError
	var dns *net.DNSError
	return errors.As(err, &dns) || errors.As(err, &op) && op.Op == "dial"
}

// describeRPCError renders a Connect error with a hint for the usual causes.
func describeRPCError(err error) string {
	// The server's message often starts with its sentinel, which may be the
	// code's own name ("unauthenticated: unauthenticated: unknown token").
	var ce *connect.Error
	if errors.As(err, &ce) {
		if code := ce.Code().String(); strings.HasPrefix(ce.Message(), code+": ") {
			err = connect.NewError(ce.Code(), errors.New(strings.TrimPrefix(ce.Message(), code+": ")))
		}
	}
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
