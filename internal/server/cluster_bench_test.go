package server

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// BenchmarkForwardedAppend compares, in one run on one PostgreSQL, durable
// appends sent to the sequencer with appends sent to a follower, which
// forwards them (100-event unary Appends from parallel callers, gRPC).
//
//	go test -run '^$' -bench BenchmarkForwardedAppend -benchtime 300x -count 5 ./internal/server/
func BenchmarkForwardedAppend(b *testing.B) {
	pg := startPGB(b)
	url, err := pg.NewSchema(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	ctx := context.Background()
	a, err := Start(ctx, Config{DataDir: dir, Listen: "127.0.0.1:0", Store: url})
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close(ctx)
	f, err := Start(ctx, Config{DataDir: dir, Listen: "127.0.0.1:0", Store: url})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close(ctx)
	var seq atomic.Int64
	for _, target := range []struct {
		name string
		s    *Server
	}{{"to=sequencer", a}, {"to=follower", f}} {
		b.Run(target.name, func(b *testing.B) {
			c := dialB(b, target.s)
			b.SetParallelism(8)
			t0 := time.Now()
			b.RunParallel(func(p *testing.PB) {
				for p.Next() {
					n := int(seq.Add(1))
					if _, err := c.Ingest().Append(ctx, connect.NewRequest(&pb.AppendRequest{Events: events(fmt.Sprintf("b%d", n), 0, 100)})); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N*100)/time.Since(t0).Seconds(), "events/s")
		})
	}
}
