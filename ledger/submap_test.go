package ledger

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"filippo.io/torchwood/prefix"
	"github.com/grantline/grantline/ledger/event"
)

// mapOptions are testOptions with a subject map.
func mapOptions() Options {
	o := testOptions()
	o.SubjectMap = true
	return o
}

// subjectCounts counts the events of each subject of the test events among
// the leaves [0, size) of l, from the leaves themselves.
func subjectCounts(t *testing.T, l *Log, size uint64) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	if size == 0 {
		return out
	}
	es, err := l.Entries(t.Context(), 0, size)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		en, err := event.DecodeLeaf(e.Leaf)
		if errors.Is(err, event.ErrMapLeaf) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		out[en.GetEvent().GetSubject().GetId()]++
	}
	return out
}

// checkSubjectProofs checks, at the published checkpoint of size, that the
// last leaf is the map leaf and that every subject's proof verifies against
// it with its count from the leaves, and an unknown subject's
// non-membership proof.
func checkSubjectProofs(t *testing.T, l *Log, size uint64) {
	t.Helper()
	ctx := t.Context()
	counts := subjectCounts(t, l, size)
	subjects := []string{"user-000", "user-001", "user-042", "user-096", "nobody"}
	for _, s := range subjects {
		p, err := l.SubjectProof(ctx, s, size)
		if err != nil {
			t.Fatalf("SubjectProof(%q, %d): %v", s, size, err)
		}
		if p.Count != counts[s] {
			t.Fatalf("SubjectProof(%q, %d).Count = %d, the leaves hold %d", s, size, p.Count, counts[s])
		}
		if size == 0 {
			if len(p.Proof) != 0 || p.Count != 0 {
				t.Fatalf("SubjectProof at size 0 = %+v, want an empty proof", p)
			}
			continue
		}
		es, err := l.Entries(ctx, size-1, 1)
		if err != nil {
			t.Fatal(err)
		}
		root, covers, err := event.DecodeMapLeaf(es[0].Leaf)
		if err != nil || covers != size-1 || root != p.Root {
			t.Fatalf("leaf %d of checkpoint %d: map leaf root %x covers %d (%v), proof's root %x", size-1, size, root, covers, err, p.Root)
		}
		if err := VerifySubjectProof(p, root); err != nil {
			t.Fatalf("VerifySubjectProof(%q at %d): %v", s, size, err)
		}
		// One entry less (or more) does not verify.
		if p.Count > 0 {
			q := p
			q.Count--
			if err := VerifySubjectProof(q, root); !errors.Is(err, ErrMapProof) {
				t.Fatalf("a proof with count %d instead of %d = %v, want ErrMapProof", q.Count, p.Count, err)
			}
			q = p
			q.Chain[0] ^= 1
			if err := VerifySubjectProof(q, root); !errors.Is(err, ErrMapProof) {
				t.Fatalf("a proof with another chain = %v, want ErrMapProof", err)
			}
			q = p
			q.Count, q.Last, q.Chain = 0, 0, [32]byte{}
			if err := VerifySubjectProof(q, root); !errors.Is(err, ErrMapProof) {
				t.Fatalf("a membership proof passed off as non-membership = %v, want ErrMapProof", err)
			}
		}
	}
}

