package ingest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grantline/grantline/ledger"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// nullLedger acknowledges appends after a fixed commit delay without storing
// them, so a benchmark measures the service (decode, validation, auth,
// pipelining, encode) rather than the disk. Other methods are the fake's.
type nullLedger struct {
	*fakeLedger
	next   atomic.Uint64
	commit time.Duration
}

func (l *nullLedger) Append(ctx context.Context, evs []*pb.Event) ([]ledger.AppendResult, uint64, error) {
	if l.commit > 0 {
		time.Sleep(l.commit) // stands in for one group-commit fsync
	}
	end := l.next.Add(uint64(len(evs)))
	out := make([]ledger.AppendResult, len(evs))
	for i := range out {
		out[i].Index = end - uint64(len(evs)) + uint64(i)
	}
	return out, end, nil
}

// BenchmarkAppendStream: one stream, batches of 1000 ~500-byte events over
// h2c loopback, the ledger taking 2 ms per batch. Run with
// go test -run '^$' -bench AppendStream -benchtime 200x ./ingest
func BenchmarkAppendStream(b *testing.B) {
	for _, streams := range []int{1, 4} {
		b.Run(fmt.Sprintf("streams=%d", streams), func(b *testing.B) {
			t := &testing.T{}
			nl := &nullLedger{fakeLedger: newFakeLedger(t), commit: 2 * time.Millisecond}
			e := newEnv(t, func(c *Config) { c.Ledger = nl })
			const per = 1000
			batch := make([]*pb.Event, per)
			for i := range batch {
				ev := newEvent("okta", fmt.Sprint("e", i), "grant.activated", fmt.Sprint("user", i%100))
				ev.Reason = strings.Repeat("r", 250)
				batch[i] = ev
			}
			b.SetBytes(0)
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for s := range streams {
				wg.Add(1)
				go func() {
					defer wg.Done()
					stream := e.clients(protocols[0], adminTok).ingest.AppendStream(context.Background())
					n := b.N / streams
					go func() {
						for i := range n {
							stream.Send(&pb.AppendStreamRequest{Seq: uint64(s*n + i), Events: batch})
						}
						stream.CloseRequest()
					}()
					for range n {
						if _, err := stream.Receive(); err != nil {
							b.Error(err)
							return
						}
					}
					stream.CloseResponse()
				}()
			}
			wg.Wait()
			b.ReportMetric(float64(b.N/streams*streams*per)/time.Since(start).Seconds(), "events/s")
		})
	}
}
