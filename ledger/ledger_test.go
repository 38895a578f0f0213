package ledger

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/proof"
	"golang.org/x/mod/sumdb/note"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

func TestEncodeLeafMatchesFastPath(t *testing.T) {
	tests := []struct {
		name string
		ev   *pb.Event
		t    time.Time
	}{
		{"full", testEvent(1), testNow},
		{"empty event", &pb.Event{}, testNow},
		{"epoch", testEvent(2), time.Unix(0, 0)},
		{"negative", testEvent(3), time.Date(1900, 1, 1, 0, 0, 0, 1, time.UTC)},
		{"mfa false present", &pb.Event{Id: "x", Mfa: proto.Bool(false)}, testNow},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want, err := event.EncodeLeaf(tt.ev, tt.t)
			if err != nil {
				t.Fatal(err)
			}
			kinds := batchKinds(t, []*pb.Event{tt.ev})
			if tt.name == "full" && len(kinds) != 3 {
				t.Fatalf("a valid event in %d kinds of batch, want 3", len(kinds))
			}
			for kind, b := range kinds {
				p, err := prepare(b, 0)
				if err != nil {
					t.Fatal(err)
				}
				checkPrepared(t, kind, p, tt.ev, tt.t, want)
			}
		})
	}
}

// TestAppendBatchIsAppend: the same events appended with Append and with
// AppendBatch from each kind of batch give the same leaves and results,
// and a resend in another kind is answered with the same duplicates and
// conflicts.
func TestAppendBatchIsAppend(t *testing.T) {
	evs := append(testEvents(0, 40), testEvent(3)) // a repeat within the batch
	changed := testEvent(5)
	changed.Reason = "other"
	resend := []*pb.Event{testEvent(1), changed, testEvent(41), testEvent(41)}
	append1 := func(l *Log, kind string, evs []*pb.Event) []AppendResult {
		t.Helper()
		b := batchKinds(t, evs)[kind]
		if b == nil {
			t.Fatalf("no %s batch", kind)
		}
		res, _, err := l.AppendBatch(t.Context(), b)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	ref := openFake(t, newFakeStore())
	defer ref.Close()
	want := mustAppend(t, ref, evs)
	wantResend := mustAppend(t, ref, resend)
	if !wantResend[0].Duplicate || !wantResend[1].Conflict || !wantResend[3].Duplicate {
		t.Fatalf("resend = %+v; want a duplicate, a conflict, a new event and its repeat", wantResend)
	}
	wantLeaves, err := ref.Entries(t.Context(), 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, first := range []string{"events", "validated", "decoded"} {
		for _, second := range []string{"events", "validated", "decoded"} {
			l := openFake(t, newFakeStore())
			if got := append1(l, first, evs); !slices.Equal(got, want) {
				t.Fatalf("%s: results %+v, want %+v", first, got, want)
			}
			if got := append1(l, second, resend); !slices.Equal(got, wantResend) {
				t.Fatalf("%s then %s: resend results %+v, want %+v", first, second, got, wantResend)
			}
			leaves, err := l.Entries(t.Context(), 0, 100)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.EqualFunc(leaves, wantLeaves, func(a, b Entry) bool { return a.Index == b.Index && bytes.Equal(a.Leaf, b.Leaf) }) {
				t.Fatalf("%s then %s: the leaves differ from Append's", first, second)
			}
			l.Close()
		}
	}
}

// batchKinds returns evs in each kind of event.Batch the ledger takes: as
// they are (Append), validated (when they are valid), and decoded from
// their deterministic encoding, as the server receives them (AppendBatch).
func batchKinds(t *testing.T, evs []*pb.Event) map[string]*event.Batch {
	t.Helper()
	out := map[string]*event.Batch{"events": event.NewBatch(evs)}
	if v := event.NewBatch(evs); v.Validate("events", testNow) == nil {
		out["validated"] = v
	}
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(&pb.AppendStreamRequest{Events: evs})
	if err != nil {
		t.Fatal(err)
	}
	_, dec, d, ok := event.DecodeBatch(data, 1, 2)
	if !ok {
		t.Fatal("DecodeBatch fell back")
	}
	out["decoded"] = d.Batch(dec)
	return out
}

// checkPrepared checks that p, ev prepared from a batch of kind, holds
// want, the leaf of ev observed at at.
func checkPrepared(t *testing.T, kind string, p prepared, ev *pb.Event, at time.Time, want []byte) {
	t.Helper()
	full := p.appendObserved(event.EncodeTimestamp(at))
	if full[0] != 0x00 {
		t.Fatalf("appendObserved starts with %#x, want the leaf prefix 0x00", full[0])
	}
	got := full[1:]
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: appendObserved = %x, want EncodeLeaf's %x", kind, got, want)
	}
	if len(got) > cap(p.leaf) {
		t.Errorf("%s: the leaf (%d bytes) outgrew the room prepare left (%d bytes)", kind, len(got), cap(p.leaf))
	}
	e, err := event.DecodeLeaf(got)
	if err != nil || !proto.Equal(e.GetEvent(), ev) || !e.GetObservedTime().AsTime().Equal(at) {
		t.Fatalf("%s: DecodeLeaf = %v, %v; want the event back", kind, e, err)
	}
	if p.dedupe != event.DedupeKey(ev.GetSource().GetSystem(), ev.GetId()) || p.subject != ev.GetSubject().GetId() {
		t.Fatalf("%s: dedupe key %x, subject %q; want the event's", kind, p.dedupe, p.subject)
	}
}

func TestLeafHashIsRFC6962(t *testing.T) {
	// RFC 6962 leaf hash of the empty leaf: SHA-256(0x00).
	want := "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
	if got := fmt.Sprintf("%x", LeafHash(nil)); got != want {
		t.Fatalf("LeafHash(nil) = %s, want %s", got, want)
	}
}

func TestNewLogPublishesSizeZero(t *testing.T) {
	st := newFakeStore()
	l := openFake(t, st)
	cp := l.Latest()
	if cp.Size != 0 {
		t.Fatalf("Latest().Size = %d, want 0", cp.Size)
	}
	n, err := note.Open(cp.Note, note.VerifierList(testVerifier))
	if err != nil {
		t.Fatalf("checkpoint note does not verify: %v", err)
	}
	// Empty tree root: SHA-256 of nothing.
	if want := testOrigin + "\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"; n.Text != want {
		t.Fatalf("checkpoint text = %q, want %q", n.Text, want)
	}
	if _, err := l.CheckpointAt(context.Background(), 0); err != nil {
		t.Fatalf("CheckpointAt(0): %v", err)
	}
	if err := l.Fsck(context.Background(), nil); err != nil {
		t.Fatalf("Fsck(empty log): %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// Reopening does not publish again.
	l = openFake(t, st.clone())
	if got := l.Latest(); !bytes.Equal(got.Note, cp.Note) {
		t.Fatalf("reopened checkpoint = %q, want %q", got.Note, cp.Note)
	}
	l.Close()
	checkViolations(t, st)
}

func TestAppendAndRead(t *testing.T) {
	ctx := context.Background()
	st := newFakeStore()
	l := openFake(t, st)
	defer l.Close()
	evs := testEvents(0, 300)
	res, size, err := l.Append(ctx, evs)
	if err != nil {
		t.Fatal(err)
	}
	if size != 300 {
		t.Fatalf("Append size = %d, want 300", size)
	}
	for i, r := range res {
		want, _ := event.EncodeLeaf(evs[i], testNow)
		if r.Index != uint64(i) || r.Duplicate || r.LeafHash != LeafHash(want) {
			t.Fatalf("result %d = %+v, want index %d leaf hash %x", i, r, i, LeafHash(want))
		}
	}
	cp := l.Latest()
	if cp.Size != 300 {
		t.Fatalf("Latest().Size = %d, want 300", cp.Size)
	}
	// Every acknowledged entry is covered by the latest checkpoint.
	for _, i := range []uint64{0, 1, 255, 256, 299} {
		p, err := l.InclusionProof(ctx, i, cp.Size)
		if err != nil {
			t.Fatalf("InclusionProof(%d, %d): %v", i, cp.Size, err)
		}
		if err := proof.VerifyInclusion(hasher, i, cp.Size, res[i].LeafHash[:], p, cp.Root[:]); err != nil {
			t.Fatalf("inclusion proof of %d: %v", i, err)
		}
	}
	es, err := l.Entries(ctx, 250, 100)
	if err != nil || len(es) != 50 || es[0].Index != 250 {
		t.Fatalf("Entries(250, 100) = %d entries, %v; want 50 from 250", len(es), err)
	}
	if _, err := l.Entries(ctx, 300, 1); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("Entries(300, 1) error = %v, want ErrOutOfRange", err)
	}
	b, err := l.ReadEntryBundle(ctx, 1, 44)
	if err != nil {
		t.Fatal(err)
	}
	leaves, err := parseEntryBundle(b)
	if err != nil || len(leaves) != 44 {
		t.Fatalf("parseEntryBundle = %d leaves, %v; want 44", len(leaves), err)
	}
	for j, leaf := range leaves {
		if LeafHash(leaf) != res[256+j].LeafHash {
			t.Fatalf("bundle 1 entry %d does not hash to leaf %d", j, 256+j)
		}
	}
	for _, tc := range []struct {
		index uint64
		width int
		err   error
	}{
		{0, 256, nil}, {1, 44, nil}, {1, 45, ErrNotFound}, {2, 1, ErrNotFound}, {0, 0, ErrOutOfRange}, {0, 257, ErrOutOfRange},
	} {
		_, err := l.ReadEntryBundle(ctx, tc.index, tc.width)
		if !errors.Is(err, tc.err) && !(err == nil && tc.err == nil) {
			t.Errorf("ReadEntryBundle(%d, %d) error = %v, want %v", tc.index, tc.width, err, tc.err)
		}
		_, err = l.ReadTile(ctx, 0, tc.index, tc.width)
		if !errors.Is(err, tc.err) && !(err == nil && tc.err == nil) {
			t.Errorf("ReadTile(0, %d, %d) error = %v, want %v", tc.index, tc.width, err, tc.err)
		}
	}
	if _, err := l.CheckpointAt(ctx, 299); !errors.Is(err, ErrNotFound) {
		t.Fatalf("CheckpointAt(299) error = %v, want ErrNotFound", err)
	}
	if _, err := l.InclusionProof(ctx, 300, 300); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("InclusionProof(300, 300) error = %v, want ErrOutOfRange", err)
	}
	if _, err := l.ConsistencyProof(ctx, 10, 301); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("ConsistencyProof(10, 301) error = %v, want ErrOutOfRange", err)
	}
	if _, err := l.LookupLeafHash(ctx, make([]byte, 32)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("LookupLeafHash(zero) error = %v, want ErrNotFound", err)
	}
	checkInvariants(t, l, nil)
	checkViolations(t, st)
}

