package event

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// randomEvents returns n events in which every field is, at random,
// absent, empty or set, with edge values: negative and large timestamps,
// multi-byte strings, long strings (two-byte lengths), empty messages,
// mfa false, several attributes including an empty key and value.
func randomEvents(seed uint64, n int) []*pb.Event {
	r := rand.New(rand.NewPCG(seed, 7))
	str := func() string {
		switch r.IntN(6) {
		case 0:
			return ""
		case 1:
			return "é✓-" + fmt.Sprint(r.IntN(1000))
		case 2:
			return strings.Repeat("x", 100+r.IntN(300))
		default:
			return fmt.Sprint("s", r.IntN(100000))
		}
	}
	ts := func() *timestamppb.Timestamp {
		switch r.IntN(5) {
		case 0:
			return nil
		case 1:
			return &timestamppb.Timestamp{}
		case 2:
			return &timestamppb.Timestamp{Seconds: -r.Int64N(1 << 40), Nanos: -r.Int32N(1e9)}
		default:
			return &timestamppb.Timestamp{Seconds: r.Int64N(1 << 40), Nanos: r.Int32N(1e9)}
		}
	}
	id := func() *pb.Identity {
		if r.IntN(4) == 0 {
			return nil
		}
		return &pb.Identity{Id: str(), Kind: str(), Display: str(), OwnerId: str()}
	}
	out := make([]*pb.Event, n)
	for i := range out {
		ev := &pb.Event{Id: str(), Type: str(), Time: ts(), Subject: id(), Actor: id(), ExpiresAt: ts(), Reason: str(),
			Breakglass: r.IntN(2) == 0}
		if r.IntN(4) > 0 {
			ev.Source = &pb.Source{System: str(), Product: str(), Tenant: str(), RawType: str(), RawId: str()}
		}
		if r.IntN(4) > 0 {
			ev.Entitlement = &pb.Entitlement{Id: str(), Resource: str(), Privileged: r.IntN(2) == 0}
		}
		if r.IntN(4) > 0 {
			ev.Refs = &pb.Refs{Request: str(), Grant: str(), Session: str(), Credential: str(), Review: str(), Ticket: str()}
		}
		if k := r.IntN(3); k > 0 {
			mfa := k == 2
			ev.Mfa = &mfa
		}
		if k := r.IntN(5); k > 0 {
			ev.Attributes = map[string]string{}
			for range k {
				ev.Attributes[str()] = str()
			}
		}
		out[i] = ev
	}
	return out
}

// TestWireEncodingIsDeterministicMarshal: the hand-written encoder writes,
// byte for byte, the runtime's deterministic encoding, and wireSize is its
// length, for the sample events and 3,000 random ones.
func TestWireEncodingIsDeterministicMarshal(t *testing.T) {
	evs := append(sampleEvents(), randomEvents(1, 3000)...)
	for i, ev := range evs {
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		if !wireable(ev) {
			t.Fatalf("event %d: not wireable", i)
		}
		got, ok := appendWire([]byte("prefix"), ev)
		if !ok || string(got[:6]) != "prefix" || string(got[6:]) != string(want) {
			t.Fatalf("event %d (%v): appendWire = %x, %v\nwant %x", i, ev, got, ok, want)
		}
		if n := wireSize(ev); n != len(want) {
			t.Fatalf("event %d: wireSize = %d, want %d", i, n, len(want))
		}
		if n := EventSize(ev); n != len(want) {
			t.Fatalf("event %d: EventSize = %d, want %d", i, n, len(want))
		}
	}
}

// TestStartLeafFallsBackToTheRuntime: an event with unknown fields is
// encoded by the runtime (keeping them, as before), and one with a string
// that is not UTF-8 fails as the runtime fails.
func TestStartLeafFallsBackToTheRuntime(t *testing.T) {
	unknown := protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1)
	withUnknown := newEvent("s", "1", "grant.activated", "alice")
	withUnknown.GetSubject().ProtoReflect().SetUnknown(unknown)
	want, err := EncodeLeaf(withUnknown, observedAt)
	if err != nil {
		t.Fatal(err)
	}
	start, err := StartLeaf(nil, withUnknown, EventSize(withUnknown))
	if err != nil {
		t.Fatal(err)
	}
	if got := FinishLeaf(start, EncodeTimestamp(observedAt)); string(got) != string(want) || !strings.Contains(string(got), string(unknown)) {
		t.Fatalf("event with an unknown field: leaf %x, want EncodeLeaf's %x holding it", got, want)
	}

	bad := newEvent("s", "1", "grant.activated", "alice")
	bad.Refs = &pb.Refs{Ticket: "\xff"}
	_, werr := proto.MarshalOptions{Deterministic: true}.Marshal(bad)
	_, err = StartLeaf(nil, bad, EventSize(bad))
	if err == nil || werr == nil || !strings.Contains(err.Error(), werr.Error()) {
		t.Fatalf("StartLeaf of invalid UTF-8 = %v, want the runtime's error %v", err, werr)
	}
}

