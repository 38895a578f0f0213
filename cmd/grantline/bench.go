package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/mod/sumdb/note"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/ingest/client"
	"github.com/grantline/grantline/internal/cputime"
	"github.com/grantline/grantline/internal/datadir"
	"github.com/grantline/grantline/internal/server"
	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/proto/gen/grantline/v1/grantlinev1connect"
)

func init() {
	register(&command{
		name: "bench",
		usage: "[--server URL --token T | --data DIR] [--streams K] [--window W] [--events N | --duration D] [--batch B] " +
			"[--event-size 500] [--soak D] [--verify [--log-key FILE]]",
		summary: "load generator: K concurrent AppendStream clients; reports events/s and ack latency p50/p99",
		run:     runBenchCmd,
	})
}

// benchServer starts the in-process server bench uses when no --server is
// given, on a free loopback port, with a memory budget as serve's
// --memory-budget (0: none, the default of bench, unlike serve's).
func benchServer(ctx context.Context, dataDir string, memoryBudget int64) (*server.Server, error) {
	return server.Start(ctx, server.Config{DataDir: dataDir, Listen: "127.0.0.1:0", MemoryBudget: memoryBudget})
}

// ledgerSummary says where the server's time went, from the ledger's counters.
func ledgerSummary(st ledger.Stats, elapsed time.Duration) string {
	b := max(st.Batches, 1)
	// Integrating is a batch's build and durable commit, up to its answer;
	// the index commit (a separate index store) follows off the ack path.
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b) }
	return fmt.Sprintf("server: %d ledger batches of %.0f events on average; %.1f ms per batch integrating (build to ack), of which %.1f ms in the durable store commit; %.1f ms per batch in index commits after the ack, %.1f ms waiting for them (batches overlap: %.1fs integrating in a %.1fs run); %d pushbacks",
		st.Batches, float64(st.BatchEvents)/float64(b), ms(st.CommitTime), ms(st.StoreTime), ms(st.IndexTime), ms(st.IndexWait),
		st.CommitTime.Seconds(), elapsed.Seconds(), st.Pushbacks)
}

type benchConfig struct {
	streamConfig
	events    uint64
	duration  time.Duration
	eventSize int
	runID     string
	verify    bool
	soak      time.Duration
	// settle, when set (an in-process server), returns once the server's
	// indexes cover every acknowledged event: appends are answered after
	// the durable commit and the index commit follows, so the run's time
	// ends after it and the index work counts.
	settle func(context.Context) error
}

