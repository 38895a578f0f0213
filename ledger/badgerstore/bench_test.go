package badgerstore

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// BenchmarkCommit measures one durable commit of a batch shaped like the
// ledger's (per event: a ~600-byte leaf, and with indexes a leaf-hash, a
// dedupe and a subject key), to show where append time goes. b.N counts
// events.
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
				t0 := time.Now()
				if err := s.Commit(ks, vs); err != nil {
					b.Fatal(err)
				}
				commit += time.Since(t0)
			}
			b.ReportMetric(float64(b.N)/commit.Seconds(), "events/s")
		})
	}
}