// wireSchema is the schema the hand-written encoder and decoder know:
// message, field number, name and kind.
var wireSchema = []string{
	"grantline.v1.Event 1 id string", "grantline.v1.Event 2 type string",
	"grantline.v1.Event 3 time message", "grantline.v1.Event 4 source message",
	"grantline.v1.Event 5 subject message", "grantline.v1.Event 6 actor message",
	"grantline.v1.Event 7 entitlement message", "grantline.v1.Event 8 refs message",
	"grantline.v1.Event 9 expires_at message", "grantline.v1.Event 10 reason string",
	"grantline.v1.Event 11 mfa bool optional", "grantline.v1.Event 12 breakglass bool",
	"grantline.v1.Event 13 attributes message map<string,string>",
	"google.protobuf.Timestamp 1 seconds int64", "google.protobuf.Timestamp 2 nanos int32",
	"grantline.v1.Source 1 system string", "grantline.v1.Source 2 product string", "grantline.v1.Source 3 tenant string",
	"grantline.v1.Source 4 raw_type string", "grantline.v1.Source 5 raw_id string",
	"grantline.v1.Identity 1 id string", "grantline.v1.Identity 2 kind string", "grantline.v1.Identity 3 display string",
	"grantline.v1.Identity 4 owner_id string",
	"grantline.v1.Entitlement 1 id string", "grantline.v1.Entitlement 2 resource string", "grantline.v1.Entitlement 3 privileged bool",
	"grantline.v1.Refs 1 request string", "grantline.v1.Refs 2 grant string", "grantline.v1.Refs 3 session string",
	"grantline.v1.Refs 4 credential string", "grantline.v1.Refs 5 review string", "grantline.v1.Refs 6 ticket string",
}

