package event

import (
	"crypto/sha256"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/internal/cputime"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

var observedAt = time.Unix(1767225600, 5)

func TestDedupeKeyIsSHA256OfSystemZeroID(t *testing.T) {
	long := strings.Repeat("s", 300) // longer than DedupeKey's stack buffer
	for _, tt := range []struct{ system, id string }{
		{"iga-0", "ev-1"},
		{"", ""},
		{long, "x"},
		{"a", long},
	} {
		want := sha256.Sum256([]byte(tt.system + "\x00" + tt.id))
		if got := DedupeKey(tt.system, tt.id); got != want {
			t.Errorf("DedupeKey(%.10q, %.10q) = %x, want %x", tt.system, tt.id, got, want)
		}
	}
}

// sampleEvents covers every field, absent and present, and edge values.
func sampleEvents() []*pb.Event {
	mfaFalse := false
	return append(seedEvents(),
		&pb.Event{},
		&pb.Event{Id: "x", Mfa: &mfaFalse, Attributes: map[string]string{"a": "1", "": ""}, ExpiresAt: &timestamppb.Timestamp{}},
		&pb.Event{Id: "neg", Time: &timestamppb.Timestamp{Seconds: -5, Nanos: 999999999}, Breakglass: true,
			Source: &pb.Source{System: "s", Product: "p", Tenant: "t", RawType: "r", RawId: "i"},
			Actor:  &pb.Identity{Id: "a", Kind: "bot", Display: "A", OwnerId: "o"},
			Refs:   &pb.Refs{Request: "1", Grant: "2", Session: "3", Credential: "4", Review: "5", Ticket: "6"}},
		&pb.Event{Id: "far", Time: &timestamppb.Timestamp{Seconds: 253402300799, Nanos: 999999999}, Reason: "é ✓",
			Subject: &pb.Identity{Id: "u", Kind: "human", Display: "Ü", OwnerId: "m"}, Entitlement: &pb.Entitlement{Id: "e", Resource: "r", Privileged: true}},
	)
}

func TestStartFinishLeafIsEncodeLeaf(t *testing.T) {
	for i, ev := range sampleEvents() {
		for _, at := range []time.Time{observedAt, time.Unix(0, 0), time.Unix(253402300799, 999999999)} {
			want, err := EncodeLeaf(ev, at)
			if err != nil {
				t.Fatal(err)
			}
			start, err := StartLeaf([]byte{0x00}, ev, EventSize(ev))
			if err != nil {
				t.Fatalf("event %d: StartLeaf: %v", i, err)
			}
			if got := FinishLeaf(start, EncodeTimestamp(at)); string(got[1:]) != string(want) || got[0] != 0 {
				t.Fatalf("event %d at %v: StartLeaf+FinishLeaf = %x, want 00 then EncodeLeaf's %x", i, at, got, want)
			}
			if len(want) > EventSize(ev)+LeafOverhead {
				t.Fatalf("event %d: leaf of %d bytes, over EventSize+LeafOverhead = %d", i, len(want), EventSize(ev)+LeafOverhead)
			}
			back, err := DecodeLeaf(want)
			if err != nil || !proto.Equal(back.GetEvent(), ev) || !back.GetObservedTime().AsTime().Equal(at) {
				t.Fatalf("event %d: DecodeLeaf = %v, %v; want the event back", i, back, err)
			}
		}
	}
}

func TestStartLeafRefusesAWrongSize(t *testing.T) {
	ev := seedEvents()[0]
	if _, err := StartLeaf(nil, ev, EventSize(ev)+1); err == nil || !strings.Contains(err.Error(), "changed while being encoded") {
		t.Fatalf("StartLeaf with a stale size = %v, want a changed-while-encoding error", err)
	}
}

// flat is every field VisitLeaf reports, in one comparable value.
type flat struct {
	Strings    map[Field]string
	Bools      map[Field]bool
	Times      map[Field]time.Time
	Attributes map[string]string
}

func (f *flat) String(k Field, v []byte) { f.Strings[k] = string(v) }
func (f *flat) Bool(k Field, v bool)     { f.Bools[k] = v }
func (f *flat) Time(k Field, t time.Time) {
	f.Times[k] = t
}
func (f *flat) Attribute(k, v []byte) { f.Attributes[string(k)] = string(v) }

func newFlat() *flat {
	return &flat{Strings: map[Field]string{}, Bools: map[Field]bool{}, Times: map[Field]time.Time{}, Attributes: map[string]string{}}
}

// flatOf is the reference: proto.Unmarshal's Entry, field by field.
func flatOf(e *pb.Entry) *flat {
	f := newFlat()
	ev := e.GetEvent()
	put := func(k Field, v string) {
		if v != "" {
			f.Strings[k] = v
		}
	}
	put(ID, ev.GetId())
	put(Type, ev.GetType())
	src := ev.GetSource()
	put(SourceSystem, src.GetSystem())
	put(SourceProduct, src.GetProduct())
	put(SourceTenant, src.GetTenant())
	put(SourceRawType, src.GetRawType())
	put(SourceRawID, src.GetRawId())
	for _, id := range []struct {
		m                          *pb.Identity
		id, kind, display, ownerID Field
	}{{ev.GetSubject(), SubjectID, SubjectKind, SubjectDisplay, SubjectOwnerID}, {ev.GetActor(), ActorID, ActorKind, ActorDisplay, ActorOwnerID}} {
		put(id.id, id.m.GetId())
		put(id.kind, id.m.GetKind())
		put(id.display, id.m.GetDisplay())
		put(id.ownerID, id.m.GetOwnerId())
	}
	put(EntitlementID, ev.GetEntitlement().GetId())
	put(EntitlementResource, ev.GetEntitlement().GetResource())
	r := ev.GetRefs()
	put(RefsRequest, r.GetRequest())
	put(RefsGrant, r.GetGrant())
	put(RefsSession, r.GetSession())
	put(RefsCredential, r.GetCredential())
	put(RefsReview, r.GetReview())
	put(RefsTicket, r.GetTicket())
	put(Reason, ev.GetReason())
	if ev.GetEntitlement().GetPrivileged() {
		f.Bools[EntitlementPrivileged] = true
	}
	if ev != nil && ev.Mfa != nil {
		f.Bools[MFA] = ev.GetMfa()
	}
	if ev.GetBreakglass() {
		f.Bools[Breakglass] = true
	}
	for k, ts := range map[Field]*timestamppb.Timestamp{Time: ev.GetTime(), ExpiresAt: ev.GetExpiresAt(), ObservedTime: e.GetObservedTime()} {
		if ts != nil {
			f.Times[k] = ts.AsTime()
		}
	}
	for k, v := range ev.GetAttributes() {
		f.Attributes[k] = v
	}
	return f
}

// visited is VisitLeaf's view of leaf, with the zero values proto3 does not
// distinguish from absence dropped.
func visited(leaf []byte) (*flat, error) {
	f := newFlat()
	if err := VisitLeaf(leaf, f); err != nil {
		return nil, err
	}
	for k, v := range f.Strings {
		if v == "" {
			delete(f.Strings, k)
		}
	}
	for k, v := range f.Bools {
		if !v && k != MFA {
			delete(f.Bools, k)
		}
	}
	return f, nil
}

// checkAgree fails unless VisitLeaf and DecodeLeaf agree on leaf: both
// refuse it, or both accept it and report the same fields.
func checkAgree(t *testing.T, leaf []byte) {
	t.Helper()
	want, werr := DecodeLeaf(leaf)
	got, gerr := visited(leaf)
	if (werr == nil) != (gerr == nil) {
		t.Fatalf("DecodeLeaf error %v, VisitLeaf error %v", werr, gerr)
	}
	if gerr != nil {
		// Both see a map leaf, or both refuse the leaf as malformed.
		mapLeaf := errors.Is(gerr, ErrMapLeaf) && errors.Is(werr, ErrMapLeaf)
		malformed := errors.Is(gerr, ErrMalformedLeaf) && errors.Is(werr, ErrMalformedLeaf)
		if !mapLeaf && !malformed {
			t.Fatalf("VisitLeaf error %v and DecodeLeaf error %v are not both ErrMapLeaf or both ErrMalformedLeaf", gerr, werr)
		}
		return
	}
	if w := flatOf(want); !reflect.DeepEqual(got, w) {
		t.Fatalf("VisitLeaf = %+v\nDecodeLeaf = %+v", got, w)
	}
}

func TestVisitLeafAgreesWithDecodeLeaf(t *testing.T) {
	for _, ev := range sampleEvents() {
		leaf, err := EncodeLeaf(ev, observedAt)
		if err != nil {
			t.Fatal(err)
		}
		checkAgree(t, leaf)
	}
	// Merging: a second occurrence of a timestamp replaces only the fields
	// it carries (here nanos), and a repeated string field's last value wins.
	merged := []byte{
		0x0a, 0x0b, // event, 11 bytes:
		0x1a, 0x02, 0x08, 0x0a, //   time {seconds: 10}
		0x1a, 0x02, 0x10, 0x07, //   time {nanos: 7}
		0x0a, 0x01, 'a', //   id "a"
		0x0a, 0x03, 0x0a, 0x01, 'b', // event again, merged: id "b"
	}
	got, err := visited(merged)
	if err != nil {
		t.Fatal(err)
	}
	if want := time.Unix(10, 7).UTC(); got.Strings[ID] != "b" || !got.Times[Time].Equal(want) {
		t.Fatalf("VisitLeaf(merged) = id %q time %v, want id b time %v", got.Strings[ID], got.Times[Time], want)
	}
	checkAgree(t, merged)
}

func TestVisitLeafRefusesBadInput(t *testing.T) {
	good, _ := EncodeLeaf(&pb.Event{Id: "a", Type: "grant.activated"}, observedAt)
	for _, tc := range []struct {
		name string
		leaf []byte
	}{
		{"truncated", good[:len(good)-1]},
		{"bad tag", []byte{0x00}},
		{"no event", []byte{0x12, 0x00}},
		{"invalid UTF-8 in id", []byte{0x0a, 0x04, 0x0a, 0x02, 0xff, 0xfe}},
		{"invalid UTF-8 in source.tenant", []byte{0x0a, 0x05, 0x22, 0x03, 0x1a, 0x01, 0xff}},
		{"invalid UTF-8 in an attribute key", []byte{0x0a, 0x05, 0x6a, 0x03, 0x0a, 0x01, 0xff}},
	} {
		if err := VisitLeaf(tc.leaf, newFlat()); !errors.Is(err, ErrMalformedLeaf) {
			t.Errorf("VisitLeaf(%s) = %v, want ErrMalformedLeaf", tc.name, err)
		}
		if _, err := DecodeLeaf(tc.leaf); err == nil {
			t.Errorf("%s: proto.Unmarshal accepts it, so the test case is wrong", tc.name)
		}
	}
}

// FuzzVisitLeaf: on any input, VisitLeaf and DecodeLeaf (proto.Unmarshal)
// agree on whether it is valid and, when it is, on every field.
func FuzzVisitLeaf(f *testing.F) {
	for _, ev := range sampleEvents() {
		leaf, _ := EncodeLeaf(ev, observedAt)
		f.Add(leaf)
	}
	f.Fuzz(func(t *testing.T, leaf []byte) { checkAgree(t, leaf) })
}

// BenchmarkStartLeaf is the sequencer's encoding of one ~500-byte event
// (EventSize, then StartLeaf), against a plain proto.Marshal of it.
func BenchmarkStartLeaf(b *testing.B) {
	ev := newEvent("pam-prod", "evt-1", "grant.activated", "alice")
	ev.Reason = strings.Repeat("r", 250)
	b.Run("StartLeaf", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := StartLeaf([]byte{0}, ev, EventSize(ev)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("proto.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := proto.Marshal(ev); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestStartLeafFastPathDeterministic: StartLeaf encodes events with at most
// one attribute without the deterministic option (leafOptions); their
// leaves must still be EncodeLeaf's, byte for byte, whatever else the event
// holds, and so must those with more attributes, sorted.
func TestStartLeafFastPathDeterministic(t *testing.T) {
	at := time.Unix(1767225600, 123456789)
	for _, n := range []int{0, 1, 2, 7} {
		for _, ev := range sampleEvents() {
			ev = proto.CloneOf(ev)
			ev.Attributes = nil
			for k := range n {
				if ev.Attributes == nil {
					ev.Attributes = map[string]string{}
				}
				ev.Attributes[strings.Repeat("k", 7-k)+"é"] = strings.Repeat("v", k) // keys in reverse order of length
			}
			want, err := EncodeLeaf(ev, at)
			if err != nil {
				t.Fatal(err)
			}
			start, err := StartLeaf([]byte{0x00}, ev, EventSize(ev))
			if err != nil {
				t.Fatal(err)
			}
			if got := FinishLeaf(start, EncodeTimestamp(at)); string(got[1:]) != string(want) {
				t.Fatalf("event %q with %d attributes: StartLeaf+FinishLeaf = %x\nwant EncodeLeaf's %x", ev.GetId(), n, got[1:], want)
			}
		}
	}
}

// BenchmarkVisitLeaf decodes a typical leaf (every message present, a few
// refs, no attributes) with a visitor that keeps nothing: the cost of
// VisitLeaf itself, which the rules engine pays for every entry it reads.
func BenchmarkVisitLeaf(b *testing.B) {
	ev := newEvent("pam-prod", "evt-1", "grant.activated", "alice")
	leaf, err := EncodeLeaf(ev, observedAt)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(leaf)))
	cpu0 := cputime.Process()
	for b.Loop() {
		if err := VisitLeaf(leaf, Ignore{}); err != nil {
			b.Fatal(err)
		}
	}
	// On a loaded machine wall time says little: CPU time per leaf.
	b.ReportMetric(float64((cputime.Process()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
}

// TestVisitLeafRefusesMalformedMapRoot: a map leaf whose root does not
// parse is malformed for VisitLeaf as for DecodeLeaf (found by
// FuzzVisitLeaf: VisitLeaf said "map leaf" without reading the root).
func TestVisitLeafRefusesMalformedMapRoot(t *testing.T) {
	for _, leaf := range [][]byte{
		[]byte("\x1a\x010"),        // map root holding a varint tag and no varint
		[]byte("\x1a\x02\x0a\x05"), // map root whose bytes field runs past its end
		[]byte("\x1a\x01\x00"),     // map root holding field number 0
	} {
		if _, err := DecodeLeaf(leaf); !errors.Is(err, ErrMalformedLeaf) {
			t.Fatalf("DecodeLeaf(%q) = %v, want ErrMalformedLeaf", leaf, err)
		}
		if _, err := visited(leaf); !errors.Is(err, ErrMalformedLeaf) {
			t.Errorf("VisitLeaf(%q) = %v, want ErrMalformedLeaf", leaf, err)
		}
		checkAgree(t, leaf)
	}
	if _, err := visited(EncodeMapLeaf([32]byte{1}, 7)); !errors.Is(err, ErrMapLeaf) {
		t.Errorf("VisitLeaf(a map leaf) = %v, want ErrMapLeaf", err)
	}
}
