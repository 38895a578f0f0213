package ingest

import (
	"crypto/rand"
	"fmt"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/mod/sumdb/note"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/badgerstore"
	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// testNoteKeys are a new checkpoint signer and its verifier, for name.
func testNoteKeys(t testing.TB, name string) (note.Signer, note.Verifier) {
	t.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	return signer, verifier
}

// openBadgerLedger opens a new ledger.Log on badger in a temporary
// directory, closed when the test ends.
func openBadgerLedger(t testing.TB) *ledger.Log {
	t.Helper()
	signer, verifier := testNoteKeys(t, "grantline.test/batch")
	bs, err := badgerstore.Open(filepath.Join(t.TempDir(), "ledger"), badgerstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	l, err := ledger.Open(t.Context(), bs, ledger.Options{Signer: signer, Verifier: verifier})
	if err != nil {
		bs.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// batchEvents are n events from first, several attributes each (which the
// runtime's plain encoding may write out of key order: not the
// deterministic encoding, so the ledger encodes those itself).
func batchEvents(first, n int) []*pb.Event {
	out := make([]*pb.Event, n)
	for i := range out {
		j := first + i
		out[i] = &pb.Event{
			Id: fmt.Sprint("b-", j), Type: "grant.activated", Time: timestamppb.New(time.Unix(1764000000+int64(j), 5)),
			Source:  &pb.Source{System: "okta", Product: "p"},
			Subject: &pb.Identity{Id: fmt.Sprint("user-", j%7), Kind: "human"},
			Reason:  "why",
		}
		switch j % 3 {
		case 1:
			out[i].Attributes = map[string]string{"a": "1"}
		case 2:
			out[i].Attributes = map[string]string{"z": "1", "a": "2", "m": "", "b": "x", "y": "é"}
		}
	}
	return out
}

// TestAppendThroughTheLedgerIsAppend: events appended through the service
// into a real ledger, in every protocol (the binary ones through the hand
// decoder, whose batches the ledger encodes from the received bytes; JSON
// not), are stored as EncodeLeaf encodes them, and resending them, or a
// changed copy, in another protocol is answered with duplicates and
// conflicts.
func TestAppendThroughTheLedgerIsAppend(t *testing.T) {
	l := openBadgerLedger(t)
	e := newEnv(t, func(c *Config) { c.Ledger = l })
	sent := map[uint64]*pb.Event{}
	first := 0
	for pi, p := range protocols {
		c := e.clients(p, adminTok)
		evs := batchEvents(first, 30)
		first += 30
		// Unary Append for half, AppendStream for the rest.
		resp, err := c.ingest.Append(t.Context(), connect.NewRequest(&pb.AppendRequest{Events: evs[:15]}))
		if err != nil {
			t.Fatalf("%s: Append: %v", p.name, err)
		}
		results := resp.Msg.GetResults()
		st := c.ingest.AppendStream(t.Context())
		if err := st.Send(&pb.AppendStreamRequest{Seq: 1, Events: evs[15:]}); err != nil {
			t.Fatalf("%s: Send: %v", p.name, err)
		}
		ack, err := st.Receive()
		if err != nil {
			t.Fatalf("%s: Receive: %v", p.name, err)
		}
		results = append(results, ack.GetResults()...)
		if err := st.CloseRequest(); err != nil {
			t.Fatal(err)
		}
		_ = st.CloseResponse()
		for i, r := range results {
			if r.GetDuplicate() || r.GetConflict() {
				t.Fatalf("%s: event %d answered %v, want new", p.name, i, r)
			}
			sent[r.GetIndex()] = evs[i]
		}

		// The previous protocol's events again (duplicates) and one
		// changed (a conflict).
		if pi == 0 {
			continue
		}
		again := batchEvents(first-60, 30)
		again[3].Reason = "changed"
		st = c.ingest.AppendStream(t.Context())
		if err := st.Send(&pb.AppendStreamRequest{Seq: 2, Events: again}); err != nil {
			t.Fatal(err)
		}
		ack, err = st.Receive()
		if err != nil {
			t.Fatal(err)
		}
		_ = st.CloseRequest()
		_ = st.CloseResponse()
		for i, r := range ack.GetResults() {
			orig := sent[r.GetIndex()]
			if i == 3 {
				if !r.GetConflict() || orig.GetId() != again[3].GetId() {
					t.Fatalf("%s: changed event answered %v, want a conflict with %s", p.name, r, again[3].GetId())
				}
				continue
			}
			if !r.GetDuplicate() || !proto.Equal(orig, again[i]) {
				t.Fatalf("%s: resent event %d answered %v, want a duplicate of it", p.name, i, r)
			}
		}
	}
	entries, err := l.Entries(t.Context(), 0, uint64(len(sent)+1))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(sent) {
		t.Fatalf("%d entries, want %d", len(entries), len(sent))
	}
	for _, en := range entries {
		got, err := event.DecodeLeaf(en.Leaf)
		if err != nil {
			t.Fatal(err)
		}
		want, err := event.EncodeLeaf(sent[en.Index], got.GetObservedTime().AsTime())
		if err != nil {
			t.Fatal(err)
		}
		if string(want) != string(en.Leaf) {
			t.Fatalf("leaf %d = %x, want EncodeLeaf's %x", en.Index, en.Leaf, want)
		}
	}
}

// countDecoded is the number of entries waiting in decoded.
func countDecoded() int {
	n := 0
	decoded.Range(func(any, any) bool { n++; return true })
	return n
}

// TestDecodedGoesWithItsMessage: what the codec keeps for the handler is
// taken once by batchOf, and dropped when the handler never takes it and
// the message is collected.
func TestDecodedGoesWithItsMessage(t *testing.T) {
	evs := batchEvents(0, 5)
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(&pb.AppendStreamRequest{Seq: 1, Events: evs})
	if err != nil {
		t.Fatal(err)
	}
	base := countDecoded()
	msg := &pb.AppendStreamRequest{}
	if err := (strictProtoCodec{}).Unmarshal(data, msg); err != nil {
		t.Fatal(err)
	}
	if countDecoded() != base+1 {
		t.Fatalf("the codec kept %d entries, want 1", countDecoded()-base)
	}
	b := batchOf(msg.GetEvents())
	if b.Len() != 5 || &b.Events()[0] != &msg.Events[0] || countDecoded() != base {
		t.Fatalf("batchOf = %d events, %d entries left; want the message's events and none left", b.Len(), countDecoded()-base)
	}
	if err := b.Validate("events", time.Now()); err != nil {
		t.Fatal(err)
	}
	for i, ev := range msg.GetEvents() {
		got, err := b.StartLeaf(nil, i, b.EventSize(i))
		want, werr := event.StartLeaf(nil, ev, event.EventSize(ev))
		if err != nil || werr != nil || string(got) != string(want) {
			t.Fatalf("event %d: the batch starts leaf %x (%v), StartLeaf %x (%v)", i, got, err, want, werr)
		}
	}

	// Decoded, never taken, and dropped.
	for range 3 {
		if err := (strictProtoCodec{}).Unmarshal(data, &pb.AppendStreamRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for countDecoded() > base {
		if time.Now().After(deadline) {
			t.Fatalf("%d entries of collected messages still kept", countDecoded()-base)
		}
		runtime.GC()
		time.Sleep(time.Millisecond)
	}
}
