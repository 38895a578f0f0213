package ingest

import (
	"fmt"
	"io"
	"log/slog"
	"testing"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/ingest/auth"
	"github.com/grantline/grantline/internal/cputime"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// BenchmarkEvaluateScan compares the two ways a full evaluation reads
// chains, through EvaluateStream over loopback on the same badger ledger
// (a synthetic org, all rules): scan=off, a point read per leaf, and
// scan=on, the partitioned evaluation (one pass over the log, spilled to
// disk, ranges of 1 MiB here). In process nothing bounds the mapped files,
// so this is the CPU cost of the two read paths with every page resident,
// not the page faults a store larger than --max-mapped adds to point reads
// (those: scripts/bench-scale.sh, docs/BENCHMARKS.md "Streamed
// evaluation"). Run:
//
//	go test -run '^$' -bench BenchmarkEvaluateScan -benchtime 1x -count 3 ./ingest
func BenchmarkEvaluateScan(b *testing.B) {
	l, set, asOf := synthLedger(b, 2000)
	dir := b.TempDir()
	req := &pb.EvaluateRequest{AsOf: timestamppb.New(asOf)}
	for _, mode := range []ScanMode{ScanOff, ScanOn} {
		b.Run(fmt.Sprintf("scan=%s", mode), func(b *testing.B) {
			srv, err := New(Config{Ledger: l, Evaluator: set, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
				Auth:         &fakeAuth{tokens: map[string]auth.Principal{auditorTok: {Name: "audit", Role: auth.RoleAuditor}}},
				EvaluateScan: EvaluateScan{Mode: mode, Dir: dir, PartitionBytes: 1 << 20}})
			if err != nil {
				b.Fatal(err)
			}
			cl := h2cEvidenceClient(b, srv)
			var entries, findings uint64
			cpu0 := cputime.Process()
			peak := heapPeak(b, func() {
				for b.Loop() {
					entries, findings = benchEvaluateOnce(b, cl, req, "stream")
				}
			})
			b.ReportMetric(float64(entries)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
			b.ReportMetric(float64(entries)*float64(b.N)/(cputime.Process()-cpu0).Seconds(), "events/cpu-s")
			b.ReportMetric(float64(peak)/(1<<20), "peak-live-MiB")
			b.ReportMetric(float64(findings), "findings")
		})
	}
}
