package rules

import (
	"testing"
	"time"

	"github.com/grantline/grantline/internal/cputime"
)

// BenchmarkPopulation100k derives the population of every built-in rule
// over the 1,000 identities (100,000 events) of BenchmarkCatalog100k, with
// the findings' primary entries as an export passes them, to compare with
// evaluating the catalog over the same chains (the two run in one export).
func BenchmarkPopulation100k(b *testing.B) {
	mem, subjects := genOrg(1_000, 100)
	src := newLeafSource(b, mem)
	s := benchSet(b)
	now := benchStart.Add(200 * 24 * time.Hour)
	res, err := s.Evaluate(b.Context(), subjects, src, now)
	if err != nil {
		b.Fatal(err)
	}
	var primaries []Primary
	for _, f := range res.Findings {
		primaries = append(primaries, Primary{Rule: f.Rule, Subject: f.Subject, Index: f.Entries[0].Index})
	}
	b.ResetTimer()
	var items []Item
	cpu0 := cputime.Process()
	for b.Loop() {
		if items, err = s.Population(b.Context(), subjects, src, now, now, primaries); err != nil {
			b.Fatal(err)
		}
	}
	cpu := cputime.Process() - cpu0
	b.ReportMetric(float64(res.Entries)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(res.Entries)*float64(b.N)/cpu.Seconds(), "events/cpu-s")
	b.ReportMetric(float64(len(items)), "items")
}
