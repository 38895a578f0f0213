package ingest

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// verifyCheckpoint opens a signed note and checks it states size and root.
func verifyCheckpoint(t *testing.T, l *fakeLedger, text string, size uint64, root []byte) {
	t.Helper()
	n, err := note.Open([]byte(text), note.VerifierList(l.verifier))
	if err != nil {
		t.Fatalf("checkpoint does not verify: %v\n%s", err, text)
	}
	want := fmt.Sprintf("grantline.test/log\n%d\n%s\n", size, base64.StdEncoding.EncodeToString(root))
	if n.Text != want {
		t.Fatalf("checkpoint text = %q, want %q", n.Text, want)
	}
}

func TestAppendAndRead(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			ctx := t.Context()
			e := newEnv(t)
			c := e.clients(p, adminTok)
			okta := e.clients(p, oktaTok)

			evs := []*pb.Event{
				newEvent("okta", "e1", "access.requested", "alice"),
				newEvent("okta", "e2", "access.approved", "alice"),
				newEvent("okta", "e3", "grant.assigned", "bob"),
				newEvent("okta", "e1", "access.requested", "alice"), // duplicate within the batch
			}
			resp, err := okta.ingest.Append(ctx, connect.NewRequest(&pb.AppendRequest{Events: evs}))
			if err != nil {
				t.Fatal(err)
			}
			res := resp.Msg.GetResults()
			if len(res) != 4 || resp.Msg.GetTreeSize() != 3 {
				t.Fatalf("Append = %d results, tree size %d; want 4, 3", len(res), resp.Msg.GetTreeSize())
			}
			for i, want := range []struct {
				index uint64
				dup   bool
			}{{0, false}, {1, false}, {2, false}, {0, true}} {
				if res[i].GetIndex() != want.index || res[i].GetDuplicate() != want.dup {
					t.Errorf("result %d = (index %d, dup %v), want (%d, %v)", i, res[i].GetIndex(), res[i].GetDuplicate(), want.index, want.dup)
				}
			}
			// Again: all duplicates, original indices.
			resp2, err := okta.ingest.Append(ctx, connect.NewRequest(&pb.AppendRequest{Events: evs[:1]}))
			if err != nil {
				t.Fatal(err)
			}
			if r := resp2.Msg.GetResults()[0]; !r.GetDuplicate() || r.GetIndex() != 0 || string(r.GetLeafHash()) != string(res[0].GetLeafHash()) {
				t.Errorf("re-append = %v, want duplicate of index 0 with the same leaf hash", r)
			}

			cp, err := c.log.GetCheckpoint(ctx, connect.NewRequest(&pb.GetCheckpointRequest{}))
			if err != nil {
				t.Fatal(err)
			}
			if cp.Msg.GetTreeSize() != 3 {
				t.Fatalf("GetCheckpoint size = %d, want 3", cp.Msg.GetTreeSize())
			}
			root := cp.Msg.GetRootHash()
			verifyCheckpoint(t, e.ledger, cp.Msg.GetCheckpoint(), 3, root)
			old, err := c.log.GetCheckpoint(ctx, connect.NewRequest(&pb.GetCheckpointRequest{TreeSize: 0x7fff}))
			wantCode(t, err, connect.CodeOutOfRange, "tree_size 32767")
			_ = old

			ents, err := c.log.GetEntries(ctx, connect.NewRequest(&pb.GetEntriesRequest{Start: 1}))
			if err != nil {
				t.Fatal(err)
			}
			if got := ents.Msg.GetEntries(); len(got) != 2 || got[0].GetIndex() != 1 || got[1].GetEvent().GetId() != "e3" {
				t.Fatalf("GetEntries(start 1) = %v, want indices 1, 2 (e2, e3)", got)
			}
			for _, le := range ents.Msg.GetEntries() {
				if string(le.GetLeafHash()) != string(rfc6962.DefaultHasher.HashLeaf(le.GetLeaf())) {
					t.Errorf("entry %d: leaf_hash is not the hash of leaf", le.GetIndex())
				}
				if le.GetObservedTime() == nil {
					t.Errorf("entry %d: no observed_time", le.GetIndex())
				}
			}
			_, err = c.log.GetEntries(ctx, connect.NewRequest(&pb.GetEntriesRequest{Start: 3}))
			wantCode(t, err, connect.CodeOutOfRange, "start 3")

			// Inclusion by index and by leaf hash, verified against the root.
			for _, req := range []*pb.GetInclusionProofRequest{
				{Leaf: &pb.GetInclusionProofRequest_Index{Index: 1}},
				{Leaf: &pb.GetInclusionProofRequest_LeafHash{LeafHash: res[1].GetLeafHash()}},
			} {
				ip, err := c.log.GetInclusionProof(ctx, connect.NewRequest(req))
				if err != nil {
					t.Fatal(err)
				}
				m := ip.Msg
				if m.GetIndex() != 1 || m.GetTreeSize() != 3 {
					t.Fatalf("inclusion proof for index %d at %d, want 1 at 3", m.GetIndex(), m.GetTreeSize())
				}
				if err := proof.VerifyInclusion(rfc6962.DefaultHasher, 1, 3, m.GetLeafHash(), m.GetHashes(), root); err != nil {
					t.Errorf("inclusion proof does not verify: %v", err)
				}
				verifyCheckpoint(t, e.ledger, m.GetCheckpoint(), 3, root)
			}
			_, err = c.log.GetInclusionProof(ctx, connect.NewRequest(&pb.GetInclusionProofRequest{Leaf: &pb.GetInclusionProofRequest_Index{Index: 9}}))
			wantCode(t, err, connect.CodeOutOfRange, "index 9")
			_, err = c.log.GetInclusionProof(ctx, connect.NewRequest(&pb.GetInclusionProofRequest{Leaf: &pb.GetInclusionProofRequest_LeafHash{LeafHash: []byte("short")}}))
			wantCode(t, err, connect.CodeInvalidArgument, "leaf_hash")
			_, err = c.log.GetInclusionProof(ctx, connect.NewRequest(&pb.GetInclusionProofRequest{Leaf: &pb.GetInclusionProofRequest_LeafHash{LeafHash: make([]byte, 32)}}))
			wantCode(t, err, connect.CodeNotFound, "leaf_hash")
			_, err = c.log.GetInclusionProof(ctx, connect.NewRequest(&pb.GetInclusionProofRequest{}))
			wantCode(t, err, connect.CodeInvalidArgument, "leaf")

			// Consistency from the empty tree and from size 3 to a later size.
			if _, err := okta.ingest.Append(ctx, connect.NewRequest(&pb.AppendRequest{Events: []*pb.Event{newEvent("okta", "e4", "grant.removed", "bob")}})); err != nil {
				t.Fatal(err)
			}
			cp4, err := c.log.GetCheckpoint(ctx, connect.NewRequest(&pb.GetCheckpointRequest{}))
			if err != nil {
				t.Fatal(err)
			}
			cons, err := c.log.GetConsistencyProof(ctx, connect.NewRequest(&pb.GetConsistencyProofRequest{FromSize: 3}))
			if err != nil {
				t.Fatal(err)
			}
			if err := proof.VerifyConsistency(rfc6962.DefaultHasher, 3, 4, cons.Msg.GetHashes(), root, cp4.Msg.GetRootHash()); err != nil {
				t.Errorf("consistency proof 3..4 does not verify: %v", err)
			}
			verifyCheckpoint(t, e.ledger, cons.Msg.GetFromCheckpoint(), 3, root)
			cons0, err := c.log.GetConsistencyProof(ctx, connect.NewRequest(&pb.GetConsistencyProofRequest{ToSize: 3}))
			if err != nil {
				t.Fatal(err)
			}
			if cons0.Msg.GetFromSize() != 0 || len(cons0.Msg.GetHashes()) != 0 {
				t.Errorf("consistency 0..3 = from %d, %d hashes; want from 0, none", cons0.Msg.GetFromSize(), len(cons0.Msg.GetHashes()))
			}
			_, err = c.log.GetConsistencyProof(ctx, connect.NewRequest(&pb.GetConsistencyProofRequest{FromSize: 4, ToSize: 3}))
			wantCode(t, err, connect.CodeInvalidArgument, "from_size")
			_, err = c.log.GetConsistencyProof(ctx, connect.NewRequest(&pb.GetConsistencyProofRequest{FromSize: 2}))
			wantCode(t, err, connect.CodeNotFound, "from_size 2")
		})
	}
}

