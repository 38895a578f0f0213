package pgstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/ledger"
	ledgerevent "github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

const testOrigin = "grantline.test/pg"

var testSigner, testVerifier = func() (note.Signer, note.Verifier) {
	skey, vkey, err := note.GenerateKey(bytes.NewReader(bytes.Repeat([]byte{9}, 64)), testOrigin)
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

func ledgerOptions() ledger.Options {
	return ledger.Options{Signer: testSigner, Verifier: testVerifier}
}

// event is a ~500-byte event; i chooses its id and subject.
func event(prefix string, i int) *pb.Event {
	return &pb.Event{
		Id:          fmt.Sprintf("%s-%07d", prefix, i),
		Type:        "access.approved",
		Time:        timestamppb.New(time.Date(2026, 1, 1, 0, 0, i%3600, 0, time.UTC)),
		Source:      &pb.Source{System: "iga", Product: "sailpoint", Tenant: "acme"},
		Subject:     &pb.Identity{Id: fmt.Sprintf("user-%03d", i%97), Kind: "human", Display: "Some User"},
		Actor:       &pb.Identity{Id: "approver-1", Kind: "human"},
		Entitlement: &pb.Entitlement{Id: fmt.Sprintf("role-%d", i%11), Resource: "aws:prod", Privileged: i%2 == 0},
		Refs:        &pb.Refs{Request: fmt.Sprintf("req-%d", i), Ticket: "CHG-1234"},
		Reason:      strings.Repeat("quarterly access for on-call duty ", 9),
		Attributes:  map[string]string{"region": "eu-west-1", "cost_center": "4711"},
	}
}

func openLedger(t testing.TB, st *Store) *ledger.Log {
	t.Helper()
	l, err := ledger.Open(context.Background(), st, ledgerOptions())
	if err != nil {
		t.Fatalf("ledger.Open on PostgreSQL: %v", err)
	}
	return l
}

// appendAll appends n events from concurrent callers, chunk at a time.
func appendAll(t testing.TB, l *ledger.Log, prefix string, from, n, chunk int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n/chunk+1)
	for c := from; c < from+n; c += chunk {
		wg.Add(1)
		go func() {
			defer wg.Done()
			evs := make([]*pb.Event, 0, chunk)
			for i := c; i < min(c+chunk, from+n); i++ {
				evs = append(evs, event(prefix, i))
			}
			res, _, err := l.Append(context.Background(), evs)
			if err != nil {
				errs <- err
				return
			}
			for _, r := range res {
				if r.Duplicate {
					errs <- fmt.Errorf("new event answered as duplicate at %d", r.Index)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestLedgerOnPostgres runs the ledger end to end on the PostgreSQL store:
// append, reopen on a new store (as a restarted node), proofs, duplicates,
// and fsck of the store as `grantline fsck` does.
func TestLedgerOnPostgres(t *testing.T) {
	url := newURL(t)
	l := openLedger(t, leader(t, url, Options{}))
	if s := l.Latest().Size; s != 0 {
		t.Fatalf("a new ledger has size %d", s)
	}
	appendAll(t, l, "ev", 0, 3000, 100)
	first := l.Latest()
	if first.Size != 3000 {
		t.Fatalf("size %d after 3000 appends", first.Size)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l = openLedger(t, leader(t, url, Options{}))
	defer l.Close()
	if got := l.Latest(); got.Size != first.Size || got.Root != first.Root || !bytes.Equal(got.Note, first.Note) {
		t.Fatalf("after reopening: checkpoint %d %x, want %d %x", got.Size, got.Root, first.Size, first.Root)
	}
	// Resent events are duplicates with their original index.
	res, _, err := l.Append(t.Context(), []*pb.Event{event("ev", 1234), event("ev", 7)})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if !r.Duplicate {
			t.Fatalf("resent event %d stored again at %d", i, r.Index)
		}
		e, err := l.Entries(t.Context(), r.Index, 1)
		if err != nil || len(e) != 1 || ledger.LeafHash(e[0].Leaf) != r.LeafHash {
			t.Fatalf("entry %d of a duplicate: %v", r.Index, err)
		}
	}
	appendAll(t, l, "more", 0, 700, 50)
	cp := l.Latest()
	if cp.Size != 3700 {
		t.Fatalf("size %d after 700 more appends, want 3700", cp.Size)
	}
	// Proofs from the stored tiles verify.
	cons, err := l.ConsistencyProof(t.Context(), first.Size, cp.Size)
	if err != nil {
		t.Fatal(err)
	}
	if err := proof.VerifyConsistency(rfc6962.DefaultHasher, first.Size, cp.Size, cons, first.Root[:], cp.Root[:]); err != nil {
		t.Fatalf("consistency proof %d -> %d: %v", first.Size, cp.Size, err)
	}
	for _, i := range []uint64{0, 255, 256, 2999, 3699} {
		e, err := l.Entries(t.Context(), i, 1)
		if err != nil {
			t.Fatal(err)
		}
		p, err := l.InclusionProof(t.Context(), i, cp.Size)
		if err != nil {
			t.Fatal(err)
		}
		h := ledger.LeafHash(e[0].Leaf)
		if err := proof.VerifyInclusion(rfc6962.DefaultHasher, i, cp.Size, h[:], p, cp.Root[:]); err != nil {
			t.Fatalf("inclusion proof of %d: %v", i, err)
		}
	}
	subj, err := l.SubjectEntries(t.Context(), "user-005", cp.Size, 0, 0)
	if err != nil || len(subj) == 0 {
		t.Fatalf("subject entries: %d, %v", len(subj), err)
	}
	if err := l.Fsck(t.Context(), nil); err != nil {
		t.Fatalf("fsck of the open log: %v", err)
	}
	// Offline fsck on its own store, as grantline fsck would.
	if err := ledger.Fsck(t.Context(), openStore(t, url, Options{}), testVerifier, nil); err != nil {
		t.Fatalf("fsck of the store: %v", err)
	}
}

// TestLedgerFenced: a ledger whose node lost the lease stops appending
// (ErrStorage wrapping ErrFenced) and writes nothing, while the ledger of the
// node that took over goes on.
func TestLedgerFenced(t *testing.T) {
	for _, interval := range []time.Duration{0, time.Hour} {
		t.Run(fmt.Sprintf("checkpoint-interval=%v", interval), func(t *testing.T) { testLedgerFenced(t, interval) })
	}
}

func testLedgerFenced(t *testing.T, interval time.Duration) {
	url := newURL(t)
	ttl := time.Second
	open := func(st *Store) *ledger.Log {
		o := ledgerOptions()
		o.CheckpointInterval = interval
		l, err := ledger.Open(context.Background(), st, o)
		if err != nil {
			t.Fatalf("ledger.Open on PostgreSQL: %v", err)
		}
		return l
	}
	sa := leader(t, url, Options{Node: "a", LeaseTTL: ttl})
	a := open(sa)
	defer a.Close()
	appendAll(t, a, "a", 0, 100, 10)

	sa.renewPaused.Store(true) // A freezes
	b := open(leader(t, url, Options{Node: "b", LeaseTTL: ttl}))
	defer b.Close()
	if b.Latest().Size != 100 {
		t.Fatalf("B opens at size %d, want A's 100", b.Latest().Size)
	}
	appendAll(t, b, "b", 0, 50, 10)

	_, _, err := a.Append(t.Context(), []*pb.Event{event("a-late", 1)})
	if !errors.Is(err, ledger.ErrStorage) || !errors.Is(err, ErrFenced) {
		t.Fatalf("A's append after the takeover = %v, want ErrStorage wrapping ErrFenced", err)
	}
	if _, _, err := a.Append(t.Context(), []*pb.Event{event("a-late", 2)}); !errors.Is(err, ErrFenced) {
		t.Fatalf("A's next append = %v, want it refused", err)
	}
	appendAll(t, b, "b", 50, 50, 10)
	// A node that opens the log next (after B stopped) sees exactly A's
	// first 100 and B's 100 events, whatever was checkpointed.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	c := open(leader(t, url, Options{Node: "c", LeaseTTL: ttl}))
	defer c.Close()
	if err := c.Fsck(t.Context(), nil); err != nil {
		t.Fatal(err)
	}
	got, err := c.Entries(t.Context(), 0, 200)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 200 {
		t.Fatalf("%d entries, want 200", len(got))
	}
	for _, e := range got {
		d, err := ledgerevent.DecodeLeaf(e.Leaf)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(d.GetEvent().GetId(), "a-late") {
			t.Fatalf("the fenced node's event %s is at index %d", d.GetEvent().GetId(), e.Index)
		}
	}
}
