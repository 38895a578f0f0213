package witness

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/grantline/grantline/internal/witnesstest"
)

// BenchmarkWitnessingLag measures, with a real litewitness on loopback, how
// long after a checkpoint is handed to the Witnesser a witnessed checkpoint
// covers it (the time from checkpoint to quorum), under a steady load of one
// checkpoint of 50 entries every 5 ms (10,000 entries/s). Each iteration is
// one checkpoint; run with -benchtime 2000x (10 s). It reports p50-lag-ms
// (the median over the run) and p99-lag-ms, for the default round interval
// and for a 100 ms one: the lag is about the interval plus one round trip.
func BenchmarkWitnessingLag(b *testing.B) {
	for _, iv := range []time.Duration{DefaultMinInterval, 100 * time.Millisecond} {
		b.Run("interval="+iv.String(), func(b *testing.B) { benchmarkLag(b, iv) })
	}
}

func benchmarkLag(b *testing.B, interval time.Duration) {
	l := newMemLog(b, testOrigin, 0x42)
	lw := witnesstest.Start(b, "witness1.test", l.log())
	p, err := ParsePolicy("bench.policy", []byte("witness one "+lw.VKey+" "+lw.URL+"\nquorum 1\n"))
	if err != nil {
		b.Fatal(err)
	}
	w, err := New(Config{Policy: p, Log: l.verifier, Proof: l.proof, MinInterval: interval})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { w.Run(ctx) })

	type sent struct {
		size uint64
		at   time.Time
	}
	var (
		mu      sync.Mutex
		pending []sent
		lags    []time.Duration
	)
	wg.Go(func() {
		var seen uint64
		for {
			wd, err := w.Wait(ctx, seen+1)
			if err != nil {
				return
			}
			now := time.Now()
			seen = wd.Size
			mu.Lock()
			for len(pending) > 0 && pending[0].size <= wd.Size {
				lags = append(lags, now.Sub(pending[0].at))
				pending = pending[1:]
			}
			mu.Unlock()
		}
	})

	tick := time.NewTicker(5 * time.Millisecond)
	b.ResetTimer()
	var last uint64
	for range b.N {
		<-tick.C
		n := l.append(b, 50)
		last = uint64(l.n)
		mu.Lock()
		pending = append(pending, sent{last, time.Now()})
		mu.Unlock()
		if err := w.Submit(n); err != nil {
			b.Fatal(err)
		}
	}
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	if _, err := w.Wait(wctx, last); err != nil {
		b.Fatal(err)
	}
	wcancel()
	time.Sleep(10 * time.Millisecond)
	b.StopTimer()
	cancel()
	wg.Wait()
	tick.Stop()

	mu.Lock()
	defer mu.Unlock()
	if len(lags) == 0 {
		b.Fatal("nothing was witnessed")
	}
	slices.Sort(lags)
	pct := func(q float64) float64 {
		return float64(lags[int(q*float64(len(lags)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-lag-ms")
	b.ReportMetric(pct(0.99), "p99-lag-ms")
}
