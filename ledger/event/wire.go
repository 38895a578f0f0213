package event

import (
	"slices"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// A hand-written encoder of pb.Event in its deterministic encoding, for the
// append path, where the protobuf runtime's table-driven marshal was the
// largest cost outside the store (docs/BENCHMARKS.md, "End to end", round
// 4). It writes exactly what proto.MarshalOptions{Deterministic: true}
// writes: fields in number order; a proto3 string or bool only when not
// empty or false; the optional mfa whenever set; a message field whenever
// its pointer is set (an empty message as a zero length); map entries
// sorted by key, each with its key and value even when empty; Timestamp
// fields as varints (a negative nanos sign-extended to ten bytes).
//
// It covers the schema as this package knows it (wireSchema in
// wire_test.go lists it, and TestWireSchemaIsKnown fails when the .proto
// gains a field); an event
// carrying unknown fields, or a string that is not valid UTF-8 (which the
// runtime refuses to encode), takes the runtime's path, so the result is
// always the runtime's. TestWireEncodingIsDeterministicMarshal and
// FuzzWireEncoding hold the two to the same bytes.

// wireable reports whether the hand-written encoder applies to ev: no
// unknown fields anywhere in it.
func wireable(ev *pb.Event) bool { return !HasUnknown(ev) }

// sizeStr is the encoded size of a proto3 string field (numbers below 16,
// one-byte tags): nothing when empty.
func sizeStr(s string) int {
	if s == "" {
		return 0
	}
	return 1 + protowire.SizeBytes(len(s))
}

func sizeTimestamp(t *timestamppb.Timestamp) int {
	n := 0
	if t.Seconds != 0 {
		n += 1 + protowire.SizeVarint(uint64(t.Seconds))
	}
	if t.Nanos != 0 {
		n += 1 + protowire.SizeVarint(uint64(int64(t.Nanos)))
	}
	return n
}

func sizeSource(s *pb.Source) int {
	return sizeStr(s.System) + sizeStr(s.Product) + sizeStr(s.Tenant) + sizeStr(s.RawType) + sizeStr(s.RawId)
}

func sizeIdentity(id *pb.Identity) int {
	return sizeStr(id.Id) + sizeStr(id.Kind) + sizeStr(id.Display) + sizeStr(id.OwnerId)
}

func sizeEntitlement(e *pb.Entitlement) int {
	n := sizeStr(e.Id) + sizeStr(e.Resource)
	if e.Privileged {
		n += 2
	}
	return n
}

func sizeRefs(r *pb.Refs) int {
	return sizeStr(r.Request) + sizeStr(r.Grant) + sizeStr(r.Session) + sizeStr(r.Credential) + sizeStr(r.Review) + sizeStr(r.Ticket)
}

// sizeMsg is the size of a message field of inner size n.
func sizeMsg(n int) int { return 1 + protowire.SizeBytes(n) }

// mapEntrySize is the inner size of one attributes entry.
func mapEntrySize(k, v string) int {
	return 1 + protowire.SizeBytes(len(k)) + 1 + protowire.SizeBytes(len(v))
}

// wireSize is the size of ev's encoding (ev wireable).
func wireSize(ev *pb.Event) int {
	n := sizeStr(ev.Id) + sizeStr(ev.Type)
	if ev.Time != nil {
		n += sizeMsg(sizeTimestamp(ev.Time))
	}
	if ev.Source != nil {
		n += sizeMsg(sizeSource(ev.Source))
	}
	if ev.Subject != nil {
		n += sizeMsg(sizeIdentity(ev.Subject))
	}
	if ev.Actor != nil {
		n += sizeMsg(sizeIdentity(ev.Actor))
	}
	if ev.Entitlement != nil {
		n += sizeMsg(sizeEntitlement(ev.Entitlement))
	}
	if ev.Refs != nil {
		n += sizeMsg(sizeRefs(ev.Refs))
	}
	if ev.ExpiresAt != nil {
		n += sizeMsg(sizeTimestamp(ev.ExpiresAt))
	}
	n += sizeStr(ev.Reason)
	if ev.Mfa != nil {
		n += 2
	}
	if ev.Breakglass {
		n += 2
	}
	for k, v := range ev.Attributes {
		n += sizeMsg(mapEntrySize(k, v))
	}
	return n
}

// appendStr appends a proto3 string field with a one-byte tag, if not empty.
func appendStr(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = append(b, byte(num)<<3|byte(protowire.BytesType))
	b = protowire.AppendVarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendBool(b []byte, num protowire.Number, v bool) []byte {
	x := byte(0)
	if v {
		x = 1
	}
	return append(b, byte(num)<<3|byte(protowire.VarintType), x)
}

func appendMsgHead(b []byte, num protowire.Number, n int) []byte {
	b = append(b, byte(num)<<3|byte(protowire.BytesType))
	return protowire.AppendVarint(b, uint64(n))
}

func appendTimestamp(b []byte, num protowire.Number, t *timestamppb.Timestamp) []byte {
	b = appendMsgHead(b, num, sizeTimestamp(t))
	if t.Seconds != 0 {
		b = append(b, 1<<3|byte(protowire.VarintType))
		b = protowire.AppendVarint(b, uint64(t.Seconds))
	}
	if t.Nanos != 0 {
		b = append(b, 2<<3|byte(protowire.VarintType))
		b = protowire.AppendVarint(b, uint64(int64(t.Nanos)))
	}
	return b
}

func appendIdentity(b []byte, num protowire.Number, id *pb.Identity) []byte {
	b = appendMsgHead(b, num, sizeIdentity(id))
	b = appendStr(b, 1, id.Id)
	b = appendStr(b, 2, id.Kind)
	b = appendStr(b, 3, id.Display)
	return appendStr(b, 4, id.OwnerId)
}

// appendWire appends ev's deterministic encoding (ev wireable). It reports
// false, with b unchanged, when a string is not valid UTF-8:
// the runtime's encoder must then produce its error.
func appendWire(b []byte, ev *pb.Event) ([]byte, bool) {
	if !validStrings(ev) {
		return b, false
	}
	return appendFields(b, ev), true
}

// appendFields appends ev's deterministic encoding, ev wireable and its
// strings valid UTF-8.
func appendFields(b []byte, ev *pb.Event) []byte {
	b = appendStr(b, 1, ev.Id)
	b = appendStr(b, 2, ev.Type)
	if ev.Time != nil {
		b = appendTimestamp(b, 3, ev.Time)
	}
	if s := ev.Source; s != nil {
		b = appendMsgHead(b, 4, sizeSource(s))
		b = appendStr(b, 1, s.System)
		b = appendStr(b, 2, s.Product)
		b = appendStr(b, 3, s.Tenant)
		b = appendStr(b, 4, s.RawType)
		b = appendStr(b, 5, s.RawId)
	}
	if ev.Subject != nil {
		b = appendIdentity(b, 5, ev.Subject)
	}
	if ev.Actor != nil {
		b = appendIdentity(b, 6, ev.Actor)
	}
	if e := ev.Entitlement; e != nil {
		b = appendMsgHead(b, 7, sizeEntitlement(e))
		b = appendStr(b, 1, e.Id)
		b = appendStr(b, 2, e.Resource)
		if e.Privileged {
			b = appendBool(b, 3, true)
		}
	}
	if r := ev.Refs; r != nil {
		b = appendMsgHead(b, 8, sizeRefs(r))
		b = appendStr(b, 1, r.Request)
		b = appendStr(b, 2, r.Grant)
		b = appendStr(b, 3, r.Session)
		b = appendStr(b, 4, r.Credential)
		b = appendStr(b, 5, r.Review)
		b = appendStr(b, 6, r.Ticket)
	}
	if ev.ExpiresAt != nil {
		b = appendTimestamp(b, 9, ev.ExpiresAt)
	}
	b = appendStr(b, 10, ev.Reason)
	if ev.Mfa != nil {
		b = appendBool(b, 11, *ev.Mfa)
	}
	if ev.Breakglass {
		b = appendBool(b, 12, true)
	}
	switch len(ev.Attributes) {
	case 0:
	case 1:
		for k, v := range ev.Attributes {
			b = appendEntry(b, k, v)
		}
	default:
		keys := make([]string, 0, len(ev.Attributes))
		for k := range ev.Attributes {
			keys = append(keys, k)
		}
		slices.Sort(keys) // the runtime's order for string keys: bytewise
		for _, k := range keys {
			b = appendEntry(b, k, ev.Attributes[k])
		}
	}
	return b
}

// appendEntry appends one attributes map entry (field 13): key and value,
// both always written.
func appendEntry(b []byte, k, v string) []byte {
	b = appendMsgHead(b, 13, mapEntrySize(k, v))
	b = append(b, 1<<3|byte(protowire.BytesType))
	b = protowire.AppendVarint(b, uint64(len(k)))
	b = append(b, k...)
	b = append(b, 2<<3|byte(protowire.BytesType))
	b = protowire.AppendVarint(b, uint64(len(v)))
	return append(b, v...)
}

// validStrings reports whether every string of ev is valid UTF-8, which
// proto3 requires of string fields.
func validStrings(ev *pb.Event) bool {
	ok := utf8.ValidString(ev.Id) && utf8.ValidString(ev.Type) && utf8.ValidString(ev.Reason)
	if s := ev.Source; ok && s != nil {
		ok = utf8.ValidString(s.System) && utf8.ValidString(s.Product) && utf8.ValidString(s.Tenant) &&
			utf8.ValidString(s.RawType) && utf8.ValidString(s.RawId)
	}
	for _, id := range [2]*pb.Identity{ev.Subject, ev.Actor} {
		if ok && id != nil {
			ok = utf8.ValidString(id.Id) && utf8.ValidString(id.Kind) && utf8.ValidString(id.Display) && utf8.ValidString(id.OwnerId)
		}
	}
	if e := ev.Entitlement; ok && e != nil {
		ok = utf8.ValidString(e.Id) && utf8.ValidString(e.Resource)
	}
	if r := ev.Refs; ok && r != nil {
		ok = utf8.ValidString(r.Request) && utf8.ValidString(r.Grant) && utf8.ValidString(r.Session) &&
			utf8.ValidString(r.Credential) && utf8.ValidString(r.Review) && utf8.ValidString(r.Ticket)
	}
	for k, v := range ev.Attributes {
		if !ok {
			break
		}
		ok = utf8.ValidString(k) && utf8.ValidString(v)
	}
	return ok
}

// MarshalBatch appends to b the encoding of an append request holding seq
// at field number seqNum (0: the message has none; proto3 leaves a zero
// seq out) and evs as the repeated Event field evNum (AppendStreamRequest
// is (1, 2), AppendRequest (0, 1)), in the runtime's deterministic
// encoding, written by hand as StartLeaf writes events. It returns false,
// and b unchanged, when an event is nil or one the hand-written encoder
// leaves to the runtime (unknown fields, a string that is not UTF-8): the
// caller then marshals with the runtime, which produces its own result or
// error. TestMarshalBatchIsDeterministicMarshal holds it to the runtime.
func MarshalBatch(b []byte, seqNum protowire.Number, seq uint64, evNum protowire.Number, evs []*pb.Event) ([]byte, bool) {
	start := len(b)
	if seqNum != 0 && seq != 0 {
		b = protowire.AppendTag(b, seqNum, protowire.VarintType)
		b = protowire.AppendVarint(b, seq)
	}
	for _, ev := range evs {
		if ev == nil || !wireable(ev) {
			return b[:start], false
		}
		b = protowire.AppendTag(b, evNum, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(wireSize(ev)))
		var ok bool
		if b, ok = appendWire(b, ev); !ok {
			return b[:start], false
		}
	}
	return b, true
}