// TestWireSchemaIsKnown fails when the schema of an Event changes: wire.go
// and decode.go must then learn the new field (an unknown one only makes
// the decoder fall back, but the encoder would leave it out).
func TestWireSchemaIsKnown(t *testing.T) {
	var got []string
	seen := map[protoreflect.FullName]bool{}
	var walk func(md protoreflect.MessageDescriptor)
	walk = func(md protoreflect.MessageDescriptor) {
		if seen[md.FullName()] {
			return
		}
		seen[md.FullName()] = true
		fields := md.Fields()
		for i := range fields.Len() {
			fd := fields.Get(i)
			s := fmt.Sprintf("%s %d %s %s", md.FullName(), fd.Number(), fd.Name(), fd.Kind())
			if fd.HasPresence() && fd.Kind() != protoreflect.MessageKind {
				s += " optional"
			}
			if fd.IsMap() {
				s += fmt.Sprintf(" map<%s,%s>", fd.MapKey().Kind(), fd.MapValue().Kind())
			} else if fd.Message() != nil {
				defer walk(fd.Message())
			}
			if fd.Cardinality() == protoreflect.Repeated && !fd.IsMap() {
				s += " repeated"
			}
			got = append(got, s)
		}
	}
	walk((&pb.Event{}).ProtoReflect().Descriptor())
	slices.Sort(got)
	want := slices.Sorted(slices.Values(wireSchema))
	if !slices.Equal(got, want) {
		t.Fatalf("the schema of an Event is\n%s\nwire.go and decode.go know\n%s\nupdate them (and wireSchema)", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, tt := range []struct {
		m    proto.Message
		seq  protowire.Number
		evNo protowire.Number
	}{{&pb.AppendStreamRequest{}, 1, 2}, {&pb.AppendRequest{}, 0, 1}} {
		fields := tt.m.ProtoReflect().Descriptor().Fields()
		want := 1
		if tt.seq != 0 {
			want = 2
			if fd := fields.ByNumber(tt.seq); fd == nil || fd.Kind() != protoreflect.Uint64Kind || fd.IsList() {
				t.Errorf("%T: field %d is not a uint64", tt.m, tt.seq)
			}
		}
		if fd := fields.ByNumber(tt.evNo); fd == nil || !fd.IsList() || fd.Message().FullName() != "grantline.v1.Event" {
			t.Errorf("%T: field %d is not a repeated Event", tt.m, tt.evNo)
		}
		if fields.Len() != want {
			t.Errorf("%T has %d fields; UnmarshalBatch's callers know %d", tt.m, fields.Len(), want)
		}
	}
}

// checkUnmarshalBatch holds UnmarshalBatch to proto.Unmarshal on data: when
// it decodes, proto.Unmarshal succeeds with the same message and no unknown
// fields. It returns whether the fast path decoded.
//
// It holds DecodeBatch's knowledge to the runtime too: every event it keeps
// bytes for is exactly the runtime's deterministic encoding of the event,
// so that a leaf made from them (Batch.StartLeaf) is the leaf EncodeLeaf
// makes; and the leaves its Batch starts are StartLeaf's.
func checkUnmarshalBatch(t *testing.T, data []byte) bool {
	t.Helper()
	seq, evs, ok := UnmarshalBatch(data, 1, 2)
	seq2, evs2, dec, ok2 := DecodeBatch(data, 1, 2)
	if ok != ok2 || seq != seq2 || len(evs) != len(evs2) {
		t.Fatalf("DecodeBatch = %d, %d events, %v; UnmarshalBatch = %d, %d events, %v", seq2, len(evs2), ok2, seq, len(evs), ok)
	}
	if !ok {
		return false
	}
	checkDecoded(t, evs2, dec)
	want := &pb.AppendStreamRequest{}
	if err := proto.Unmarshal(data, want); err != nil {
		t.Fatalf("UnmarshalBatch decoded what proto.Unmarshal refuses (%v): %x", err, data)
	}
	got := &pb.AppendStreamRequest{Seq: seq, Events: evs}
	if !proto.Equal(got, want) {
		t.Fatalf("UnmarshalBatch = %v\nproto.Unmarshal = %v\ninput %x", got, want, data)
	}
	if len(want.ProtoReflect().GetUnknown()) > 0 || slices.ContainsFunc(want.Events, HasUnknown) {
		t.Fatalf("UnmarshalBatch decoded a message with unknown fields: %x", data)
	}
	return true
}

func TestUnmarshalBatchIsProtoUnmarshal(t *testing.T) {
	evs := append(sampleEvents(), randomEvents(2, 2000)...)
	for _, det := range []bool{false, true} {
		data, err := proto.MarshalOptions{Deterministic: det}.Marshal(&pb.AppendStreamRequest{Seq: 42, Events: evs})
		if err != nil {
			t.Fatal(err)
		}
		if !checkUnmarshalBatch(t, data) {
			t.Fatalf("deterministic %v: UnmarshalBatch fell back on a well-formed request", det)
		}
		// The same events as an AppendRequest.
		data, err = proto.Marshal(&pb.AppendRequest{Events: evs})
		if err != nil {
			t.Fatal(err)
		}
		seq, got, ok := UnmarshalBatch(data, 0, 1)
		if !ok || seq != 0 || !proto.Equal(&pb.AppendRequest{Events: got}, &pb.AppendRequest{Events: evs}) {
			t.Fatalf("AppendRequest: UnmarshalBatch = %d events, %v", len(got), ok)
		}
	}
	// Empty requests.
	for _, m := range []*pb.AppendStreamRequest{{}, {Seq: 7}} {
		data, _ := proto.Marshal(m)
		if !checkUnmarshalBatch(t, data) {
			t.Fatalf("%v: fell back", m)
		}
	}

	// Inputs the fast path leaves to the runtime (which may accept them,
	// differently, or refuse them with its own error).
	one := func(ev *pb.Event) []byte {
		b, _ := proto.Marshal(&pb.AppendStreamRequest{Seq: 1, Events: []*pb.Event{ev}})
		return b
	}
	good := one(newEvent("s", "1", "grant.activated", "alice"))
	evBytes := func(ev *pb.Event) []byte { b, _ := proto.Marshal(ev); return b }
	withEvent := func(raw []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), raw)
	}
	subject := protowire.AppendBytes(protowire.AppendTag(nil, 5, protowire.BytesType), evBytes(&pb.Event{Id: "x"}))
	for _, tt := range []struct {
		name string
		data []byte
	}{
		{"unknown top-level field", protowire.AppendVarint(protowire.AppendTag(good, 9, protowire.VarintType), 1)},
		{"seq twice", protowire.AppendVarint(protowire.AppendTag(good, 1, protowire.VarintType), 2)},
		{"seq as bytes", protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), nil)},
		{"truncated", good[:len(good)-1]},
		{"unknown event field", withEvent(protowire.AppendVarint(protowire.AppendTag(evBytes(&pb.Event{Id: "x"}), 99, protowire.VarintType), 1))},
		{"subject twice (merged by the runtime)", withEvent(append(append(evBytes(&pb.Event{Id: "x"}), subject...), subject...))},
		{"id twice", withEvent(append(evBytes(&pb.Event{Id: "x"}), evBytes(&pb.Event{Id: "y"})...))},
		{"invalid UTF-8", withEvent(protowire.AppendBytes(protowire.AppendTag(nil, 10, protowire.BytesType), []byte("a\xffb")))},
		{"id as varint", withEvent(protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 1))},
		{"fixed64 field", withEvent(protowire.AppendFixed64(protowire.AppendTag(nil, 12, protowire.Fixed64Type), 1))},
		{"unknown field in a map entry", withEvent(protowire.AppendBytes(protowire.AppendTag(nil, 13, protowire.BytesType),
			protowire.AppendVarint(protowire.AppendTag(nil, 3, protowire.VarintType), 1)))},
		{"unknown field in a timestamp", withEvent(protowire.AppendBytes(protowire.AppendTag(nil, 3, protowire.BytesType),
			protowire.AppendVarint(protowire.AppendTag(nil, 3, protowire.VarintType), 1)))},
	} {
		if _, _, ok := UnmarshalBatch(tt.data, 1, 2); ok {
			t.Errorf("%s: UnmarshalBatch decoded %x; want it left to proto.Unmarshal", tt.name, tt.data)
		}
	}

	// Every prefix and single-byte change of a request: whatever the fast
	// path decodes is what the runtime decodes.
	data := one(randomEvents(3, 1)[0])
	for i := range data {
		checkUnmarshalBatch(t, data[:i])
		for _, x := range []byte{0, 1, 0x7f, 0x80, 0xff, data[i] ^ 0x08} {
			mut := slices.Clone(data)
			mut[i] = x
			checkUnmarshalBatch(t, mut)
		}
	}
}