func TestSubjectMap(t *testing.T) {
	for _, interval := range []time.Duration{0, time.Hour} {
		t.Run(fmt.Sprintf("interval %v", interval), func(t *testing.T) {
			ctx := t.Context()
			st := newFakeStore()
			o := mapOptions()
			o.CheckpointInterval = interval
			l, err := Open(ctx, st, o)
			if err != nil {
				t.Fatal(err)
			}
			if !l.HasSubjectMap() {
				t.Fatal("a new log opened with SubjectMap has no subject map")
			}
			checkSubjectProofs(t, l, 0)
			a := acked{}
			var sizes []uint64
			for b := range 4 {
				evs := testEvents(b*150, 150)
				res, size, err := l.Append(ctx, evs)
				if err != nil {
					t.Fatal(err)
				}
				a.add(t, evs, res)
				if interval == 0 {
					if got := l.Latest().Size; got != size {
						t.Fatalf("latest %d after append, append says %d", got, size)
					}
					// 150 events and their map leaf.
					if want := uint64((b + 1) * 151); size != want {
						t.Fatalf("tree size after %d batches of 150 = %d, want %d (one map leaf per batch)", b+1, size, want)
					}
					sizes = append(sizes, size)
				}
			}
			// Resends: duplicates add no leaf and no map leaf.
			before := l.Latest().Size
			if _, _, err := l.Append(ctx, testEvents(0, 10)); err != nil {
				t.Fatal(err)
			}
			if interval == 0 && l.Latest().Size != before {
				t.Fatalf("an all-duplicate batch grew the tree from %d to %d", before, l.Latest().Size)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			// Reopened without the option: the log keeps its map.
			l, err = Open(ctx, st.clone(), testOptions())
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			if !l.HasSubjectMap() {
				t.Fatal("the reopened log lost its subject map")
			}
			sizes = append(sizes, l.Latest().Size)
			res := mustAppend(t, l, testEvents(600, 97))
			a.add(t, testEvents(600, 97), res)
			if interval == 0 {
				sizes = append(sizes, l.Latest().Size)
			}
			checkInvariants(t, l, a)
			for _, s := range sizes {
				checkSubjectProofs(t, l, s)
			}
		})
	}
}

func TestSubjectMapFixedAtCreation(t *testing.T) {
	ctx := t.Context()
	st := newFakeStore()
	l, err := Open(ctx, st, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	mustAppend(t, l, testEvents(0, 10))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l, err = Open(ctx, st.clone(), mapOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.HasSubjectMap() {
		t.Fatal("a log created without a subject map got one when reopened with SubjectMap")
	}
	if l.Latest().Size != 10 {
		t.Fatalf("size %d, want 10: no map leaf in a log without a subject map", l.Latest().Size)
	}
	if _, err := l.SubjectProof(ctx, "user-001", 10); !errors.Is(err, ErrNoSubjectMap) {
		t.Fatalf("SubjectProof without a map = %v, want ErrNoSubjectMap", err)
	}
}

// TestSubjectMapCrashBetweenBatches: leaves integrated but not yet signed
// (a checkpoint interval) when the process dies get their map leaf and
// checkpoint at the next Open, and the map then covers them.
func TestSubjectMapCrashBetweenBatches(t *testing.T) {
	ctx := t.Context()
	st := newFakeStore()
	o := mapOptions()
	o.CheckpointInterval = time.Hour
	l, err := Open(ctx, st, o)
	if err != nil {
		t.Fatal(err)
	}
	a := acked{}
	for b := range 3 {
		evs := testEvents(b*40, 40)
		res, _, err := l.Append(ctx, evs)
		if err != nil {
			t.Fatal(err)
		}
		a.add(t, evs, res)
	}
	crashed := st.clone() // what a crash leaves: committed, never signed
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	vals, _ := crashed.Get(keyLatest, keyTree)
	if cp, tree := be64(nil, 0), be64(nil, 120); string(vals[0]) != string(cp) || string(vals[1]) != string(tree) {
		t.Fatalf("before the crash: latest %x tree %x, want checkpoint 0 and 120 integrated leaves", vals[0], vals[1])
	}
	if err := Fsck(ctx, crashed.clone(), testVerifier, nil); err != nil {
		t.Fatalf("Fsck of the crashed store: %v", err)
	}
	l2, err := Open(ctx, crashed, o)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if got := l2.Latest().Size; got != 121 {
		t.Fatalf("after recovery the checkpoint has size %d, want 121 (120 events and the map leaf)", got)
	}
	checkInvariants(t, l2, a)
	checkSubjectProofs(t, l2, 121)
	res := mustAppend(t, l2, testEvents(120, 20))
	a.add(t, testEvents(120, 20), res)
	if err := l2.Close(); err != nil {
		t.Fatal(err)
	}
	l3, err := Open(ctx, crashed.clone(), o)
	if err != nil {
		t.Fatal(err)
	}
	defer l3.Close()
	checkInvariants(t, l3, a)
	checkSubjectProofs(t, l3, 121)
	checkSubjectProofs(t, l3, l3.Latest().Size)
}

// TestSubjectMapFsck: fsck re-derives the map and names what was changed.
func TestSubjectMapFsck(t *testing.T) {
	ctx := t.Context()
	st := newFakeStore()
	l, err := Open(ctx, st, mapOptions())
	if err != nil {
		t.Fatal(err)
	}
	mustAppend(t, l, testEvents(0, 50))
	mustAppend(t, l, testEvents(50, 50))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := Fsck(ctx, st.clone(), testVerifier, nil); err != nil {
		t.Fatalf("Fsck of a good log: %v", err)
	}
	state := subjStateKey(SubjectLabel("user-001"))
	vals, _ := st.clone().Get(state)
	if vals[0] == nil {
		t.Fatal("no state record for user-001")
	}
	for name, damage := range map[string]func(s *fakeStore){
		"state count": func(s *fakeStore) {
			v := append([]byte(nil), vals[0]...)
			v[7]++
			s.corrupt(state, v)
		},
		"map root node": func(s *fakeStore) {
			n, _ := versionedNodes{s, 102}.Load(ctx, prefix.RootLabel)
			bad := *n
			bad.Hash[0] ^= 1
			s.corrupt(mapNodeKey(bad.Label, 102), encodeNode(&bad))
		},
		"mode record": func(s *fakeStore) { s.corrupt(keySubjectMap, []byte{2}) },
		"map leaf's leaf-hash index": func(s *fakeStore) {
			vals, _ := s.Get(leafKey(101))
			h := LeafHash(vals[0])
			s.corrupt(hashKey(h[:]), be64(nil, 7))
		},
	} {
		t.Run(name, func(t *testing.T) {
			bad := st.clone()
			damage(bad)
			if err := Fsck(ctx, bad, testVerifier, nil); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Fsck after damage to the %s = %v, want ErrCorrupt", name, err)
			}
		})
	}
}