func runBenchCmd(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, commands["bench"])
	var cf clientFlags
	cf.register(fs, env)
	cfg := benchConfig{}
	fs.IntVar(&cfg.Streams, "streams", 2, "concurrent AppendStream clients")
	fs.Uint64Var(&cfg.events, "events", 200000, "events to append (ignored with --duration or --soak)")
	fs.DurationVar(&cfg.duration, "duration", 0, "append for this long instead of a fixed number of events")
	fs.IntVar(&cfg.batch, "batch", 1000, "events per AppendStream message")
	// One batch in flight per stream: the run is CPU-bound on two cores,
	// so a deeper window adds queueing (ack latency is events in flight
	// over throughput) without adding throughput (docs/BENCHMARKS.md,
	// "End to end").
	fs.IntVar(&cfg.Window, "window", 1, "unacknowledged batches per stream")
	fs.IntVar(&cfg.Retries, "retries", 20, "consecutive retries per stream (ResourceExhausted, Unavailable)")
	fs.IntVar(&cfg.eventSize, "event-size", 500, "approximate encoded size of each event in bytes")
	fs.StringVar(&cfg.runID, "run-id", "", "prefix of the event ids (default: fixed for an in-process server, time-based otherwise)")
	fs.DurationVar(&cfg.soak, "soak", 0, "sustained load for this long, reporting every 10s (implies --duration)")
	fs.BoolVar(&cfg.verify, "verify", false, "afterwards fetch the whole log over the tiles path and recompute every tile and the root")
	keyFile := fs.String("log-key", "", "with --verify against --server: the log's verifier key (DATA/keys/log.vkey)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the run (client and in-process server) to this file")
	dataDir := fs.String("data", "", "in-process server: data directory (default: a temporary one, removed afterwards)")
	memBudget := fs.String("memory-budget", "0", "in-process server: serve's --memory-budget (e.g. 512MiB, serve's default; 0: none): the Go memory limit and the store's caches")
	rest, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return &exitError{code: 2, msg: fmt.Sprintf("unexpected argument %q", rest[0])}
	}
	if cfg.soak > 0 {
		cfg.duration = cfg.soak
	}
	if err := cfg.check(); err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	if cfg.eventSize < 200 || cfg.eventSize > 30000 {
		return &exitError{code: 2, msg: fmt.Sprintf("--event-size %d: want 200..30000", cfg.eventSize)}
	}
	if cfg.runID != "" {
		// The generator writes the run id into every event id as it is.
		if err := event.ValidateID("--run-id", cfg.runID+"-0"); err != nil {
			return &exitError{code: 2, msg: fmt.Sprintf("%v (it prefixes every event id)", err)}
		}
	}
	budget, err := parseSize(*memBudget)
	if err != nil {
		return &exitError{code: 2, msg: fmt.Sprintf("--memory-budget %q: %v", *memBudget, err)}
	}
	if budget > 0 && budget < minMemoryBudget {
		return &exitError{code: 2, msg: fmt.Sprintf("--memory-budget %s: want at least %s (or 0 for none)", *memBudget, sizeString(minMemoryBudget))}
	}
	serverSet := env.getenv("GRANTLINE_SERVER") != ""
	fs.Visit(func(f *flag.Flag) { serverSet = serverSet || f.Name == "server" })

	var v note.Verifier
	if *keyFile != "" {
		if v, err = loadLogVerifier(*keyFile); err != nil {
			return &exitError{code: 2, msg: err.Error()}
		}
	}
	var inproc *server.Server
	if !serverSet {
		dir := *dataDir
		if dir == "" {
			tmp, err := os.MkdirTemp("", "grantline-bench-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(tmp)
			dir = tmp
		}
		rs, err := benchServer(ctx, dir, budget)
		if err != nil {
			return fmt.Errorf("starting the in-process server: %w", err)
		}
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = rs.Close(sctx)
		}()
		inproc = rs
		if l := rs.Ledger(); l != nil {
			cfg.settle = l.WaitIndexed
		}
		cf.server, cf.token = rs.URL, rs.AdminToken
		if v == nil {
			if _, v, err = datadir.ReadVerifier(rs.DataDir); err != nil {
				return err
			}
		}
		if cfg.runID == "" {
			cfg.runID = "bench"
		}
		fmt.Fprintf(env.stderr, "bench: in-process server at %s, data in %s\n", rs.URL, rs.DataDir)
	}
	if cfg.runID == "" {
		cfg.runID = "bench-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	}
	cl, err := cf.dialWith(true)
	if err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	cfg.Notify = func(msg string) { fmt.Fprintf(env.stderr, "bench: %s\n", msg) }
	res, err := runBench(ctx, cl.Ingest(), cfg, env.stderr)
	if err != nil {
		return err
	}
	fmt.Fprintln(env.stdout, res)
	if inproc != nil {
		fmt.Fprintln(env.stdout, ledgerSummary(inproc.Ledger().Stats(), res.elapsed))
	}
	if !cfg.verify {
		return nil
	}
	vr, err := cl.VerifyTiles(ctx, v, res.treeSize)
	if err != nil {
		return &exitError{code: 1, msg: fmt.Sprintf("verify: %v", err)}
	}
	signed := "signature not checked (no --log-key)"
	if vr.Signed {
		signed = "checkpoint signature verified for " + vr.Origin
	}
	fmt.Fprintf(env.stdout, "verify: %d entries and %d tiles fetched and recomputed in %.2fs; root %x matches; %s\n",
		vr.Size, vr.Tiles, vr.Elapsed.Seconds(), vr.Root, signed)
	return nil
}

