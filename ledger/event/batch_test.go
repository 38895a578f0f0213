package event

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/grantline/grantline/internal/cputime"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// fullEvent is a valid event with every field of the schema set.
func fullEvent() *pb.Event {
	ev := newEvent("pam", "e-1", "grant.activated", "alice")
	mfa := true
	ev.Mfa, ev.Breakglass, ev.ExpiresAt = &mfa, true, ev.Time
	ev.Source.Tenant, ev.Source.RawType, ev.Source.RawId = "t", "rt", "ri"
	ev.Subject.Display, ev.Subject.OwnerId = "Alice", "bob"
	ev.Actor.Display, ev.Actor.OwnerId = "Approver", "carol"
	ev.Refs.Grant, ev.Refs.Session, ev.Refs.Credential, ev.Refs.Review, ev.Refs.Ticket = "g", "s", "c", "r", "t"
	return ev
}

// TestValidateRefusesInvalidUTF8: every string of an event, found by
// walking the schema (so a new field is covered), holding invalid UTF-8
// makes Validate fail. Batch relies on it: an event Validate passed and
// with no unknown fields is encoded without checking its strings again.
func TestValidateRefusesInvalidUTF8(t *testing.T) {
	if err := Validate(fullEvent(), time.Now()); err != nil {
		t.Fatal(err)
	}
	var walk func(path string, get func(*pb.Event) protoreflect.Message, md protoreflect.MessageDescriptor)
	count := 0
	walk = func(path string, get func(*pb.Event) protoreflect.Message, md protoreflect.MessageDescriptor) {
		for i := 0; i < md.Fields().Len(); i++ {
			fd := md.Fields().Get(i)
			name := path + string(fd.Name())
			switch {
			case fd.IsMap():
				for _, kv := range [][2]string{{"k\xff", "v"}, {"k", "v\xff"}} {
					ev := fullEvent()
					get(ev).Mutable(fd).Map().Set(protoreflect.ValueOfString(kv[0]).MapKey(), protoreflect.ValueOfString(kv[1]))
					if Validate(ev, time.Now()) == nil {
						t.Errorf("%s[%q] = %q: Validate accepted invalid UTF-8", name, kv[0], kv[1])
					}
					count++
				}
			case fd.Kind() == protoreflect.StringKind:
				ev := fullEvent()
				get(ev).Set(fd, protoreflect.ValueOfString("a\xffb"))
				if Validate(ev, time.Now()) == nil {
					t.Errorf("%s: Validate accepted invalid UTF-8", name)
				}
				count++
			case fd.Kind() == protoreflect.MessageKind && fd.Message().FullName() != "google.protobuf.Timestamp":
				walk(name+".", func(ev *pb.Event) protoreflect.Message { return get(ev).Mutable(fd).Message() }, fd.Message())
			}
		}
	}
	walk("", func(ev *pb.Event) protoreflect.Message { return ev.ProtoReflect() }, (&pb.Event{}).ProtoReflect().Descriptor())
	if count < 25 {
		t.Fatalf("walked %d string fields; the schema has more", count)
	}
}