func TestListSubjectEventsPaging(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			ctx := t.Context()
			e := newEnv(t)
			var evs []*pb.Event
			for i := range 7 {
				evs = append(evs, newEvent("okta", fmt.Sprint("a", i), "session.started", "alice"))
				evs = append(evs, newEvent("okta", fmt.Sprint("b", i), "session.started", "bob"))
			}
			if _, err := e.clients(p, oktaTok).ingest.Append(ctx, connect.NewRequest(&pb.AppendRequest{Events: evs})); err != nil {
				t.Fatal(err)
			}
			// A later append must not show up while paging at the first size.
			c := e.clients(p, auditorTok)
			var got []string
			tok := ""
			for page := 0; ; page++ {
				resp, err := c.log.ListSubjectEvents(ctx, connect.NewRequest(&pb.ListSubjectEventsRequest{SubjectId: "alice", PageSize: 3, PageToken: tok}))
				if err != nil {
					t.Fatal(err)
				}
				for _, le := range resp.Msg.GetEntries() {
					got = append(got, le.GetEvent().GetId())
				}
				if page == 0 {
					if _, err := e.clients(p, oktaTok).ingest.Append(ctx, connect.NewRequest(&pb.AppendRequest{Events: []*pb.Event{newEvent("okta", "late", "session.ended", "alice")}})); err != nil {
						t.Fatal(err)
					}
				}
				tok = resp.Msg.GetNextPageToken()
				if tok == "" {
					break
				}
				if page > 5 {
					t.Fatal("paging does not end")
				}
			}
			if want := "a0 a1 a2 a3 a4 a5 a6"; strings.Join(got, " ") != want {
				t.Errorf("alice's chain = %v, want %s", got, want)
			}
			_, err := c.log.ListSubjectEvents(ctx, connect.NewRequest(&pb.ListSubjectEventsRequest{SubjectId: "alice", PageToken: "garbage!"}))
			wantCode(t, err, connect.CodeInvalidArgument, "page_token")
			_, err = c.log.ListSubjectEvents(ctx, connect.NewRequest(&pb.ListSubjectEventsRequest{}))
			wantCode(t, err, connect.CodeInvalidArgument, "subject_id")
			resp, err := c.log.ListSubjectEvents(ctx, connect.NewRequest(&pb.ListSubjectEventsRequest{SubjectId: "nobody"}))
			if err != nil || len(resp.Msg.GetEntries()) != 0 {
				t.Errorf("unknown subject = %v, %v; want empty, nil", resp, err)
			}
		})
	}
}

