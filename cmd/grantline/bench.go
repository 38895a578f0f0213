package main

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
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

	"connectrpc.com/connect"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/internal/datadir"
	"github.com/grantline/grantline/internal/server"
	"github.com/grantline/grantline/ledger"
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
// given, on a free loopback port.
func benchServer(ctx context.Context, dataDir string) (*server.Server, error) {
	return server.Start(ctx, server.Config{DataDir: dataDir, Listen: "127.0.0.1:0"})
}

// ledgerSummary says where the server's time went, from the ledger's counters.
func ledgerSummary(st ledger.Stats, elapsed time.Duration) string {
	b := max(st.Batches, 1)
	return fmt.Sprintf("server: %d ledger batches of %.0f events on average; %.1f ms per batch integrating, of which %.1f ms in the durable store commit (batches overlap: %.1fs integrating in a %.1fs run); %d pushbacks",
		st.Batches, float64(st.BatchEvents)/float64(b), float64(st.CommitTime.Microseconds())/1000/float64(b),
		float64(st.StoreTime.Microseconds())/1000/float64(b), st.CommitTime.Seconds(), elapsed.Seconds(), st.Pushbacks)
}

type benchConfig struct {
	streamConfig
	events    uint64
	duration  time.Duration
	eventSize int
	runID     string
	verify    bool
	soak      time.Duration
}

func runBenchCmd(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, commands["bench"])
	var cf clientFlags
	cf.register(fs, env)
	cfg := benchConfig{}
	fs.IntVar(&cfg.streams, "streams", 2, "concurrent AppendStream clients")
	fs.Uint64Var(&cfg.events, "events", 200000, "events to append (ignored with --duration or --soak)")
	fs.DurationVar(&cfg.duration, "duration", 0, "append for this long instead of a fixed number of events")
	fs.IntVar(&cfg.batch, "batch", 1000, "events per AppendStream message")
	fs.IntVar(&cfg.window, "window", 2, "unacknowledged batches per stream")
	fs.IntVar(&cfg.retries, "retries", 20, "consecutive retries per stream (ResourceExhausted, Unavailable)")
	fs.IntVar(&cfg.eventSize, "event-size", 500, "approximate encoded size of each event in bytes")
	fs.StringVar(&cfg.runID, "run-id", "", "prefix of the event ids (default: fixed for an in-process server, time-based otherwise)")
	fs.DurationVar(&cfg.soak, "soak", 0, "sustained load for this long, reporting every 10s (implies --duration)")
	fs.BoolVar(&cfg.verify, "verify", false, "afterwards fetch the whole log over the tiles path and recompute every tile and the root")
	keyFile := fs.String("log-key", "", "with --verify against --server: the log's verifier key (DATA/keys/log.vkey)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the run (client and in-process server) to this file")
	dataDir := fs.String("data", "", "in-process server: data directory (default: a temporary one, removed afterwards)")
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
		rs, err := benchServer(ctx, dir)
		if err != nil {
			return fmt.Errorf("starting the in-process server: %w", err)
		}
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = rs.Close(sctx)
		}()
		inproc = rs
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
	cl, err := cf.dialBench()
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
	cfg.notify = func(msg string) { fmt.Fprintf(env.stderr, "bench: %s\n", msg) }
	res, err := runBench(ctx, cl.ingest, cfg, env.stderr)
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
	vr, err := verifyLog(ctx, cl, v, res.treeSize)
	if err != nil {
		return &exitError{code: 1, msg: fmt.Sprintf("verify: %v", err)}
	}
	fmt.Fprintln(env.stdout, vr)
	return nil
}

// dialBench is dial without request compression: on loopback gzip costs more
// CPU than it saves.
func (c *clientFlags) dialBench() (*clients, error) {
	cl, err := c.dial()
	if err != nil {
		return nil, err
	}
	opts := []connect.ClientOption{connect.WithInterceptors(bearer(c.token)), connect.WithReadMaxBytes(64 << 20)}
	if c.grpc {
		opts = append(opts, connect.WithGRPC())
	}
	cl.ingest = grantlinev1connect.NewIngestServiceClient(cl.http, cl.baseURL, opts...)
	return cl, nil
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
}