// benchResult is what one run measured.
type benchResult struct {
	events, dup    uint64
	batches        int
	elapsed        time.Duration
	p50, p99, pmax time.Duration
	streams, batch int
	eventSize      int
	treeSize       uint64
	cpu            time.Duration // this process's CPU time (user+sys) during the run; 0: not measured
}

func (r benchResult) rate() float64 { return float64(r.events) / r.elapsed.Seconds() }

// cpuPerEvent is the process's CPU time per acknowledged event, 0 if not
// measured.
func (r benchResult) cpuPerEvent() time.Duration {
	if r.events == 0 {
		return 0
	}
	return r.cpu / time.Duration(r.events)
}

func (r benchResult) String() string {
	s := fmt.Sprintf("bench: %d events (%d duplicate) in %.2fs over %d streams, batch %d, ~%d-byte events: %.0f events/s; ack latency per batch p50 %s p99 %s max %s; tree size %d",
		r.events, r.dup, r.elapsed.Seconds(), r.streams, r.batch, r.eventSize, r.rate(),
		r.p50.Round(100*time.Microsecond), r.p99.Round(100*time.Microsecond), r.pmax.Round(100*time.Microsecond), r.treeSize)
	if c := r.cpuPerEvent(); c > 0 {
		s += fmt.Sprintf("; CPU %.1f µs per event (this process, user+sys)", float64(c.Nanoseconds())/1000)
	}
	return s
}

// runBench appends generated events and measures throughput and per-batch
// ack latency. Progress goes to progressW every 10 s when soaking.
func runBench(ctx context.Context, svc grantlinev1connect.IngestServiceClient, cfg benchConfig, progressW io.Writer) (benchResult, error) {
	gen := newBenchGen(cfg.runID, cfg.eventSize)
	batches := make(chan *client.Batch, cfg.Streams*cfg.Window)
	// The buffers of acknowledged batches, for the generator to reuse: the
	// client is done with a batch once it is acknowledged (it keeps only
	// unacknowledged ones, to send again on a new stream).
	free := make(chan []byte, cfg.Streams*cfg.Window+1)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start, cpu0 := time.Now(), cputime.Process()
	deadline := time.Time{}
	if cfg.duration > 0 {
		deadline = start.Add(cfg.duration)
	}
	go func() {
		defer close(batches)
		var next uint64
		for seq := uint64(0); ; seq++ {
			if ctx.Err() != nil {
				return
			}
			if deadline.IsZero() && next >= cfg.events {
				return
			}
			if !deadline.IsZero() && time.Now().After(deadline) {
				return
			}
			n := uint64(cfg.batch)
			if deadline.IsZero() {
				n = min(n, cfg.events-next)
			}
			// Encoded once by the generator, sent as they are: the
			// generator shares the two cores with the server it measures.
			var buf []byte
			select {
			case buf = <-free:
			default:
				buf = make([]byte, 0, int(n)*(cfg.eventSize+64))
			}
			enc := gen.encoded(buf[:0], next, int(n))
			b := &client.Batch{Seq: seq, Encoded: enc, Count: int(n), Where: "event " + strconv.FormatUint(next, 10)}
			next += n
			select {
			case batches <- b:
			case <-ctx.Done():
				return
			}
		}
	}()

	var (
		mu   sync.Mutex
		lats []time.Duration
		st   client.Stats
	)
	stopTicker := make(chan struct{})
	if cfg.soak > 0 {
		go func() {
			t := time.NewTicker(10 * time.Second)
			defer t.Stop()
			last, lastT := uint64(0), start
			for {
				select {
				case <-stopTicker:
					return
				case now := <-t.C:
					n := st.Acked.Load()
					fmt.Fprintf(progressW, "bench: %s: %d events acknowledged, %.0f/s in the last interval\n",
						now.Sub(start).Round(time.Second), n, float64(n-last)/now.Sub(lastT).Seconds())
					last, lastT = n, now
				}
			}
		}()
	}
	err := client.AppendStream(ctx, svc, cfg.StreamOptions, batches, func(b *client.Batch, resp *pb.AppendStreamResponse, lat time.Duration) {
		st.Add(resp)
		mu.Lock()
		lats = append(lats, lat)
		mu.Unlock()
		select {
		case free <- b.Encoded:
		default:
		}
	})
	if err == nil && cfg.settle != nil {
		err = cfg.settle(ctx)
	}
	elapsed, cpu := time.Since(start), cputime.Process()-cpu0
	close(stopTicker)
	if err != nil {
		return benchResult{}, fmt.Errorf("after %d events: %s", st.Acked.Load(), describeRPCError(err))
	}
	slices.Sort(lats)
	r := benchResult{events: st.Acked.Load(), dup: st.Dup.Load(), batches: len(lats), elapsed: elapsed,
		streams: cfg.Streams, batch: cfg.batch, eventSize: cfg.eventSize, treeSize: st.TreeSize.Load(), cpu: cpu}
	if len(lats) > 0 {
		r.p50 = percentile(lats, 0.50)
		r.p99 = percentile(lats, 0.99)
		r.pmax = lats[len(lats)-1]
	}
	return r, nil
}

