package rules

import (
	"testing"
	"time"
)

// BenchmarkViews builds the views of Catalog1M's organisation, a tenth of
// it (1,000 identities of 100 events), with the source index and the
// related chains as an evaluation reads them: the work around the rules.
// Run: go test -run '^$' -bench 'Views$' -benchmem ./rules/
func BenchmarkViews(b *testing.B) {
	mem, subjects := genOrg(1_000, 100)
	src := newLeafSource(b, mem)
	s := benchSetOptions(b, Options{Workers: 1})
	now := benchStart.Add(200 * 24 * time.Hour)
	idx, err := buildSourceIndex(b.Context(), nil, src, now, 1)
	if err != nil {
		b.Fatal(err)
	}
	events := 0
	for b.Loop() {
		for _, sub := range subjects {
			v, _, err := s.loadViews(b.Context(), sub, src, now, idx)
			if err != nil {
				b.Fatal(err)
			}
			events += len(v.events)
			v.release()
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(events), "ns/event")
}

// BenchmarkSourceScan builds backdated-closure's source index from a log of
// 100,000 entries (Catalog1M's organisation, a tenth of it) on one worker:
// the scan of the whole log an evaluation starts with.
// Run: go test -run '^$' -bench 'SourceScan' -benchmem ./rules/
func BenchmarkSourceScan(b *testing.B) {
	mem, _ := genOrg(1_000, 100)
	src := newLeafSource(b, mem)
	now := benchStart.Add(200 * 24 * time.Hour)
	for b.Loop() {
		if _, err := buildSourceIndex(b.Context(), nil, src, now, 1); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*int(src.LogSize())), "ns/entry")
}
