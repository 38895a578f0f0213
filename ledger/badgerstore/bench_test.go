package badgerstore

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/grantline/grantline/internal/cputime"
)

// BenchmarkCommit measures one durable commit of a batch shaped like the
// ledger's (per event: a ~600-byte leaf, and with indexes a leaf-hash, a
// dedupe and a subject key), to show where append time goes. b.N counts
// events; cpu-ns/event is the process's CPU per event during the commits
// (badger's writer goroutine included), which moves less with the
// machine's load than events/s. batch=2048/leaves is the ledger's main
// store in the Append benchmark (~2,000 events per batch, indexes in a
// separate store): run it alternately against a build without leaf
// bundles to see what they save (docs/BENCHMARKS.md, "Round 6").
func BenchmarkCommit(b *testing.B) {
	for _, tc := range []struct {
		name    string
		batch   int
		indexes bool
		sync    bool
		memMB   int64
	}{
		{"batch=4096/leaves+indexes/memtable=16MB", 4096, true, true, 16},
		{"batch=4096/leaves", 4096, false, true, 0},
		{"batch=2048/leaves", 2048, false, true, 0},
		{"batch=4096/leaves+indexes", 4096, true, true, 0},
		{"batch=4096/leaves+indexes/nosync", 4096, true, false, 0},
		{"batch=512/leaves+indexes", 512, true, true, 0},
	} {
		b.Run(tc.name, func(b *testing.B) {
			s, err := Open(b.TempDir(), Options{BadgerOptions: func(o badger.Options) badger.Options {
				o = o.WithSyncWrites(tc.sync)
				if tc.memMB > 0 {
					o = o.WithMemTableSize(tc.memMB << 20)
				}
				return o
			}})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			leaf := make([]byte, 600)
			var idx uint64
			var commit time.Duration
			var cpu time.Duration
			b.ResetTimer()
			for done := 0; done < b.N; done += tc.batch {
				var ks, vs [][]byte
				for range min(tc.batch, b.N-done) {
					k := binary.BigEndian.AppendUint64([]byte{'l'}, idx)
					h := sha256.Sum256(k)
					ks, vs = append(ks, k), append(vs, leaf)
					if tc.indexes {
						ks = append(ks, append([]byte{'h'}, h[:]...), append([]byte{'d'}, h[:]...), []byte(fmt.Sprintf("suser-%d\x00\x01%s", idx%1000, k[1:])))
						vs = append(vs, k[1:], append(k[1:9:9], h[:]...), []byte{})
					}
					idx++
				}
				t0, c0 := time.Now(), cputime.Process()
				if err := s.Commit(ks, vs); err != nil {
					b.Fatal(err)
				}
				commit += time.Since(t0)
				cpu += cputime.Process() - c0
			}
			b.ReportMetric(float64(b.N)/commit.Seconds(), "events/s")
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/event")
		})
	}
}

// BenchmarkCommitIndex measures the commit of a separate index store
// (NoSync: ordered transactions, commitOrdered) fed as the ledger feeds it:
// per event a 17-byte leaf-hash key and a 17-byte dedupe key, each with an
// 8-byte index, and a subject key (one of subjects) with an empty value, in
// batches of 2,048 events, each closed by the watermark. b.N counts events;
// ns/op is the commit's wall time per event (the writer goroutine's
// skiplist inserts included), and cpu-ns/event the process's CPU per event
// during the commits.
func BenchmarkCommitIndex(b *testing.B) {
	for _, subjects := range []int{1, 1000} {
		b.Run(fmt.Sprintf("subjects=%d", subjects), func(b *testing.B) {
			s, err := Open(b.TempDir(), Options{NoSync: true})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			const batch = 2048
			var idx uint64
			ks, vs := make([][]byte, 0, 3*batch+1), make([][]byte, 0, 3*batch+1)
			var cpu time.Duration
			b.ResetTimer()
			for done := 0; done < b.N; done += batch {
				b.StopTimer()
				ks, vs = ks[:0], vs[:0]
				for range min(batch, b.N-done) {
					v := binary.BigEndian.AppendUint64(nil, idx)
					h := sha256.Sum256(v)
					d := sha256.Sum256(h[:])
					ks = append(ks, append([]byte{'h'}, h[:16]...), append([]byte{'d'}, d[:16]...),
						binary.BigEndian.AppendUint64(fmt.Appendf(nil, "suser-%03d\x00\x01", idx*7919%uint64(subjects)), idx))
					vs = append(vs, v, v, []byte{})
					idx++
				}
				ks, vs = append(ks, []byte("mindexed")), append(vs, binary.BigEndian.AppendUint64(nil, idx))
				b.StartTimer()
				cpu0 := cputime.Process()
				if err := s.Commit(ks, vs); err != nil {
					b.Fatal(err)
				}
				cpu += cputime.Process() - cpu0
			}
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/event")
		})
	}
}
