package ledger

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"filippo.io/torchwood/prefix"
	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
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
	// user-001's newest state: its leaf's newest version (mapCompact).
	var state, val []byte
	p := mapNodePrefix(leafLabel(SubjectLabel("user-001")), mapCompact)
	st.clone().Scan(p, prefixEnd(p), func(k, v []byte) error {
		state, val = bytes.Clone(k), bytes.Clone(v)
		return errStop
	})
	if state == nil {
		t.Fatal("no state record for user-001")
	}
	for name, damage := range map[string]func(s *fakeStore){
		"state count": func(s *fakeStore) {
			v := append([]byte(nil), val...)
			v[7]++
			s.corrupt(state, v)
		},
		"map root node": func(s *fakeStore) {
			n, _ := versionedNodes{s, 102, mapCompact}.Load(ctx, prefix.RootLabel)
			bad := *n
			bad.Hash[0] ^= 1
			s.corrupt(mapNodeKey(bad.Label, 102, mapCompact), encodeNode(&bad, mapCompact))
		},
		"mode record": func(s *fakeStore) { s.corrupt(keySubjectMap, []byte{3}) },
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

// TestSubjectMapBatchedUpdate: the sequencer's batched update gives, seal
// after seal, exactly the root and the proofs of torchwood's
// prefix.Tree.Insert of the same values one subject at a time, also as of
// older checkpoints, with a cache so small that nodes are evicted and read
// back from the store, and with the store lagging the seals as far as the
// pipeline lets it (mapSettledSeals - 1 seals not yet committed).
func TestSubjectMapBatchedUpdate(t *testing.T) {
	for _, tc := range []struct {
		name           string
		pool, rounds   int
		perRound       int
		limit          int
		lag            int // seals whose writes are not committed yet
		emptySubjectAt int // round with no events (an empty seal); -1 none
	}{
		{"one subject", 1, 4, 3, 1 << 18, 0, -1},
		{"small", 8, 6, 5, 1 << 18, 0, 2},
		{"spread", 500, 8, 200, 1 << 18, 0, -1},
		{"spread, tiny cache, lagging store", 500, 10, 150, 16, mapSettledSeals - 1, 3},
		{"dense, tiny cache", 64, 12, 64, 8, mapSettledSeals - 1, -1},
	} {
		for _, f := range []mapFormat{mapWide, mapCompact} {
			t.Run(fmt.Sprintf("%s/format %d", tc.name, f), func(t *testing.T) {
				ctx := t.Context()
				st := newFakeStore()
				m := newSubjectMap(st, f)
				m.limit = tc.limit
				ref := prefix.NewMemoryStorage()
				if err := prefix.InitStorage(ctx, mapHash, ref); err != nil {
					t.Fatal(err)
				}
				tree := prefix.NewTree(mapHash, ref)
				states := map[[32]byte]subjectState{}
				rnd := rand.New(rand.NewPCG(uint64(tc.pool), uint64(tc.rounds)))
				var unflushed []*writes
				type version struct {
					size  uint64
					root  [32]byte
					proof map[[32]byte][]prefix.ProofNode
				}
				var versions []version
				index := uint64(0)
				for r := range tc.rounds {
					var items []mapItem
					if r != tc.emptySubjectAt {
						for range tc.perRound {
							lb := SubjectLabel(fmt.Sprintf("s%d", rnd.IntN(tc.pool)))
							h := sha256.Sum256([]byte(fmt.Sprint(index)))
							items = append(items, mapItem{lb, index, h})
							s := states[lb]
							s.count, s.last, s.chain = s.count+1, index, ChainNext(s.chain, h)
							states[lb] = s
							index++
						}
					}
					changed := map[[32]byte]bool{}
					for _, it := range items {
						if !changed[it.label] {
							changed[it.label] = true
							if err := tree.Insert(ctx, it.label, states[it.label].value()); err != nil {
								t.Fatal(err)
							}
						}
					}
					index++ // the map leaf
					w := newWrites(0)
					root, err := m.apply(items, index, w)
					if err != nil {
						t.Fatalf("round %d: apply: %v", r, err)
					}
					want, err := tree.RootHash(ctx)
					if err != nil {
						t.Fatal(err)
					}
					if root != want {
						t.Fatalf("round %d: batched root %x, one at a time %x", r, root, want)
					}
					if len(m.nodes) > max(tc.limit, 4*tc.perRound*8) {
						t.Fatalf("round %d: %d cached nodes, limit %d", r, len(m.nodes), tc.limit)
					}
					unflushed = append(unflushed, w)
					for len(unflushed) > tc.lag {
						if err := st.Commit(unflushed[0].keys, unflushed[0].vals); err != nil {
							t.Fatal(err)
						}
						unflushed = unflushed[1:]
					}
					v := version{index, want, map[[32]byte][]prefix.ProofNode{}}
					for lb := range states {
						_, p, err := tree.Lookup(ctx, lb)
						if err != nil {
							t.Fatal(err)
						}
						v.proof[lb] = p
					}
					versions = append(versions, v)
				}
				for _, w := range unflushed {
					if err := st.Commit(w.keys, w.vals); err != nil {
						t.Fatal(err)
					}
				}
				// Every version's proofs, read from the stored node versions.
				for _, v := range versions {
					old := prefix.NewTree(mapHash, versionedNodes{st, v.size, f})
					if got, err := old.RootHash(ctx); err != nil || got != v.root {
						t.Fatalf("stored root as of %d = %x (%v), want %x", v.size, got, err, v.root)
					}
					for lb, want := range v.proof {
						_, got, err := old.Lookup(ctx, lb)
						if err != nil {
							t.Fatalf("lookup as of %d: %v", v.size, err)
						}
						if !slices.Equal(got, want) {
							t.Fatalf("proof of %x as of %d from the store differs from one-at-a-time insertion", lb, v.size)
						}
					}
				}
				// The stored states are the newest.
				for lb, s := range states {
					vals, err := readStates(st, f, [][32]byte{lb})
					if err != nil {
						t.Fatal(err)
					}
					got, err := decodeSubjectState(vals[0])
					if err != nil || got != s {
						t.Fatalf("stored state of %x = %+v (%v), want %+v", lb, got, err, s)
					}
				}
			})
		}
	}
}

// TestSubjectMapSplitIndex: with a separate index store the map's records
// live there, off the durable commit, and Open re-derives whatever it
// lacks from the leaves: after a crash that lost the index store's last
// commits or all of it, between batches of a CheckpointInterval (the tail
// is sealed once the map is complete), and for a log whose map records are
// in the main store (made before they moved). Proofs at every checkpoint
// and fsck agree afterwards. So again with the leaf-hash and dedupe
// indexes in runs, which each restart finds as the first log left them
// (Open seals the tail's map leaf, whose keys go to the runs too).
func TestSubjectMapSplitIndex(t *testing.T) {
	for _, c := range []struct {
		interval time.Duration
		runs     bool
	}{{0, false}, {time.Hour, false}, {0, true}, {time.Hour, true}} {
		interval := c.interval
		t.Run(fmt.Sprintf("interval %v runs %v", interval, c.runs), func(t *testing.T) {
			ctx := t.Context()
			st, ix := newFakeStore(), lazy()
			o := mapOptions()
			o.CheckpointInterval = interval
			o.Index = ix
			runsDir := func(from string) string {
				switch {
				case !c.runs:
					return ""
				case from == "":
					return t.TempDir()
				}
				return copyDir(t, from)
			}
			o.RunsDir = runsDir("")
			l, err := Open(ctx, st, o)
			if err != nil {
				t.Fatal(err)
			}
			a := acked{}
			for b := range 4 {
				evs := testEvents(b*60, 60)
				a.add(t, evs, mustAppend(t, l, evs))
			}
			sizes := []uint64{l.Latest().Size}
			main := st.clone()
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			vals, _ := main.Get(keyLatest, keyTree)
			cpSize, tree := binary.BigEndian.Uint64(vals[0]), binary.BigEndian.Uint64(vals[1])
			if interval == 0 {
				if tree != cpSize || cpSize != 244 {
					t.Fatalf("checkpoint %d, tree %d, want 244 (4 batches of 60 and their map leaves)", cpSize, tree)
				}
				// Nothing of the map on the durable commit.
				n := 0
				main.Scan([]byte{kMapNodeC}, []byte{kMapNodeC + 1}, func(k, v []byte) error { n++; return nil })
				main.Scan([]byte{kSubjState}, []byte{kSubjState + 1}, func(k, v []byte) error { n++; return nil })
				if n != 0 {
					t.Fatalf("the main store holds %d subject map records; they belong in the index store", n)
				}
			} else if cpSize != 0 || tree != 240 {
				t.Fatalf("checkpoint %d, tree %d, want 0 and 240 unsigned leaves", cpSize, tree)
			}
			var losses = map[string]func() *fakeStore{
				"kept":      ix.clone,
				"last-lost": func() *fakeStore { return historyAt(ix, len(ix.history)-2) },
				"two-lost":  func() *fakeStore { return historyAt(ix, len(ix.history)-3) },
				"all-lost":  newFakeStore,
				// A log whose map records are in the main store: the
				// index store without them, as a log made before.
				"map-in-main": func() *fakeStore {
					x := ix.clone()
					x.Scan(nil, nil, func(k, v []byte) error {
						if k[0] == kMapNodeC || k[0] == kSubjState || bytes.Equal(k, keyMapped) {
							x.corrupt(k, nil)
						}
						return nil
					})
					return x
				},
			}
			for name, idx := range losses {
				t.Run(name, func(t *testing.T) {
					m, x := main.clone(), idx()
					o := o
					o.Index, o.RunsDir = x, runsDir(o.RunsDir)
					l2, err := Open(ctx, m, o)
					if err != nil {
						t.Fatalf("restart: %v", err)
					}
					b := acked{}
					for k, v := range a {
						b[k] = v
					}
					checkInvariants(t, l2, b)
					size := l2.Latest().Size
					if size != 244 && size != 241 {
						t.Fatalf("size after restart %d, want 244, or 241 when the 240 leaves were sealed at Open", size)
					}
					for _, s := range append(sizes, size) {
						if s <= size && (interval == 0 || s == size) {
							checkSubjectProofs(t, l2, s)
						}
					}
					evs := testEvents(500, 30)
					b.add(t, evs, mustAppend(t, l2, evs))
					if err := l2.Close(); err != nil {
						t.Fatal(err)
					}
					checkViolations(t, m)
					checkViolations(t, x)
					m, x = m.clone(), x.clone()
					o.Index = x
					l3, err := Open(ctx, m, o)
					if err != nil {
						t.Fatalf("second restart: %v", err)
					}
					checkInvariants(t, l3, b)
					checkSubjectProofs(t, l3, l3.Latest().Size)
					if err := l3.Close(); err != nil {
						t.Fatal(err)
					}
					if err := FsckWithRuns(ctx, m.clone(), x.clone(), o.RunsDir, testVerifier, nil); err != nil {
						t.Fatalf("FsckWithRuns after the restart: %v", err)
					}
					checkViolations(t, m)
					checkViolations(t, x)
				})
			}
		})
	}
}

// TestSubjectMapWideFormat: a log created before the compact node records
// (msubjectmap 01) keeps storing and reading its 140-byte p records.
func TestSubjectMapWideFormat(t *testing.T) {
	ctx := t.Context()
	st := newFakeStore()
	l, err := Open(ctx, st, mapOptions())
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	st = st.clone()
	st.corrupt(keySubjectMap, []byte{byte(mapWide)}) // as such a log was created
	l, err = Open(ctx, st, mapOptions())
	if err != nil {
		t.Fatal(err)
	}
	a := acked{}
	for b := range 3 {
		evs := testEvents(b*70, 70)
		a.add(t, evs, mustAppend(t, l, evs))
	}
	checkInvariants(t, l, a)
	for _, size := range []uint64{71, 142, 213} {
		checkSubjectProofs(t, l, size)
	}
	l.Close()
	wide, compact := 0, 0
	st.clone().Scan(nil, nil, func(k, v []byte) error {
		switch k[0] {
		case kMapNode:
			wide++
		case kMapNodeC:
			compact++
		}
		return nil
	})
	if wide == 0 || compact != 0 {
		t.Fatalf("%d wide and %d compact node records, want only wide", wide, compact)
	}
}

// TestCompactNodeDecode: a damaged compact node record is ErrCorrupt, and
// every node round-trips.
func TestCompactNodeDecode(t *testing.T) {
	leaf := leafLabel(SubjectLabel("alice"))
	inner, _ := prefix.NewLabel(3, []byte{0xa0})
	left, _ := prefix.NewLabel(9, []byte{0xa0, 0x80})
	right, _ := prefix.NewLabel(256, bytes.Repeat([]byte{0xb0}, 32))
	h := [32]byte{1, 2, 3}
	state := subjectState{3, 42, [32]byte{9}}
	if got, err := decodeNode(leaf, state.encode(), mapCompact); err != nil || got.Hash != mapNodeHash(leaf, state.value()) {
		t.Fatalf("a compact leaf record holding a state decodes to %v, %v; want its hash", got, err)
	}
	for _, n := range []*prefix.Node{
		{Label: inner, Left: left, Right: right, Hash: h},
		{Label: prefix.RootLabel, Left: left, Right: prefix.EmptyNodeLabel, Hash: h},
	} {
		got, err := decodeNode(n.Label, encodeNode(n, mapCompact), mapCompact)
		if err != nil || *got != *n {
			t.Fatalf("round trip of %v = %v, %v", n, got, err)
		}
	}
	good := encodeNode(&prefix.Node{Label: inner, Left: left, Right: right, Hash: h}, mapCompact)
	for name, tc := range map[string]struct {
		l prefix.Label
		v []byte
	}{
		"short hash":             {inner, good[:20]},
		"leaf with children":     {leaf, good},
		"cut child label":        {inner, good[:len(good)-1]},
		"trailing bytes":         {inner, append(bytes.Clone(good), 0)},
		"empty child not root":   {inner, append(bytes.Clone(good[:32]), 0xff, 0xff, 0xff, 0xff)},
		"child above the node":   {inner, append(bytes.Clone(good[:32]), 0, 2, 0x80, 0, 2, 0xc0)},
		"child label stray bits": {inner, append(bytes.Clone(good[:32]), 0, 4, 0xaf, 0, 4, 0xb0)},
	} {
		if _, err := decodeNode(tc.l, tc.v, mapCompact); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: decode = %v, want ErrCorrupt", name, err)
		}
	}
}

