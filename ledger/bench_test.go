package ledger

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grantline/grantline/ledger/badgerstore"
	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// benchEvent is a ~500-byte event sharing its sub-messages with a template
// (encoding only reads them), so that making it costs little.
func benchEvent(tmpl *pb.Event, id string) *pb.Event {
	return &pb.Event{
		Id: id, Type: tmpl.Type, Time: tmpl.Time, Source: tmpl.Source, Subject: tmpl.Subject,
		Actor: tmpl.Actor, Entitlement: tmpl.Entitlement, Refs: tmpl.Refs, Reason: tmpl.Reason,
		Attributes: tmpl.Attributes,
	}
}

// BenchmarkAppend measures durable appends into badger (fsync per batch,
// dedupe on) from concurrent callers, each appending chunks of ~500-byte
// events. b.N counts events. The subjects=10000 pair spreads the events
// over 10,000 subjects, without and with the subject map (map=on), to
// measure the map's cost in the same run (docs/BENCHMARKS.md).
func BenchmarkAppend(b *testing.B) {
	for _, tc := range []struct {
		name           string
		callers, chunk int
		memory         bool // the in-memory fake store: the ledger's own ceiling, no disk
		subjects       int  // distinct subjects, round robin; 0: one
		smap           bool // Options.SubjectMap
		split          bool // the indexes in a separate badger store (Options.Index)
	}{
		{"callers=64/chunk=100", 64, 100, false, 0, false, false},
		{"callers=64/chunk=100/index=separate", 64, 100, false, 0, false, true},
		{"callers=16/chunk=1000", 16, 1000, false, 0, false, false},
		{"callers=16/chunk=1000/index=separate", 16, 1000, false, 0, false, true},
		{"callers=256/chunk=10", 256, 10, false, 0, false, false},
		{"callers=256/chunk=10/index=separate", 256, 10, false, 0, false, true},
		{"callers=64/chunk=100/store=memory", 64, 100, true, 0, false, false},
		{"callers=64/chunk=100/subjects=10000/map=off", 64, 100, false, 10000, false, true},
		{"callers=64/chunk=100/subjects=10000/map=on", 64, 100, false, 10000, true, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			o := testOptions()
			o.Now = time.Now
			o.SubjectMap = tc.smap
			var store Store = newFakeStore()
			if !tc.memory {
				dir := filepath.Join(b.TempDir(), "ledger")
				store = openBadgerStore(b, dir, badgerstore.Options{})
				if tc.split {
					o.Index = openBadgerStore(b, filepath.Join(dir, "index"), badgerstore.Options{NoSync: true})
				}
			}
			l, err := Open(context.Background(), store, o)
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			tmpl := testEvent(0)
			if n := len(mustEncode(b, tmpl)); n < 450 || n > 600 {
				b.Fatalf("template event encodes to %d bytes, want ~500", n)
			}
			subjects := make([]*pb.Identity, max(tc.subjects, 1))
			for i := range subjects {
				subjects[i] = &pb.Identity{Id: "user-" + strconv.Itoa(i), Kind: "human", Display: "Some User"}
			}
			if tc.subjects == 0 {
				subjects[0] = tmpl.Subject
			}
			var next atomic.Int64
			b.ResetTimer()
			cpu0 := processCPU()
			start := time.Now()
			var wg sync.WaitGroup
			for c := 0; c < tc.callers; c++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					evs := make([]*pb.Event, 0, tc.chunk)
					for {
						first := next.Add(int64(tc.chunk)) - int64(tc.chunk)
						if first >= int64(b.N) {
							return
						}
						evs = evs[:0]
						for i := first; i < min(first+int64(tc.chunk), int64(b.N)); i++ {
							ev := benchEvent(tmpl, "bench-"+strconv.FormatInt(i, 10))
							ev.Subject = subjects[i%int64(len(subjects))]
							evs = append(evs, ev)
						}
						if err := appendRetrying(l, evs); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			cpu := processCPU() - cpu0
			b.StopTimer()
			st := l.Stats()
			if got := l.Latest().Size; got != uint64(b.N) && (!tc.smap || got != uint64(b.N)+st.Batches) {
				b.Fatalf("size = %d, want %d events (and a map leaf for each of %d batches with a subject map)", got, b.N, st.Batches)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
			b.ReportMetric(float64(st.BatchEvents)/float64(max(st.Batches, 1)), "events/batch")
			b.ReportMetric(float64(st.CommitTime.Milliseconds())/float64(max(st.Batches, 1)), "ms/batch")
			b.ReportMetric(float64(st.StoreTime.Milliseconds())/float64(max(st.Batches, 1)), "store-ms/batch")
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/event")
		})
	}
}

func mustEncode(b testing.TB, ev *pb.Event) []byte {
	leaf, err := event.EncodeLeaf(ev, testNow)
	if err != nil {
		b.Fatal(err)
	}
	return leaf
}

// BenchmarkInclusionProof measures warm inclusion proofs at the latest size
// of a 200,000-leaf badger log, for random leaves; p50 and p99 are reported.
func BenchmarkInclusionProof(b *testing.B) {
	const n = 200_000
	l, err := Open(context.Background(), openBadgerStore(b, filepath.Join(b.TempDir(), "ledger"), badgerstore.Options{}), testOptions())
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	tmpl := testEvent(0)
	for i := 0; i < n; i += 5000 {
		evs := make([]*pb.Event, 5000)
		for j := range evs {
			evs[j] = benchEvent(tmpl, "p-"+strconv.Itoa(i+j))
		}
		mustAppend(b, l, evs)
	}
	ctx := context.Background()
	size := l.Latest().Size
	r := rand.New(rand.NewPCG(1, 2))
	for range 20_000 { // warm the tile cache
		if _, err := l.InclusionProof(ctx, r.Uint64N(size), size); err != nil {
			b.Fatal(err)
		}
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for b.Loop() {
		i := r.Uint64N(size)
		t0 := time.Now()
		if _, err := l.InclusionProof(ctx, i, size); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
}

// BenchmarkAppendGrowth appends b.N events (at least 2,000,000 are
// meant: -benchtime 2000000x) to one badger log with the separate index
// store, 64 callers x 100 ~500-byte events, and reports the rate of every
// 250,000-event segment (seg1-events/s, seg2-events/s, ...), so that a
// slowdown as the store grows shows (docs/BENCHMARKS.md, "Appends at the
// limit"). Opt-in: the plain Append pattern does not match it.
func BenchmarkAppendGrowth(b *testing.B) {
	const segment, callers, chunk = 250_000, 64, 100
	o := testOptions()
	o.Now = time.Now
	dir := filepath.Join(b.TempDir(), "ledger")
	store := openBadgerStore(b, dir, badgerstore.Options{})
	o.Index = openBadgerStore(b, filepath.Join(dir, "index"), badgerstore.Options{NoSync: true})
	l, err := Open(context.Background(), store, o)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	tmpl := testEvent(0)
	subjects := make([]*pb.Identity, 5000)
	for i := range subjects {
		subjects[i] = &pb.Identity{Id: "user-" + strconv.Itoa(i), Kind: "human", Display: "Some User"}
	}
	var next, done atomic.Int64
	segs := make([]time.Duration, (b.N+segment-1)/segment)
	cpus := make([]time.Duration, len(segs))
	var segMu sync.Mutex
	b.ResetTimer()
	start, cpu0 := time.Now(), processCPU()
	segStart, segCPU := start, cpu0
	var wg sync.WaitGroup
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			evs := make([]*pb.Event, 0, chunk)
			for {
				first := next.Add(chunk) - chunk
				if first >= int64(b.N) {
					return
				}
				evs = evs[:0]
				for i := first; i < min(first+chunk, int64(b.N)); i++ {
					ev := benchEvent(tmpl, "growth-"+strconv.FormatInt(i, 10))
					ev.Subject = subjects[i%int64(len(subjects))]
					evs = append(evs, ev)
				}
				if err := appendRetrying(l, evs); err != nil {
					b.Error(err)
					return
				}
				n := done.Add(int64(len(evs)))
				if s := (n - int64(len(evs))) / segment; s != n/segment || n == int64(b.N) {
					// This append completed a segment.
					segMu.Lock()
					now, c := time.Now(), processCPU()
					k := min(int((n-1)/segment), len(segs)-1)
					segs[k], cpus[k] = now.Sub(segStart), c-segCPU
					segStart, segCPU = now, c
					segMu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := processCPU() - cpu0
	b.StopTimer()
	for k, d := range segs {
		n := min(segment, b.N-k*segment)
		if d > 0 {
			b.ReportMetric(float64(n)/d.Seconds(), "seg"+strconv.Itoa(k+1)+"-events/s")
			b.ReportMetric(float64(cpus[k].Microseconds())/float64(n), "seg"+strconv.Itoa(k+1)+"-cpu-µs/event")
		}
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/event")
}

// appendRetrying appends evs, waiting a millisecond and retrying while the
// log pushes back.
func appendRetrying(l *Log, evs []*pb.Event) error {
	for {
		_, _, err := l.Append(context.Background(), evs)
		if !isErr(err, ErrPushback) {
			return err
		}
		time.Sleep(time.Millisecond)
	}
}