func TestAppendTooLarge(t *testing.T) {
	l := openFake(t, newFakeStore())
	defer l.Close()
	big := testEvent(1)
	big.Reason = strings.Repeat("x", MaxLeafSize)
	_, _, err := l.Append(context.Background(), []*pb.Event{testEvent(0), big})
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "event 1") {
		t.Fatalf("Append(oversized) error = %v, want ErrTooLarge naming event 1", err)
	}
	if l.Latest().Size != 0 {
		t.Fatalf("size after refused append = %d, want 0 (nothing stored)", l.Latest().Size)
	}
	// Just under the limit is accepted and fits a bundle.
	ok := &pb.Event{Id: "fits", Source: &pb.Source{System: "s"}}
	ok.Reason = strings.Repeat("y", MaxLeafSize-event.LeafOverhead-proto.Size(ok)-4)
	if _, _, err := l.Append(context.Background(), []*pb.Event{ok}); err != nil {
		t.Fatalf("Append(just under the limit): %v", err)
	}
	if _, _, err := l.Append(context.Background(), []*pb.Event{nil}); err == nil {
		t.Fatal("Append(nil event) succeeded")
	}
}

func TestDedupe(t *testing.T) {
	ctx := context.Background()
	st := newFakeStore()
	l := openFake(t, st)
	a := acked{}

	// Within one batch: the second copy gets the first's index.
	evs := []*pb.Event{testEvent(1), testEvent(2), testEvent(1)}
	res := mustAppend(t, l, evs)
	if res[2].Index != res[0].Index || !res[2].Duplicate || res[0].Duplicate || res[2].LeafHash != res[0].LeafHash {
		t.Fatalf("in-batch duplicate = %+v, want index %d duplicate", res[2], res[0].Index)
	}
	a.add(t, evs, res)

	// Across batches.
	evs = []*pb.Event{testEvent(3), testEvent(2)}
	res = mustAppend(t, l, evs)
	if !res[1].Duplicate || res[1].Conflict || res[1].Index != 1 || res[0].Index != 2 {
		t.Fatalf("across batches = %+v, want [2 new, 1 duplicate]", res)
	}
	a.add(t, evs, res)

	// Same id from another system is not a duplicate.
	other := testEvent(1)
	other.Source.System = "pam-1"
	res = mustAppend(t, l, []*pb.Event{other})
	if res[0].Duplicate || res[0].Index != 3 {
		t.Fatalf("other system = %+v, want new at 3", res[0])
	}
	a.add(t, []*pb.Event{other}, res)
	// An all-duplicate batch publishes nothing new.
	before := l.Latest()
	_, size, err := l.Append(ctx, []*pb.Event{testEvent(1)})
	if err != nil || size != 4 || !bytes.Equal(l.Latest().Note, before.Note) {
		t.Fatalf("all-duplicate append: size %d, %v; checkpoint changed: %v", size, err, !bytes.Equal(l.Latest().Note, before.Note))
	}
	l.Close()

	// Across reopen.
	l = openFake(t, st.clone())
	defer l.Close()
	evs = testEvents(1, 4)
	res = mustAppend(t, l, evs)
	want := []struct {
		index uint64
		dup   bool
	}{{0, true}, {1, true}, {2, true}, {4, false}}
	for i, w := range want {
		if res[i].Index != w.index || res[i].Duplicate != w.dup {
			t.Errorf("after reopen, event %d = %+v, want index %d duplicate %v", i+1, res[i], w.index, w.dup)
		}
	}
	a.add(t, evs, res)
	checkInvariants(t, l, a)
	checkViolations(t, st)
}

