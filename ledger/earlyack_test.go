package ledger

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// Appends are answered once their durable commit returns; the separate
// index store's commit follows (docs/design.md, "Indexes off the durable
// commit"). These tests hold the index store's commits at its gate.

// holdIndex makes every later commit of ix, the index store of l, wait at
// its gate until release is called (once or more). It first waits until
// the index commits of the batches already answered are done; the send on
// the append queue then orders the gate before the indexer's next read of
// it. Defer release after the deferred Close, so that a failing test does
// not leave Close waiting for a held commit.
func holdIndex(t *testing.T, l *Log, ix *fakeStore) (release func()) {
	t.Helper()
	if err := l.waitIndexed(t.Context(), l.Latest().Size); err != nil {
		t.Fatalf("waiting for the index: %v", err)
	}
	ix.gate, ix.entered = make(chan struct{}), make(chan struct{}, 64)
	return sync.OnceFunc(func() { close(ix.gate) })
}

// openSplitFake opens a log in a new fake store with its indexes in
// another, with a subject map or without; o is the options it was opened
// with, for a restart.
func openSplitFake(t *testing.T, smap bool) (l *Log, st, ix *fakeStore, o Options) {
	t.Helper()
	st, ix = newFakeStore(), newFakeStore()
	o = testOptions()
	o.Index, o.SubjectMap = ix, smap
	l, err := Open(t.Context(), st, o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return l, st, ix, o
}

// appendHeld appends evs and fails the test if Append does not return
// while the index store's commits are held.
func appendHeld(t *testing.T, l *Log, evs []*pb.Event) ([]AppendResult, uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	res, size, err := l.Append(ctx, evs)
	if err != nil {
		t.Fatalf("Append while the index commit is held: %v (an append must be answered once its durable commit returns)", err)
	}
	return res, size
}

// TestReadAfterAckWaitsForIndex: right after Append returns, with the
// batch's index commit held back, the checkpoint covering it is published;
// reads that consult the index wait for it (and give up with their
// context), then find the event by subject, by leaf hash, in the subject
// counts and, with a subject map, in the subject's proof.
func TestReadAfterAckWaitsForIndex(t *testing.T) {
	for _, smap := range []bool{false, true} {
		t.Run(fmt.Sprintf("subject-map=%v", smap), func(t *testing.T) {
			l, _, ix, _ := openSplitFake(t, smap)
			defer l.Close()
			mustAppend(t, l, testEvents(0, 50))
			release := holdIndex(t, l, ix)
			defer release()
			ev := testEvent(500)
			subject := ev.GetSubject().GetId() // also that of event 15
			res, size := appendHeld(t, l, []*pb.Event{ev})
			<-ix.entered // the batch's index commit waits at the gate
			if got := l.Latest().Size; got != size {
				t.Fatalf("Latest().Size = %d right after Append returned %d: the batch's checkpoint is not published", got, size)
			}
			reads := map[string]func(ctx context.Context) error{
				"SubjectEntries": func(ctx context.Context) error {
					es, err := l.SubjectEntries(ctx, subject, size, res[0].Index, 1)
					if err == nil && (len(es) != 1 || es[0].Index != res[0].Index) {
						err = fmt.Errorf("%d entries, want the appended one at %d", len(es), res[0].Index)
					}
					return err
				},
				"LookupLeafHash": func(ctx context.Context) error {
					i, err := l.LookupLeafHash(ctx, res[0].LeafHash[:])
					if err == nil && i != res[0].Index {
						err = fmt.Errorf("index %d, want %d", i, res[0].Index)
					}
					return err
				},
				"ForEachSubjectCount": func(ctx context.Context) error {
					var n uint64
					err := l.ForEachSubjectCount(ctx, size, func(s string, c uint64) error {
						if s == subject {
							n = c
						}
						return nil
					})
					if err == nil && n != 2 {
						err = fmt.Errorf("subject %q has %d entries, want 2", subject, n)
					}
					return err
				},
				"Fsck":        func(ctx context.Context) error { return l.Fsck(ctx, nil) },
				"WaitIndexed": func(ctx context.Context) error { return l.WaitIndexed(ctx) },
			}
			if smap {
				reads["SubjectProof"] = func(ctx context.Context) error {
					p, err := l.SubjectProof(ctx, subject, size)
					if err == nil && p.Count != 2 {
						err = fmt.Errorf("proof counts %d entries, want 2", p.Count)
					}
					return err
				}
			}
			// Held: a read gives up with its context, never answers from
			// an index that lacks the event.
			ended, cancel := context.WithCancel(t.Context())
			cancel()
			for name, read := range reads {
				if err := read(ended); !errors.Is(err, context.Canceled) {
					t.Errorf("%s with the index commit held and its context ended = %v, want context.Canceled", name, err)
				}
			}
			errs := make(map[string]chan error, len(reads))
			for name, read := range reads {
				c := make(chan error, 1)
				errs[name] = c
				go func() { c <- read(t.Context()) }()
			}
			release()
			for name, c := range errs {
				if err := <-c; err != nil {
					t.Errorf("%s after Append returned: %v", name, err)
				}
			}
		})
	}
}

// TestIndexFailureFailsWaitingReads: when the held index commit fails,
// the reads waiting for it, and those that come later, get ErrStorage
// instead of waiting for ever; appends stop; the answered event is durable
// and, after a restart, indexed and deduplicated.
func TestIndexFailureFailsWaitingReads(t *testing.T) {
	ctx := t.Context()
	st, ix := newFakeStore(), newFakeStore()
	l := mustOpenSplit(t, st, ix)
	defer l.Close() // a second Close (after the one below) returns ErrClosed
	a := acked{}
	a.add(t, testEvents(0, 20), mustAppend(t, l, testEvents(0, 20)))
	release := holdIndex(t, l, ix)
	defer release()
	ev := []*pb.Event{testEvent(700)}
	res, size := appendHeld(t, l, ev)
	a.add(t, ev, res)
	<-ix.entered
	waiting := make(chan error, 2)
	go func() {
		_, err := l.SubjectEntries(ctx, ev[0].GetSubject().GetId(), size, 0, 0)
		waiting <- err
	}()
	go func() {
		_, err := l.LookupLeafHash(ctx, res[0].LeafHash[:])
		waiting <- err
	}()
	ix.mu.Lock()
	ix.faultAt, ix.kind = ix.ops+1, failOp // the held commit
	ix.mu.Unlock()
	release()
	for range 2 {
		if err := <-waiting; !errors.Is(err, ErrStorage) {
			t.Errorf("read waiting for a failed index commit = %v, want ErrStorage", err)
		}
	}
	if _, err := l.SubjectEntries(ctx, ev[0].GetSubject().GetId(), size, 0, 0); !errors.Is(err, ErrStorage) {
		t.Errorf("read after the index commit failed = %v, want ErrStorage", err)
	}
	if _, _, err := l.Append(ctx, testEvents(800, 1)); !errors.Is(err, ErrStorage) {
		t.Errorf("Append after the index commit failed = %v, want ErrStorage", err)
	}
	l.Close()
	checkViolations(t, st)
	l2 := mustOpenSplit(t, st.clone(), ix.clone())
	defer l2.Close()
	checkInvariants(t, l2, a)
	if r := mustAppend(t, l2, ev); !r[0].Duplicate || r[0].Index != res[0].Index {
		t.Fatalf("retry of the event answered before its index commit failed: %+v, want a duplicate at %d", r[0], res[0].Index)
	}
}

// TestCrashBeforeIndexCommit: a crash after batches were answered (their
// durable commits returned) but before their index commits: the restarted
// log has every answered event, found by leaf hash and subject, and
// answers retries as duplicates.
func TestCrashBeforeIndexCommit(t *testing.T) {
	for _, smap := range []bool{false, true} {
		t.Run(fmt.Sprintf("subject-map=%v", smap), func(t *testing.T) {
			l, st, ix, o := openSplitFake(t, smap)
			a := acked{}
			work := [][]*pb.Event{testEvents(0, 40), testEvents(30, 40), testEvents(100, 3)}
			defer l.Close() // a second Close (after the one below) returns ErrClosed
			a.add(t, work[0], mustAppend(t, l, work[0]))
			release := holdIndex(t, l, ix)
			defer release()
			for _, evs := range work[1:] {
				res, _ := appendHeld(t, l, evs)
				a.add(t, evs, res)
			}
			<-ix.entered
			m, x := st.clone(), ix.clone() // the crash: index commits of answered batches not applied
			release()
			l.Close()
			o.Index = x
			l2, err := Open(t.Context(), m, o)
			if err != nil {
				t.Fatalf("restart: %v", err)
			}
			defer l2.Close()
			checkInvariants(t, l2, a)
			if smap {
				checkSubjectProofs(t, l2, l2.Latest().Size)
			}
			size := l2.Latest().Size
			for _, evs := range work {
				for i, r := range mustAppend(t, l2, evs) {
					if !r.Duplicate {
						t.Fatalf("event %s retried after the crash: %+v, want a duplicate", evs[i].GetId(), r)
					}
				}
			}
			if got := l2.Latest().Size; got != size {
				t.Fatalf("retries grew the tree from %d to %d", size, got)
			}
			checkViolations(t, m)
			checkViolations(t, x)
		})
	}
}

// TestIndexLagBound: with the index store's commits held, the committer
// answers at most maxUnindexed batches ahead of the indexer and then
// waits: the next append is not committed until the index commits go on.
func TestIndexLagBound(t *testing.T) {
	st, ix := newFakeStore(), newFakeStore()
	l := mustOpenSplit(t, st, ix)
	defer l.Close()
	release := holdIndex(t, l, ix)
	defer release()
	var size uint64
	for i := range maxUnindexed {
		_, size = appendHeld(t, l, testEvents(i, 1))
	}
	next := make(chan error, 1)
	go func() {
		_, _, err := l.Append(t.Context(), testEvents(100, 1))
		next <- err
	}()
	select {
	case err := <-next:
		t.Fatalf("append %d answered (%v) while %d batches wait for their index commit: the committer runs more than maxUnindexed = %d ahead",
			maxUnindexed+1, err, maxUnindexed, maxUnindexed)
	case <-time.After(100 * time.Millisecond):
	}
	vals, err := st.Get(keyTree)
	if err != nil {
		t.Fatal(err)
	}
	if got := binary.BigEndian.Uint64(vals[0]); got != size {
		t.Fatalf("the main store holds a tree of %d leaves, want %d: a batch beyond the bound was committed", got, size)
	}
	release()
	if err := <-next; err != nil {
		t.Fatalf("append after the index commits went on: %v", err)
	}
	if w := l.Stats().IndexWait; w < 50*time.Millisecond {
		t.Errorf("Stats().IndexWait = %v after the committer waited at least 100ms for the indexer", w)
	}
}
