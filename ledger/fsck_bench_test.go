package ledger

import (
	"context"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/grantline/grantline/internal/cputime"
	"github.com/grantline/grantline/ledger/badgerstore"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// BenchmarkFsck measures Fsck over a badger store of 100,000 ~500-byte
// events (appended in batches of 1000, one checkpoint each): impl=serial is
// the pass this package had before (fsck_serial_test.go), impl=parallel
// the one Fsck runs. b.N counts whole passes; leaves/s is the rate.
//
//	go test -run '^$' -bench Fsck -benchtime 3x -count 5 ./ledger
func BenchmarkFsck(b *testing.B) {
	const n = 100_000
	dir := filepath.Join(b.TempDir(), "ledger")
	l := openBadger(b, dir)
	tmpl := testEvent(0)
	for start := 0; start < n; start += 1000 {
		evs := make([]*pb.Event, 0, 1000)
		for i := start; i < start+1000; i++ {
			ev := benchEvent(tmpl, "fsck-"+strconv.Itoa(i))
			ev.Subject = &pb.Identity{Id: "user-" + strconv.Itoa(i%5000), Kind: "human"}
			evs = append(evs, ev)
		}
		mustAppend(b, l, evs)
	}
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
	st := openBadgerStore(b, dir, badgerstore.Options{})
	defer st.Close()
	for _, impl := range []struct {
		name string
		run  func(context.Context, Store) error
	}{
		{"serial", func(ctx context.Context, st Store) error {
			return fsckSerial(ctx, st, testVerifier, n, n, false, nil)
		}},
		{"parallel", func(ctx context.Context, st Store) error {
			return Fsck(ctx, st, testVerifier, nil)
		}},
	} {
		b.Run("leaves=100000/impl="+impl.name, func(b *testing.B) {
			cpu0 := cputime.Process()
			for b.Loop() {
				if err := impl.run(b.Context(), st); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "leaves/s")
			// CPU seconds of the whole process per pass: on a loaded
			// machine the wall time says more about the neighbours.
			b.ReportMetric((cputime.Process()-cpu0).Seconds()/float64(b.N), "cpu-s/op")
		})
	}
}
