package ledger

import (
	"fmt"
	"slices"
	"testing"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// TestForEachSubjectCount: the subjects and counts ForEachSubjectCount
// gives are ForEachSubject's subjects with the lengths of their chains
// (SubjectEntries), at several tree sizes, over more subjects than one run
// of its scan, with NUL bytes in ids and an entry without a subject.
func TestForEachSubjectCount(t *testing.T) {
	ctx := t.Context()
	l := openFake(t, newFakeStore())
	defer l.Close()
	mk := func(id, subject string) *pb.Event {
		return &pb.Event{Id: id, Source: &pb.Source{System: "s"}, Subject: &pb.Identity{Id: subject}}
	}
	mustAppend(t, l, []*pb.Event{mk("1", "bob"), mk("2", "alice"), mk("3", "bob"), mk("4", "a\x00b"), mk("5", "a"), mk("6", "bob"), mk("7", "zed"), mk("8", "")})
	var many []*pb.Event
	for i := range 3000 {
		// subject s%05d has i%3+1 entries, spread over the batch
		for k := range i%3 + 1 {
			many = append(many, mk(fmt.Sprintf("m%d-%d", i, k), fmt.Sprintf("s%05d", (i*7919)%3000)))
		}
	}
	mustAppend(t, l, many)
	for _, size := range []uint64{0, 1, 6, 8, 9, 2000, l.Latest().Size} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			var want []string
			if err := l.ForEachSubject(ctx, size, func(s string) error { want = append(want, s); return nil }); err != nil {
				t.Fatal(err)
			}
			var got []string
			err := l.ForEachSubjectCount(ctx, size, func(s string, n uint64) error {
				got = append(got, s)
				ents, err := l.SubjectEntries(ctx, s, size, 0, 0)
				if err != nil {
					return err
				}
				if uint64(len(ents)) != n {
					t.Errorf("subject %q at size %d: count %d, chain of %d entries", s, size, n, len(ents))
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("ForEachSubjectCount(%d) gave %d subjects, ForEachSubject %d (first %q / %q)", size, len(got), len(want), first(got), first(want))
			}
		})
	}
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}
