package client_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/grantline/grantline/ingest/client"
	"github.com/grantline/grantline/internal/server"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// TestAppendStreamOutlivesIdleCloses: a live feed that is silent for longer
// than the server's stream idle timeout, again and again, keeps going. The
// server closes each idle stream with every batch acknowledged; that is not
// a failure, so it is neither retried with a backoff nor reported (before,
// `append -` printed "stream failed ... retrying" on every quiet spell of a
// live feed), and the sender opens the next stream only when the next batch
// comes.
func TestAppendStreamOutlivesIdleCloses(t *testing.T) {
	const idle = 150 * time.Millisecond
	srv, err := server.Start(t.Context(), server.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", StreamIdleTimeout: idle})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close(context.Background()) })
	cl, err := client.Dial(srv.URL, client.Options{Token: srv.AdminToken})
	if err != nil {
		t.Fatal(err)
	}

	in := make(chan *client.Batch)
	acks := make(chan uint64, 8)
	notes := make(chan string, 64)
	done := make(chan error, 1)
	go func() {
		done <- client.AppendStream(t.Context(), cl.Ingest(), client.StreamOptions{Retries: 1, RetryFor: time.Second, Notify: func(m string) { notes <- m }}, in,
			func(b *client.Batch, _ *pb.AppendStreamResponse, _ time.Duration) { acks <- b.Seq })
	}()

	const rounds = 4
	for i := range uint64(rounds) {
		ev := &pb.Event{
			Id: fmt.Sprintf("idle-%d", i), Type: "grant.activated", Time: timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)),
			Source: &pb.Source{System: "pam"}, Subject: &pb.Identity{Id: "alice", Kind: "human"},
		}
		select {
		case in <- &client.Batch{Seq: i, Events: []*pb.Event{ev}, Where: fmt.Sprintf("round %d", i)}:
		case err := <-done:
			t.Fatalf("round %d: AppendStream gave up: %v", i, err)
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		}
		select {
		case seq := <-acks:
			if seq != i {
				t.Fatalf("round %d: acknowledged batch %d", i, seq)
			}
		case err := <-done:
			t.Fatalf("round %d: AppendStream gave up before the ack: %v", i, err)
		}
		// Stay silent until the server has closed this round's stream as
		// idle, then for several idle timeouts more: a sender that
		// reopened a stream at once would see it closed again, with
		// nothing acknowledged in between.
		waitIdleCloses(t, srv, int(i)+1)
		select {
		case err := <-done:
			t.Fatalf("round %d: AppendStream gave up while the feed was silent: %v", i, err)
		case <-time.After(4 * idle):
		}
	}
	close(in)
	if err := <-done; err != nil {
		t.Fatalf("AppendStream after %d idle closes = %v, want nil", rounds, err)
	}
	close(notes)
	for m := range notes {
		t.Errorf("an idle close was reported as a failure: %q", m)
	}
	if cp := srv.Ledger().Latest(); cp.Size != rounds {
		t.Fatalf("checkpoint size %d, want %d", cp.Size, rounds)
	}
}

var idleMetric = regexp.MustCompile(`grantline_refused_requests_total\{code="unavailable",reason="stream_idle"\} (\d+)`)

// waitIdleCloses waits until the server has counted at least n streams
// closed as idle.
func waitIdleCloses(t *testing.T, srv *server.Server, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+"/metrics", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+srv.AdminToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		if m := idleMetric.FindSubmatch(body); m != nil {
			got, _ = strconv.Atoi(string(m[1]))
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("server counted %d idle stream closes, want %d", got, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
