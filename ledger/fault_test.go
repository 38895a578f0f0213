package ledger

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/transparency-dev/formats/log"
	"golang.org/x/mod/sumdb/note"

	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// crashWorkload exercises dedupe within and across batches and tile
// boundaries.
func crashWorkload() [][]*pb.Event {
	return [][]*pb.Event{
		testEvents(0, 3),
		testEvents(2, 3),
		testEvents(10, 300),
		{testEvent(5), testEvent(6), testEvent(5)},
		{testEvent(0), testEvent(400)},
	}
}

// TestCrashAtEveryStep injects a fault at every store operation of opening
// a log and running a workload (a failed operation, or a commit that is
// written but reports failure, as when the process dies after the write),
// then restarts on what was durable. The restarted log must verify, hold
// every acknowledged event exactly once at its acknowledged index, and
// accept the whole workload again with duplicates answered as such.
func TestCrashAtEveryStep(t *testing.T) {
	ctx := context.Background()
	// Count the operations of a clean run.
	clean := newFakeStore()
	l := openFake(t, clean)
	for _, evs := range crashWorkload() {
		mustAppend(t, l, evs)
	}
	l.Close()
	total := clean.ops
	if total < 10 {
		t.Fatalf("clean run took %d store operations; expected more", total)
	}
	for at := 1; at <= total; at++ {
		for _, kind := range []fault{failOp, failCommitButPersist} {
			t.Run(fmt.Sprintf("op%d/%v", at, map[fault]string{failOp: "fail", failCommitButPersist: "persist"}[kind]), func(t *testing.T) {
				st := newFakeStore()
				st.faultAt, st.kind = at, kind
				a := acked{}
				failed := false
				l, err := Open(ctx, st, testOptions())
				if err != nil {
					if !errors.Is(err, ErrStorage) {
						t.Fatalf("Open with a failing store: %v, want ErrStorage", err)
					}
					failed = true
				} else {
					for _, evs := range crashWorkload() {
						res, _, err := l.Append(ctx, evs)
						if err != nil {
							if !errors.Is(err, ErrStorage) {
								t.Fatalf("Append with a failing store: %v, want ErrStorage", err)
							}
							failed = true
							// Later appends fail too, reads go on.
							if _, _, err := l.Append(ctx, testEvents(1000, 1)); !errors.Is(err, ErrStorage) {
								t.Fatalf("Append after a storage failure: %v, want ErrStorage", err)
							}
							_ = l.Latest()
							break
						}
						a.add(t, evs, res)
					}
					l.Close()
				}
				if !failed {
					t.Fatalf("fault at operation %d of %d did not surface", at, total)
				}
				restarted := st.clone()
				l2 := openFake(t, restarted)
				defer l2.Close()
				checkInvariants(t, l2, a)
				for _, evs := range crashWorkload() {
					a.add(t, evs, mustAppend(t, l2, evs))
					checkInvariants(t, l2, a) // after every step
				}
				if got, want := l2.Latest().Size, uint64(3+2+300+2+1); got != want {
					t.Fatalf("size after retry = %d, want %d", got, want)
				}
				checkViolations(t, st)
				checkViolations(t, restarted)
			})
		}
	}
}

