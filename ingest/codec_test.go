package ingest

import (
	"fmt"
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