func TestSubjects(t *testing.T) {
	ctx := context.Background()
	l := openFake(t, newFakeStore())
	defer l.Close()
	mk := func(id, subject string) *pb.Event {
		return &pb.Event{Id: id, Source: &pb.Source{System: "s"}, Subject: &pb.Identity{Id: subject}}
	}
	evs := []*pb.Event{mk("1", "bob"), mk("2", "alice"), mk("3", "bob"), mk("4", "a\x00b"), mk("5", "a"), mk("6", "bob"), mk("7", "zed"), mk("8", "")}
	mustAppend(t, l, evs[:6])
	mustAppend(t, l, evs[6:])
	var got []string
	if err := l.ForEachSubject(ctx, 6, func(s string) error { got = append(got, s); return nil }); err != nil {
		t.Fatal(err)
	}
	if want := []string{"a", "a\x00b", "alice", "bob"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("ForEachSubject(6) = %q, want %q", got, want)
	}
	got = nil
	l.ForEachSubject(ctx, 8, func(s string) error { got = append(got, s); return nil })
	if len(got) != 5 || got[4] != "zed" {
		t.Fatalf("ForEachSubject(8) = %q, want 5 subjects ending with zed", got)
	}
	// Many subjects: more than one run of the index scan.
	var many []*pb.Event
	for i := range 2500 {
		many = append(many, mk(fmt.Sprintf("m%d", i), fmt.Sprintf("s%05d", i)), mk(fmt.Sprintf("n%d", i), fmt.Sprintf("s%05d", i)))
	}
	mustAppend(t, l, many)
	got = nil
	if err := l.ForEachSubject(ctx, l.Latest().Size, func(s string) error { got = append(got, s); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 5+2500 || !slices.IsSorted(got) || got[4] != "s00000" || got[len(got)-1] != "zed" {
		t.Fatalf("ForEachSubject over 2505 subjects = %d subjects (sorted %v), want 2505 sorted", len(got), slices.IsSorted(got))
	}
	// A size beyond the tree is the caller's mistake, answered at once.
	beyond, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := l.ForEachSubject(beyond, l.Latest().Size+1, func(string) error { return nil }); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("ForEachSubject beyond the tree = %v, want ErrOutOfRange", err)
	}
	stop := errors.New("stop")
	if err := l.ForEachSubject(ctx, 8, func(string) error { return stop }); err != stop {
		t.Fatalf("ForEachSubject error = %v, want fn's error", err)
	}
	tests := []struct {
		subject     string
		size, start uint64
		limit       int
		want        []uint64
	}{
		{"bob", 8, 0, 0, []uint64{0, 2, 5}},
		{"bob", 5, 0, 0, []uint64{0, 2}},
		{"bob", 8, 1, 0, []uint64{2, 5}},
		{"bob", 8, 0, 2, []uint64{0, 2}},
		{"a", 8, 0, 0, []uint64{4}},
		{"a\x00b", 8, 0, 0, []uint64{3}},
		{"nobody", 8, 0, 0, nil},
	}
	for _, tt := range tests {
		es, err := l.SubjectEntries(ctx, tt.subject, tt.size, tt.start, tt.limit)
		if err != nil {
			t.Fatal(err)
		}
		var idx []uint64
		for _, e := range es {
			idx = append(idx, e.Index)
			en, _ := event.DecodeLeaf(e.Leaf)
			if en.GetEvent().GetSubject().GetId() != tt.subject {
				t.Errorf("SubjectEntries(%q) returned leaf %d of %q", tt.subject, e.Index, en.GetEvent().GetSubject().GetId())
			}
		}
		if fmt.Sprint(idx) != fmt.Sprint(tt.want) {
			t.Errorf("SubjectEntries(%q, %d, %d, %d) = %v, want %v", tt.subject, tt.size, tt.start, tt.limit, idx, tt.want)
		}
	}
	if _, err := l.SubjectEntries(ctx, "bob", l.Latest().Size+1, 0, 0); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("SubjectEntries beyond the tree: %v, want ErrOutOfRange", err)
	}
}

