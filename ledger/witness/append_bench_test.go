package witness

import (
	"context"
	"errors"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grantline/grantline/internal/witnesstest"
	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/badgerstore"
	"github.com/grantline/grantline/ledger/checkpoint"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// BenchmarkAppendWitnessed measures append throughput into a real badger
// ledger (indexes in a separate index store, subject map on, 64 callers of
// 100-event chunks of ~500-byte events over 10,000 subjects, as in ledger's BenchmarkAppend
// .../subjects=10000/map=on) without and with a Witnesser sending its
// checkpoints to a real litewitness on loopback, fed the ledger's latest
// checkpoint every 100 ms as grantline serve does, so the two sub-benchmarks
// of one run give the cost of witnessing. b.N counts events; run with
// -benchtime 100000x. The witnessed one also reports lag-ms: how long after
// the last append returned a witnessed checkpoint covered it.
func BenchmarkAppendWitnessed(b *testing.B) {
	for _, witnessed := range []bool{false, true} {
		b.Run("witness="+map[bool]string{false: "none", true: "litewitness"}[witnessed], func(b *testing.B) {
			benchmarkAppendWitnessed(b, witnessed)
		})
	}
}

func benchmarkAppendWitnessed(b *testing.B, witnessed bool) {
	const origin = "grantline.test/bench"
	key := seededKey(0x43)
	signer, err := checkpoint.NewNoteSigner(origin, key)
	if err != nil {
		b.Fatal(err)
	}
	vkey, err := checkpoint.VerifierKey(origin, key.Public())
	if err != nil {
		b.Fatal(err)
	}
	verifier, err := checkpoint.NewNoteVerifier(vkey)
	if err != nil {
		b.Fatal(err)
	}
	dir := filepath.Join(b.TempDir(), "ledger")
	st, err := badgerstore.Open(dir, badgerstore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	ix, err := badgerstore.Open(filepath.Join(dir, "index"), badgerstore.Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	l, err := ledger.Open(context.Background(), st, ledger.Options{Signer: signer, Verifier: verifier, Index: ix, SubjectMap: true})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()

	var w *Witnesser
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	if witnessed {
		lw := witnesstest.Start(b, "witness1.test", witnesstest.Log{Origin: origin, VKey: vkey})
		p, err := ParsePolicy("bench.policy", []byte("witness one "+lw.VKey+" "+lw.URL+"\nquorum 1\n"))
		if err != nil {
			b.Fatal(err)
		}
		if w, err = New(Config{Policy: p, Log: verifier, Proof: l.ConsistencyProof}); err != nil {
			b.Fatal(err)
		}
		wg.Go(func() { w.Run(ctx) })
		wg.Go(func() { // grantline serve's feed (internal/server runWitnesser)
			t := time.NewTicker(100 * time.Millisecond)
			defer t.Stop()
			var fed uint64
			for first := true; ; first = false {
				if cp := l.Latest(); first || cp.Size != fed {
					if err := w.Submit(cp.Note); err != nil {
						b.Error(err)
						return
					}
					fed = cp.Size
				}
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		})
	}

	subjects := make([]*pb.Identity, 10000)
	for i := range subjects {
		subjects[i] = &pb.Identity{Id: "user-" + strconv.Itoa(i), Kind: "human", Display: "Some User"}
	}
	at := timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	const callers, chunk = 64, 100
	var next atomic.Int64
	b.ResetTimer()
	start := time.Now()
	var cwg sync.WaitGroup
	for range callers {
		cwg.Go(func() {
			evs := make([]*pb.Event, 0, chunk)
			for {
				first := next.Add(chunk) - chunk
				if first >= int64(b.N) {
					return
				}
				evs = evs[:0]
				for i := first; i < min(first+chunk, int64(b.N)); i++ {
					evs = append(evs, &pb.Event{
						Id:      "bench-" + strconv.FormatInt(i, 10),
						Type:    "access.approved",
						Time:    at,
						Source:  &pb.Source{System: "iga-1", Product: "sailpoint", Tenant: "acme"},
						Subject: subjects[i%int64(len(subjects))],
						Actor:   &pb.Identity{Id: "approver-1", Kind: "human"},
						Entitlement: &pb.Entitlement{
							Id: "role-" + strconv.FormatInt(i%11, 10), Resource: "aws:prod", Privileged: i%2 == 0,
						},
						Refs:       &pb.Refs{Request: "req-" + strconv.FormatInt(i, 10), Ticket: "CHG-1234"},
						Reason:     strings.Repeat("quarterly access for on-call duty ", 9),
						Attributes: map[string]string{"region": "eu-west-1", "cost_center": "4711"},
					})
				}
				for {
					_, _, err := l.Append(context.Background(), evs)
					if isPushback(err) {
						time.Sleep(time.Millisecond)
						continue
					}
					if err != nil {
						b.Error(err)
						return
					}
					break
				}
			}
		})
	}
	cwg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	if w != nil {
		last := l.Latest().Size
		wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
		defer wcancel()
		if _, err := w.Wait(wctx, last); err != nil {
			b.Fatalf("the last checkpoint (size %d) was not witnessed: %v", last, err)
		}
		b.ReportMetric(float64(time.Since(start.Add(elapsed)).Milliseconds()), "lag-ms")
	}
}

func isPushback(err error) bool { return errors.Is(err, ledger.ErrPushback) }