// checkDecoded checks what DecodeBatch knows of evs against the runtime:
// kept bytes are the deterministic encoding, and the Batch's leaves are
// StartLeaf's, byte for byte.
func checkDecoded(t *testing.T, evs []*pb.Event, dec *Decoded) {
	t.Helper()
	if len(evs) == 0 {
		if dec != nil {
			t.Fatalf("DecodeBatch of no events returned a Decoded")
		}
		return
	}
	b := dec.Batch(evs)
	if b == nil {
		t.Fatal("Decoded.Batch refused the events it was decoded with")
	}
	for i, ev := range evs {
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(ev)
		if err != nil {
			t.Fatalf("event %d: the runtime cannot encode what DecodeBatch decoded: %v", i, err)
		}
		if w := dec.wire[i]; w != "" && w != string(want) {
			t.Fatalf("event %d: DecodeBatch kept %x as its encoding; the deterministic encoding is %x", i, w, want)
		}
		if !dec.plain[i] {
			t.Fatalf("event %d: decoded but not known plain", i)
		}
		size := b.EventSize(i)
		if size != EventSize(ev) {
			t.Fatalf("event %d: Batch.EventSize = %d, EventSize = %d", i, size, EventSize(ev))
		}
		got, err := b.StartLeaf([]byte{0}, i, size)
		start, err2 := StartLeaf([]byte{0}, ev, EventSize(ev))
		if err != nil || err2 != nil || string(got) != string(start) {
			t.Fatalf("event %d: Batch.StartLeaf = %x, %v; StartLeaf = %x, %v", i, got, err, start, err2)
		}
	}
}

