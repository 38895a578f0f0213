package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/ingest/client"
	"github.com/grantline/grantline/internal/datadir"
	"github.com/grantline/grantline/ledger/pgstore/pgtest"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

func startPG(t *testing.T) *pgtest.Cluster { return startPGB(t) }

func startPGB(t testing.TB) *pgtest.Cluster {
	t.Helper()
	c, err := pgtest.Start(t.Context(), pgtest.Options{})
	if errors.Is(err, pgtest.ErrNoPostgres) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	return c
}

func newSchema(t *testing.T, c *pgtest.Cluster) string {
	t.Helper()
	url, err := c.NewSchema(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return url
}

func events(prefix string, from, n int) []*pb.Event {
	evs := make([]*pb.Event, n)
	for i := range evs {
		evs[i] = &pb.Event{
			Id: fmt.Sprintf("%s-%d", prefix, from+i), Type: "access.approved", Time: timestamppb.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
			Source: &pb.Source{System: "iga"}, Subject: &pb.Identity{Id: fmt.Sprintf("user-%d", (from+i)%7)},
		}
	}
	return evs
}

func dialB(t testing.TB, s *Server) *client.Client {
	t.Helper()
	c, err := client.Dial(s.URL, client.Options{Token: s.AdminToken, GRPC: true, NoGzip: true})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func dial(t *testing.T, s *Server, grpc bool) *client.Client {
	t.Helper()
	c, err := client.Dial(s.URL, client.Options{Token: s.AdminToken, GRPC: grpc})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func clusterStatus(t *testing.T, s *Server) (ClusterStatus, http.Header) {
	t.Helper()
	resp, err := http.Get(s.URL + ClusterPath)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st ClusterStatus
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("GET %s: %v", ClusterPath, err)
	}
	return st, resp.Header
}

// TestServeOnPostgres: two nodes on one PostgreSQL database and one set of
// keys. A sequences; B follows: it serves reads from the database and
// forwards appends (Connect and gRPC, unary and streams) to A. Both serve
// the same checkpoint. A stops; B takes over without restarting, with
// every entry A acknowledged, and appends on its own.
func TestServeOnPostgres(t *testing.T) {
	pg := startPG(t)
	url := newSchema(t, pg)
	dir := t.TempDir()
	start := func(ctx context.Context) (*Server, error) {
		return Start(ctx, Config{DataDir: dir, Listen: "127.0.0.1:0", Store: url})
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	a, err := start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(ctx)
	if !a.Sequencing() {
		t.Fatal("the first node does not sequence")
	}
	b, err := start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(ctx)
	if b.Sequencing() {
		t.Fatal("a second node sequences while the first one runs")
	}
	st, h := clusterStatus(t, b)
	if st.Role != "follower" || st.Sequencer == nil || st.Sequencer.URL != a.URL || !st.Sequencer.Valid || h.Get(HeaderSequencer) != a.URL || h.Get(HeaderRole) != "follower" {
		t.Fatalf("B's /cluster: %+v, headers %v; want a follower naming A (%s)", st, h, a.URL)
	}
	if st, _ := clusterStatus(t, a); st.Role != "sequencer" || st.URL != a.URL {
		t.Fatalf("A's /cluster: %+v; want the sequencer at %s", st, a.URL)
	}

	// Appends through B, in every protocol, land in A's log.
	n := 0
	for _, grpc := range []bool{false, true} {
		cb := dial(t, b, grpc)
		res, err := cb.Ingest().Append(ctx, connect.NewRequest(&pb.AppendRequest{Events: events("unary", n, 10)}))
		if err != nil {
			t.Fatalf("Append through B (grpc %v): %v", grpc, err)
		}
		n += 10
		if len(res.Msg.Results) != 10 || res.Msg.TreeSize != uint64(n) {
			t.Fatalf("Append through B: %d results, tree size %d; want 10, %d", len(res.Msg.Results), res.Msg.TreeSize, n)
		}
		stream := cb.Ingest().AppendStream(ctx)
		for seq := range 3 {
			if err := stream.Send(&pb.AppendStreamRequest{Seq: uint64(seq), Events: events(fmt.Sprintf("stream-%v", grpc), seq*100, 100)}); err != nil {
				t.Fatal(err)
			}
			ack, err := stream.Receive()
			if err != nil {
				t.Fatalf("AppendStream through B (grpc %v), batch %d: %v", grpc, seq, err)
			}
			n += 100
			if ack.Seq != uint64(seq) || len(ack.Results) != 100 || ack.TreeSize != uint64(n) {
				t.Fatalf("ack %d: %d results, tree %d; want 100, %d", ack.Seq, len(ack.Results), ack.TreeSize, n)
			}
		}
		stream.CloseRequest()
		stream.CloseResponse()
	}
	if got := a.Ledger().Latest().Size; got != uint64(n) {
		t.Fatalf("A's log has %d entries after %d appended through B", got, n)
	}
	// Both serve the same checkpoint (B within its refresh interval).
	want := a.Ledger().Latest()
	var got *pb.GetCheckpointResponse
	for deadline := time.Now().Add(10 * time.Second); ; {
		r, err := dial(t, b, false).Log().GetCheckpoint(ctx, connect.NewRequest(&pb.GetCheckpointRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		if got = r.Msg; got.TreeSize == want.Size || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got.Checkpoint != string(want.Note) {
		t.Fatalf("B serves checkpoint %q, A %q", got.Checkpoint, want.Note)
	}
	if _, err := dial(t, b, false).Log().GetInclusionProof(ctx, connect.NewRequest(&pb.GetInclusionProofRequest{Leaf: &pb.GetInclusionProofRequest_Index{Index: 5}, TreeSize: want.Size})); err != nil {
		t.Fatalf("inclusion proof from B: %v", err)
	}
	if _, err := dial(t, b, false).Evidence().Evaluate(ctx, connect.NewRequest(&pb.EvaluateRequest{})); err != nil {
		t.Fatalf("evaluation on B: %v", err)
	}

	// A stops (releasing the lease): B takes over in place.
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	for !b.Sequencing() {
		if time.Since(t0) > 20*time.Second {
			t.Fatal("B did not take over")
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("B took over %v after A stopped", time.Since(t0))
	if got := b.Ledger().Latest(); got.Size != want.Size || got.Root != want.Root {
		t.Fatalf("B sequences a log of %d entries, want %d", got.Size, want.Size)
	}
	res, err := dial(t, b, true).Ingest().Append(ctx, connect.NewRequest(&pb.AppendRequest{Events: append(events("unary", 0, 1), events("after", 0, 1)...)}))
	if err != nil {
		t.Fatal(err)
	}
	if r := res.Msg.Results; !r[0].Duplicate || r[1].Duplicate || res.Msg.TreeSize != want.Size+1 {
		t.Fatalf("after take-over: %v, size %d; want a duplicate, then a new entry at %d", r, res.Msg.TreeSize, want.Size)
	}
	if st, _ := clusterStatus(t, b); st.Role != "sequencer" {
		t.Fatalf("B's /cluster after take-over: %+v", st)
	}
	if _, err := os.Stat(filepath.Join(dir, "ledger")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a badger ledger was created in the data directory: %v", err)
	}
	if _, err := Start(t.Context(), Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", Store: "mysql://x"}); !errors.Is(err, ErrConfig) {
		t.Fatalf("--store mysql://x = %v, want ErrConfig", err)
	}
}

// TestFollowerForwardingUnavailable: a follower that cannot reach the
// sequencer answers appends with Unavailable naming it.
func TestFollowerForwardingUnavailable(t *testing.T) {
	pg := startPG(t)
	url := newSchema(t, pg)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	a, err := Start(ctx, Config{DataDir: dir, Listen: "127.0.0.1:0", Store: url, Advertise: "http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(ctx)
	b, err := Start(ctx, Config{DataDir: dir, Listen: "127.0.0.1:0", Store: url})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(ctx)
	for _, grpc := range []bool{false, true} {
		_, err = dial(t, b, grpc).Ingest().Append(ctx, connect.NewRequest(&pb.AppendRequest{Events: events("x", 0, 1)}))
		var ce *connect.Error
		if !errors.As(err, &ce) || ce.Code() != connect.CodeUnavailable || ce.Meta().Get(HeaderSequencer) != "http://127.0.0.1:1" || len(ce.Details()) != 1 {
			t.Fatalf("append through a follower that cannot reach the sequencer (grpc %v) = %v, want Unavailable naming http://127.0.0.1:1 with a detail", grpc, err)
		}
	}
	if got := a.Ledger().Latest().Size; got != 0 {
		t.Fatalf("the log has %d entries", got)
	}
}

// TestPostgresRefusesEmptyDatabase: a data directory whose log.state says
// its log was created refuses a database without the log, as it refuses an
// empty DIR/ledger; --init starts a new log there.
func TestPostgresRefusesEmptyDatabase(t *testing.T) {
	pg := startPG(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	a, err := Start(ctx, Config{DataDir: dir, Listen: "127.0.0.1:0", Store: newSchema(t, pg)})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
	empty := newSchema(t, pg)
	if _, err := Start(ctx, Config{DataDir: dir, Listen: "127.0.0.1:0", Store: empty}); !errors.Is(err, datadir.ErrStoreMissing) {
		t.Fatalf("start on an empty database after the log was created = %v, want ErrStoreMissing", err)
	}
	b, err := Start(ctx, Config{DataDir: dir, Listen: "127.0.0.1:0", Store: empty, Init: true})
	if err != nil {
		t.Fatalf("--init on an empty database: %v", err)
	}
	b.Close(ctx)
}
