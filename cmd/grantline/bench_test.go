package main

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/ingest"
	"github.com/grantline/grantline/ingest/auth"
	"github.com/grantline/grantline/ingest/client"
	"github.com/grantline/grantline/internal/cputime"
	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/proto/gen/grantline/v1/grantlinev1connect"
)

func TestBenchGenDeterministicAndSized(t *testing.T) {
	g1, g2 := newBenchGen("r", 500), newBenchGen("r", 500)
	for _, i := range []uint64{0, 1, 99999, 1 << 40} {
		a, b := g1.event(i), g2.event(i)
		if !proto.Equal(a, b) {
			t.Errorf("event %d differs between generators", i)
		}
		if n := proto.Size(a); n < 450 || n > 550 {
			t.Errorf("event %d is %d bytes, want about 500", i, n)
		}
		if err := event.Validate(a, time.Now()); err != nil {
			t.Errorf("event %d invalid: %v", i, err)
		}
	}
	if g1.event(1).GetId() == g1.event(2).GetId() {
		t.Error("events 1 and 2 share an id")
	}
	// A batch holds the same events as one at a time, and the generator's
	// output for a given index does not change between versions (the
	// events of an earlier run are still duplicates of a rerun's).
	for k, ev := range g1.batch(299995, 10) {
		if !proto.Equal(ev, g2.event(299995+uint64(k))) {
			t.Errorf("batch event %d differs from event(%d)", k, 299995+k)
		}
	}
	want := &pb.Event{
		Id: "r-299999", Type: "grant.deactivated", Time: timestamppb.New(time.Date(2026, 1, 1, 0, 4, 59, 999e6, time.UTC)),
		Source:      &pb.Source{System: "bench", Product: "grantline-bench", RawId: "299999"},
		Subject:     &pb.Identity{Id: "user-4999", Kind: "human", Display: "Bench User user-4999"},
		Actor:       &pb.Identity{Id: "pam", Kind: "system"},
		Entitlement: &pb.Entitlement{Id: "role-49", Resource: "aws:account/123456789012"},
		Refs:        &pb.Refs{Request: "req-49999", Grant: "grant-49999", Ticket: "CHG-299999"},
		Reason:      "bench load",
		Attributes:  g1.event(0).GetAttributes(),
	}
	if got := g1.event(299999); !proto.Equal(got, want) {
		t.Errorf("event 299999 = %v\nwant %v", got, want)
	}
}

// TestBenchGenEncoded: the encoded batches bench sends are the events of
// batch, in the deterministic encoding, and decode to them: for run ids
// and event sizes that change the lengths of the fields (one- and two-byte
// lengths), and indexes at every change in the number of digits of i and
// i/6, where the time's nanos are 0, where the time wraps (i % 2^30), up to
// the largest uint64.
func TestBenchGenEncoded(t *testing.T) {
	ranges := []struct {
		first uint64
		n     int
	}{{0, 1}, {299995, 10}, {1<<30 - 2, 4}, {1 << 40, 3}, {999999, 1000}, {math.MaxUint64 - 2, 3}}
	for p := uint64(10); p < math.MaxUint64/10; p *= 10 {
		ranges = append(ranges, struct {
			first uint64
			n     int
		}{p - 7, 14}, struct {
			first uint64
			n     int
		}{6*p - 7, 14})
	}
	for k, g := range []*benchGen{newBenchGen("r", 500), newBenchGen("bench-"+strings.Repeat("x", 130), 200), newBenchGen("bench", 30000)} {
		rs := ranges
		if k == 0 {
			rs = append(rs, struct { // every subject and entitlement
				first uint64
				n     int
			}{0, benchUsers})
		}
		for _, tt := range rs {
			evs := g.batch(tt.first, tt.n)
			want, err := proto.MarshalOptions{Deterministic: true}.Marshal(&pb.AppendStreamRequest{Events: evs})
			if err != nil {
				t.Fatal(err)
			}
			got := g.encoded([]byte("p"), tt.first, tt.n)
			if string(got) != "p"+string(want) {
				t.Fatalf("run %.10q: encoded(%d, %d): %d bytes, want the %d of the deterministic encoding of batch", g.run, tt.first, tt.n, len(got)-1, len(want))
			}
			back := &pb.AppendStreamRequest{}
			if err := proto.Unmarshal(got[1:], back); err != nil || !proto.Equal(back, &pb.AppendStreamRequest{Events: evs}) {
				t.Fatalf("run %.10q: encoded(%d, %d) decodes to %d events, %v; want the batch's", g.run, tt.first, tt.n, len(back.GetEvents()), err)
			}
		}
	}
}

