package client

import (
	"math/rand/v2"
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

// TestAckDecodingIsProtoUnmarshal: the client decodes acknowledgements by
// hand into what proto.Unmarshal builds, for the shapes a server sends and
// for every prefix and every single-byte change of a small one (where the
// hand decoder gives up, the runtime decides, error included); the leaf
// hashes are copies, not views of the buffer the transport reuses.
func TestAckDecodingIsProtoUnmarshal(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var inputs [][]byte
	var kinds []func() proto.Message
	stream := func() proto.Message { return &pb.AppendStreamResponse{} }
	unary := func() proto.Message { return &pb.AppendResponse{} }
	for _, n := range []int{0, 1, 3, 1000} {
		for _, v := range []uint64{0, 1, 1 << 40} {
			rs := make([]*pb.AppendResult, n)
			for i := range rs {
				rs[i] = &pb.AppendResult{Index: v + uint64(i), Duplicate: rng.IntN(3) == 0, Conflict: rng.IntN(5) == 0}
				if rng.IntN(4) > 0 {
					rs[i].LeafHash = make([]byte, 32)
					for j := range rs[i].LeafHash {
						rs[i].LeafHash[j] = byte(rng.IntN(256))
					}
				}
			}
			s, _ := proto.Marshal(&pb.AppendStreamResponse{Seq: v, Results: rs, TreeSize: v + 7})
			u, _ := proto.Marshal(&pb.AppendResponse{Results: rs, TreeSize: v})
			inputs, kinds = append(inputs, s, u), append(kinds, stream, unary)
		}
	}
	for i, data := range inputs { // the usual shape: decoded by hand
		if !unmarshalAck(data, kinds[i]()) {
			t.Errorf("input %d: left to the runtime", i)
		}
	}
	small, _ := proto.Marshal(&pb.AppendStreamResponse{Seq: 5, TreeSize: 9, Results: []*pb.AppendResult{
		{Index: 3, LeafHash: []byte{1, 2, 3}, Duplicate: true}, {Index: 300, Conflict: true}, {}}})
	for i := range small {
		inputs, kinds = append(inputs, small[:i], small[:i]), append(kinds, stream, unary)
		for _, c := range []byte{0, 1, 0x7f, 0x80, 0xff, small[i] ^ 0x08} {
			mut := []byte(string(small))
			mut[i] = c
			inputs, kinds = append(inputs, mut), append(kinds, stream)
		}
	}
	// A field repeated (the runtime keeps the last) and an unknown one.
	inputs = append(inputs, append([]byte(string(small)), 0x08, 0x06), append([]byte(string(small)), 0x48, 0x01),
		[]byte{0x12, 0x04, 0x08, 0x01, 0x08, 0x02})
	kinds = append(kinds, stream, stream, stream)
	for i, data := range inputs {
		got, want := kinds[i](), kinds[i]()
		err := protoCodec{}.Unmarshal(data, got)
		werr := proto.Unmarshal(data, want)
		if (err == nil) != (werr == nil) || (err == nil && !proto.Equal(got, want)) {
			t.Fatalf("input %d (%x): decoded %v, %v; want proto.Unmarshal's %v, %v", i, data, got, err, want, werr)
		}
		if err == nil {
			for j := range data {
				data[j] ^= 0xff
			}
			if !proto.Equal(got, want) {
				t.Fatalf("input %d: the decoded message changed with the buffer", i)
			}
		}
	}
}