// percentile of sorted durations (nearest rank).
func percentile(sorted []time.Duration, p float64) time.Duration {
	i := int(p*float64(len(sorted))+0.5) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// benchGen makes deterministic events of about size bytes: event i of a run
// is always the same. The parts that repeat (subjects, entitlements, the
// actor, the padding attribute) are built once and shared by the events
// that hold them, read-only; a batch's events and their own parts come from
// a few slabs, so the generator, which shares the cores with the server it
// measures, costs little.
type benchGen struct {
	run      string
	base     time.Time
	attrs    map[string]string // nil, or the padding attribute
	actor    *pb.Identity
	subjects []*pb.Identity    // by i % len
	ents     []*pb.Entitlement // by i % len: role i%50, privileged when i%3 == 0
	enc      benchEnc          // the same parts encoded, for encoded
}

var benchTypes = []string{"access.requested", "access.approved", "grant.activated", "session.started", "session.ended", "grant.deactivated"}

const (
	benchUsers = 5000
	benchRoles = 50
)

func newBenchGen(run string, size int) *benchGen {
	g := &benchGen{run: run, base: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		actor: &pb.Identity{Id: "pam", Kind: "system"}}
	g.subjects = make([]*pb.Identity, benchUsers)
	for u := range g.subjects {
		user := "user-" + strconv.Itoa(u)
		g.subjects[u] = &pb.Identity{Id: user, Kind: "human", Display: "Bench User " + user}
	}
	g.ents = make([]*pb.Entitlement, 3*benchRoles) // i%150 fixes both i%50 and i%3
	for k := range g.ents {
		g.ents[k] = &pb.Entitlement{Id: "role-" + strconv.Itoa(k%benchRoles), Resource: "aws:account/123456789012", Privileged: k%3 == 0}
	}
	probe := g.event(123456)
	if n := size - proto.Size(probe) - 8; n > 0 { // 8: the map entry's own framing
		g.attrs = map[string]string{"pad": strings.Repeat("x", n)}
	}
	g.enc = newBenchEnc(g)
	return g
}

// event returns event i on its own.
func (g *benchGen) event(i uint64) *pb.Event { return g.batch(i, 1)[0] }

// batch returns events first to first+n-1.
func (g *benchGen) batch(first uint64, n int) []*pb.Event {
	out := make([]*pb.Event, n)
	evs := make([]pb.Event, n)
	srcs := make([]pb.Source, n)
	refs := make([]pb.Refs, n)
	times := make([]timestamppb.Timestamp, n)
	var buf []byte
	for k := range out {
		buf = g.fill(&evs[k], &times[k], &srcs[k], &refs[k], first+uint64(k), buf)
		out[k] = &evs[k]
	}
	return out
}

// encoded appends events first to first+n-1 to b encoded, as
// AppendStreamRequest events fields (client.Batch.Encoded): the bytes
// event.MarshalBatch writes for batch(first, n), i.e. the deterministic
// encoding (TestBenchGenEncoded holds it to proto.Marshal). The parts
// that repeat are encoded once (newBenchGen's enc); only the id, the
// time, the source and the refs are written per event, field by field in
// number order as the runtime writes them.
func (g *benchGen) encoded(b []byte, first uint64, n int) []byte {
	var ev []byte // one event's encoding, reused
	for k := range n {
		ev = g.appendEvent(ev[:0], first+uint64(k))
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(len(ev)))
		b = append(b, ev...)
	}
	return b
}

