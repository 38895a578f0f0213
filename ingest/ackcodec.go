package ingest

import (
	"google.golang.org/protobuf/encoding/protowire"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// marshalAck appends the encoding of an append acknowledgement
// (AppendStreamResponse or AppendResponse), the bulk of what the server
// sends: one AppendResult per event. It writes what proto.Marshal writes
// (fields in number order, zero values left out: TestAckEncodingIsProtoMarshal)
// without the runtime's per-message reflection. False for any other
// message, or one holding a nil result or unknown fields: the runtime
// encodes those.
func marshalAck(b []byte, m any) ([]byte, bool) {
	switch r := m.(type) {
	case *pb.AppendStreamResponse:
		if r == nil || len(r.ProtoReflect().GetUnknown()) > 0 || !plainResults(r.GetResults()) {
			return b, false
		}
		b = appendUint(b, 1, r.GetSeq())
		b = appendResults(b, 2, r.GetResults())
		return appendUint(b, 3, r.GetTreeSize()), true
	case *pb.AppendResponse:
		if r == nil || len(r.ProtoReflect().GetUnknown()) > 0 || !plainResults(r.GetResults()) {
			return b, false
		}
		b = appendResults(b, 1, r.GetResults())
		return appendUint(b, 2, r.GetTreeSize()), true
	}
	return b, false
}

// plainResults reports whether no result is nil or carries unknown fields.
func plainResults(rs []*pb.AppendResult) bool {
	for _, r := range rs {
		if r == nil || len(r.ProtoReflect().GetUnknown()) > 0 {
			return false
		}
	}
	return true
}

// appendUint appends a uint64 field, left out when zero (proto3).
func appendUint(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	return protowire.AppendVarint(protowire.AppendTag(b, num, protowire.VarintType), v)
}

// appendBool appends a bool field, left out when false (proto3).
func appendBool(b []byte, num protowire.Number, v bool) []byte {
	if !v {
		return b
	}
	return append(protowire.AppendTag(b, num, protowire.VarintType), 1)
}

// appendResults appends each result as field num: index (1), leaf_hash
// (2), duplicate (3), conflict (4).
func appendResults(b []byte, num protowire.Number, rs []*pb.AppendResult) []byte {
	for _, r := range rs {
		n := 0
		if r.Index != 0 {
			n += 1 + protowire.SizeVarint(r.Index)
		}
		if len(r.LeafHash) > 0 {
			n += 1 + protowire.SizeBytes(len(r.LeafHash))
		}
		if r.Duplicate {
			n += 2
		}
		if r.Conflict {
			n += 2
		}
		b = protowire.AppendVarint(protowire.AppendTag(b, num, protowire.BytesType), uint64(n))
		b = appendUint(b, 1, r.Index)
		if len(r.LeafHash) > 0 {
			b = protowire.AppendBytes(protowire.AppendTag(b, 2, protowire.BytesType), r.LeafHash)
		}
		b = appendBool(b, 3, r.Duplicate)
		b = appendBool(b, 4, r.Conflict)
	}
	return b
}