func TestConcurrentAppenders(t *testing.T) {
	st := newFakeStore()
	l := openFake(t, st)
	const workers, rounds, per = 8, 20, 16
	var mu sync.Mutex
	a := acked{}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				// Workers overlap: worker w and w+1 share half their events.
				evs := testEvents((w*rounds+r)*per/2, per)
				res, _, err := l.Append(context.Background(), evs)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				a.add(t, evs, res)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	want := (workers*rounds + 1) * per / 2
	if got := l.Latest().Size; got != uint64(want) {
		t.Fatalf("size = %d, want %d distinct events", got, want)
	}
	checkInvariants(t, l, a)
	l.Close()
	checkViolations(t, st)
}

func TestPushbackAndCloseDrains(t *testing.T) {
	st := newFakeStore()
	o := testOptions()
	o.QueueSize = 10
	l, err := Open(context.Background(), st, o)
	if err != nil {
		t.Fatal(err)
	}
	st.gate, st.entered = make(chan struct{}), make(chan struct{}, 10)
	type out struct {
		res []AppendResult
		err error
	}
	results := make(chan out, 2)
	go func() { r, _, err := l.Append(context.Background(), testEvents(0, 5)); results <- out{r, err} }()
	<-st.entered // the sequencer is committing the first 5 events
	go func() { r, _, err := l.Append(context.Background(), testEvents(5, 5)); results <- out{r, err} }()
	for l.pending.Load() != 10 { // wait until the second append is queued
		runtime.Gosched()
	}
	_, _, err = l.Append(context.Background(), testEvents(10, 1))
	if !errors.Is(err, ErrPushback) {
		t.Fatalf("Append with a full queue: %v, want ErrPushback", err)
	}
	if l.Stats().Pushbacks != 1 {
		t.Fatalf("Stats().Pushbacks = %d, want 1", l.Stats().Pushbacks)
	}
	closed := make(chan error)
	go func() { closed <- l.Close() }()
	for !func() bool { l.mu.RLock(); defer l.mu.RUnlock(); return l.closed }() {
		runtime.Gosched()
	}
	if _, _, err := l.Append(context.Background(), testEvents(20, 1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v, want ErrClosed", err)
	}
	close(st.gate) // let commits through
	for range 2 {
		if o := <-results; o.err != nil {
			t.Fatalf("queued append failed: %v", o.err)
		}
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	st.gate = nil
	l2 := openFake(t, st.clone())
	defer l2.Close()
	if got := l2.Latest().Size; got != 10 {
		t.Fatalf("size after Close drained = %d, want 10", got)
	}
	checkViolations(t, st)
}

// TestBatchesRespectStoreLimits appends more than one commit holds, with
// the indexes in the main store or in a separate index store, either store
// the smaller: every commit stays within its own store's limits, and a
// small index store does not shrink the main store's commits below what
// its own limits need.
func TestBatchesRespectStoreLimits(t *testing.T) {
	for _, tc := range []struct {
		name               string
		split              bool
		mainCount, ixCount int
		minBatches         uint64 // at least this many batches for 1000 events
		maxBatches         uint64 // at most (0: no bound)
	}{
		{"one store", false, 500, 0, 10, 0},                                // ~120 events per commit
		{"index store smaller", true, 1 << 20, 300, 10, 13},                // ~89 events per index commit (3 entries each)
		{"main store smaller", true, 300, 1 << 20, 4, 6},                   // ~249 leaves per main commit (1 entry each)
		{"index limits only bind the index", true, 1 << 20, 1 << 20, 1, 3}, // one or a few batches
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := newFakeStore()
			st.maxCount = tc.mainCount
			var ix *fakeStore
			var l *Log
			if tc.split {
				ix = newFakeStore()
				ix.maxCount = tc.ixCount
				l = mustOpenSplit(t, st, ix)
			} else {
				l = openFake(t, st)
			}
			a := acked{}
			evs := testEvents(0, 1000)
			res := mustAppend(t, l, evs)
			a.add(t, evs, res)
			b := l.Stats().Batches
			if b < tc.minBatches || (tc.maxBatches > 0 && b > tc.maxBatches) {
				t.Fatalf("1000 events in %d batches; want %d..%d", b, tc.minBatches, tc.maxBatches)
			}
			checkInvariants(t, l, a)
			l.Close()
			checkViolations(t, st)
			if ix != nil {
				checkViolations(t, ix)
			}
		})
	}
}