// TestDecodeBatchKeepsTheEncoding: the events of a request in the
// deterministic encoding (what the client and bench send) are all kept as
// received; encodings that differ from it in any way the runtime accepts
// are not, and their leaves are encoded as before.
func TestDecodeBatchKeepsTheEncoding(t *testing.T) {
	evs := append(sampleEvents(), randomEvents(5, 500)...)
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(&pb.AppendStreamRequest{Seq: 1, Events: evs})
	if err != nil {
		t.Fatal(err)
	}
	_, got, dec, ok := DecodeBatch(data, 1, 2)
	if !ok {
		t.Fatal("fell back")
	}
	for i := range got {
		if dec.wire[i] == "" && proto.Size(got[i]) > 0 { // an empty event has no bytes to keep
			t.Fatalf("event %d (%v) in its deterministic encoding was not kept", i, got[i])
		}
	}
	checkDecoded(t, got, dec)
	if NewBatch(got).Len() != len(got) || dec.Batch(got[1:]) != nil || dec.Batch(evs) != nil || (*Decoded)(nil).Batch(got) != nil {
		t.Fatal("Decoded.Batch joined events it was not decoded with")
	}

	// Other encodings of one event, each decoded as the runtime decodes
	// it (checkUnmarshalBatch) and none kept.
	ev := func(fields ...[]byte) []byte { return slices.Concat(fields...) }
	str := func(num protowire.Number, s string) []byte {
		return protowire.AppendString(protowire.AppendTag(nil, num, protowire.BytesType), s)
	}
	msg := func(num protowire.Number, fields ...[]byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), slices.Concat(fields...))
	}
	varint := func(num protowire.Number, v uint64) []byte {
		return protowire.AppendVarint(protowire.AppendTag(nil, num, protowire.VarintType), v)
	}
	long := func(num protowire.Number, s string) []byte { // a length in two bytes
		b := protowire.AppendTag(nil, num, protowire.BytesType)
		return append(append(b, byte(len(s))|0x80, 0), s...)
	}
	entry := func(k, v string) []byte { return msg(13, str(1, k), str(2, v)) }
	for _, tt := range []struct {
		name string
		raw  []byte
		keep bool
	}{
		{"deterministic", ev(str(1, "a"), str(2, "b"), msg(3, varint(1, 5), varint(2, 6)), entry("k", "v"), entry("l", "")), true},
		{"empty entry", ev(str(1, "a"), entry("", "")), true},
		{"fields out of order", ev(str(2, "b"), str(1, "a")), false},
		{"empty string written", ev(str(1, ""), str(2, "b")), false},
		{"empty reason written", ev(str(1, "a"), str(10, "")), false},
		{"long length", ev(long(1, "a")), false},
		{"long tag", ev([]byte{1<<3 | 2 | 0x80, 0, 1, 'a'}), false},
		{"long varint", ev(msg(3, []byte{1 << 3, 0x85, 0})), false},
		{"zero seconds written", ev(msg(3, varint(1, 0))), false},
		{"zero nanos written", ev(msg(3, varint(1, 1), varint(2, 0))), false},
		{"nanos not sign-extended", ev(msg(3, varint(2, uint64(uint32(0xffffffff))))), false},
		{"timestamp fields out of order", ev(msg(3, varint(2, 1), varint(1, 1))), false},
		{"source fields out of order", ev(msg(4, str(2, "p"), str(1, "s"))), false},
		{"empty subject id written", ev(msg(5, str(1, ""))), false},
		{"privileged false written", ev(msg(7, str(1, "e"), varint(3, 0))), false},
		{"privileged as 2", ev(msg(7, varint(3, 2))), false},
		{"mfa false", ev(str(1, "a"), varint(11, 0)), true},
		{"mfa as 2", ev(varint(11, 2)), false},
		{"breakglass false written", ev(varint(12, 0)), false},
		{"breakglass as 7", ev(varint(12, 7)), false},
		{"entries out of order", ev(entry("l", "1"), entry("k", "2")), false},
		{"entry key twice", ev(entry("k", "1"), entry("k", "2")), false},
		{"entry without its value", ev(msg(13, str(1, "k"))), false},
		{"entry without its key", ev(msg(13, str(2, "v"))), false},
		{"entry value before key", ev(msg(13, str(2, "v"), str(1, "k"))), false},
		{"entry before a field", ev(entry("k", "v"), varint(12, 1)), false},
		{"entries around a field", ev(entry("k", "v"), varint(12, 1), entry("l", "v")), false},
	} {
		data := protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), tt.raw)
		if !checkUnmarshalBatch(t, data) {
			t.Fatalf("%s: fell back", tt.name)
		}
		_, _, dec, _ := DecodeBatch(data, 1, 2)
		if kept := dec.wire[0] != ""; kept != tt.keep {
			t.Errorf("%s (%x): kept %v, want %v", tt.name, tt.raw, kept, tt.keep)
		}
	}
}