func (r benchResult) rate() float64 { return float64(r.events) / r.elapsed.Seconds() }

func (r benchResult) String() string {
	return fmt.Sprintf("bench: %d events (%d duplicate) in %.2fs over %d streams, batch %d, ~%d-byte events: %.0f events/s; ack latency per batch p50 %s p99 %s max %s; tree size %d",
		r.events, r.dup, r.elapsed.Seconds(), r.streams, r.batch, r.eventSize, r.rate(),
		r.p50.Round(100*time.Microsecond), r.p99.Round(100*time.Microsecond), r.pmax.Round(100*time.Microsecond), r.treeSize)
}

// runBench appends generated events and measures throughput and per-batch
// ack latency. Progress goes to progressW every 10 s when soaking.
func runBench(ctx context.Context, client grantlinev1connect.IngestServiceClient, cfg benchConfig, progressW io.Writer) (benchResult, error) {
	gen := newBenchGen(cfg.runID, cfg.eventSize)
	batches := make(chan *batch, cfg.streams*cfg.window)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
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
			b := &batch{seq: seq, events: make([]*pb.Event, n), where: "event " + strconv.FormatUint(next, 10)}
			for i := range b.events {
				b.events[i] = gen.event(next)
				next++
			}
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
		st   appendStats
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
					n := st.acked.Load()
					fmt.Fprintf(progressW, "bench: %s: %d events acknowledged, %.0f/s in the last interval\n",
						now.Sub(start).Round(time.Second), n, float64(n-last)/now.Sub(lastT).Seconds())
					last, lastT = n, now
				}
			}
		}()
	}
	err := sendBatches(ctx, client, cfg.streamConfig, batches, func(b *batch, resp *pb.AppendStreamResponse, lat time.Duration) {
		st.add(resp)
		mu.Lock()
		lats = append(lats, lat)
		mu.Unlock()
	})
	elapsed := time.Since(start)
	close(stopTicker)
	if err != nil {
		return benchResult{}, fmt.Errorf("after %d events: %s", st.acked.Load(), describeRPCError(err))
	}
	slices.Sort(lats)
	r := benchResult{events: st.acked.Load(), dup: st.dup.Load(), batches: len(lats), elapsed: elapsed,
		streams: cfg.streams, batch: cfg.batch, eventSize: cfg.eventSize, treeSize: st.treeSize.Load()}
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
// is always the same.
type benchGen struct {
	run  string
	pad  string
	base time.Time
}

var benchTypes = []string{"access.requested", "access.approved", "grant.activated", "session.started", "session.ended", "grant.deactivated"}