// appendEvent appends the encoding of event i (the Event message's
// fields, without a tag or length of its own) to b; fill builds the same
// event as a message.
func (g *benchGen) appendEvent(b []byte, i uint64) []byte {
	e := &g.enc
	// 1: id = run-i
	b = append(b, 1<<3|2)
	b = protowire.AppendVarint(b, uint64(len(g.run)+1+decimalLen(i)))
	b = strconv.AppendUint(append(append(b, g.run...), '-'), i, 10)
	// 2: type
	b = append(b, e.types[i%uint64(len(benchTypes))]...)
	// 3: time, a Timestamp: seconds (1) and nanos (2), each only if non-zero.
	ms := int64(i % (1 << 30))
	sec, nanos := g.base.Unix()+ms/1000, uint64(ms%1000)*1e6
	tlen := 0
	if sec != 0 {
		tlen += 1 + protowire.SizeVarint(uint64(sec))
	}
	if nanos != 0 {
		tlen += 1 + protowire.SizeVarint(nanos)
	}
	b = append(b, 3<<3|2, byte(tlen)) // at most 1+10+1+5 bytes: a one-byte length
	if sec != 0 {
		b = protowire.AppendVarint(append(b, 1<<3|0), uint64(sec))
	}
	if nanos != 0 {
		b = protowire.AppendVarint(append(b, 2<<3|0), nanos)
	}
	// 4: source: system (1), product (2), raw_id (5) = i
	d := decimalLen(i)
	b = append(b, 4<<3|2)
	b = protowire.AppendVarint(b, uint64(len(e.source)+2+d))
	b = append(append(b, e.source...), 5<<3|2, byte(d))
	b = strconv.AppendUint(b, i, 10)
	// 5, 6, 7: subject, actor, entitlement
	b = append(b, e.subjects[i%benchUsers]...)
	b = append(b, e.actor...)
	b = append(b, e.ents[i%uint64(len(e.ents))]...)
	// 8: refs: request (1) req-i/6, grant (2) grant-i/6, ticket (6) CHG-i
	q := i / 6
	dq := decimalLen(q)
	b = append(b, 8<<3|2)
	b = protowire.AppendVarint(b, uint64(2+len("req-")+dq+2+len("grant-")+dq+2+len("CHG-")+d))
	b = strconv.AppendUint(append(b, 1<<3|2, byte(len("req-")+dq), 'r', 'e', 'q', '-'), q, 10)
	b = strconv.AppendUint(append(b, 2<<3|2, byte(len("grant-")+dq), 'g', 'r', 'a', 'n', 't', '-'), q, 10)
	b = strconv.AppendUint(append(b, 6<<3|2, byte(len("CHG-")+d), 'C', 'H', 'G', '-'), i, 10)
	// 10 and 13: reason and the padding attribute
	return append(b, e.tail...)
}

