package client

import (
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

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
