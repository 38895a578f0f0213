package ledger

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/grantline/grantline/internal/cputime"
	"github.com/grantline/grantline/ledger/badgerstore"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// BenchmarkChainRead reads every subject's chain of a badger log laid out
// like `grantline serve`'s (a main store and a separate index store) and
// filled like `grantline bench`'s feed: event i belongs to subject
// i%subjects, so a chain's entries lie `subjects` apart in the log. The log
// is closed and reopened before reading (memtables flushed, caches cold),
// as a server evaluating a kept ledger reads it. Each op reads every chain
// once, the way an evaluation through the server does (subjects in index
// order, SubjectEntries in pages of 1,000), or the whole log in index
// order, the way the source index of backdated-closure reads it: (scan)
// with Entries in pages of 1,024, copied, or (scan-in-place) with
// ScanEntries. CPU-ns/entry moves less with the machine's
// load than wall time. Run:
//
//	go test -run '^$' -bench 'ChainRead' -benchtime 3x -count 3 ./ledger/
func BenchmarkChainRead(b *testing.B) {
	const subjects, perSubject = 1000, 200
	dir := b.TempDir()
	open := func() *Log {
		o := testOptions()
		o.Index = openBadgerStore(b, filepath.Join(dir, "index"), badgerstore.Options{NoSync: true})
		l, err := Open(context.Background(), openBadgerStore(b, filepath.Join(dir, "main"), badgerstore.Options{}), o)
		if err != nil {
			b.Fatal(err)
		}
		return l
	}
	l := open()
	tmpl := testEvent(0)
	batch := make([]*pb.Event, 0, 1000)
	for i := range subjects * perSubject {
		ev := benchEvent(tmpl, "c-"+strconv.Itoa(i))
		ev.Subject = &pb.Identity{Id: "user-" + strconv.Itoa(i%subjects), Kind: "human"}
		batch = append(batch, ev)
		if len(batch) == cap(batch) {
			mustAppend(b, l, batch)
			batch = batch[:0]
		}
	}
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
	l = open()
	b.Cleanup(func() { l.Close() })
	ctx := context.Background()
	size := l.Latest().Size
	var list []string
	if err := l.ForEachSubject(ctx, size, func(s string) error { list = append(list, s); return nil }); err != nil {
		b.Fatal(err)
	}
	report := func(b *testing.B, entries int, cpu0 float64) {
		n := float64(entries) * float64(b.N)
		b.ReportMetric(b.Elapsed().Seconds()*1e9/n, "ns/entry")
		b.ReportMetric((cputime.Process().Seconds()-cpu0)*1e9/n, "cpu-ns/entry")
	}
	b.Run(fmt.Sprintf("chains/subjects=%d/events=%d", subjects, perSubject), func(b *testing.B) {
		cpu0 := cputime.Process().Seconds()
		entries := 0
		for b.Loop() {
			entries = 0
			for _, s := range list {
				for start := uint64(0); ; {
					es, err := l.SubjectEntries(ctx, s, size, start, 1000)
					if err != nil {
						b.Fatal(err)
					}
					entries += len(es)
					if len(es) < 1000 {
						break
					}
					start = es[len(es)-1].Index + 1
				}
			}
		}
		if entries != subjects*perSubject {
			b.Fatalf("read %d entries, want %d", entries, subjects*perSubject)
		}
		report(b, entries, cpu0)
	})
	b.Run("scan", func(b *testing.B) {
		cpu0 := cputime.Process().Seconds()
		for b.Loop() {
			for start := uint64(0); start < size; start += 1024 {
				if _, err := l.Entries(ctx, start, 1024); err != nil {
					b.Fatal(err)
				}
			}
		}
		report(b, int(size), cpu0)
	})
	b.Run("scan-in-place", func(b *testing.B) {
		cpu0 := cputime.Process().Seconds()
		for b.Loop() {
			if err := l.ScanEntries(ctx, 0, size, func(Entry) error { return nil }); err != nil {
				b.Fatal(err)
			}
		}
		report(b, int(size), cpu0)
	})
}
