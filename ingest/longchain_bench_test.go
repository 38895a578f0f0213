package ingest

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/internal/cputime"
	"github.com/grantline/grantline/ledger"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/rules"
)

// BenchmarkLongChains evaluates the whole catalog, in process, over a real
// badger ledger holding `grantline bench`'s feed (cmd/grantline/bench.go)
// for 302 subjects with chains of growing length: the chains are read
// from the store as the server reads them (subject index, leaves, leaf
// hashes checked against the tree). Like the 5,000 subjects of the bench
// feed, 302 is 2 more than a multiple of 6, and each chain's entries lie
// 302 apart in the log, so a 2,000-event chain touches ~2,000 different
// level-0 tiles: the shape of the 10M-event ledger's chains
// (docs/BENCHMARKS.md, "Long chains"). events/cpu-s should not fall as
// the chains grow. Run:
//
//	go test -run '^$' -bench 'LongChains' -benchtime 1x -count 3 ./ingest
func BenchmarkLongChains(b *testing.B) {
	for _, n := range []int{200, 500, 1000, 2000} {
		b.Run(fmt.Sprintf("events=%d", n), func(b *testing.B) {
			l := feedLedger(b, 302, n)
			set := benchRuleSet(b, "all")
			asOf := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
			size := l.Latest().Size
			b.ResetTimer()
			cpu0 := cputime.Process()
			var sum rules.Summary
			for b.Loop() {
				var err error
				sum, err = set.Stream(b.Context(), LedgerSubjects(b.Context(), l, size), &chainSource{l: l, size: size}, asOf, asOf, false,
					func(*rules.SubjectResult) error { return nil })
				if err != nil {
					b.Fatal(err)
				}
			}
			events := float64(sum.Entries) * float64(b.N)
			b.ReportMetric(events/b.Elapsed().Seconds(), "events/s")
			b.ReportMetric(events/(cputime.Process()-cpu0).Seconds(), "events/cpu-s")
			b.ReportMetric(float64(sum.Findings), "findings")
		})
	}
}

// feedLedger is a real badger ledger holding subjects × perSubject events
// of the bench feed (feedEvent).
func feedLedger(b *testing.B, subjects, perSubject int) *ledger.Log {
	b.Helper()
	l := openBadgerLedger(b)
	total := uint64(subjects * perSubject)
	batch := make([]*pb.Event, 0, 1000)
	for i := range total {
		batch = append(batch, feedEvent(i, uint64(subjects)))
		if len(batch) == cap(batch) || i == total-1 {
			if _, _, err := l.Append(b.Context(), batch); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	return l
}

// feedEvent is event i of `grantline bench`'s feed over `subjects`
// subjects, as benchGen makes it (without the padding attribute).
func feedEvent(i, subjects uint64) *pb.Event {
	types := [...]string{"access.requested", "access.approved", "grant.activated", "session.started", "session.ended", "grant.deactivated"}
	is := strconv.FormatUint(i, 10)
	user := "user-" + strconv.FormatUint(i%subjects, 10)
	k := strconv.FormatUint(i/6, 10)
	return &pb.Event{
		Id:          "bench-" + is,
		Type:        types[i%6],
		Time:        timestamppb.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Millisecond)),
		Source:      &pb.Source{System: "bench", Product: "grantline-bench", RawId: is},
		Subject:     &pb.Identity{Id: user, Kind: "human", Display: "Bench User " + user},
		Actor:       &pb.Identity{Id: "pam", Kind: "system"},
		Entitlement: &pb.Entitlement{Id: "role-" + strconv.FormatUint(i%50, 10), Resource: "aws:account/123456789012", Privileged: i%3 == 0},
		Refs:        &pb.Refs{Request: "req-" + k, Grant: "grant-" + k, Ticket: "CHG-" + is},
		Reason:      "bench load",
	}
}