// BenchmarkBenchGen measures the load generator alone, building events
// (batch) and encoding them (encoded, what bench sends). b.N counts events.
func BenchmarkBenchGen(b *testing.B) {
	g := newBenchGen("bench", 500)
	b.Run("batch", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i += 1000 {
			g.batch(uint64(i), 1000)
		}
	})
	b.Run("encoded", func(b *testing.B) {
		b.ReportAllocs()
		buf := make([]byte, 0, 600_000)
		for i := 0; i < b.N; i += 1000 {
			buf = g.encoded(buf[:0], uint64(i), 1000)
		}
	})
}

func TestBenchAgainstFake(t *testing.T) {
	f := newFakeLog(t)
	url := f.serve(t)
	key := f.writeVkey(t)
	// 20,000 events make 78 full level-0 tiles, a partial one, and a
	// partial level-1 tile of 78 hashes.
	code, out, errs := runCmd(t, "", "bench", "--server", url, "--token", "test-token", "--events", "20000",
		"--streams", "3", "--batch", "1000", "--verify", "--log-key", key, "--run-id", "t")
	if code != 0 {
		t.Fatalf("bench: exit %d\nstdout %s\nstderr %s", code, out, errs)
	}
	if !strings.Contains(out, "bench: 20000 events (0 duplicate)") || !strings.Contains(out, "tree size 20000") {
		t.Errorf("bench output lacks the count:\n%s", out)
	}
	if cputime.Process() > 0 && !regexp.MustCompile(`; CPU [0-9]+\.[0-9] µs per event \(this process`).MatchString(out) {
		t.Errorf("bench output lacks the CPU per event:\n%s", out)
	}
	if !strings.Contains(out, "verify: 20000 entries and 80 tiles fetched") || !strings.Contains(out, "checkpoint signature verified") {
		t.Errorf("verify output:\n%s", out)
	}
	if len(f.events) != 20000 {
		t.Errorf("fake holds %d events, want 20000", len(f.events))
	}

	// A tampered tile is caught.
	f.tamperTile = "/tile/1/000.p/78"
	code, out, errs = runCmd(t, "", "bench", "--server", url, "--token", "test-token", "--events", "10", "--verify", "--log-key", key)
	if code != 1 || !strings.Contains(errs, "/tile/1/000.p/78: hash 0 is") {
		t.Errorf("bench --verify with a tampered tile = exit %d\nstdout %s\nstderr %s\nwant exit 1 naming the tile", code, out, errs)
	}
}

func TestBenchMemoryBudgetFlag(t *testing.T) {
	for _, tt := range []struct{ value, want string }{
		{"lots", `--memory-budget "lots"`},
		{"1MiB", "--memory-budget 1MiB: want at least"},
	} {
		code, _, errs := runCmd(t, "", "bench", "--events", "10", "--memory-budget", tt.value)
		if code != 2 || !strings.Contains(errs, tt.want) {
			t.Errorf("bench --memory-budget %s: exit %d, stderr %q; want 2 and %q", tt.value, code, errs, tt.want)
		}
	}
}

// TestBenchRunIDFlag: a run id that cannot prefix an event id is refused
// before anything is sent.
func TestBenchRunIDFlag(t *testing.T) {
	for _, id := range []string{"a\xffb", "a\u200bb", strings.Repeat("x", 600)} {
		code, _, errs := runCmd(t, "", "bench", "--server", "http://127.0.0.1:1", "--token", "t", "--events", "10", "--run-id", id)
		if code != 2 || !strings.Contains(errs, "--run-id") {
			t.Errorf("bench --run-id %q: exit %d, stderr %q; want 2 naming --run-id", id, code, errs)
		}
	}
}

// nullIngest acknowledges every batch at once without storing anything, to
// measure what the client and the Connect transport cost on their own.
type nullIngest struct {
	grantlinev1connect.UnimplementedIngestServiceHandler
}

func (nullIngest) AppendStream(ctx context.Context, st *connect.BidiStream[pb.AppendStreamRequest, pb.AppendStreamResponse]) error {
	for {
		req, err := st.Receive()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		res := make([]*pb.AppendResult, len(req.GetEvents()))
		for i := range res {
			res[i] = &pb.AppendResult{Index: uint64(i), LeafHash: make([]byte, 32)}
		}
		if err := st.Send(&pb.AppendStreamResponse{Seq: req.GetSeq(), Results: res}); err != nil {
			return err
		}
	}
}

// BenchmarkStreamTransport measures the load generator and AppendStream over
// loopback h2c against a server that stores nothing: the ceiling the client
// side puts on `grantline bench`. b.N counts events.
func BenchmarkStreamTransport(b *testing.B) {
	mux := http.NewServeMux()
	mux.Handle(grantlinev1connect.NewIngestServiceHandler(nullIngest{}))
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	defer srv.Close()
	benchOverLoopback(b, srv.URL, "x", client.StreamOptions{Streams: 4, Window: 4})
}

