package pgstore

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/badgerstore"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// BenchmarkAppend measures durable appends through the ledger on PostgreSQL
// and, in the same run, on badger: 64 concurrent callers appending chunks
// of 100 ~500-byte events. b.N counts events; events/s is the figure to
// compare (ns/op is per event).
func BenchmarkAppend(b *testing.B) {
	for _, store := range []string{"postgres", "badger"} {
		b.Run("store="+store+"/callers=64/chunk=100", func(b *testing.B) {
			var st ledger.Store
			if store == "postgres" {
				st = leader(b, newURL(b), Options{})
			} else {
				bs, err := badgerstore.Open(filepath.Join(b.TempDir(), "ledger"), badgerstore.Options{})
				if err != nil {
					b.Fatal(err)
				}
				st = bs
			}
			o := ledgerOptions()
			o.Now = time.Now
			l, err := ledger.Open(context.Background(), st, o)
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			benchAppend(b, l, 64, 100)
			stats := l.Stats()
			if stats.Batches > 0 {
				b.ReportMetric(float64(stats.BatchEvents)/float64(stats.Batches), "events/batch")
			}
		})
	}
}

func benchAppend(b *testing.B, l *ledger.Log, callers, chunk int) {
	tmpl := event("tmpl", 0)
	var next atomic.Int64
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	var failed atomic.Pointer[error]
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			evs := make([]*pb.Event, 0, chunk)
			for {
				first := next.Add(int64(chunk)) - int64(chunk)
				if first >= int64(b.N) || failed.Load() != nil {
					return
				}
				evs = evs[:0]
				for i := first; i < min(first+int64(chunk), int64(b.N)); i++ {
					evs = append(evs, &pb.Event{
						Id: "bench-" + strconv.FormatInt(i, 10), Type: tmpl.Type, Time: tmpl.Time, Source: tmpl.Source,
						Subject: tmpl.Subject, Actor: tmpl.Actor, Entitlement: tmpl.Entitlement, Refs: tmpl.Refs,
						Reason: tmpl.Reason, Attributes: tmpl.Attributes,
					})
				}
				for {
					_, _, err := l.Append(context.Background(), evs)
					if errors.Is(err, ledger.ErrPushback) {
						time.Sleep(time.Millisecond)
						continue
					}
					if err != nil {
						failed.Store(&err)
					}
					break
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	if err := failed.Load(); err != nil {
		b.Fatal(*err)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
}

// ledgerBatch is a batch shaped like the ledger's: per event a ~500-byte
// leaf under a sequential key, two 8-byte index entries under random keys
// and an empty subject-index entry, then a tile and the tree size.
func ledgerBatch(first, n int) (ks, vs [][]byte) {
	leaf := make([]byte, 500)
	for i := first; i < first+n; i++ {
		idx := binary.BigEndian.AppendUint64(nil, uint64(i))
		h := sha256.Sum256(idx)
		d := sha256.Sum256(h[:])
		ks = append(ks, append([]byte{'l'}, idx...), append([]byte{'h'}, h[:16]...), append([]byte{'d'}, d[:16]...),
			fmt.Appendf(nil, "suser-%03d\x00\x01%s", i%97, idx))
		vs = append(vs, leaf, idx, idx, []byte{})
	}
	ks = append(ks, []byte("t\x00tile"), []byte(TreeSizeKey))
	vs = append(vs, make([]byte, 8192), binary.BigEndian.AppendUint64(nil, uint64(first+n)))
	return ks, vs
}

// BenchmarkCommit compares two ways of writing a batch in one fenced
// transaction: the arrays of the batch as parameters of one statement
// (unnest, what Commit does), and COPY into a temporary table followed by
// an upsert. b.N counts events (4 entries each) in batches of 2,000.
func BenchmarkCommit(b *testing.B) {
	const batch = 2000
	for _, way := range []string{"unnest", "copy"} {
		b.Run("way="+way, func(b *testing.B) {
			s := leader(b, newURL(b), Options{})
			b.ResetTimer()
			start := time.Now()
			for done := 0; done < b.N; done += batch {
				ks, vs := ledgerBatch(done, min(batch, b.N-done))
				var err error
				if way == "unnest" {
					err = s.Commit(ks, vs)
				} else {
					err = commitCopy(s, ks, vs)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
		})
	}
}

// commitCopy is the COPY alternative of Commit, with the same fencing.
func commitCopy(s *Store, keys, values [][]byte) error {
	ctx := context.Background()
	epoch, _ := s.Holding()
	return pgx.BeginFunc(ctx, s.ctl, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT 1 FROM grantline_lease WHERE id = 1 AND holder = $1 AND epoch = $2 FOR UPDATE", s.holder, epoch); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "CREATE TEMP TABLE IF NOT EXISTS gl_batch (k bytea, v bytea) ON COMMIT DELETE ROWS"); err != nil {
			return err
		}
		_, err := tx.CopyFrom(ctx, pgx.Identifier{"gl_batch"}, []string{"k", "v"}, pgx.CopyFromSlice(len(keys), func(i int) ([]any, error) {
			return []any{keys[i], values[i]}, nil
		}))
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, "INSERT INTO grantline_kv SELECT * FROM gl_batch ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v")
		return err
	})
}

// BenchmarkFailover measures how long the log is without a sequencer when
// the sequencing node dies without releasing the lease (as under kill -9, at
// a random moment of its renewal cycle): from its death until the next node
// holds the lease and has opened the ledger, with the default lease TTL.
// b.N counts failovers; p50 and p99 are reported in seconds.
func BenchmarkFailover(b *testing.B) {
	url := newURL(b)
	open := func() (*Store, *ledger.Log) {
		s, err := Open(context.Background(), url, Options{})
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Acquire(context.Background()); err != nil {
			b.Fatal(err)
		}
		l, err := ledger.Open(context.Background(), s, ledgerOptions())
		if err != nil {
			b.Fatal(err)
		}
		return s, l
	}
	s, l := open()
	appendAll(b, l, "fo", 0, 1000, 100)
	var times []time.Duration
	b.ResetTimer()
	for i := range b.N {
		time.Sleep(time.Duration(i%10) * DefaultLeaseTTL / 30) // die at varied points of the renewal cycle
		s.renewPaused.Store(true)
		died := time.Now()
		next, nl := open()
		times = append(times, time.Since(died))
		s.noRelease.Store(true)
		l.Close()
		s, l = next, nl
		if _, _, err := l.Append(context.Background(), []*pb.Event{event("fo-after", i)}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	l.Close()
	slices.Sort(times)
	b.ReportMetric(times[len(times)/2].Seconds(), "p50-s")
	b.ReportMetric(times[min(len(times)-1, len(times)*99/100)].Seconds(), "p99-s")
}
