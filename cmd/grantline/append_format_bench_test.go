package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/grantline/grantline/ingest/source"
	"github.com/grantline/grantline/internal/server"
	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// BenchmarkFormatToDurable measures vendor records end to end to durable,
// in process: adapter, the server's validation, and ledger.Append on a real
// badger ledger (fsync per batch), 1,000 records a batch. The records are
// each format's test data, cycled; a suffix on each event id keeps the
// ledger from treating the cycles as duplicates.
//
//	go test -run '^$' -bench FormatToDurable -benchtime 20000x -count 3 ./cmd/grantline
func BenchmarkFormatToDurable(b *testing.B) {
	for _, f := range source.Formats() {
		dir := filepath.Join("..", "..", "testdata", "sources", f.Name)
		ents, err := os.ReadDir(dir)
		if err != nil {
			b.Fatal(err)
		}
		var recs [][]byte
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), ".golden.json") || e.Name() == "README.md" {
				continue
			}
			fh, err := os.Open(filepath.Join(dir, e.Name()))
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
			ctx := context.Background()
			srv, err := server.Start(ctx, server.Config{DataDir: b.TempDir(), Listen: "127.0.0.1:0"})
			if err != nil {
				b.Fatal(err)
			}
			defer srv.Close(ctx)
			far := time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC) // the test data is dated
			events := 0
			b.ResetTimer()
			for done := 0; done < b.N; {
				var batch []*pb.Event
				for ; done < b.N && len(batch) < 1000; done++ {
					evs, err := f.Adapt(recs[done%len(recs)], "bench-"+f.Name)
					if err != nil {
						b.Fatal(err)
					}
					for _, ev := range evs {
						ev.Id += fmt.Sprintf("/%d", done)
					}
					batch = append(batch, evs...)
				}
				if len(batch) == 0 {
					continue
				}
				if err := event.ValidateBatch("events", batch, far); err != nil {
					b.Fatal(err)
				}
				if _, _, err := srv.Ledger().Append(ctx, batch); err != nil {
					b.Fatal(err)
				}
				events += len(batch)
			}
			s := b.Elapsed().Seconds()
			b.ReportMetric(float64(b.N)/s, "records/s")
			b.ReportMetric(float64(events)/s, "events/s")
		})
	}
}
