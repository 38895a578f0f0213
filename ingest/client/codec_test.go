package client

import (
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// TestProtoCodecMarshalsAsTheRuntime: what the client sends is the
// runtime's deterministic encoding of the message, for the append requests
// (written by hand) and the rest, and messages with unknown fields keep
// them.
func TestProtoCodecMarshalsAsTheRuntime(t *testing.T) {
	mfa := true
	evs := []*pb.Event{
		{Id: "e1", Type: "grant.activated", Time: timestamppb.New(timestamppb.Now().AsTime()),
			Source: &pb.Source{System: "okta"}, Subject: &pb.Identity{Id: "alice"}, Mfa: &mfa,
			Attributes: map[string]string{"b": "2", "a": "1", "c": ""}},
		{Id: "e2"},
	}
	withUnknown := &pb.AppendStreamRequest{Seq: 3, Events: evs}
	withUnknown.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1))
	for _, m := range []proto.Message{
		&pb.AppendStreamRequest{Seq: 7, Events: evs},
		&pb.AppendStreamRequest{},
		&pb.AppendRequest{Events: evs},
		&pb.AppendResult{Index: 3, LeafHash: []byte{1, 2}},
		withUnknown, // the runtime's encoding, not necessarily deterministic: compared decoded
	} {
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := protoCodec{}.MarshalAppend([]byte("x"), m)
		if err != nil || (m != withUnknown && string(got) != "x"+string(want)) {
			t.Errorf("%T: MarshalAppend = %x, %v; want x then %x", m, got, err, want)
		}
		back := m.ProtoReflect().New().Interface()
		if err := (protoCodec{}).Unmarshal(got[1:], back); err != nil || !proto.Equal(back, m) {
			t.Errorf("%T: Unmarshal = %v, %v; want the message back", m, back, err)
		}
	}
	if _, err := (protoCodec{}).Marshal("not a message"); err == nil {
		t.Error("Marshal of a string: no error")
	}
}

// TestEncodedBatchIsSentAsItsEvents: a batch given as bytes goes out as
// the AppendStreamRequest of its events.
func TestEncodedBatchIsSentAsItsEvents(t *testing.T) {
	evs := []*pb.Event{{Id: "e1", Subject: &pb.Identity{Id: "alice"}}, {Id: "e2", Reason: "r"}}
	enc, ok := event.MarshalBatch(nil, 0, 0, 2, evs)
	if !ok {
		t.Fatal("MarshalBatch refused")
	}
	for _, b := range []*Batch{{Seq: 4, Encoded: enc, Count: 2}, {Seq: 4, Events: evs}} {
		want, _ := proto.MarshalOptions{Deterministic: true}.Marshal(&pb.AppendStreamRequest{Seq: 4, Events: evs})
		got, err := protoCodec{}.MarshalAppend(nil, b.request())
		if err != nil || string(got) != string(want) || b.Len() != 2 {
			t.Errorf("batch (encoded %v): sent %x, %v, Len %d; want %x, 2", b.Encoded != nil, got, err, b.Len(), want)
		}
	}
}