func newBenchGen(run string, size int) *benchGen {
	g := &benchGen{run: run, base: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	probe := g.event(123456)
	if n := size - proto.Size(probe) - 8; n > 0 { // 8: the map entry's own framing
		g.pad = strings.Repeat("x", n)
	}
	return g
}

func (g *benchGen) event(i uint64) *pb.Event {
	is := strconv.FormatUint(i, 10)
	user := "user-" + strconv.FormatUint(i%5000, 10)
	grant := "grant-" + strconv.FormatUint(i/6, 10)
	ev := &pb.Event{
		Id:          g.run + "-" + is,
		Type:        benchTypes[i%uint64(len(benchTypes))],
		Time:        timestamppb.New(g.base.Add(time.Duration(i%(1<<30)) * time.Millisecond)),
		Source:      &pb.Source{System: "bench", Product: "grantline-bench", RawId: is},
		Subject:     &pb.Identity{Id: user, Kind: "human", Display: "Bench User " + user},
		Actor:       &pb.Identity{Id: "pam", Kind: "system"},
		Entitlement: &pb.Entitlement{Id: "role-" + strconv.FormatUint(i%50, 10), Resource: "aws:account/123456789012", Privileged: i%3 == 0},
		Refs:        &pb.Refs{Request: "req-" + strconv.FormatUint(i/6, 10), Grant: grant, Ticket: "CHG-" + is},
		Reason:      "bench load",
	}
	if g.pad != "" {
		ev.Attributes = map[string]string{"pad": g.pad}
	}
	return ev
}

// verifyLog fetches the latest checkpoint and the whole log over the tiles
// path, recomputes every leaf hash, every tile at every level and the root,
// and compares them with what the server serves and signed. v may be nil
// (then the checkpoint's signature is not checked, which the result says).
// The checkpoint must cover at least minSize entries.
func verifyLog(ctx context.Context, cl *clients, v note.Verifier, minSize uint64) (string, error) {
	ckText, err := cl.get(ctx, "/checkpoint")
	if err != nil {
		return "", err
	}
	size, root, origin, err := parseCheckpointText(ckText, v)
	if err != nil {
		return "", err
	}
	if size < minSize {
		return "", fmt.Errorf("the checkpoint covers %d entries, but appends were acknowledged up to tree size %d", size, minSize)
	}
	start := time.Now()
	var rng = (&compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}).NewEmptyRange(0)
	lv := &tileLevels{cl: cl, size: size}
	bundles := prefetch(ctx, 4, (size+255)/256, func(ctx context.Context, n uint64) ([]byte, error) {
		return cl.get(ctx, tilePath("entries", n, bundleWidth(size, n)))
	})
	for n := uint64(0); n < (size+255)/256; n++ {
		data, err := (<-bundles)()
		if err != nil {
			return "", err
		}
		w := bundleWidth(size, n)
		leaves, err := parseBundle(data)
		if err != nil {
			return "", fmt.Errorf("entry bundle %d: %w", n, err)
		}
		if uint64(len(leaves)) != w {
			return "", fmt.Errorf("entry bundle %d: %d entries, want %d", n, len(leaves), w)
		}
		for _, leaf := range leaves {
			h := rfc6962.DefaultHasher.HashLeaf(leaf)
			if err := rng.Append(h, nil); err != nil {
				return "", err
			}
			if err := lv.push(ctx, 0, h); err != nil {
				return "", err
			}
		}
	}
	if err := lv.finish(ctx); err != nil {
		return "", err
	}
	got, err := rng.GetRootHash(nil)
	if err != nil {
		return "", err
	}
	if size == 0 {
		got = rfc6962.DefaultHasher.EmptyRoot()
	}
	if string(got) != string(root) {
		return "", fmt.Errorf("the root recomputed from %d entries is %x, the checkpoint says %x", size, got, root)
	}
	signed := "signature not checked (no --log-key)"
	if v != nil {
		signed = "checkpoint signature verified for " + origin
	}
	return fmt.Sprintf("verify: %d entries and %d tiles fetched and recomputed in %.2fs; root %x matches; %s",
		size, lv.tiles, time.Since(start).Seconds(), root, signed), nil
}

// tileLevels checks tiles level by level as leaf hashes stream in: each
// level keeps the hashes of its current tile; a full tile is fetched and
// compared, and its subtree root becomes the next level's hash.
type tileLevels struct {
	cl    *clients
	size  uint64
	cur   [][][]byte // per level: hashes of the tile being filled
	index []uint64   // per level: index of that tile
	tiles int
}

func (t *tileLevels) push(ctx context.Context, level int, h []byte) error {
	for len(t.cur) <= level {
		t.cur = append(t.cur, nil)
		t.index = append(t.index, 0)
	}
	t.cur[level] = append(t.cur[level], h)
	if len(t.cur[level]) < 256 {
		return nil
	}
	if err := t.check(ctx, level); err != nil {
		return err
	}
	root := subtreeRoot(t.cur[level])
	t.cur[level] = t.cur[level][:0]
	t.index[level]++
	return t.push(ctx, level+1, root)
}

func (t *tileLevels) finish(ctx context.Context) error {
	for level := range t.cur {
		if len(t.cur[level]) > 0 {
			if err := t.check(ctx, level); err != nil {
				return err
			}
		}
	}
	return nil
}

