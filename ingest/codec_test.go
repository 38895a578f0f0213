package ingest

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/grantline/grantline/ledger"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// TestStrictCodecDecodesAsProtoUnmarshal: the strict codec decodes the
// append requests through event.UnmarshalBatch when it can and through
// proto.Unmarshal otherwise; either way the message, or the error, is
// proto.Unmarshal's (for inputs without unknown fields, which it refuses
// on its own: TestUnknownFieldsRefused).
func TestStrictCodecDecodesAsProtoUnmarshal(t *testing.T) {
	var evs []*pb.Event
	for i := range 50 {
		evs = append(evs, newEvent("okta", fmt.Sprint("e", i), "grant.activated", fmt.Sprint("u", i%7)))
	}
	stream, _ := proto.Marshal(&pb.AppendStreamRequest{Seq: 9, Events: evs})
	unary, _ := proto.Marshal(&pb.AppendRequest{Events: evs})
	// A subject sent twice: the runtime merges the two, which the fast
	// path leaves to it.
	subject := protowire.AppendBytes(protowire.AppendTag(nil, 5, protowire.BytesType), []byte("\x0a\x01x"))
	evBytes, _ := proto.Marshal(evs[0])
	twice := protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), append(append(evBytes, subject...), []byte("\x2a\x03\x22\x01o")...))
	badUTF8 := protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), []byte("\x52\x02a\xff"))
	for _, tt := range []struct {
		name string
		data []byte
		new  func() proto.Message
	}{
		{"stream", stream, func() proto.Message { return &pb.AppendStreamRequest{} }},
		{"unary", unary, func() proto.Message { return &pb.AppendRequest{} }},
		{"stream with a subject sent twice", twice, func() proto.Message { return &pb.AppendStreamRequest{} }},
		{"stream with invalid UTF-8", badUTF8, func() proto.Message { return &pb.AppendStreamRequest{} }},
		{"empty stream message", nil, func() proto.Message { return &pb.AppendStreamRequest{} }},
	} {
		got, want := tt.new(), tt.new()
		err := strictProtoCodec{}.Unmarshal(tt.data, got)
		werr := proto.Unmarshal(tt.data, want)
		if (err == nil) != (werr == nil) || (err != nil && err.Error() != werr.Error()) {
			t.Errorf("%s: error %v, want proto.Unmarshal's %v", tt.name, err, werr)
			continue
		}
		if err == nil && !proto.Equal(got, want) {
			t.Errorf("%s: decoded %v\nwant %v", tt.name, got, want)
		}
	}
}

// TestToPBResults: every acknowledgement carries its own result's index,
// flags and leaf hash.
func TestToPBResults(t *testing.T) {
	res := make([]ledger.AppendResult, 5)
	for i := range res {
		res[i] = ledger.AppendResult{Index: uint64(10 + i), Duplicate: i == 1, Conflict: i == 2}
		res[i].LeafHash[0], res[i].LeafHash[31] = byte(i), byte(100+i)
	}
	for i, m := range toPBResults(res) {
		r := res[i]
		if m.GetIndex() != r.Index || m.GetDuplicate() != r.Duplicate || m.GetConflict() != r.Conflict || string(m.GetLeafHash()) != string(r.LeafHash[:]) {
			t.Errorf("result %d = %v, want %+v", i, m, r)
		}
	}
}

// randomAcks returns acknowledgements with the shapes the server sends and
// the edge cases of each field: zero and large indexes, sequence numbers and
// tree sizes, empty, short and 32-byte leaf hashes, either flag.
func randomAcks(rng *rand.Rand) []proto.Message {
	results := func(n int) []*pb.AppendResult {
		out := make([]*pb.AppendResult, n)
		for i := range out {
			r := &pb.AppendResult{Duplicate: rng.IntN(4) == 0}
			r.Conflict = !r.Duplicate && rng.IntN(4) == 0
			switch rng.IntN(3) {
			case 0:
				r.Index = uint64(rng.IntN(3))
			case 1:
				r.Index = rng.Uint64()
			default:
				r.Index = uint64(rng.IntN(1 << 20))
			}
			if k := rng.IntN(5); k > 0 {
				r.LeafHash = make([]byte, []int{0, 1, 32, 32, 200}[k])
				for j := range r.LeafHash {
					r.LeafHash[j] = byte(rng.IntN(256))
				}
			}
			out[i] = r
		}
		return out
	}
	var out []proto.Message
	for _, n := range []int{0, 1, 2, 7, 1000} {
		for _, v := range []uint64{0, 1, 300, rng.Uint64()} {
			out = append(out,
				&pb.AppendStreamResponse{Seq: v, Results: results(n), TreeSize: v * 3},
				&pb.AppendResponse{Results: results(n), TreeSize: v})
		}
	}
	return out
}

// TestAckEncodingIsProtoMarshal: the strict codec writes acknowledgements
// by hand, byte for byte what proto.Marshal writes; messages it leaves to
// the runtime (unknown fields, a nil result, other types) get the
// runtime's bytes or error.
func TestAckEncodingIsProtoMarshal(t *testing.T) {
	msgs := randomAcks(rand.New(rand.NewPCG(1, 2)))
	unknown := &pb.AppendStreamResponse{Seq: 1, Results: []*pb.AppendResult{{Index: 2}}}
	unknown.Results[0].ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 9, protowire.VarintType), 1))
	top := &pb.AppendResponse{TreeSize: 4}
	top.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 9, protowire.VarintType), 1))
	msgs = append(msgs, unknown, top, &pb.AppendStreamResponse{Results: []*pb.AppendResult{{Index: 1}, nil}},
		(*pb.AppendStreamResponse)(nil), &pb.AppendResult{Index: 5, LeafHash: []byte{1}})
	for i, m := range msgs {
		want, werr := proto.Marshal(m)
		got, err := strictProtoCodec{}.MarshalAppend([]byte("x"), m)
		if (err == nil) != (werr == nil) || (err == nil && string(got) != "x"+string(want)) {
			t.Fatalf("message %d (%T): MarshalAppend = %x, %v; want x then proto.Marshal's %x, %v", i, m, got, err, want, werr)
		}
		if m, ok := m.(*pb.AppendStreamResponse); ok && m != nil {
			if b, ok := marshalAck(nil, m); ok != (len(unknownOf(m)) == 0) || (ok && string(b) != string(want)) {
				t.Errorf("message %d: marshalAck = %x, %v", i, b, ok)
			}
		}
	}
}

// unknownOf returns the unknown fields of m and of its results, or "" if
// there are none and no result is nil.
func unknownOf(m *pb.AppendStreamResponse) string {
	s := string(m.ProtoReflect().GetUnknown())
	for _, r := range m.GetResults() {
		if r == nil {
			return "nil"
		}
		s += string(r.ProtoReflect().GetUnknown())
	}
	return s
}