func TestOpenRequiresOptions(t *testing.T) {
	ctx := context.Background()
	_, otherKey, _ := note.GenerateKey(nil, testOrigin) // same name, another key
	otherKeyV, _ := note.NewVerifier(otherKey)
	_, otherName, _ := note.GenerateKey(nil, "other.example/log")
	otherNameV, _ := note.NewVerifier(otherName)
	for _, tt := range []struct {
		name string
		st   Store
		mod  func(*Options)
		want string
	}{
		{"no store", nil, func(*Options) {}, "no store"},
		{"no signer", newFakeStore(), func(o *Options) { o.Signer = nil }, "Signer"},
		{"no verifier", newFakeStore(), func(o *Options) { o.Verifier = nil }, "Verifier"},
		{"verifier of another log", newFakeStore(), func(o *Options) { o.Verifier = otherNameV }, "is not the signer's key"},
		{"verifier of another key", newFakeStore(), func(o *Options) { o.Verifier = otherKeyV }, "is not the signer's key"},
	} {
		o := testOptions()
		tt.mod(&o)
		if l, err := Open(ctx, tt.st, o); err == nil || !strings.Contains(err.Error(), tt.want) {
			if l != nil {
				l.Close()
			}
			t.Errorf("%s: Open error = %v, want one containing %q", tt.name, err, tt.want)
		}
	}
	// A log signed by another key refuses to open with this key pair.
	st := newFakeStore()
	openFake(t, st).Close()
	otherS, otherV := func() (note.Signer, note.Verifier) {
		skey, vkey, _ := note.GenerateKey(nil, testOrigin)
		s, _ := note.NewSigner(skey)
		v, _ := note.NewVerifier(vkey)
		return s, v
	}()
	o := testOptions()
	o.Signer, o.Verifier = otherS, otherV
	if _, err := Open(ctx, st.clone(), o); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open with another key: %v, want ErrCorrupt", err)
	}
}

func TestOpenTakesOriginFromSigner(t *testing.T) {
	l := openFake(t, newFakeStore())
	defer l.Close()
	if got := l.Latest().Origin; got != testOrigin {
		t.Fatalf("Latest().Origin = %q, want the signer's name %q", got, testOrigin)
	}
	if !bytes.HasPrefix(l.Latest().Note, []byte(testOrigin+"\n")) {
		t.Fatalf("checkpoint note %q does not start with the origin line", l.Latest().Note)
	}
}

func TestObservedTime(t *testing.T) {
	st := newFakeStore()
	o := testOptions()
	at := time.Date(2030, 5, 6, 7, 8, 9, 10, time.UTC)
	o.Now = func() time.Time { return at }
	l, err := Open(context.Background(), st, o)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	mustAppend(t, l, testEvents(0, 1))
	es, _ := l.Entries(context.Background(), 0, 1)
	en, _ := event.DecodeLeaf(es[0].Leaf)
	if got := en.GetObservedTime(); !proto.Equal(got, timestamppb.New(at)) {
		t.Fatalf("observed_time = %v, want %v", got.AsTime(), at)
	}
}