func (t *tileLevels) check(ctx context.Context, level int) error {
	want := t.cur[level]
	p := tilePath(strconv.Itoa(level), t.index[level], uint64(len(want)))
	data, err := t.cl.get(ctx, p)
	if err != nil {
		return err
	}
	t.tiles++
	if len(data) != 32*len(want) {
		return fmt.Errorf("%s: %d bytes, want %d hashes", p, len(data), len(want))
	}
	for i, h := range want {
		if string(data[32*i:32*i+32]) != string(h) {
			return fmt.Errorf("%s: hash %d is %x, recomputed %x", p, i, data[32*i:32*i+32], h)
		}
	}
	return nil
}

// subtreeRoot hashes a full power-of-two group of node hashes to its root.
func subtreeRoot(hs [][]byte) []byte {
	cur := slices.Clone(hs)
	for len(cur) > 1 {
		next := cur[:0:0]
		for i := 0; i < len(cur); i += 2 {
			next = append(next, rfc6962.DefaultHasher.HashChildren(cur[i], cur[i+1]))
		}
		cur = next
	}
	return cur[0]
}

// tilePath is the C2SP tlog-tiles path of tile n at level ("entries" for an
// entry bundle) holding w of its 256 entries.
func tilePath(level string, n, w uint64) string {
	s := fmt.Sprintf("%03d", n%1000)
	for n >= 1000 {
		n /= 1000
		s = fmt.Sprintf("x%03d/%s", n%1000, s)
	}
	p := "/tile/" + level + "/" + s
	if w < 256 {
		p += ".p/" + strconv.FormatUint(w, 10)
	}
	return p
}

// bundleWidth is how many entries entry bundle n holds in a tree of size.
func bundleWidth(size, n uint64) uint64 { return min(256, size-256*n) }

// parseBundle splits an entry bundle: big-endian uint16 length, then the leaf.
func parseBundle(data []byte) ([][]byte, error) {
	var out [][]byte
	for off := 0; off < len(data); {
		if len(data)-off < 2 {
			return nil, fmt.Errorf("truncated length at byte %d", off)
		}
		n := int(binary.BigEndian.Uint16(data[off:]))
		off += 2
		if len(data)-off < n {
			return nil, fmt.Errorf("entry at byte %d: %d bytes announced, %d left", off-2, n, len(data)-off)
		}
		out = append(out, data[off:off+n])
		off += n
	}
	return out, nil
}

// parseCheckpointText opens a checkpoint with v, or without a verifier just
// parses its body.
func parseCheckpointText(text []byte, v note.Verifier) (size uint64, root []byte, origin string, err error) {
	if v != nil {
		c, err := ledger.OpenCheckpoint(text, v)
		if err != nil {
			return 0, nil, "", fmt.Errorf("GET /checkpoint: %w", err)
		}
		return c.Size, c.Root[:], c.Origin, nil
	}
	lines := strings.SplitN(string(text), "\n", 4)
	if len(lines) < 4 {
		return 0, nil, "", errors.New("checkpoint: want origin, size and root lines")
	}
	size, err = strconv.ParseUint(lines[1], 10, 64)
	if err != nil {
		return 0, nil, "", fmt.Errorf("checkpoint line 2: %w", err)
	}
	root, err = base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(root) != 32 {
		return 0, nil, "", fmt.Errorf("checkpoint line 3: want a base64 SHA-256 root")
	}
	return size, root, lines[0], nil
}

// prefetch fetches items 0..n-1 with up to par requests in flight and hands
// them out in order.
func prefetch(ctx context.Context, par int, n uint64, fetch func(context.Context, uint64) ([]byte, error)) <-chan func() ([]byte, error) {
	out := make(chan func() ([]byte, error), par)
	go func() {
		defer close(out)
		for i := uint64(0); i < n; i++ {
			var (
				data []byte
				err  error
				done = make(chan struct{})
			)
			go func() { defer close(done); data, err = fetch(ctx, i) }()
			select {
			case out <- func() ([]byte, error) { <-done; return data, err }:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}