// benchOverLoopback runs bench's generator for b.N events against the
// server at url (batches of 1000 ~500-byte events, the given streams),
// fails b unless every event was acknowledged as new, and reports events/s,
// CPU-µs per event (the whole process: client and any in-process server)
// and ack latency p50/p99 per batch.
func benchOverLoopback(b *testing.B, url, token string, opts client.StreamOptions) {
	b.Helper()
	cf := clientFlags{server: url, token: token}
	cl, err := cf.dialWith(true)
	if err != nil {
		b.Fatal(err)
	}
	cfg := benchConfig{streamConfig: streamConfig{batch: 1000, StreamOptions: opts}, events: uint64(b.N), eventSize: 500, runID: "bench"}
	b.ResetTimer()
	res, err := runBench(b.Context(), cl.Ingest(), cfg, io.Discard)
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	if res.events != uint64(b.N) || res.dup != 0 {
		b.Fatalf("%d events acknowledged (%d duplicate), want %d new", res.events, res.dup, b.N)
	}
	b.ReportMetric(res.rate(), "events/s")
	b.ReportMetric(float64(res.cpuPerEvent().Nanoseconds())/1000, "cpu-µs/event")
	b.ReportMetric(float64(res.p50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(res.p99.Microseconds())/1000, "p99-ms")
}

// BenchmarkBenchInProcess is `grantline bench` as a benchmark: the load
// generator and AppendStream over loopback h2c against the in-process
// server (badger, fsync, dedupe) on a temporary data directory, with the
// command's defaults (2 streams, window 1, batches of 1000 ~500-byte
// events). b.N counts events. With -cpuprofile, -memprofile, -blockprofile
// or -mutexprofile it profiles client and server together:
//
//	go test -run '^$' -bench BenchInProcess -benchtime 300000x -count 3 ./cmd/grantline/
func BenchmarkBenchInProcess(b *testing.B) {
	rs, err := benchServer(b.Context(), b.TempDir(), 0)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = rs.Close(context.Background()) }()
	benchOverLoopback(b, rs.URL, rs.AdminToken, client.StreamOptions{Streams: 2, Window: 1, Retries: 20})
}

// nullLedger is an ingest.Ledger whose Append acknowledges every event at
// once without storing it (a new index each, a leaf hash made from the
// index); its other methods are not used (nil interface: they panic).
type nullLedger struct {
	ingest.Ledger
	mu   sync.Mutex
	size uint64
}

func (l *nullLedger) Append(_ context.Context, evs []*pb.Event) ([]ledger.AppendResult, uint64, error) {
	out := make([]ledger.AppendResult, len(evs))
	l.mu.Lock()
	first := l.size
	l.size += uint64(len(evs))
	size := l.size
	l.mu.Unlock()
	for i := range out {
		out[i].Index = first + uint64(i)
		out[i].LeafHash = sha256.Sum256(binary.BigEndian.AppendUint64(nil, out[i].Index))
	}
	return out, size, nil
}

// Latest is the size appended so far, unsigned (the metrics read it).
func (l *nullLedger) Latest() ledger.Checkpoint {
	l.mu.Lock()
	defer l.mu.Unlock()
	return ledger.Checkpoint{Size: l.size}
}

// oneToken authenticates one bearer token as an admin.
type oneToken string

func (t oneToken) Authenticate(tok string) (auth.Principal, error) {
	if tok != string(t) {
		return auth.Principal{}, errors.New("unknown token")
	}
	return auth.Principal{Name: "bench", Role: auth.RoleAdmin}, nil
}

// BenchmarkBenchNullLedger is `grantline bench` against the real ingest
// service (its codec, authentication, validation, stream pipeline, metrics
// and serve's HTTP/2 settings) over loopback h2c, with a ledger that
// acknowledges without storing: the CPU per event of everything in a bench
// run but the ledger (client, generator, transport, server). b.N counts
// events; bench's defaults (2 streams, window 1, batches of 1000 ~500-byte
// events).
//
//	go test -run '^$' -bench BenchNullLedger -benchtime 300000x -count 5 ./cmd/grantline/
func BenchmarkBenchNullLedger(b *testing.B) {
	const tok = "bench-token"
	api, err := ingest.New(ingest.Config{Ledger: &nullLedger{}, Auth: oneToken(tok)})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(api.Handler())
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Config.HTTP2 = ingest.HTTP2Config()
	srv.Start()
	defer srv.Close()
	benchOverLoopback(b, srv.URL, tok, client.StreamOptions{Streams: 2, Window: 1, Retries: 20})
}