// TestCorruptionDetected damages a stored log in different ways: Open must
// refuse the ones it can see (the right edge, the latest checkpoint) and
// Fsck must name what is wrong in every case.
func TestCorruptionDetected(t *testing.T) {
	ctx := context.Background()
	base := newFakeStore()
	l := openFake(t, base)
	mustAppend(t, l, testEvents(0, 600))
	mustAppend(t, l, testEvents(600, 400)) // size 1000: tiles 0/0..0/2 full, 0/3 partial (232), 1/0 partial (3)
	l.Close()

	flip := func(key []byte, at int) func(*fakeStore) {
		return func(s *fakeStore) {
			v := append([]byte(nil), s.data[string(key)]...)
			v[((at%len(v))+len(v))%len(v)] ^= 0x01
			s.corrupt(key, v)
		}
	}
	del := func(key []byte) func(*fakeStore) { return func(s *fakeStore) { s.corrupt(key, nil) } }
	plant := func(key, v []byte) func(*fakeStore) {
		return func(s *fakeStore) {
			if err := s.Commit([][]byte{key}, [][]byte{v}); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := []struct {
		name     string
		damage   func(*fakeStore)
		openErr  string // "" if Open cannot see it
		fsckWant string
	}{
		{"flipped byte in edge tile", flip(tileKey(0, 3), 100), "root", "tile 0/3 was altered"},
		{"flipped byte in full tile", flip(tileKey(0, 1), 40), "", "tile 0/1 was altered"},
		{"deleted level-1 tile", del(tileKey(1, 0)), "tile 1/0 is missing", "tile 1/0 is missing"},
		{"deleted full tile", del(tileKey(0, 0)), "", "tile 0/0 is missing"},
		{"flipped byte in a leaf", flip(leafKey(5), 30), "", "the stored leaf was altered"},
		{"flipped byte in the last leaf", flip(leafKey(999), 30), "leaf 999", "leaf 999 ("},
		{"deleted leaf", del(leafKey(7)), "", "leaf 7 is missing"},
		{"deleted dedupe record", del(dedupeKey(event.DedupeKey("iga-0", "ev-000300"))), "", "dedupe record of leaf 300"},
		{"deleted subject index", del(subjectKey("user-004", 4)), "", "subject index entry of leaf 4"},
		// Found only since fsck compares the whole indexes with the leaves:
		// an entry no leaf needs (a dedupe record for an event never
		// logged would answer its append as a duplicate).
		{"stray dedupe record", plant(dedupeKey(event.DedupeKey("iga-0", "never-logged")), be64(nil, 5)), "", "dedupe index holds an entry"},
		{"stray subject index entry", plant(subjectKey("user-004", 5), []byte{}), "", "subject index holds an entry"},
		{"malformed leaf-hash entry", plant(hashKey(make([]byte, 32)), []byte{1, 2, 3}), "", "leaf-hash index holds a malformed entry"},
		{"bad latest checkpoint signature", flip(checkpointKey(1000), -20), "does not verify", "checkpoint 1000 does not verify"},
		{"bad old checkpoint signature", flip(checkpointKey(600), -20), "", "checkpoint 600 does not verify"},
		{"validly signed old checkpoint with a wrong root", func(s *fakeStore) {
			text := log.Checkpoint{Origin: testOrigin, Size: 600, Hash: make([]byte, 32)}.Marshal()
			n, err := note.Sign(&note.Note{Text: string(text)}, testSigner)
			if err != nil {
				t.Fatal(err)
			}
			s.corrupt(checkpointKey(600), n)
		}, "", "checkpoint 600 has root"},
		{"deleted latest checkpoint", del(checkpointKey(1000)), "checkpoint of the latest tree size 1000 is missing", "latest tree size 1000 is missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := base.clone()
			tt.damage(st)
			l, err := Open(ctx, st.clone(), testOptions())
			switch {
			case tt.openErr == "" && err != nil:
				t.Fatalf("Open = %v, want it to open (the damage is not on the right edge)", err)
			case tt.openErr != "" && (!errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tt.openErr)):
				t.Fatalf("Open error = %v, want ErrCorrupt mentioning %q", err, tt.openErr)
			case tt.openErr != "" && !strings.Contains(err.Error(), "grantline fsck"):
				t.Fatalf("Open error = %v, want it to suggest grantline fsck", err)
			}
			if l != nil {
				l.Close()
			}
			var progress []string
			err = Fsck(ctx, st, testVerifier, func(f string, args ...any) { progress = append(progress, fmt.Sprintf(f, args...)) })
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tt.fsckWant) {
				t.Fatalf("Fsck error = %v, want ErrCorrupt naming %q", err, tt.fsckWant)
			}
			if len(progress) == 0 {
				t.Errorf("Fsck reported no progress")
			}
		})
	}
	// The undamaged store passes.
	if err := Fsck(ctx, base.clone(), testVerifier, nil); err != nil {
		t.Fatalf("Fsck(undamaged) = %v", err)
	}
}