// streamProtocols are the protocols that carry bidirectional streams.
var streamProtocols = []protocol{protocols[0], protocols[2]}

func TestAppendStreamPipelined(t *testing.T) {
	for _, p := range streamProtocols {
		t.Run(p.name, func(t *testing.T) {
			ctx := t.Context()
			e := newEnv(t)
			stream := e.clients(p, oktaTok).ingest.AppendStream(ctx)
			const batches, per = 20, 25
			// Send every batch before reading any ack: the server must
			// pipeline and ack in order.
			sendErr := make(chan error, 1)
			go func() {
				for b := range batches {
					var evs []*pb.Event
					for i := range per {
						evs = append(evs, newEvent("okta", fmt.Sprintf("s%d-%d", b, i), "grant.activated", fmt.Sprint("user", i%5)))
					}
					if err := stream.Send(&pb.AppendStreamRequest{Seq: uint64(100 + b), Events: evs}); err != nil {
						sendErr <- err
						return
					}
				}
				sendErr <- stream.CloseRequest()
			}()
			seen := map[uint64]bool{}
			for b := range batches {
				ack, err := stream.Receive()
				if err != nil {
					t.Fatalf("ack %d: %v", b, err)
				}
				if ack.GetSeq() != uint64(100+b) || len(ack.GetResults()) != per {
					t.Fatalf("ack %d = seq %d with %d results, want seq %d with %d", b, ack.GetSeq(), len(ack.GetResults()), 100+b, per)
				}
				for _, r := range ack.GetResults() {
					if r.GetDuplicate() || seen[r.GetIndex()] {
						t.Fatalf("ack seq %d: index %d duplicate or reused", ack.GetSeq(), r.GetIndex())
					}
					seen[r.GetIndex()] = true
				}
			}
			if _, err := stream.Receive(); !errors.Is(err, io.EOF) {
				t.Fatalf("after the last ack: %v, want EOF", err)
			}
			if err := <-sendErr; err != nil {
				t.Fatal(err)
			}
			if err := stream.CloseResponse(); err != nil {
				t.Fatal(err)
			}
			if e.ledger.size() != batches*per {
				t.Errorf("ledger holds %d entries, want %d", e.ledger.size(), batches*per)
			}
			e.ledger.checkInvariants(t)
		})
	}
}

