package client

import (
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// protoCodec is connect's binary protobuf codec ("proto"), with the append
// requests, the bulk of what a client sends, marshalled by
// event.MarshalBatch: the same bytes as the runtime's deterministic
// encoding, written by hand (the runtime's table-driven marshal was the
// client's largest cost in `grantline bench`; docs/BENCHMARKS.md, "End to
// end", round 4). Anything MarshalBatch leaves to the runtime, and every
// other message, goes through proto.Marshal as before.
type protoCodec struct{}

func (protoCodec) Name() string { return "proto" }

func (c protoCodec) Marshal(m any) ([]byte, error) { return c.MarshalAppend(nil, m) }

func (protoCodec) MarshalAppend(dst []byte, m any) ([]byte, error) {
	switch r := m.(type) {
	case *pb.AppendStreamRequest:
		if b, ok := event.MarshalBatch(dst, 1, r.GetSeq(), 2, r.GetEvents()); ok && len(r.ProtoReflect().GetUnknown()) == 0 {
			return b, nil
		}
	case *pb.AppendRequest:
		if b, ok := event.MarshalBatch(dst, 0, 0, 1, r.GetEvents()); ok && len(r.ProtoReflect().GetUnknown()) == 0 {
			return b, nil
		}
	}
	pm, ok := m.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("%T is not a protobuf message", m)
	}
	return proto.MarshalOptions{}.MarshalAppend(dst, pm)
}

func (protoCodec) Unmarshal(data []byte, m any) error {
	if unmarshalAck(data, m) {
		return nil
	}
	pm, ok := m.(proto.Message)
	if !ok {
		return fmt.Errorf("%T is not a protobuf message", m)
	}
	return proto.Unmarshal(data, pm)
}
