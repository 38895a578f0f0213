package ledger

import (
	"testing"

	"github.com/grantline/grantline/internal/cputime"
	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// prepareOne prepares ev alone (a plain batch).
func prepareOne(ev *pb.Event) (prepared, error) { return prepare(event.NewBatch([]*pb.Event{ev}), 0) }

// BenchmarkDedupeStage is the sequencer's first stage alone, on a batch of
// 4096 events a running log has not seen (its dedupe filter ready and
// ruling every key out, as for nearly every new event), one in 64 a repeat
// of an earlier one in the batch. b.N counts events; cpu-µs/event is the
// process's CPU time.
//
//	go test -run '^$' -bench DedupeStage -benchtime 2000000x -count 5 ./ledger/
func BenchmarkDedupeStage(b *testing.B) {
	l, err := newLog(b.Context(), testOptions().withDefaults(), newFakeStore())
	if err != nil {
		b.Fatal(err)
	}
	if err := l.startDedupeFilter(); err != nil {
		b.Fatal(err)
	}
	if l.filter == nil || !l.filter.ready.Load() {
		b.Fatal("the dedupe filter of an empty log is not ready")
	}
	const n = 4096
	r := &request{items: make([]prepared, n), results: make([]AppendResult, n), done: make(chan struct{})}
	batch := make([]item, n)
	for i := range n {
		ev := testEvent(i)
		if i%64 == 63 {
			ev = testEvent(i - 1)
		}
		if r.items[i], err = prepareOne(ev); err != nil {
			b.Fatal(err)
		}
		batch[i] = item{r, i}
	}
	b.ResetTimer()
	cpu0 := cputime.Process()
	for i := 0; i < b.N; i += n {
		fresh, _, _, err := l.dedupe(batch)
		if err != nil || len(fresh) != n-n/64 {
			b.Fatalf("dedupe: %d fresh, %v; want %d", len(fresh), err, n-n/64)
		}
	}
	b.ReportMetric(float64((cputime.Process()-cpu0).Nanoseconds())/1000/float64(b.N), "cpu-µs/event")
}