// TestUnmarshalBatchKeepsNoInput: the decoded strings do not alias the
// input, which the transport reuses for the next message.
func TestUnmarshalBatchKeepsNoInput(t *testing.T) {
	data, _ := proto.Marshal(&pb.AppendStreamRequest{Events: []*pb.Event{newEvent("s", "id-1", "grant.activated", "alice")}})
	_, evs, ok := UnmarshalBatch(data, 1, 2)
	if !ok {
		t.Fatal("fell back")
	}
	clear(data)
	if evs[0].GetId() != "id-1" || evs[0].GetSubject().GetId() != "alice" {
		t.Fatalf("after the input was overwritten: id %q, subject %q", evs[0].GetId(), evs[0].GetSubject().GetId())
	}
}

func FuzzUnmarshalBatch(f *testing.F) {
	for _, evs := range [][]*pb.Event{sampleEvents(), randomEvents(4, 3)} {
		data, _ := proto.Marshal(&pb.AppendStreamRequest{Seq: 3, Events: evs})
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkUnmarshalBatch(t, data)
	})
}

// FuzzWireEncoding: any event the runtime decodes without unknown fields
// is encoded by the hand-written encoder as the runtime encodes it.
func FuzzWireEncoding(f *testing.F) {
	for _, ev := range append(sampleEvents(), randomEvents(5, 5)...) {
		data, _ := proto.Marshal(ev)
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ev := &pb.Event{}
		if proto.Unmarshal(data, ev) != nil || HasUnknown(ev) {
			return
		}
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := appendWire(nil, ev)
		if !ok || string(got) != string(want) || wireSize(ev) != len(want) {
			t.Fatalf("appendWire = %x, %v (size %d)\nwant %x", got, ok, wireSize(ev), want)
		}
	})
}

// benchEvents are 1,000 events shaped like grantline bench's: about 500
// bytes, most of it one padding attribute.
func benchEvents() []*pb.Event {
	evs := make([]*pb.Event, 1000)
	for i := range evs {
		ev := newEvent("bench", fmt.Sprint("bench-", i), "grant.activated", fmt.Sprint("user-", i%5000))
		ev.Refs.Grant, ev.Refs.Ticket = fmt.Sprint("grant-", i/6), fmt.Sprint("CHG-", i)
		ev.Attributes = map[string]string{"pad": strings.Repeat("x", 270)}
		evs[i] = ev
	}
	return evs
}

func BenchmarkUnmarshalBatch(b *testing.B) {
	evs := benchEvents()
	data, _ := proto.Marshal(&pb.AppendStreamRequest{Seq: 1, Events: evs})
	b.Run("hand-written", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, ok := UnmarshalBatch(data, 1, 2); !ok {
				b.Fatal("fell back")
			}
		}
	})
	b.Run("runtime", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := proto.Unmarshal(data, &pb.AppendStreamRequest{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkStartLeafWire(b *testing.B) {
	evs := benchEvents()
	b.Run("hand-written", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, ev := range evs {
				if _, err := StartLeaf(nil, ev, EventSize(ev)); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("runtime", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, ev := range evs {
				if _, err := leafOptions(ev).Marshal(ev); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}

func TestMarshalBatchIsDeterministicMarshal(t *testing.T) {
	evs := append(sampleEvents(), randomEvents(8, 500)...)
	for _, seq := range []uint64{0, 1, 1 << 40} {
		for _, m := range []proto.Message{&pb.AppendStreamRequest{Seq: seq, Events: evs}, &pb.AppendRequest{Events: evs}, &pb.AppendStreamRequest{Seq: seq}} {
			want, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			var got []byte
			var ok bool
			switch m := m.(type) {
			case *pb.AppendStreamRequest:
				got, ok = MarshalBatch([]byte("p"), 1, m.Seq, 2, m.Events)
			case *pb.AppendRequest:
				got, ok = MarshalBatch([]byte("p"), 0, 0, 1, m.Events)
			}
			if !ok || string(got) != "p"+string(want) {
				t.Fatalf("%T seq %d: MarshalBatch = %v, %d bytes; want the runtime's %d bytes", m, seq, ok, len(got), len(want))
			}
		}
	}
	// Left to the runtime, with the buffer unchanged.
	unknown := newEvent("s", "1", "grant.activated", "alice")
	unknown.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1))
	badUTF8 := newEvent("s", "2", "grant.activated", "\xff")
	for _, bad := range []*pb.Event{nil, unknown, badUTF8} {
		if got, ok := MarshalBatch([]byte("p"), 1, 5, 2, []*pb.Event{evs[0], bad}); ok || string(got) != "p" {
			t.Errorf("MarshalBatch with %v = %q, %v; want the buffer unchanged and false", bad, got, ok)
		}
	}
}