// TestSubjectMapSplitCrashAtEveryStep: with the subject map and a separate
// index store, a fault at every operation of either store (failed, or
// written but reported failed), then a restart on the main store's durable
// state with the index store as it was, without its last commit, torn in
// its last commit as badgerstore's NoSync commits can be (see partialLast),
// or empty. The restarted log must have every acknowledged event once, a map leaf
// ending each checkpoint, fsck clean, and proofs for every subject.
func TestSubjectMapSplitCrashAtEveryStep(t *testing.T) {
	ctx := t.Context()
	work := [][]*pb.Event{testEvents(0, 30), testEvents(20, 40), testEvents(100, 5)}
	o := mapOptions()
	run := func(st, ix *fakeStore) (acked, bool) {
		a := acked{}
		o := o
		o.Index = ix
		l, err := Open(ctx, st, o)
		if err != nil {
			if !errors.Is(err, ErrStorage) {
				t.Fatalf("Open with a failing store: %v, want ErrStorage", err)
			}
			return a, true
		}
		failed := false
		for _, evs := range work {
			res, _, err := l.Append(ctx, evs)
			if err != nil {
				if !errors.Is(err, ErrStorage) {
					t.Fatalf("Append with a failing store: %v, want ErrStorage", err)
				}
				failed = true
				break
			}
			a.add(t, evs, res)
		}
		l.Close()
		// Events are answered once durable: an index commit failing after
		// that stops appends (a broken log) without failing an Append.
		return a, failed || l.broken.Load() != nil
	}
	st, ix := newFakeStore(), lazy()
	if _, failed := run(st, ix); failed {
		t.Fatal("the workload failed without a fault")
	}
	for _, target := range []string{"main", "index"} {
		total := map[string]int{"main": st.ops, "index": ix.ops}[target]
		for at := 1; at <= total; at++ {
			for _, kind := range []fault{failOp, failCommitButPersist} {
				t.Run(fmt.Sprintf("%s/op%d/%v", target, at, kind), func(t *testing.T) {
					st, ix := newFakeStore(), lazy()
					f := map[string]*fakeStore{"main": st, "index": ix}[target]
					f.faultAt, f.kind = at, kind
					a, failed := run(st, ix)
					if !failed && f.dead {
						t.Fatalf("fault at operation %d of the %s store did not surface", at, target)
					}
					// !f.dead: the run never reached the fault (fewer
					// operations than the clean run: a repeated dedupe key
					// found in flight instead of read from the index store).
					for _, loss := range []string{"kept", "last-lost", "all-lost", "last-but-watermark", "last-half"} {
						m := st.clone()
						x := map[string]func() *fakeStore{
							"kept":               ix.clone,
							"last-lost":          func() *fakeStore { return historyAt(ix, len(ix.history)-2) },
							"all-lost":           newFakeStore,
							"last-but-watermark": func() *fakeStore { return partialLast(ix, false) },
							"last-half":          func() *fakeStore { return partialLast(ix, true) },
						}[loss]()
						// A fault between a batch's index entries and its
						// map records (Log.commitIndex) leaves entries above
						// the watermark, which Open writes again.
						x.rewriteSame = true
						o := o
						o.Index = x
						l, err := Open(ctx, m, o)
						if err != nil {
							t.Fatalf("restart with the index store %s: %v", loss, err)
						}
						checkInvariants(t, l, a)
						size := l.Latest().Size
						checkSubjectProofs(t, l, size)
						b := acked{}
						for k, v := range a {
							b[k] = v
						}
						for _, evs := range work {
							b.add(t, evs, mustAppend(t, l, evs))
						}
						checkInvariants(t, l, b)
						checkSubjectProofs(t, l, l.Latest().Size)
						l.Close()
						checkViolations(t, m)
						checkViolations(t, x)
					}
				})
			}
		}
	}
}

