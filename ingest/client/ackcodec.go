package client

import (
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// unmarshalAck decodes an append acknowledgement (AppendStreamResponse or
// AppendResponse), the bulk of what a client receives, into m: the
// results come from one slab of messages and their leaf hashes from one
// copy of their bytes, instead of two allocations per result. It decodes
// only the usual shape: known fields with their own wire types, each
// singular field at most once. On anything else (another message, an
// unknown or repeated field, a malformed encoding) it returns false and m
// untouched, and the caller decodes with proto.Unmarshal, whose result or
// error is then the answer. When true, m is what proto.Unmarshal builds
// (proto.Equal; TestAckDecodingIsProtoUnmarshal).
func unmarshalAck(data []byte, m any) bool {
	var seqNum, resNum, sizeNum protowire.Number
	switch m.(type) {
	case *pb.AppendStreamResponse:
		seqNum, resNum, sizeNum = 1, 2, 3
	case *pb.AppendResponse:
		resNum, sizeNum = 1, 2
	default:
		return false
	}
	// First pass: the top level, counting results and their bytes.
	var seq, size uint64
	var seen [4]bool
	n, hashBytes := 0, 0
	for b := data; len(b) > 0; {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return false
		}
		b = b[l:]
		switch {
		case num == resNum && typ == protowire.BytesType:
			v, l := protowire.ConsumeBytes(b)
			if l < 0 {
				return false
			}
			b = b[l:]
			n++
			hashBytes += len(v)
		case (num == seqNum && seqNum != 0 || num == sizeNum) && typ == protowire.VarintType && !seen[num]:
			v, l := protowire.ConsumeVarint(b)
			if l < 0 {
				return false
			}
			b = b[l:]
			seen[num] = true
			if num == seqNum {
				seq = v
			} else {
				size = v
			}
		default:
			return false
		}
	}
	var results []*pb.AppendResult
	if n > 0 {
		results = make([]*pb.AppendResult, n)
		slab := make([]pb.AppendResult, n)
		hashes := make([]byte, 0, hashBytes) // at least the leaf hashes' bytes
		k := 0
		for b := data; len(b) > 0; {
			num, _, l := protowire.ConsumeTag(b)
			b = b[l:]
			if num != resNum {
				_, l = protowire.ConsumeVarint(b)
				b = b[l:]
				continue
			}
			v, l := protowire.ConsumeBytes(b)
			b = b[l:]
			if !result(&slab[k], v, &hashes) {
				return false
			}
			results[k] = &slab[k]
			k++
		}
	}
	switch r := m.(type) {
	case *pb.AppendStreamResponse:
		proto.Reset(r)
		r.Seq, r.Results, r.TreeSize = seq, results, size
	case *pb.AppendResponse:
		proto.Reset(r)
		r.Results, r.TreeSize = results, size
	}
	return true
}

// result decodes one AppendResult from b into r, its leaf hash appended
// to *hashes (which has room for it: no reallocation, so earlier results'
// hashes stay where they are).
func result(r *pb.AppendResult, b []byte, hashes *[]byte) bool {
	var seen [5]bool
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 || num < 1 || num > 4 || seen[num] {
			return false
		}
		seen[num] = true
		b = b[l:]
		if num == 2 {
			if typ != protowire.BytesType {
				return false
			}
			v, l := protowire.ConsumeBytes(b)
			if l < 0 {
				return false
			}
			b = b[l:]
			if len(v) > 0 { // the runtime leaves an empty bytes field nil
				start := len(*hashes)
				*hashes = append(*hashes, v...)
				r.LeafHash = (*hashes)[start:len(*hashes):len(*hashes)]
			}
			continue
		}
		if typ != protowire.VarintType {
			return false
		}
		v, l := protowire.ConsumeVarint(b)
		if l < 0 {
			return false
		}
		b = b[l:]
		switch num {
		case 1:
			r.Index = v
		case 3:
			r.Duplicate = v != 0
		case 4:
			r.Conflict = v != 0
		}
	}
	return true
}
