package ingest

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	rtmetrics "runtime/metrics"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/ingest/auth"
	"github.com/grantline/grantline/internal/cputime"
	"github.com/grantline/grantline/ledger"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/proto/gen/grantline/v1/grantlinev1connect"
	"github.com/grantline/grantline/rules"
)

// BenchmarkEvaluate measures a whole evaluation of a synthetic org in a
// real badger ledger, server and client in one process, through
// EvaluateStream (path=stream) and, in the same run, the unary Evaluate
// (path=unary), and rules.Set.Stream called in process over the same
// chains without RPC (path=inprocess). It reports the entries evaluated per
// second and the peak live heap (as of the end of each GC cycle while it
// ran) above the live heap before it: what the evaluation holds, server and
// client together, beyond the ledger's own caches. catalog=own-chain leaves
// out backdated-closure, whose source index holds a record per entry of
// the log (docs/BENCHMARKS.md). Run:
//
//	go test -run '^$' -bench BenchmarkEvaluate -benchtime 1x -count 3 ./ingest
func BenchmarkEvaluate(b *testing.B) {
	for _, ids := range []int{500, 2000} {
		b.Run(fmt.Sprintf("identities=%d", ids), func(b *testing.B) {
			l, _, asOf := synthLedger(b, ids)
			for _, catalog := range []string{"all", "own-chain"} {
				b.Run("catalog="+catalog, func(b *testing.B) { benchEvaluatePaths(b, l, benchRuleSet(b, catalog), asOf) })
			}
		})
	}
}

// h2cEvidenceClient serves srv over h2c on loopback until b ends and
// returns an EvidenceService client of it that authenticates as the
// auditor.
func h2cEvidenceClient(b *testing.B, srv *Server, opts ...connect.ClientOption) grantlinev1connect.EvidenceServiceClient {
	b.Helper()
	hs := httptest.NewUnstartedServer(srv.Handler())
	hs.Config.Protocols = new(http.Protocols)
	hs.Config.Protocols.SetUnencryptedHTTP2(true)
	hs.Config.HTTP2 = HTTP2Config()
	hs.Start()
	b.Cleanup(hs.Close)
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	b.Cleanup(tr.CloseIdleConnections)
	return grantlinev1connect.NewEvidenceServiceClient(&http.Client{Transport: tr}, hs.URL,
		append([]connect.ClientOption{connect.WithInterceptors(bearerAuth(auditorTok))}, opts...)...)
}

// benchEvaluatePaths runs the three paths over l with set, behind one
// server.
func benchEvaluatePaths(b *testing.B, l *ledger.Log, set *rules.Set, asOf time.Time) {
	srv, err := New(Config{Ledger: l, Evaluator: set, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Auth: &fakeAuth{tokens: map[string]auth.Principal{auditorTok: {Name: "audit", Role: auth.RoleAuditor}}}})
	if err != nil {
		b.Fatal(err)
	}
	cl := h2cEvidenceClient(b, srv, connect.WithReadMaxBytes(1<<30))
	req := &pb.EvaluateRequest{AsOf: timestamppb.New(asOf)}
	for _, path := range []string{"stream", "unary", "inprocess"} {
		b.Run("path="+path, func(b *testing.B) {
			var entries, findings uint64
			cpu0 := cputime.Process()
			peak := heapPeak(b, func() {
				for b.Loop() {
					if path == "inprocess" {
						entries, findings = benchInProcess(b, srv, set, asOf)
					} else {
						entries, findings = benchEvaluateOnce(b, cl, req, path)
					}
				}
			})
			b.ReportMetric(float64(entries)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
			// CPU time is the figure that survives a loaded machine.
			b.ReportMetric(float64(entries)*float64(b.N)/(cputime.Process()-cpu0).Seconds(), "events/cpu-s")
			b.ReportMetric(float64(peak)/(1<<20), "peak-live-MiB")
			b.ReportMetric(float64(entries), "entries")
			b.ReportMetric(float64(findings), "findings")
		})
	}
}

// benchRuleSet is the built-in catalog, or without the rules that compare
// entries across subjects (catalog=own-chain).
func benchRuleSet(b *testing.B, catalog string) *rules.Set {
	builtin, err := rules.Builtin()
	if err != nil {
		b.Fatal(err)
	}
	if catalog == "own-chain" {
		kept := builtin[:0]
		for _, r := range builtin {
			if r.ID != "backdated-closure" {
				kept = append(kept, r)
			}
		}
		if len(kept) == len(builtin) {
			b.Fatal("no rule backdated-closure in the catalog: update the benchmark")
		}
		builtin = kept
	}
	set, err := rules.NewSet(builtin, rules.Params{})
	if err != nil {
		b.Fatal(err)
	}
	return set
}

// benchEvaluateOnce evaluates the whole log, receiving (and dropping) the
// findings as a client does, and returns the entries evaluated and the
// findings received.
func benchEvaluateOnce(b *testing.B, cl grantlinev1connect.EvidenceServiceClient, req *pb.EvaluateRequest, path string) (entries, findings uint64) {
	if path == "unary" {
		resp, err := cl.Evaluate(b.Context(), connect.NewRequest(req))
		if err != nil {
			b.Fatal(err)
		}
		return resp.Msg.GetEntriesEvaluated(), uint64(len(resp.Msg.GetFindings()))
	}
	stream, err := cl.EvaluateStream(b.Context(), connect.NewRequest(&pb.EvaluateStreamRequest{Request: req}))
	if err != nil {
		b.Fatal(err)
	}
	defer stream.Close()
	for stream.Receive() {
		findings += uint64(len(stream.Msg().GetChunk().GetFindings()))
		if t := stream.Msg().GetTrailer(); t != nil {
			entries = t.GetEntriesEvaluated()
		}
	}
	if err := stream.Err(); err != nil {
		b.Fatal(err)
	}
	return entries, findings
}

// benchInProcess is the evaluation the server runs, called directly.
func benchInProcess(b *testing.B, srv *Server, set *rules.Set, asOf time.Time) (entries, findings uint64) {
	size := srv.cfg.Ledger.(*ledger.Log).Latest().Size
	sum, err := set.Stream(b.Context(), srv.eachSubject(b.Context(), size), &chainSource{l: srv.cfg.Ledger, size: size}, asOf, asOf, false,
		func(*rules.SubjectResult) error { return nil })
	if err != nil {
		b.Fatal(err)
	}
	return uint64(sum.Entries), uint64(sum.Findings)
}

// heapPeak runs f and returns the highest live heap seen at the end of a
// GC cycle while it ran, above the live heap after a GC before it.
func heapPeak(b *testing.B, f func()) uint64 {
	sample := []rtmetrics.Sample{{Name: "/gc/heap/live:bytes"}}
	read := func() uint64 {
		rtmetrics.Read(sample)
		return sample[0].Value.Uint64()
	}
	runtime.GC()
	base := read()
	var peak atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		s := []rtmetrics.Sample{{Name: sample[0].Name}}
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				rtmetrics.Read(s)
				if v := s[0].Value.Uint64(); v > peak.Load() {
					peak.Store(v)
				}
			}
		}
	})
	f()
	runtime.GC() // the last cycle's live heap includes the run's tail
	if v := read(); v > peak.Load() {
		peak.Store(v)
	}
	close(stop)
	wg.Wait()
	if p := peak.Load(); p > base {
		return p - base
	}
	b.Log("the heap never grew above its starting size")
	return 0
}
