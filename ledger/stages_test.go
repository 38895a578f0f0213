package ledger

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/compact"

	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// newIdleLog loads a log over st without starting its sequencer, so a test
// can drive the stages itself.
func newIdleLog(t *testing.T, st Store, o Options) *Log {
	t.Helper()
	l, err := newLog(t.Context(), o.withDefaults(), st)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// batchOf makes one request of evs and returns its items.
func batchOf(t *testing.T, evs []*pb.Event) []item {
	t.Helper()
	r := &request{items: make([]prepared, len(evs)), results: make([]AppendResult, len(evs)), done: make(chan struct{})}
	var out []item
	b := event.NewBatch(evs)
	for i := range evs {
		p, err := prepare(b, i)
		if err != nil {
			t.Fatal(err)
		}
		r.items[i] = p
		out = append(out, item{r, i})
	}
	return out
}

func TestDedupeStage(t *testing.T) {
	st := newFakeStore()
	l := openFake(t, st)
	stored := mustAppend(t, l, testEvents(0, 3)) // events 0..2 are in the store
	l.Close()
	l = newIdleLog(t, st.clone(), testOptions())
	// Event 5 is in a batch still being committed.
	p5, err := prepare(event.NewBatch([]*pb.Event{testEvent(5)}), 0)
	if err != nil {
		t.Fatal(err)
	}
	l.inflight[p5.dedupe] = inflightEntry{res: AppendResult{Index: 3, LeafHash: [32]byte{5}}, event: p5.eventField()}

	batch := batchOf(t, []*pb.Event{testEvent(10), testEvent(1), testEvent(10), testEvent(5), testEvent(11), testEvent(1)})
	fresh, repeatOf, res, err := l.dedupe(batch)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{0, 4}; !equalInts(fresh, want) {
		t.Errorf("fresh = %v, want %v", fresh, want)
	}
	if want := []int{-1, -1, 0, -1, -1, 1}; !equalInts(repeatOf, want) {
		t.Errorf("repeatOf = %v, want %v", repeatOf, want)
	}
	if want := (AppendResult{Index: 1, LeafHash: stored[1].LeafHash, Duplicate: true}); res[1] != want {
		t.Errorf("stored duplicate: %+v, want %+v", res[1], want)
	}
	if want := (AppendResult{Index: 3, LeafHash: [32]byte{5}, Duplicate: true}); res[3] != want {
		t.Errorf("in-flight duplicate: %+v, want %+v", res[3], want)
	}
	if got := l.seq.rng.End(); got != 3 {
		t.Errorf("dedupe changed the tree: size %d, want 3", got)
	}

	// The same keys with other content: conflicts with the stored and the
	// in-flight entries, and within the batch the first wins.
	changed := func(i int) *pb.Event { ev := testEvent(i); ev.Reason = "changed"; return ev }
	batch = batchOf(t, []*pb.Event{changed(1), changed(5), testEvent(12), changed(12), testEvent(12), testEvent(1)})
	fresh, repeatOf, res, err = l.dedupe(batch)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{2}; !equalInts(fresh, want) {
		t.Errorf("fresh = %v, want %v", fresh, want)
	}
	if want := (AppendResult{Index: 1, LeafHash: stored[1].LeafHash, Conflict: true}); res[0] != want {
		t.Errorf("stored conflict: %+v, want %+v", res[0], want)
	}
	if want := (AppendResult{Index: 3, LeafHash: [32]byte{5}, Conflict: true}); res[1] != want {
		t.Errorf("in-flight conflict: %+v, want %+v", res[1], want)
	}
	w := newWrites(len(fresh))
	if _, err := l.encode(batch, fresh, repeatOf, res, event.EncodeTimestamp(testNow), w, w); err != nil {
		t.Fatal(err)
	}
	if want := (AppendResult{Index: 3, LeafHash: res[2].LeafHash, Conflict: true}); res[3] != want {
		t.Errorf("second content in one batch: %+v, want %+v", res[3], want)
	}
	if want := (AppendResult{Index: 3, LeafHash: res[2].LeafHash, Duplicate: true}); res[4] != want {
		t.Errorf("first content again in one batch: %+v, want %+v", res[4], want)
	}
	// After a conflicting first, a repeat of the stored content is a duplicate.
	if want := (AppendResult{Index: 1, LeafHash: stored[1].LeafHash, Duplicate: true}); res[5] != want {
		t.Errorf("stored content after a conflict in one batch: %+v, want %+v", res[5], want)
	}

	// A dedupe record naming another event's leaf is corruption.
	bad := st.clone()
	bad.corrupt(dedupeKey(event.DedupeKey(testEvent(20).GetSource().GetSystem(), testEvent(20).GetId())), be64(nil, 0))
	l = newIdleLog(t, bad, testOptions())
	if _, _, _, err := l.dedupe(batchOf(t, []*pb.Event{testEvent(20)})); !isErr(err, ErrCorrupt) {
		t.Fatalf("dedupe over a forged record = %v, want ErrCorrupt", err)
	}
}

func TestEncodeStage(t *testing.T) {
	st := newFakeStore()
	openFake(t, st).Close()
	l := newIdleLog(t, st.clone(), testOptions())
	evs := []*pb.Event{testEvent(1), testEvent(2), testEvent(1)}
	batch := batchOf(t, evs)
	fresh, repeatOf, res, err := l.dedupe(batch)
	if err != nil {
		t.Fatal(err)
	}
	w := newWrites(len(fresh))
	ts := event.EncodeTimestamp(testNow)
	dedupes, err := l.encode(batch, fresh, repeatOf, res, ts, w, w)
	if err != nil {
		t.Fatal(err)
	}
	if len(dedupes) != 2 || l.seq.rng.End() != 2 {
		t.Fatalf("encode: %d new dedupe keys, tree size %d; want 2 and 2", len(dedupes), l.seq.rng.End())
	}
	if res[0].Index != 0 || res[1].Index != 1 || res[2] != (AppendResult{Index: 0, LeafHash: res[0].LeafHash, Duplicate: true}) {
		t.Fatalf("results = %+v", res)
	}
	got := map[string][]byte{}
	for i, k := range w.keys {
		got[string(k)] = w.vals[i]
	}
	for i := range 2 {
		leaf, ok := got[string(leafKey(uint64(i)))]
		if !ok {
			t.Fatalf("no leaf %d among the writes", i)
		}
		if LeafHash(leaf) != res[i].LeafHash {
			t.Errorf("leaf %d hashes to %x, result says %x", i, LeafHash(leaf), res[i].LeafHash)
		}
		en, err := event.DecodeLeaf(leaf)
		if err != nil || en.GetEvent().GetId() != evs[i].GetId() || !en.GetObservedTime().AsTime().Equal(testNow) {
			t.Errorf("leaf %d decodes to %v, %v", i, en, err)
		}
		if v := got[string(hashKey(res[i].LeafHash[:]))]; binary.BigEndian.Uint64(v) != uint64(i) {
			t.Errorf("leaf-hash index of %d = %x", i, v)
		}
		if v := got[string(dedupeKey(dedupes[i]))]; binary.BigEndian.Uint64(v) != uint64(i) {
			t.Errorf("dedupe index of %d = %x", i, v)
		}
		if _, ok := got[string(subjectKey(evs[i].GetSubject().GetId(), uint64(i)))]; !ok {
			t.Errorf("no subject index entry for %d", i)
		}
	}
}

// TestTileWriter feeds leaf hashes in uneven batches through a compact
// range and the edge-tile writer, and checks the last write of every tile
// against tiles computed from the leaves directly.
func TestTileWriter(t *testing.T) {
	const n = 256*256 + 300 // a full level-1 tile, and partial tiles on levels 0..2
	leaves := make([][32]byte, n)
	for i := range leaves {
		leaves[i] = sha256.Sum256(binary.BigEndian.AppendUint64(nil, uint64(i)))
	}
	rf := &compact.RangeFactory{Hash: hasher.HashChildren}
	rng := rf.NewEmptyRange(0)
	var tw tileWriter
	last := map[string][]byte{} // the last value written under each tile key
	for i, step := 0, 1; i < n; step = step*3%1000 + 1 {
		end := min(i+step, n)
		w := newWrites(0)
		tw.begin()
		for ; i < end; i++ {
			if err := rng.Append(leaves[i][:], func(id compact.NodeID, h []byte) { tw.visit(id, h, w) }); err != nil {
				t.Fatal(err)
			}
		}
		if tw.err != nil {
			t.Fatal(tw.err)
		}
		tw.flush(uint64(end), w)
		for k, key := range w.keys {
			last[string(key)] = append([]byte(nil), w.vals[k]...)
		}
	}
	// The reference: level 0 holds leaf hashes, level 1 the roots of
	// 256-leaf subtrees, level 2 the roots of 65536-leaf subtrees.
	subtree := func(from, width int) []byte { // an RFC 6962 subtree hash does not depend on its position
		r := rf.NewEmptyRange(0)
		for j := from; j < from+width; j++ {
			r.Append(leaves[j][:], nil)
		}
		root, _ := r.GetRootHash(nil)
		return root
	}
	want := map[string][]byte{}
	for level, span := range []int{1, 256, 256 * 256} {
		count := n / span // complete nodes at that level
		for idx := 0; idx*256 < count; idx++ {
			var row []byte
			for j := idx * 256; j < min(idx*256+256, count); j++ {
				if span == 1 {
					row = append(row, leaves[j][:]...)
				} else {
					row = append(row, subtree(j*span, span)...)
				}
			}
			want[string(tileKey(uint64(level), uint64(idx)))] = row
		}
	}
	for k, v := range want {
		if !bytes.Equal(last[k], v) {
			t.Errorf("tile %x: written %d bytes, want %d bytes (equal: %v)", k, len(last[k]), len(v), bytes.Equal(last[k], v))
		}
	}
	if len(last) != len(want) {
		t.Errorf("%d tiles written, want %d", len(last), len(want))
	}
}

func TestSealStage(t *testing.T) {
	st := newFakeStore()
	openFake(t, st).Close()
	l := newIdleLog(t, st.clone(), testOptions())
	batch := batchOf(t, testEvents(0, 300))
	fresh, repeatOf, res, err := l.dedupe(batch)
	if err != nil {
		t.Fatal(err)
	}
	w := newWrites(len(fresh))
	if _, err := l.encode(batch, fresh, repeatOf, res, event.EncodeTimestamp(testNow), w, w); err != nil {
		t.Fatal(err)
	}
	s, err := l.seal(300, w)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := OpenCheckpoint(s.cp.Note, testVerifier)
	if err != nil || cp.Size != 300 || cp.Root != rootOf(l.seq.rng) {
		t.Fatalf("sealed checkpoint %+v, %v; want size 300 and the tree's root", cp, err)
	}
	if l.seq.last != s || len(s.edge) != 2 || s.edge[0].width() != 300-256 || s.edge[1].width() != 1 {
		t.Fatalf("sealed state: edge %v, want the tree's right edge (44 and 1 hashes)", s.edge)
	}
	var sawCP, sawLatest bool
	for i, k := range w.keys {
		sawCP = sawCP || bytes.Equal(k, checkpointKey(300)) && bytes.Equal(w.vals[i], s.cp.Note)
		sawLatest = sawLatest || bytes.Equal(k, keyLatest) && bytes.Equal(w.vals[i], be64(nil, 300))
	}
	if !sawCP || !sawLatest {
		t.Fatalf("seal wrote checkpoint: %v, latest size: %v; want both", sawCP, sawLatest)
	}
}

// countKind counts the entries of one kind (their first key byte: kHash,
// kCheckpoint, ...) in st.
func countKind(t *testing.T, st Store, kind byte) int {
	t.Helper()
	n := 0
	if err := st.Scan([]byte{kind}, []byte{kind + 1}, func(k, v []byte) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestCheckpointInterval(t *testing.T) {
	ctx := context.Background()
	t.Run("at most one per interval, every ack covered within it", func(t *testing.T) {
		st := newFakeStore()
		o := testOptions()
		o.CheckpointInterval = 300 * time.Millisecond
		l, err := Open(ctx, st, o)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		a := acked{}
		start := time.Now()
		var size uint64
		for i := range 20 {
			evs := testEvents(i*10, 10)
			res, sz, err := l.Append(ctx, evs)
			if err != nil {
				t.Fatal(err)
			}
			a.add(t, evs, res)
			size = sz
		}
		elapsed := time.Since(start)
		deadline := time.Now().Add(o.CheckpointInterval + 2*time.Second)
		for l.Latest().Size < size {
			if time.Now().After(deadline) {
				t.Fatalf("tree size %d acknowledged, but the checkpoint is still at %d after the interval", size, l.Latest().Size)
			}
			time.Sleep(10 * time.Millisecond)
		}
		// The size-0 checkpoint, then at most one per interval begun.
		if n, most := countKind(t, st, kCheckpoint), 1+int(time.Since(start)/o.CheckpointInterval)+1; n > most {
			t.Errorf("%d checkpoints over %v of appends with interval %v, want at most %d", n, elapsed, o.CheckpointInterval, most)
		}
		checkInvariants(t, l, a)
	})
	t.Run("a crash before the checkpoint: Open signs the tail", func(t *testing.T) {
		st := newFakeStore()
		o := testOptions()
		o.CheckpointInterval = time.Hour
		l, err := Open(ctx, st, o)
		if err != nil {
			t.Fatal(err)
		}
		a := acked{}
		evs := testEvents(0, 700)
		res, size, err := l.Append(ctx, evs)
		if err != nil {
			t.Fatal(err)
		}
		a.add(t, evs, res)
		if l.Latest().Size >= size {
			t.Fatalf("checkpoint at %d right after an append of tree size %d, want it to wait for the interval", l.Latest().Size, size)
		}
		crashed := st.clone() // what is durable now; no Close
		var progress []string
		if err := Fsck(ctx, crashed, testVerifier, func(f string, args ...any) { progress = append(progress, f) }); err != nil {
			t.Fatalf("Fsck of a store with unsigned leaves: %v", err)
		}
		if !strings.Contains(strings.Join(progress, "\n"), "wait for the next one") {
			t.Errorf("Fsck did not report the unsigned leaves: %q", progress)
		}
		l2, err := Open(ctx, crashed, o)
		if err != nil {
			t.Fatal(err)
		}
		defer l2.Close()
		if got := l2.Latest().Size; got != size {
			t.Fatalf("reopened at checkpoint %d, want the acknowledged tree size %d", got, size)
		}
		checkInvariants(t, l2, a)
		l.Close()

		// A forged leaf in the unsigned tail is refused.
		forged := st.clone()
		forged.corrupt(leafKey(size), []byte("forged"))
		forged.corrupt(keyTree, be64(nil, size+1))
		if _, err := Open(ctx, forged, o); !isErr(err, ErrCorrupt) {
			t.Fatalf("Open over a forged unsigned leaf = %v, want ErrCorrupt", err)
		}
	})
	t.Run("Close signs the tail", func(t *testing.T) {
		st := newFakeStore()
		o := testOptions()
		o.CheckpointInterval = time.Hour
		l, err := Open(ctx, st, o)
		if err != nil {
			t.Fatal(err)
		}
		_, size, err := l.Append(ctx, testEvents(0, 5))
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		vals, _ := st.clone().Get(keyLatest)
		if got := binary.BigEndian.Uint64(vals[0]); got != size {
			t.Fatalf("latest checkpoint after Close = %d, want %d", got, size)
		}
	})
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