// TestSubjectMapMissingState: a seal reads a subject's stored state only
// when the tree holds the subject's leaf, and a leaf whose state record is
// gone is ErrCorrupt at the next seal that changes it, not a chain started
// again from zero (which would silently commit a wrong map root).
func TestSubjectMapMissingState(t *testing.T) {
	for _, f := range []mapFormat{mapWide, mapCompact} {
		t.Run(fmt.Sprintf("format %d", f), func(t *testing.T) {
			st := newFakeStore()
			m := newSubjectMap(st, f)
			a, b := SubjectLabel("a"), SubjectLabel("b")
			w := newWrites(0)
			if _, err := m.apply([]mapItem{{a, 0, [32]byte{1}}, {b, 1, [32]byte{2}}}, 3, w); err != nil {
				t.Fatal(err)
			}
			if err := st.Commit(w.keys, w.vals); err != nil {
				t.Fatal(err)
			}
			stateKey := subjStateKey(b)
			if f == mapCompact {
				stateKey = mapNodeKey(leafLabel(b), 3, f)
			}
			if vals, err := st.Get(stateKey); err != nil || vals[0] == nil {
				t.Fatalf("b's state record %x: %v, %v", stateKey, vals, err)
			}
			// A cold cache: a new subject and a known one read from the
			// store give the same root as the warm map.
			warm := newWrites(0)
			want, err := m.apply([]mapItem{{SubjectLabel("c"), 4, [32]byte{3}}, {a, 5, [32]byte{4}}}, 7, warm)
			if err != nil {
				t.Fatal(err)
			}
			cold := newSubjectMap(st.clone(), f)
			got, err := cold.apply([]mapItem{{SubjectLabel("c"), 4, [32]byte{3}}, {a, 5, [32]byte{4}}}, 7, newWrites(0))
			if err != nil || got != want {
				t.Fatalf("cold map: root %x (%v), warm map %x", got, err, want)
			}
			st.corrupt(stateKey, nil)
			_, err = newSubjectMap(st, f).apply([]mapItem{{b, 8, [32]byte{5}}}, 10, newWrites(0))
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("seal of a subject whose state record is gone: %v, want ErrCorrupt", err)
			}
		})
	}
}