func TestAppendStreamRefusesBadBatch(t *testing.T) {
	for _, p := range streamProtocols {
		t.Run(p.name, func(t *testing.T) {
			ctx := t.Context()
			e := newEnv(t)
			stream := e.clients(p, oktaTok).ingest.AppendStream(ctx)
			good := []*pb.Event{newEvent("okta", "g1", "grant.activated", "alice")}
			bad := []*pb.Event{newEvent("okta", "b1", "grant.activated", "alice"), newEvent("okta", "b2", "grant.teleported", "alice")}
			if err := stream.Send(&pb.AppendStreamRequest{Seq: 1, Events: good}); err != nil {
				t.Fatal(err)
			}
			if err := stream.Send(&pb.AppendStreamRequest{Seq: 2, Events: bad}); err != nil && !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			ack, err := stream.Receive()
			if err != nil || ack.GetSeq() != 1 {
				t.Fatalf("first ack = %v, %v; want seq 1", ack, err)
			}
			_, err = stream.Receive()
			wantCode(t, err, connect.CodeInvalidArgument, "batch seq 2: events[1].type")
			stream.CloseRequest()
			stream.CloseResponse()
			if e.ledger.size() != 1 {
				t.Errorf("ledger holds %d entries, want only the good batch's 1", e.ledger.size())
			}
		})
	}
}

func TestAppendStreamWrongSource(t *testing.T) {
	e := newEnv(t)
	stream := e.clients(protocols[0], pamTok).ingest.AppendStream(t.Context())
	stream.Send(&pb.AppendStreamRequest{Seq: 5, Events: []*pb.Event{newEvent("okta", "x", "grant.activated", "alice")}})
	_, err := stream.Receive()
	wantCode(t, err, connect.CodePermissionDenied, "events[0].source.system")
	stream.CloseRequest()
	stream.CloseResponse()
	if e.ledger.size() != 0 {
		t.Errorf("ledger holds %d entries, want 0", e.ledger.size())
	}
}