// TestBatchValidateIsValidateBatch: Batch.Validate returns what
// ValidateBatch returns, for a batch the decoder made and for one it did
// not; and the leaves of a batch it passed are StartLeaf's.
func TestBatchValidateIsValidateBatch(t *testing.T) {
	now := time.Now()
	unknown := fullEvent()
	unknown.Subject.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1))
	big := fullEvent()
	big.Attributes = map[string]string{}
	for i := range 8 {
		big.Attributes[fmt.Sprint("k", i)] = strings.Repeat("v", MaxAttrValueBytes-10)
	}
	nearLimit := fullEvent()
	nearLimit.Reason = strings.Repeat("r", MaxTextBytes)
	nearLimit.Attributes = map[string]string{"a": strings.Repeat("v", MaxAttrValueBytes), "b": strings.Repeat("w", MaxAttrValueBytes)}
	bad := fullEvent()
	bad.Subject.Id = ""
	many := make([]*pb.Event, MaxBatchEvents+1)
	for i := range many {
		many[i] = fullEvent()
	}
	for _, tt := range []struct {
		name string
		evs  []*pb.Event
	}{
		{"valid", []*pb.Event{fullEvent(), newEvent("s", "2", "access.approved", "bob"), {Id: "x"}}},
		{"valid, with unknown fields", []*pb.Event{fullEvent(), unknown}},
		{"valid, near the size limit", []*pb.Event{nearLimit}},
		{"too large", []*pb.Event{fullEvent(), big}},
		{"second invalid", []*pb.Event{fullEvent(), bad}},
		{"nil event", []*pb.Event{fullEvent(), nil}},
		{"none", nil},
		{"too many", many},
	} {
		want := ValidateBatch("events", tt.evs, now)
		got := NewBatch(tt.evs).Validate("events", now)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: Batch.Validate = %v, ValidateBatch = %v", tt.name, got, want)
		}
		if want != nil {
			continue
		}
		b := NewBatch(tt.evs)
		if err := b.Validate("events", now); err != nil {
			t.Fatal(err)
		}
		for i, ev := range tt.evs {
			if b.EventSize(i) != EventSize(ev) {
				t.Fatalf("%s, event %d: Batch.EventSize = %d, EventSize = %d", tt.name, i, b.EventSize(i), EventSize(ev))
			}
			got, err := b.StartLeaf([]byte{0}, i, b.EventSize(i))
			want, werr := StartLeaf([]byte{0}, ev, EventSize(ev))
			if err != nil || werr != nil || string(got) != string(want) {
				t.Fatalf("%s, event %d: Batch.StartLeaf = %x, %v; StartLeaf = %x, %v", tt.name, i, got, err, want, werr)
			}
		}
	}

	// The decoder's batch, validated: the same errors, and leaves.
	for _, evs := range [][]*pb.Event{{fullEvent(), newEvent("s", "2", "access.approved", "bob")}, {fullEvent(), bad}} {
		data, err := proto.Marshal(&pb.AppendStreamRequest{Events: evs})
		if err != nil {
			t.Fatal(err)
		}
		_, got, dec, ok := DecodeBatch(data, 1, 2)
		if !ok {
			t.Fatal("fell back")
		}
		b := dec.Batch(got)
		if err, want := b.Validate("events", now), ValidateBatch("events", got, now); fmt.Sprint(err) != fmt.Sprint(want) {
			t.Fatalf("decoded: Batch.Validate = %v, ValidateBatch = %v", err, want)
		}
		checkDecoded(t, got, dec)
	}
}

// TestBatchStartLeafRefusesAChangedEvent: an event changed after its size
// was taken is refused, as StartLeaf refuses it.
func TestBatchStartLeafRefusesAChangedEvent(t *testing.T) {
	b := NewBatch([]*pb.Event{fullEvent()})
	if err := b.Validate("events", time.Now()); err != nil {
		t.Fatal(err)
	}
	size := b.EventSize(0)
	b.Events()[0].Reason += "!"
	if _, err := b.StartLeaf(nil, 0, size); err == nil || !strings.Contains(err.Error(), "event changed while being encoded") {
		t.Fatalf("StartLeaf after a change = %v, want the change refused", err)
	}
}

// BenchmarkBatchLeaves is the append path's work per event from the
// request's bytes to the leaf, as the server does it: decode the request,
// validate, and start each leaf (size, encoding), against the same with
// the package functions (UnmarshalBatch, ValidateBatch, EventSize and
// StartLeaf), as before Batch. b.N counts events; cpu-µs/event is the
// process's CPU time (the collector's included), which moves less than
// ns/op on a loaded machine.
//
//	go test -run '^$' -bench BatchLeaves -benchtime 1000000x -count 5 ./ledger/event/
func BenchmarkBatchLeaves(b *testing.B) {
	evs := benchEvents()
	data, _ := proto.MarshalOptions{Deterministic: true}.Marshal(&pb.AppendStreamRequest{Seq: 1, Events: evs})
	now := time.Now()
	b.Run("batch", func(b *testing.B) {
		b.ReportAllocs()
		defer reportCPU(b, cputime.Process())
		for i := 0; i < b.N; i += len(evs) {
			_, evs, dec, ok := DecodeBatch(data, 1, 2)
			if !ok {
				b.Fatal("fell back")
			}
			bt := dec.Batch(evs)
			if err := bt.Validate("events", now); err != nil {
				b.Fatal(err)
			}
			for j := range evs {
				if _, err := bt.StartLeaf([]byte{0}, j, bt.EventSize(j)); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("functions", func(b *testing.B) {
		b.ReportAllocs()
		defer reportCPU(b, cputime.Process())
		for i := 0; i < b.N; i += len(evs) {
			_, evs, ok := UnmarshalBatch(data, 1, 2)
			if !ok {
				b.Fatal("fell back")
			}
			if err := ValidateBatch("events", evs, now); err != nil {
				b.Fatal(err)
			}
			for _, ev := range evs {
				if _, err := StartLeaf([]byte{0}, ev, EventSize(ev)); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}

// reportCPU reports the process's CPU time since cpu0 per b.N.
func reportCPU(b *testing.B, cpu0 time.Duration) {
	b.ReportMetric(float64((cputime.Process()-cpu0).Nanoseconds())/1000/float64(b.N), "cpu-µs/event")
}
