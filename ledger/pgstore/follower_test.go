package pgstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/grantline/grantline/ledger"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// TestFollowerTakesOver: node A sequences, node F follows the same database
// read-only (never writing) and serves A's checkpoints, entries and proofs;
// A stops, F takes the lease, opens the ledger for writing on the same store
// and goes on with every entry A acknowledged.
func TestFollowerTakesOver(t *testing.T) {
	url := newURL(t)
	a := openLedger(t, leader(t, url, Options{Node: "a"}))
	appendAll(t, a, "ev", 0, 700, 50)

	fst := openStore(t, url, Options{Node: "f"})
	f, err := ledger.OpenFollower(t.Context(), fst, ledger.FollowerOptions{Verifier: testVerifier, Interval: 20 * time.Millisecond})
	if err != nil {
		t.Fatalf("OpenFollower: %v", err)
	}
	if got, want := f.Latest(), a.Latest(); got.Size != want.Size || !bytes.Equal(got.Note, want.Note) {
		t.Fatalf("follower at %d, sequencer at %d", got.Size, want.Size)
	}
	appendAll(t, a, "ev", 700, 300, 50)
	want := a.Latest()
	waitFor(t, func() bool { return f.Latest().Size == want.Size })
	if got := f.Latest(); !bytes.Equal(got.Note, want.Note) {
		t.Fatalf("follower's checkpoint %q, want the sequencer's %q", got.Note, want.Note)
	}
	// Reads as of the followed checkpoint match the sequencer's.
	for _, c := range []struct{ index, size uint64 }{{0, 1}, {5, 700}, {999, 1000}, {300, 1000}} {
		pf, err := f.InclusionProof(t.Context(), c.index, c.size)
		if err != nil {
			t.Fatalf("follower inclusion %d@%d: %v", c.index, c.size, err)
		}
		pa, err := a.InclusionProof(t.Context(), c.index, c.size)
		if err != nil {
			t.Fatal(err)
		}
		if len(pf) != len(pa) || (len(pf) > 0 && !bytes.Equal(pf[0], pa[0])) {
			t.Fatalf("inclusion proof %d@%d differs between follower and sequencer", c.index, c.size)
		}
	}
	es, err := f.Entries(t.Context(), 990, 100)
	if err != nil || len(es) != 10 {
		t.Fatalf("follower entries 990..: %d, %v", len(es), err)
	}
	tile, err := f.ReadTile(t.Context(), 0, 3, 1000%256)
	if err != nil {
		t.Fatal(err)
	}
	if at, _ := a.ReadTile(t.Context(), 0, 3, 1000%256); !bytes.Equal(tile, at) {
		t.Fatal("the follower's partial tile differs from the sequencer's")
	}
	if _, _, err := f.Append(t.Context(), nil); !errors.Is(err, ledger.ErrNotSequencer) {
		t.Fatalf("follower Append = %v, want ErrNotSequencer", err)
	}
	if l, err := fst.Lease(t.Context()); err != nil || l.Mine || !l.Valid {
		t.Fatalf("the follower's view of the lease: %+v, %v; want A's valid lease", l, err)
	}

	// A stops (releasing the lease); F takes over on the same store.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := fst.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	f.Stop()
	fst.ResetFences()
	b, err := ledger.Open(ctx, fst, ledgerOptions())
	if err != nil {
		t.Fatalf("opening the ledger on the follower's store: %v", err)
	}
	defer b.Close()
	if got := b.Latest(); got.Size != want.Size || got.Root != want.Root {
		t.Fatalf("after take-over: size %d, want %d", got.Size, want.Size)
	}
	// Everything A acknowledged is there: resent events are duplicates.
	res, size, err := b.Append(t.Context(), []*pb.Event{event("ev", 1000), event("ev", 5)})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Duplicate || res[0].Index != 1000 || !res[1].Duplicate || res[1].Index >= 1000 || size != 1001 {
		t.Fatalf("after take-over: %+v, size %d; want a new entry 1000 and a duplicate of ev-5", res, size)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out waiting")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFollowerRefusesRollback: a store whose log goes back (a restore of an
// older copy, an asynchronous database failover) or forks is refused, and
// the follower keeps serving what it verified.
func TestFollowerRefusesRollback(t *testing.T) {
	url := newURL(t)
	a := openLedger(t, leader(t, url, Options{Node: "a"}))
	appendAll(t, a, "ev", 0, 300, 50)
	old := a.Latest()
	appendAll(t, a, "ev", 300, 10, 10)
	now := a.Latest()

	fst := openStore(t, url, Options{Node: "f"})
	f, err := ledger.OpenFollower(t.Context(), fst, ledger.FollowerOptions{Verifier: testVerifier, Interval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Latest().Size != now.Size {
		t.Fatalf("follower at %d, want %d", f.Latest().Size, now.Size)
	}
	execSQL(t, url, fmt.Sprintf("UPDATE grantline_kv SET v = '\\x%016x'::bytea WHERE k = 'mlatest'", old.Size))
	if _, err := f.Refresh(t.Context()); !errors.Is(err, ledger.ErrCorrupt) {
		t.Fatalf("Refresh over a log that went back = %v, want ErrCorrupt", err)
	}
	if f.Latest().Size != now.Size {
		t.Fatalf("after a refused refresh the follower serves %d, want %d", f.Latest().Size, now.Size)
	}
}

// TestFollowerSubjectProof: a follower of a log with a subject map proves
// subjects complete at the checkpoints it serves, exactly as the
// sequencer does, from the map records the sequencer commits with each
// batch; one of a log without a map answers ErrNoSubjectMap.
func TestFollowerSubjectProof(t *testing.T) {
	for _, withMap := range []bool{true, false} {
		t.Run(fmt.Sprintf("map=%v", withMap), func(t *testing.T) {
			url := newURL(t)
			o := ledgerOptions()
			o.SubjectMap = withMap
			a, err := ledger.Open(t.Context(), leader(t, url, Options{Node: "a"}), o)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			appendAll(t, a, "ev", 0, 300, 50)
			older := a.Latest().Size
			appendAll(t, a, "ev", 300, 200, 50)
			fst := openStore(t, url, Options{Node: "f"})
			f, err := ledger.OpenFollower(t.Context(), fst, ledger.FollowerOptions{Verifier: testVerifier, Interval: time.Hour})
			if err != nil {
				t.Fatalf("OpenFollower: %v", err)
			}
			defer f.Close()
			latest := f.Latest().Size
			if !withMap {
				if _, err := f.SubjectProof(t.Context(), "user-001", latest); !errors.Is(err, ledger.ErrNoSubjectMap) {
					t.Fatalf("follower SubjectProof of a log without a map = %v, want ErrNoSubjectMap", err)
				}
				return
			}
			for _, size := range []uint64{older, latest} {
				for _, s := range []string{"user-001", "user-096", "nobody"} {
					pf, err := f.SubjectProof(t.Context(), s, size)
					if err != nil {
						t.Fatalf("follower SubjectProof(%s, %d): %v", s, size, err)
					}
					pa, err := a.SubjectProof(t.Context(), s, size)
					if err != nil {
						t.Fatal(err)
					}
					if fmt.Sprint(pf) != fmt.Sprint(pa) {
						t.Fatalf("follower's proof of %s at %d differs from the sequencer's", s, size)
					}
					if err := ledger.VerifySubjectProof(pf, pf.Root); err != nil {
						t.Fatal(err)
					}
					if s != "nobody" && pf.Count == 0 {
						t.Fatalf("follower's proof of %s at %d counts no entries", s, size)
					}
				}
			}
			if _, err := f.SubjectProof(t.Context(), "user-001", latest+10); !errors.Is(err, ledger.ErrNotFound) {
				t.Fatalf("follower SubjectProof beyond its checkpoint = %v, want ErrNotFound", err)
			}
		})
	}
}
