package main

import (
	"context"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/grantline/grantline/ingest/client"
	"github.com/grantline/grantline/internal/server"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// BenchmarkGetInclusionProofRPC measures GetInclusionProof from a warm server
// (real ledger on disk, 100,000 entries) over the Connect protocol on
// loopback: the latency a client sees, network stack included. Proofs are for
// random indices at the latest size; each is verified against the root.
//
//	go test -run '^$' -bench GetInclusionProofRPC -benchtime 20000x -count 5 ./cmd/grantline
func BenchmarkGetInclusionProofRPC(b *testing.B) {
	ctx := context.Background()
	srv, err := server.Start(ctx, server.Config{DataDir: b.TempDir(), Listen: "127.0.0.1:0"})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close(ctx)
	const n = 100_000
	for i := 0; i < n; i += 5000 {
		evs := make([]*pb.Event, 5000)
		for j := range evs {
			evs[j] = testEvent(i+j, "u"+string(rune('a'+j%26)))
		}
		if _, _, err := srv.Ledger().Append(ctx, evs); err != nil {
			b.Fatal(err)
		}
	}
	cl, err := client.Dial(srv.URL, client.Options{Token: srv.AdminToken, NoGzip: true})
	if err != nil {
		b.Fatal(err)
	}
	lc := cl.Log()
	r := rand.New(rand.NewPCG(1, 2))
	// Warm up: the tile cache and the connection.
	for range 2000 {
		if _, err := lc.GetInclusionProof(ctx, connect.NewRequest(&pb.GetInclusionProofRequest{Leaf: &pb.GetInclusionProofRequest_Index{Index: r.Uint64N(n)}})); err != nil {
			b.Fatal(err)
		}
	}
	root := srv.Ledger().Latest().Root
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		resp, err := lc.GetInclusionProof(ctx, connect.NewRequest(&pb.GetInclusionProofRequest{Leaf: &pb.GetInclusionProofRequest_Index{Index: r.Uint64N(n)}}))
		lat = append(lat, time.Since(t0))
		if err != nil {
			b.Fatal(err)
		}
		m := resp.Msg
		if err := proof.VerifyInclusion(rfc6962.DefaultHasher, m.GetIndex(), m.GetTreeSize(), m.GetLeafHash(), m.GetHashes(), root[:]); err != nil {
			b.Fatalf("proof of %d in %d does not verify: %v", m.GetIndex(), m.GetTreeSize(), err)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
