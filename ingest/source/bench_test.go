package source_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/grantline/grantline/ingest/source"
)

// BenchmarkAdapt measures each adapter alone over the records of its test
// data: records/s (and events/s) of the pure mapping, without reading or
// validation. Run: go test ./ingest/source -run XXX -bench Adapt -count 5
func BenchmarkAdapt(b *testing.B) {
	for _, f := range source.Formats() {
		var recs [][]byte
		ents, err := os.ReadDir(filepath.Join(testdataDir, f.Name))
		if err != nil {
			b.Fatal(err)
		}
		for _, e := range ents {
			if filepath.Ext(e.Name()) == ".json" && filepath.Ext(e.Name()[:len(e.Name())-5]) == ".golden" || e.Name() == "README.md" {
				continue
			}
			fh, err := os.Open(filepath.Join(testdataDir, f.Name, e.Name()))
			if err != nil {
				b.Fatal(err)
			}
			if err := f.Records(e.Name(), fh, func(r source.Record) error {
				recs = append(recs, append([]byte(nil), r.Raw...))
				return nil
			}); err != nil {
				b.Fatal(err)
			}
			fh.Close()
		}
		b.Run(f.Name, func(b *testing.B) {
			n, events := 0, 0
			for b.Loop() {
				evs, err := f.Adapt(recs[n%len(recs)], "bench")
				if err != nil {
					b.Fatal(err)
				}
				events += len(evs)
				n++
			}
			s := b.Elapsed().Seconds()
			b.ReportMetric(float64(n)/s, "records/s")
			b.ReportMetric(float64(events)/s, "events/s")
		})
	}
}
