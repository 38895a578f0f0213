package verify

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/grantline/grantline/ledger"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

var subjectBenchLog = flag.Int("subject-bench-log", 200_000, "events in the log of BenchmarkExportSubject (docs/BENCHMARKS.md quotes 1,000,000)")

// BenchmarkExportSubject measures a package of one subject proven complete
// (evidence export --subject) for a 10,000-event chain in a log of
// -subject-bench-log events (default 200,000) with a subject map, in badger:
// the export's time, the package's size, and the verify time. The log is
// built once, outside the timing.
func BenchmarkExportSubject(b *testing.B) {
	const chain = 10_000
	total := max(*subjectBenchLog, 2*chain)
	m := newMapLog(b, ledger.Options{})
	evs := benchEvents(total - chain)
	// The leaver's 10,000 events, spread evenly through the log.
	leaver := &pb.Identity{Id: "leaver", Kind: "human", Display: "The Leaver"}
	step := (total - chain) / chain
	out := make([]*pb.Event, 0, total)
	for i, ev := range evs {
		out = append(out, ev)
		if i%step == 0 && len(out) < total {
			e := benchEvents(1)[0]
			e.Id, e.Subject = fmt.Sprintf("leaver-%06d", i/step), leaver
			e.Type = "session.started"
			out = append(out, e)
		}
	}
	for i := 0; i < len(out); i += 50_000 {
		m.append(out[i:min(i+50_000, len(out))])
	}
	size := m.l.Latest().Size
	s, pub, _ := evidenceKey(b, "ed25519")
	keys := Keys{LogKey: m.vkey, EvidenceKey: pub}
	var dir string
	b.ResetTimer()
	for b.Loop() {
		dir = filepath.Join(b.TempDir(), "pkg")
		if err := Export(b.Context(), m, ExportOptions{Signer: s, AsOf: asOf, Evaluator: testEvaluator{}, Subjects: []string{"leaver"}}, DirSink{Dir: dir}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	var pkgBytes, entryBytes, complBytes int64
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			b.Fatal(err)
		}
		pkgBytes += fi.Size()
		switch e.Name() {
		case "entries.jsonl":
			entryBytes = fi.Size()
		case "completeness.json":
			complBytes = fi.Size()
		}
	}
	opts := verifyOpts()
	opts.RequireComplete = true
	t0 := time.Now()
	rep, err := Verify(b.Context(), dir, keys, opts)
	verifyTime := time.Since(t0)
	if err != nil {
		b.Fatalf("Verify --require-complete: %v", err)
	}
	if rep.Kind != KindSubjectsComplete || rep.Entries < chain {
		b.Fatalf("kind %q with %d entries, want %q with %d+", rep.Kind, rep.Entries, KindSubjectsComplete, chain)
	}
	b.ReportMetric(float64(size), "log-leaves")
	b.ReportMetric(float64(rep.Entries), "pkg-entries")
	b.ReportMetric(float64(pkgBytes)/1e6, "pkg-MB")
	b.ReportMetric(float64(entryBytes)/float64(rep.Entries), "bytes/entry")
	b.ReportMetric(float64(complBytes), "completeness-bytes")
	b.ReportMetric(float64(verifyTime.Milliseconds()), "verify-ms")
}
