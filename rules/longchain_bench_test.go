package rules

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// feedTypes are the event types of `grantline bench`'s feed, cycling by
// event number (cmd/grantline/bench.go, benchGen).
var feedTypes = []string{"access.requested", "access.approved", "grant.activated", "session.started", "session.ended", "grant.deactivated"}

// feedEvent is event i of a `grantline bench` feed over `subjects`
// subjects, field for field as benchGen makes it (without the padding
// attribute): subject user-(i%subjects), request and grant (i/6), type
// cycling by i%6, entitlement role-(i%50), privileged when i%3 == 0. The
// six events of one grant land in six different subjects' chains, so every
// chain is a long run of distinct, never-closed grants.
func feedEvent(i uint64, subjects uint64) *pb.Event {
	is := strconv.FormatUint(i, 10)
	user := "user-" + strconv.FormatUint(i%subjects, 10)
	k := strconv.FormatUint(i/6, 10)
	return &pb.Event{
		Id:          "bench-" + is,
		Type:        feedTypes[i%6],
		Time:        timestamppb.New(benchStart.Add(time.Duration(i) * time.Millisecond)),
		Source:      &pb.Source{System: "bench", Product: "grantline-bench", RawId: is},
		Subject:     &pb.Identity{Id: user, Kind: "human", Display: "Bench User " + user},
		Actor:       &pb.Identity{Id: "pam", Kind: "system"},
		Entitlement: &pb.Entitlement{Id: "role-" + strconv.FormatUint(i%50, 10), Resource: "aws:account/123456789012", Privileged: i%3 == 0},
		Refs:        &pb.Refs{Request: "req-" + k, Grant: "grant-" + k, Ticket: "CHG-" + is},
		Reason:      "bench load",
	}
}

// feedSource is a bench feed of subjects × perSubject events held as
// leaves, as the server hands them to the engine.
func feedSource(b *testing.B, subjects, perSubject int) (*leafSource, []string) {
	b.Helper()
	total := uint64(subjects * perSubject)
	ls := &leafSource{index: map[string][]uint64{}}
	log := make([][]byte, total)
	for i := range total {
		ev := feedEvent(i, uint64(subjects))
		data, err := proto.MarshalOptions{Deterministic: true}.Marshal(&pb.Entry{Event: ev})
		if err != nil {
			b.Fatal(err)
		}
		log[i] = data
		ls.index[ev.Subject.Id] = append(ls.index[ev.Subject.Id], i)
	}
	ls.packLeaves(log)
	names := make([]string, subjects)
	for i := range names {
		names[i] = "user-" + strconv.Itoa(i)
	}
	return ls, names
}

// feedSubjects is the number of subjects of the long-chain benchmarks:
// like the 5,000 of `grantline bench`, it is 2 more than a multiple of 6,
// so each chain holds three of the six event types, in turn.
const feedSubjects = 302

// BenchmarkLongChains evaluates the whole catalog over bench-feed chains
// of growing length (events per subject, feedSubjects subjects): with cost
// linear in the chain, events/cpu-s stays about the same across lengths.
func BenchmarkLongChains(b *testing.B) {
	for _, n := range []int{200, 500, 1000, 2000} {
		b.Run(fmt.Sprintf("events=%d", n), func(b *testing.B) {
			benchFeed(b, feedSubjects, n, benchSetOptions(b, Options{}))
		})
	}
}

// BenchmarkLongChainsRule evaluates one rule at a time (and none: the
// views alone) over 62 subjects' bench-feed chains of 250 and 1000 events,
// on one worker, to find a rule whose cost per event grows with the chain.
func BenchmarkLongChainsRule(b *testing.B) {
	rs, err := Builtin()
	if err != nil {
		b.Fatal(err)
	}
	p, err := ParseParams("bench", []byte("sod_pairs: [[payments-create, payments-approve]]\n"))
	if err != nil {
		b.Fatal(err)
	}
	set := func(only []*Rule) *Set {
		s, err := NewSetWithOptions(only, p, Options{Workers: 1})
		if err != nil {
			b.Fatal(err)
		}
		return s
	}
	for _, n := range []int{250, 1000} {
		b.Run(fmt.Sprintf("events=%d/rule=views", n), func(b *testing.B) { benchFeed(b, 62, n, set(nil)) })
		for _, r := range rs {
			b.Run(fmt.Sprintf("events=%d/rule=%s", n, r.ID), func(b *testing.B) { benchFeed(b, 62, n, set([]*Rule{r})) })
		}
	}
}

func benchFeed(b *testing.B, subjects, perSubject int, s *Set) {
	b.Helper()
	src, names := feedSource(b, subjects, perSubject)
	events := benchEvaluate(b, s, names, src, benchStart.Add(340*24*time.Hour))
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/events, "ns/event")
}