func TestAppendStreamLedgerPanicIsInternal(t *testing.T) {
	for _, p := range streamProtocols {
		t.Run(p.name, func(t *testing.T) {
			e := newEnv(t)
			e.ledger.onAppend = func(int) { panic("ledger bug") }
			stream := e.clients(p, adminTok).ingest.AppendStream(t.Context())
			stream.Send(&pb.AppendStreamRequest{Seq: 1, Events: []*pb.Event{newEvent("okta", "p", "grant.activated", "alice")}})
			_, err := stream.Receive()
			wantCode(t, err, connect.CodeInternal, "internal error")
			stream.CloseRequest()
			stream.CloseResponse()
			if !strings.Contains(e.logs.String(), "ledger bug") {
				t.Error("the panic was not logged")
			}
			e.ledger.onAppend = nil
			if _, err := e.clients(p, auditorTok).log.GetCheckpoint(t.Context(), connect.NewRequest(&pb.GetCheckpointRequest{})); err != nil {
				t.Errorf("after a recovered panic: %v", err)
			}
		})
	}
}

// TestAppendConflict resends an id with other content through Append and
// AppendStream: the answer is a conflict with the stored entry's index and
// leaf hash, nothing is stored, the metric counts it, and the log line
// names the ids but none of the content.
func TestAppendConflict(t *testing.T) {
	for _, p := range streamProtocols {
		t.Run(p.name, func(t *testing.T) {
			ctx := t.Context()
			e := newEnv(t)
			okta := e.clients(p, oktaTok)
			orig := newEvent("okta", "c1", "access.requested", "alice")
			resp, err := okta.ingest.Append(ctx, connect.NewRequest(&pb.AppendRequest{Events: []*pb.Event{orig}}))
			if err != nil {
				t.Fatal(err)
			}
			stored := resp.Msg.GetResults()[0]
			changed := newEvent("okta", "c1", "access.requested", "alice")
			changed.Reason = "secret-reason-text"

			// Unary, with the identical event after it.
			resp, err = okta.ingest.Append(ctx, connect.NewRequest(&pb.AppendRequest{Events: []*pb.Event{changed, orig}}))
			if err != nil {
				t.Fatal(err)
			}
			res := resp.Msg.GetResults()
			if r := res[0]; !r.GetConflict() || r.GetDuplicate() || r.GetIndex() != stored.GetIndex() || string(r.GetLeafHash()) != string(stored.GetLeafHash()) {
				t.Errorf("Append(changed) = %v, want a conflict at the stored index %d and leaf hash", r, stored.GetIndex())
			}
			if r := res[1]; r.GetConflict() || !r.GetDuplicate() {
				t.Errorf("Append(identical) = %v, want a duplicate", r)
			}
			if resp.Msg.GetTreeSize() != 1 {
				t.Errorf("tree size after a conflict = %d, want 1", resp.Msg.GetTreeSize())
			}

			// Streamed.
			stream := okta.ingest.AppendStream(ctx)
			if err := stream.Send(&pb.AppendStreamRequest{Seq: 7, Events: []*pb.Event{changed}}); err != nil {
				t.Fatal(err)
			}
			ack, err := stream.Receive()
			if err != nil {
				t.Fatal(err)
			}
			if r := ack.GetResults()[0]; !r.GetConflict() || r.GetIndex() != stored.GetIndex() {
				t.Errorf("AppendStream(changed) = %v, want a conflict at %d", r, stored.GetIndex())
			}
			stream.CloseRequest()
			stream.CloseResponse()

			_, body := e.get(t, "/metrics", auditorTok)
			if want := `grantline_appended_events_total{result="conflict"} 2`; !strings.Contains(string(body), want) {
				t.Errorf("/metrics lacks %q", want)
			}
			logs := e.logs.String()
			if !strings.Contains(logs, "append conflict") || !strings.Contains(logs, `"id":"c1"`) {
				t.Errorf("no conflict log line naming the id:\n%s", logs)
			}
			if strings.Contains(logs, "secret-reason-text") {
				t.Errorf("the conflict log line shows the event's content")
			}
		})
	}
}