// TestSubjectMapBatchesRespectStoreLimits: with a separate index store the
// map's records go there, so the batches a seal's map writes bound are the
// index store's: every index commit stays within its limits however many
// subjects a batch changes, and the main store's commits are not shrunk
// by records they do not hold.
func TestSubjectMapBatchesRespectStoreLimits(t *testing.T) {
	for _, tc := range []struct {
		name                   string
		mainCount, ixCount     int
		minBatches, maxBatches uint64 // for 1000 events
	}{
		{"index store smaller", 1 << 20, 3000, 4, 0},
		{"main store smaller", 300, 1 << 20, 4, 6}, // ~249 leaves per main commit, as without a map
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, ix := newFakeStore(), newFakeStore()
			st.maxCount, ix.maxCount = tc.mainCount, tc.ixCount
			o := mapOptions()
			o.Index = ix
			l, err := Open(t.Context(), st, o)
			if err != nil {
				t.Fatal(err)
			}
			a := acked{}
			evs := testEvents(0, 1000)
			a.add(t, evs, mustAppend(t, l, evs))
			if b := l.Stats().Batches; b < tc.minBatches || (tc.maxBatches > 0 && b > tc.maxBatches) {
				t.Fatalf("1000 events in %d batches; want %d..%d", b, tc.minBatches, tc.maxBatches)
			}
			checkInvariants(t, l, a)
			checkSubjectProofs(t, l, l.Latest().Size)
			l.Close()
			checkViolations(t, st)
			checkViolations(t, ix)
		})
	}
}
