package ledger

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

const testOrigin = "grantline.test/log"

var testSigner, testVerifier = func() (note.Signer, note.Verifier) {
	// A fixed key, so that a child process (TestDiskFull) signs alike.
	skey, vkey, err := note.GenerateKey(bytes.NewReader(bytes.Repeat([]byte{7}, 64)), testOrigin)
	if err != nil {
		panic(err)
	}
	s, err := note.NewSigner(skey)
	if err != nil {
		panic(err)
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		panic(err)
	}
	return s, v
}()

var testNow = time.Date(2026, 11, 29, 9, 0, 0, 123456789, time.UTC)

func testOptions() Options {
	return Options{
		Signer:   testSigner,
		Verifier: testVerifier,
		Now:      func() time.Time { return testNow },
	}
}

func openFake(t testing.TB, st *fakeStore) *Log {
	t.Helper()
	l, err := Open(context.Background(), st, testOptions())
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return l
}

// testEvent is a deterministic ~500-byte event; key chooses (system, id).
func testEvent(i int) *pb.Event {
	return &pb.Event{
		Id:      fmt.Sprintf("ev-%06d", i),
		Type:    "access.approved",
		Time:    timestamppb.New(time.Date(2026, 1, 1, 0, 0, i%3600, 0, time.UTC)),
		Source:  &pb.Source{System: fmt.Sprintf("iga-%d", i%3), Product: "sailpoint", Tenant: "acme"},
		Subject: &pb.Identity{Id: fmt.Sprintf("user-%03d", i%97), Kind: "human", Display: "Some User"},
		Actor:   &pb.Identity{Id: "approver-1", Kind: "human"},
		Entitlement: &pb.Entitlement{
			Id: fmt.Sprintf("role-%d", i%11), Resource: "aws:prod", Privileged: i%2 == 0,
		},
		Refs:       &pb.Refs{Request: fmt.Sprintf("req-%d", i), Ticket: "CHG-1234"},
		Reason:     strings.Repeat("quarterly access for on-call duty ", 9),
		Attributes: map[string]string{"region": "eu-west-1", "cost_center": "4711"},
	}
}

func testEvents(from, n int) []*pb.Event {
	evs := make([]*pb.Event, n)
	for i := range evs {
		evs[i] = testEvent(from + i)
	}
	return evs
}

// acked records acknowledged appends by dedupe key. A value's Duplicate
// field means that no answer has called the event new yet (the first answer
// seen was a repeat: concurrent appends of one event may be answered in
// either order).
type acked map[[32]byte]AppendResult

// add records the results of one append and checks them against earlier
// answers: an event keeps its index and leaf hash, an answer is never both
// a duplicate and a conflict, and at most one answer calls an event new.
// It reports with t.Errorf, never t.Fatalf: workers call it from their own
// goroutines, under a lock, where FailNow would leave the lock held and hang
// the test instead of showing the failure.
func (a acked) add(t testing.TB, evs []*pb.Event, res []AppendResult) {
	t.Helper()
	if len(res) != len(evs) {
		t.Errorf("%d results for %d events", len(res), len(evs))
		return
	}
	for i, ev := range evs {
		k := event.DedupeKey(ev.GetSource().GetSystem(), ev.GetId())
		r := res[i]
		name := ev.GetSource().GetSystem() + "/" + ev.GetId()
		if r.Duplicate && r.Conflict {
			t.Errorf("event %s answered at %d as both a duplicate and a conflict", name, r.Index)
		}
		repeat := r.Duplicate || r.Conflict
		old, ok := a[k]
		if !ok {
			a[k] = AppendResult{Index: r.Index, LeafHash: r.LeafHash, Duplicate: repeat}
			continue
		}
		if old.Index != r.Index || old.LeafHash != r.LeafHash {
			t.Errorf("event %s acknowledged at %d, now at %d", name, old.Index, r.Index)
		}
		if !repeat {
			if !old.Duplicate {
				t.Errorf("event %s answered as new twice (at %d)", name, r.Index)
			}
			old.Duplicate = false
			a[k] = old
		}
	}
}

// checkInvariants re-verifies the whole log and checks that every
// acknowledged event is present exactly once at its acknowledged index.
func checkInvariants(t testing.TB, l *Log, a acked) {
	t.Helper()
	ctx := context.Background()
	if err := l.Fsck(ctx, nil); err != nil {
		t.Fatalf("Fsck: %v", err)
	}
	size := l.Latest().Size
	seen := map[[32]byte]uint64{}
	subjects := map[uint64]string{}
	if size > 0 {
		es, err := l.Entries(ctx, 0, size)
		if err != nil {
			t.Fatalf("Entries(0, %d): %v", size, err)
		}
		for _, e := range es {
			en, err := event.DecodeLeaf(e.Leaf)
			if errors.Is(err, event.ErrMapLeaf) && l.HasSubjectMap() {
				continue
			}
			if err != nil {
				t.Fatalf("leaf %d: %v", e.Index, err)
			}
			k := event.DedupeKey(en.GetEvent().GetSource().GetSystem(), en.GetEvent().GetId())
			if prev, ok := seen[k]; ok {
				t.Fatalf("event %s stored twice, at %d and %d", en.GetEvent().GetId(), prev, e.Index)
			}
			seen[k] = e.Index
			subjects[e.Index] = en.GetEvent().GetSubject().GetId()
		}
	}
	for k, r := range a {
		i, ok := seen[k]
		if !ok {
			t.Fatalf("acknowledged event at %d is missing (tree size %d)", r.Index, size)
		}
		if i != r.Index {
			t.Fatalf("acknowledged event at %d found at %d", r.Index, i)
		}
		got, err := l.LookupLeafHash(ctx, r.LeafHash[:])
		if err != nil || got != r.Index {
			t.Fatalf("LookupLeafHash(%x) = %d, %v, want %d", r.LeafHash, got, err, r.Index)
		}
		if s := subjects[i]; s != "" {
			es, err := l.SubjectEntries(ctx, s, size, i, 1)
			if err != nil || len(es) != 1 || es[0].Index != i {
				t.Fatalf("SubjectEntries(%q, from %d) = %d entries, %v; want the acknowledged entry %d", s, i, len(es), err, i)
			}
		}
	}
}

func checkViolations(t testing.TB, st *fakeStore) {
	t.Helper()
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, v := range st.violations {
		t.Errorf("store contract violation: %s", v)
	}
}

func mustAppend(t testing.TB, l *Log, evs []*pb.Event) []AppendResult {
	t.Helper()
	res, _, err := l.Append(context.Background(), evs)
	if err != nil {
		t.Fatalf("Append(%d events): %v", len(evs), err)
	}
	return res
}

func isErr(err error, targets ...error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}
