//go:build linux

package rules

import (
	"runtime"
	"testing"
	"time"

	"github.com/grantline/grantline/internal/cputime"
)

// BenchmarkViews builds the views of Catalog1M's organisation, a tenth of
// it (1,000 identities of 100 events), with the source index and the
// related chains as an evaluation reads them: the work around the rules.
// Run: go test -run '^$' -bench 'Views$' -benchmem ./rules/
func BenchmarkViews(b *testing.B) {
	s, src, subjects, now, idx := threadBench(b)
	defer runtime.UnlockOSThread()
	best := time.Duration(1 << 62)
	events := 0
	for b.Loop() {
		events = 0
		t0 := threadCPU(b)
		for _, sub := range subjects {
			v, _, err := s.loadViews(b.Context(), sub, src, now, idx)
			if err != nil {
				b.Fatal(err)
			}
			events += len(v.events)
			v.release()
		}
		best = min(best, threadCPU(b)-t0)
	}
	// The least thread CPU of b.N passes: load can only lengthen a pass.
	b.ReportMetric(float64(best.Nanoseconds())/float64(events), "cpu-ns/event")
}

// BenchmarkSourceScan builds backdated-closure's source index from a log of
// 100,000 entries (Catalog1M's organisation, a tenth of it) on one worker:
// the scan of the whole log an evaluation starts with.
// Run: go test -run '^$' -bench 'SourceScan' -benchmem ./rules/
func BenchmarkSourceScan(b *testing.B) {
	mem, _ := genOrg(1_000, 100)
	src := newLeafSource(b, mem)
	now := benchStart.Add(200 * 24 * time.Hour)
	best := time.Duration(1 << 62)
	for b.Loop() {
		t0 := cputime.Process()
		if _, err := buildSourceIndex(b.Context(), nil, src, now, 1); err != nil {
			b.Fatal(err)
		}
		best = min(best, cputime.Process()-t0)
	}
	// The least process CPU of b.N passes (the scan runs on a worker
	// goroutine; GC included): load can only lengthen a pass.
	b.ReportMetric(float64(best.Nanoseconds())/float64(src.LogSize()), "cpu-ns/entry")
}
