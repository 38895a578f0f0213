package ledger

import (
	"bytes"
	"path/filepath"
	"testing"
	"time"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// changedEvent is testEvent(i) with other content under the same
// (source.system, id).
func changedEvent(i int, change func(*pb.Event)) *pb.Event {
	ev := testEvent(i)
	change(ev)
	return ev
}

// TestConflicts sends events whose (source.system, id) is stored with other
// content: each is a conflict answered with the stored entry's index and
// leaf hash, stores nothing, and leaves the stored leaf as it was; an
// identical resend stays a duplicate, also after a reopen.
func TestConflicts(t *testing.T) {
	changes := []struct {
		name   string
		change func(*pb.Event)
	}{
		{"reason", func(ev *pb.Event) { ev.Reason = "different" }},
		{"subject", func(ev *pb.Event) { ev.Subject.Id = "someone-else" }},
		{"time", func(ev *pb.Event) { ev.Time.Seconds++ }},
		{"attribute added", func(ev *pb.Event) { ev.Attributes["extra"] = "x" }},
		{"attribute dropped", func(ev *pb.Event) { delete(ev.Attributes, "region") }},
		{"type", func(ev *pb.Event) { ev.Type = "access.revoked" }},
	}
	for _, c := range changes {
		t.Run(c.name, func(t *testing.T) {
			st := newFakeStore()
			l := openFake(t, st)
			a := acked{}
			evs := testEvents(0, 5)
			stored := mustAppend(t, l, evs)
			a.add(t, evs, stored)
			before := l.Latest()
			leaf, err := l.Entries(t.Context(), 2, 1)
			if err != nil {
				t.Fatal(err)
			}

			// Across batches: a conflict, and nothing changes.
			evs = []*pb.Event{changedEvent(2, c.change), testEvent(3)}
			res := mustAppend(t, l, evs)
			if want := (AppendResult{Index: 2, LeafHash: stored[2].LeafHash, Conflict: true}); res[0] != want {
				t.Errorf("changed resend = %+v, want %+v", res[0], want)
			}
			if want := (AppendResult{Index: 3, LeafHash: stored[3].LeafHash, Duplicate: true}); res[1] != want {
				t.Errorf("identical resend = %+v, want %+v", res[1], want)
			}
			a.add(t, evs, res)
			if got := l.Latest(); !bytes.Equal(got.Note, before.Note) {
				t.Errorf("a batch of a conflict and a duplicate changed the checkpoint: %q, was %q", got.Note, before.Note)
			}
			if got := l.Stats(); got.Conflicts != 1 || got.Duplicates != 1 || got.Appended != 5 {
				t.Errorf("stats = conflicts %d, duplicates %d, appended %d; want 1, 1, 5", got.Conflicts, got.Duplicates, got.Appended)
			}

			// Within one batch: the first content wins, the second conflicts
			// with it, and a third copy of the first is a duplicate.
			evs = []*pb.Event{testEvent(7), changedEvent(7, c.change), testEvent(7)}
			res = mustAppend(t, l, evs)
			if res[0].Duplicate || res[0].Conflict || res[0].Index != 5 {
				t.Fatalf("first of a batch = %+v, want new at 5", res[0])
			}
			if want := (AppendResult{Index: 5, LeafHash: res[0].LeafHash, Conflict: true}); res[1] != want {
				t.Errorf("second content in the batch = %+v, want %+v", res[1], want)
			}
			if want := (AppendResult{Index: 5, LeafHash: res[0].LeafHash, Duplicate: true}); res[2] != want {
				t.Errorf("first content again in the batch = %+v, want %+v", res[2], want)
			}
			a.add(t, evs, res)
			if got := l.Latest().Size; got != 6 {
				t.Errorf("size after the batch = %d, want 6", got)
			}
			after, err := l.Entries(t.Context(), 2, 1)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(after[0].Leaf, leaf[0].Leaf) {
				t.Errorf("the stored leaf at 2 changed after a conflict")
			}
			checkInvariants(t, l, a)
			l.Close()

			// Across a reopen, on the store alone.
			l = openFake(t, st.clone())
			defer l.Close()
			evs = []*pb.Event{changedEvent(7, c.change), testEvent(7), changedEvent(0, c.change)}
			res = mustAppend(t, l, evs)
			want := []AppendResult{
				{Index: 5, LeafHash: res[1].LeafHash, Conflict: true},
				{Index: 5, LeafHash: res[1].LeafHash, Duplicate: true},
				{Index: 0, LeafHash: stored[0].LeafHash, Conflict: true},
			}
			for i := range want {
				if res[i] != want[i] {
					t.Errorf("after reopen, event %d = %+v, want %+v", i, res[i], want[i])
				}
			}
			a.add(t, evs, res)
			checkInvariants(t, l, a)
			checkViolations(t, st)
		})
	}
}

// TestConflictInFlight sends the other content while the first is in a
// batch still being committed (the store's commit is held at a gate), so
// the sequencer compares it with the in-flight entry; the dedupe stage test
// drives that path deterministically.
func TestConflictInFlight(t *testing.T) {
	st := newFakeStore()
	l := openFake(t, st)
	defer l.Close()
	st.gate, st.entered = make(chan struct{}), make(chan struct{}, 10)
	type out struct {
		res []AppendResult
		err error
	}
	first, second := make(chan out, 1), make(chan out, 1)
	go func() {
		res, _, err := l.Append(t.Context(), []*pb.Event{testEvent(1)})
		first <- out{res, err}
	}()
	<-st.entered // the first batch is being committed
	go func() {
		res, _, err := l.Append(t.Context(), []*pb.Event{changedEvent(1, func(ev *pb.Event) { ev.Reason = "x" }), testEvent(1)})
		second <- out{res, err}
	}()
	time.Sleep(20 * time.Millisecond) // the sequencer builds the second batch meanwhile
	close(st.gate)
	f, s := <-first, <-second
	if f.err != nil || s.err != nil {
		t.Fatal(f.err, s.err)
	}
	if want := (AppendResult{Index: 0, LeafHash: f.res[0].LeafHash, Conflict: true}); s.res[0] != want {
		t.Errorf("conflict with an in-flight entry = %+v, want %+v", s.res[0], want)
	}
	if want := (AppendResult{Index: 0, LeafHash: f.res[0].LeafHash, Duplicate: true}); s.res[1] != want {
		t.Errorf("duplicate of an in-flight entry = %+v, want %+v", s.res[1], want)
	}
}

// TestConflictBadgerRestart checks conflicts against entries stored by an
// earlier process, on the badger store.
func TestConflictBadgerRestart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ledger")
	l := openBadger(t, dir)
	stored := mustAppend(t, l, testEvents(0, 10))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openBadger(t, dir)
	defer l.Close()
	res := mustAppend(t, l, []*pb.Event{changedEvent(4, func(ev *pb.Event) { ev.Entitlement.Privileged = !ev.Entitlement.Privileged }), testEvent(4)})
	if want := (AppendResult{Index: 4, LeafHash: stored[4].LeafHash, Conflict: true}); res[0] != want {
		t.Errorf("conflict after restart = %+v, want %+v", res[0], want)
	}
	if want := (AppendResult{Index: 4, LeafHash: stored[4].LeafHash, Duplicate: true}); res[1] != want {
		t.Errorf("duplicate after restart = %+v, want %+v", res[1], want)
	}
	if got := l.Latest().Size; got != 10 {
		t.Errorf("size = %d, want 10", got)
	}
}