// decimalLen is the number of decimal digits of i.
func decimalLen(i uint64) int {
	n := 1
	for ; i >= 10; i /= 10 {
		n++
	}
	return n
}

// benchEnc holds the encodings of the parts of bench events that repeat,
// each a whole field (tag, length, message): see appendEvent.
type benchEnc struct {
	types    [][]byte // field 2, by i % len(benchTypes)
	source   []byte   // the fields system and product of Source, without a tag of its own
	subjects [][]byte // field 5, by i % benchUsers
	actor    []byte   // field 6
	ents     [][]byte // field 7, by i % len(ents)
	tail     []byte   // fields 10 (reason) and 13 (the padding attribute, if any)
}

// newBenchEnc encodes g's repeating parts with the protobuf runtime
// (deterministic, so the attribute map's encoding is fixed).
func newBenchEnc(g *benchGen) benchEnc {
	field := func(build func(ev *pb.Event)) []byte {
		ev := &pb.Event{}
		build(ev)
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(ev)
		if err != nil {
			panic(fmt.Sprintf("bench: encoding a generated part: %v", err)) // ASCII strings, known fields
		}
		return b
	}
	var e benchEnc
	for _, t := range benchTypes {
		e.types = append(e.types, field(func(ev *pb.Event) { ev.Type = t }))
	}
	src := field(func(ev *pb.Event) { ev.Source = &pb.Source{System: "bench", Product: "grantline-bench"} })
	e.source = src[2:] // the Source field's own tag and one-byte length
	for _, s := range g.subjects {
		e.subjects = append(e.subjects, field(func(ev *pb.Event) { ev.Subject = s }))
	}
	e.actor = field(func(ev *pb.Event) { ev.Actor = g.actor })
	for _, en := range g.ents {
		e.ents = append(e.ents, field(func(ev *pb.Event) { ev.Entitlement = en }))
	}
	e.tail = field(func(ev *pb.Event) { ev.Reason, ev.Attributes = "bench load", g.attrs })
	return e
}

// fill sets ev, with its time, source and refs, to event i; buf is scratch
// space, returned for reuse. The strings that vary with i share one
// allocation.
func (g *benchGen) fill(ev *pb.Event, t *timestamppb.Timestamp, src *pb.Source, refs *pb.Refs, i uint64, buf []byte) []byte {
	// id = run-i, then req-(i/6), grant-(i/6), CHG-i, in one string.
	buf = append(append(buf[:0], g.run...), '-')
	isAt := len(buf)
	buf = strconv.AppendUint(buf, i, 10)
	idEnd := len(buf)
	buf = strconv.AppendUint(append(buf, "req-"...), i/6, 10)
	reqEnd := len(buf)
	buf = append(append(buf, "grant-"...), buf[idEnd+len("req-"):reqEnd]...)
	grantEnd := len(buf)
	buf = append(append(buf, "CHG-"...), buf[isAt:idEnd]...)
	str := string(buf)
	ts := g.base.Add(time.Duration(i%(1<<30)) * time.Millisecond)
	t.Seconds, t.Nanos = ts.Unix(), int32(ts.Nanosecond())
	src.System, src.Product, src.RawId = "bench", "grantline-bench", str[isAt:idEnd]
	refs.Request, refs.Grant, refs.Ticket = str[idEnd:reqEnd], str[reqEnd:grantEnd], str[grantEnd:]
	ev.Id = str[:idEnd]
	ev.Type = benchTypes[i%uint64(len(benchTypes))]
	ev.Time = t
	ev.Source = src
	ev.Subject = g.subjects[i%benchUsers]
	ev.Actor = g.actor
	ev.Entitlement = g.ents[i%uint64(len(g.ents))]
	ev.Refs = refs
	ev.Reason = "bench load"
	ev.Attributes = g.attrs
	return buf
}
