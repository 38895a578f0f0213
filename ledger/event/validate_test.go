package event

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

var validateNow = time.Date(2026, 11, 29, 9, 0, 0, 0, time.UTC)

func TestValidateEvent(t *testing.T) {
	base := func() *pb.Event {
		return &pb.Event{
			Id: "e1", Type: "grant.activated", Time: timestamppb.New(validateNow.Add(-time.Minute)),
			Source: &pb.Source{System: "pam"}, Subject: &pb.Identity{Id: "alice"},
		}
	}
	tests := []struct {
		name string
		edit func(*pb.Event)
		want string // "" for valid
	}{
		{"minimal", func(*pb.Event) {}, ""},
		{"every kind", func(e *pb.Event) { e.Subject.Kind = "service_account"; e.Actor = &pb.Identity{Id: "x", Kind: "bot"} }, ""},
		{"epoch exactly", func(e *pb.Event) { e.Time = timestamppb.New(time.Unix(0, 0)) }, ""},
		{"just under a day ahead", func(e *pb.Event) { e.Time = timestamppb.New(validateNow.Add(MaxFutureSkew)) }, ""},
		{"a day and a second ahead", func(e *pb.Event) { e.Time = timestamppb.New(validateNow.Add(MaxFutureSkew + time.Second)) }, "time: 2026-11-30T09:00:01Z is more than 24h0m0s in the future"},
		{"expiry far ahead is fine", func(e *pb.Event) { e.ExpiresAt = timestamppb.New(validateNow.AddDate(5, 0, 0)) }, ""},
		{"mfa false recorded", func(e *pb.Event) { e.Mfa = proto.Bool(false) }, ""},
		{"nanos out of range", func(e *pb.Event) { e.Time = &timestamppb.Timestamp{Seconds: 10, Nanos: 2e9} }, "time: not a valid timestamp"},
		{"one ns before 1970", func(e *pb.Event) { e.Time = timestamppb.New(time.Unix(0, -1)) }, "time: 1969-12-31T23:59:59.999999999Z is before 1970"},
		{"type with case", func(e *pb.Event) { e.Type = "Grant.Activated" }, `type: unknown event type "Grant.Activated"`},
		{"empty system", func(e *pb.Event) { e.Source.System = "" }, "source.system: required"},
		{"invalid utf-8 id", func(e *pb.Event) { e.Id = "\xc3\x28" }, "id: not valid UTF-8"},
		{"invalid utf-8 reason", func(e *pb.Event) { e.Reason = "ok \xff" }, "reason: not valid UTF-8"},
		{"invalid utf-8 attribute value", func(e *pb.Event) { e.Attributes = map[string]string{"k": "\xff"} }, `attributes["k"]: not valid UTF-8`},
		{"empty attribute key", func(e *pb.Event) { e.Attributes = map[string]string{"": "v"} }, "attributes: empty key"},
		{"long attribute key", func(e *pb.Event) { e.Attributes = map[string]string{strings.Repeat("k", 300): "v"} }, "attributes: key"},
		{"tab in subject", func(e *pb.Event) { e.Subject.Id = "a\tb" }, "subject.id: contains U+0009 (control character); ids must be visible text"},
		{"zero-width space in subject", func(e *pb.Event) { e.Subject.Id = "alice\u200b" }, "subject.id: contains U+200B (format character); ids must be visible text"},
		{"bidi override in event id", func(e *pb.Event) { e.Id = "e\u202e1" }, "id: contains U+202E (format character)"},
		{"line separator in system", func(e *pb.Event) { e.Source.System = "pam\u2028" }, "source.system: contains U+2028 (line separator)"},
		{"paragraph separator in tenant", func(e *pb.Event) { e.Source.Tenant = "t\u2029" }, "source.tenant: contains U+2029 (paragraph separator)"},
		{"NEL in owner id", func(e *pb.Event) { e.Subject.OwnerId = "bob\u0085" }, "subject.owner_id: contains U+0085 (control character)"},
		{"BOM in actor id", func(e *pb.Event) { e.Actor = &pb.Identity{Id: "\ufeffcarol"} }, "actor.id: contains U+FEFF (format character)"},
		{"soft hyphen in entitlement", func(e *pb.Event) { e.Entitlement = &pb.Entitlement{Id: "ad\u00admins"} }, "entitlement.id: contains U+00AD (format character)"},
		{"zero-width joiner in refs.grant", func(e *pb.Event) { e.Refs = &pb.Refs{Grant: "g\u200d1"} }, "refs.grant: contains U+200D (format character)"},
		{"tag character in refs.ticket", func(e *pb.Event) { e.Refs = &pb.Refs{Ticket: "T-1\U000E0041"} }, "refs.ticket: contains U+E0041 (format character)"},
		{"visible non-ASCII id is fine", func(e *pb.Event) { e.Subject.Id = "zoë.müller@例え.jp" }, ""},
		{"hidden characters allowed in reason", func(e *pb.Event) { e.Reason = "see\u2028ticket" }, ""},
		{"newline allowed in reason", func(e *pb.Event) { e.Reason = "line 1\nline 2" }, ""},
		{"owner id too long", func(e *pb.Event) { e.Subject.OwnerId = strings.Repeat("o", 513) }, "subject.owner_id: 513 bytes exceed the limit of 512"},
		{"reason too long", func(e *pb.Event) { e.Reason = strings.Repeat("r", MaxTextBytes+1) }, "reason: 8193 bytes"},
		{"system kind", func(e *pb.Event) { e.Actor = &pb.Identity{Kind: "system"} }, ""},
		{"bad actor kind", func(e *pb.Event) { e.Actor = &pb.Identity{Kind: "Human"} }, `actor.kind: unknown kind "Human"`},
	}
	for _, tt := range tests {
		ev := base()
		tt.edit(ev)
		err := Validate(ev, validateNow)
		got := ""
		if err != nil {
			got = err.Error()
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("%s: error %v is not ErrInvalid", tt.name, err)
			}
		}
		if (tt.want == "") != (got == "") || !strings.HasPrefix(got, tt.want) {
			t.Errorf("%s: Validate = %q, want prefix %q", tt.name, got, tt.want)
		}
	}
	if err := Validate(nil, validateNow); err == nil {
		t.Error("Validate(nil) = nil, want an error")
	}
}

// TestSizeLimitExact checks the size bound against proto.Size near the limit:
// an event is refused for its size exactly when its encoding is too large.
func TestSizeLimitExact(t *testing.T) {
	for pad := MaxTextBytes - 600; pad <= MaxTextBytes; pad += 7 {
		ev := newEvent("okta", "e", "access.approved", "alice")
		ev.Subject.Display = strings.Repeat("d", MaxTextBytes)
		ev.Entitlement.Resource = strings.Repeat("e", MaxTextBytes)
		for i := range 2 {
			ev.Attributes[fmt.Sprint("k", i)] = strings.Repeat("v", MaxAttrValueBytes)
		}
		ev.Reason = strings.Repeat("r", pad)
		err := Validate(ev, time.Now())
		tooBig := proto.Size(ev) > MaxEventBytes
		if (err != nil) != tooBig || (err != nil && !strings.Contains(err.Error(), "encoded size")) {
			t.Fatalf("reason of %d bytes, event of %d: Validate = %v, want refused %v", pad, proto.Size(ev), err, tooBig)
		}
	}
}

func TestEveryVocabularyTypeValid(t *testing.T) {
	// The closed vocabulary of docs/design.md (with the types of the round-2 rules), written out independently.
	types := strings.Fields(`identity.created identity.moved identity.disabled identity.enabled identity.terminated
		access.requested access.approved access.denied access.revoked access.expired review.certified review.revoked
		grant.assigned grant.activated grant.deactivated grant.removed grant.expired session.started session.ended session.revoked
		credential.created credential.checked_out credential.checked_in credential.rotated credential.revoked
		breakglass.invoked breakglass.reviewed
		auth.succeeded account.created account.disabled
		review.opened review.signed_off review.closed`)
	if len(types) != len(Types()) {
		t.Errorf("vocabulary has %d types, docs/design.md lists %d", len(Types()), len(types))
	}
	for _, typ := range types {
		if !IsType(typ) {
			t.Errorf("IsType(%q) = false", typ)
		}
	}
}

func newEvent(sys, id, typ, subject string) *pb.Event {
	return &pb.Event{
		Id: id, Type: typ, Time: timestamppb.New(time.Now().Add(-time.Hour).Truncate(time.Second)),
		Source:      &pb.Source{System: sys, Product: "test"},
		Subject:     &pb.Identity{Id: subject, Kind: "human"},
		Actor:       &pb.Identity{Id: "approver-1", Kind: "human"},
		Entitlement: &pb.Entitlement{Id: "role/admin", Resource: "aws:prod", Privileged: true},
		Refs:        &pb.Refs{Request: "req-" + id},
		Reason:      "ticket CHG-1",
		Attributes:  map[string]string{"region": "eu"},
	}
}

func TestValidateBatchPath(t *testing.T) {
	evs := []*pb.Event{newEvent("s", "1", "access.approved", "a"), newEvent("s", "2", "access.approved", "")}
	err := ValidateBatch("events", evs, time.Now())
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Path != "events[1].subject.id" || fe.Msg != "required" {
		t.Fatalf("ValidateBatch = %v, want events[1].subject.id: required", err)
	}
}

// TestHiddenCharactersNamed checks the whole message a sender sees for an id
// with an invisible character, in a batch and outside an event.
func TestHiddenCharactersNamed(t *testing.T) {
	err := ValidateBatch("events", []*pb.Event{newEvent("s", "1", "access.approved", "alice\u200b")}, time.Now())
	if want := "events[0].subject.id: contains U+200B (format character); ids must be visible text"; err == nil || err.Error() != want {
		t.Errorf("ValidateBatch = %v, want %s", err, want)
	}
	if err := ValidateID("subject_id", "\u202ealice"); err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "U+202E (format character)") {
		t.Errorf("ValidateID = %v, want U+202E named", err)
	}
	for _, r := range []rune{'\t', 0x7f, 0x85, 0x200b, 0x202e, 0x2028, 0x2029, 0xfeff} {
		if !Hidden(r) || HiddenKind(r) == "" {
			t.Errorf("Hidden(%U) = false or no kind", r)
		}
	}
	for _, r := range []rune{'a', ' ', 'é', '例', 0x1f600} {
		if Hidden(r) || HiddenKind(r) != "" {
			t.Errorf("Hidden(%U) = true", r)
		}
	}
}

// TestIDFastPathAgrees checks that an id of any single byte or ASCII
// character gets the same verdict whether or not the printable-ASCII fast
// path takes it: the fast path accepts exactly what the full check accepts.
func TestIDFastPathAgrees(t *testing.T) {
	for c := range 256 {
		s := "a" + string([]byte{byte(c)}) + "b"
		full := utf8.ValidString(s) && strings.IndexFunc(s, Hidden) < 0
		v := validator{}
		v.id("id", s, true)
		if got := v.err == nil; got != full {
			t.Errorf("id %q: accepted = %v, want %v", s, got, full)
		}
		if visibleASCII(s) && !full {
			t.Errorf("visibleASCII(%q) is true but the full check refuses it", s)
		}
	}
}

// BenchmarkValidateBatch validates a batch of 1000 ~500-byte events as the
// AppendStream handler does. b.N counts events.
func BenchmarkValidateBatch(b *testing.B) {
	evs := make([]*pb.Event, 1000)
	for i := range evs {
		ev := newEvent("pam-prod", fmt.Sprint("evt-", i), "grant.activated", fmt.Sprint("user-", i%100))
		ev.Reason = strings.Repeat("r", 250)
		evs[i] = ev
	}
	now := time.Now()
	b.ReportAllocs()
	for i := 0; i < b.N; i += len(evs) {
		if err := ValidateBatch("events", evs, now); err != nil {
			b.Fatal(err)
		}
	}
}

func ExampleValidate() {
	ev := &pb.Event{
		Id: "evt-1", Type: "grant.teleported", Time: timestamppb.Now(),
		Source: &pb.Source{System: "pam"}, Subject: &pb.Identity{Id: "alice"},
	}
	fmt.Println(Validate(ev, time.Now()))
	// Output: type: unknown event type "grant.teleported"; use one of the vocabulary in docs/design.md (e.g. access.approved, grant.activated)
}

// FuzzValidateEvent decodes arbitrary bytes as a binary protobuf event and
// validates it: no panics; a valid event's leaf fits the size limit and
// survives a round trip.
func FuzzValidateEvent(f *testing.F) {
	for _, ev := range seedEvents() {
		b, _ := proto.Marshal(ev)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var ev pb.Event
		if err := proto.Unmarshal(data, &ev); err != nil {
			return
		}
		checkValidated(t, &ev)
	})
}

// FuzzDecodeEventJSON does the same from protojson, the Connect JSON input.
func FuzzDecodeEventJSON(f *testing.F) {
	for _, ev := range seedEvents() {
		b, _ := protojson.Marshal(ev)
		f.Add(string(b))
	}
	f.Add(`{"id":"x","type":"access.approved","time":"1969-12-31T23:59:59Z","source":{"system":"s"},"subject":{"id":"a"}}`)
	f.Add(`{"id":"x","type":"access.approved","time":"2026-01-01T00:00:00Z","source":{"raw_type":"t","system":"s"},"subject":{"owner_id":"o","id":"a"},"attributes":{"k":"v"}}`)
	f.Fuzz(func(t *testing.T, s string) {
		var ev pb.Event
		if err := protojson.Unmarshal([]byte(s), &ev); err != nil {
			return
		}
		checkValidated(t, &ev)
	})
}

// FuzzAppendRequest decodes whole requests as the service does.
func FuzzAppendRequest(f *testing.F) {
	b, _ := proto.Marshal(&pb.AppendRequest{Events: seedEvents()})
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		var req pb.AppendRequest
		if err := proto.Unmarshal(data, &req); err != nil {
			return
		}
		err := ValidateBatch("events", req.GetEvents(), validateNow)
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Fatalf("ValidateBatch error %v is not ErrInvalid", err)
		}
	})
}

func checkValidated(t *testing.T, ev *pb.Event) {
	t.Helper()
	err := Validate(ev, validateNow)
	if err != nil {
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), ": ") {
			t.Fatalf("error %q is not a FieldError naming a field", err)
		}
		return
	}
	leaf, err := proto.MarshalOptions{Deterministic: true}.Marshal(&pb.Entry{Event: ev, ObservedTime: timestamppb.New(validateNow)})
	if err != nil {
		t.Fatalf("a valid event does not encode: %v", err)
	}
	if len(leaf) > 32<<10 {
		t.Fatalf("a valid event makes a %d-byte leaf, over 32 KiB", len(leaf))
	}
	var back pb.Entry
	if err := proto.Unmarshal(leaf, &back); err != nil || !proto.Equal(back.GetEvent(), ev) {
		t.Fatalf("leaf does not round-trip: %v", err)
	}
}

func seedEvents() []*pb.Event {
	t0 := timestamppb.New(validateNow.Add(-time.Hour))
	return []*pb.Event{
		{Id: "1", Type: "access.approved", Time: t0, Source: &pb.Source{System: "iga"}, Subject: &pb.Identity{Id: "alice", Kind: "human"},
			Refs: &pb.Refs{Request: "r1"}, ExpiresAt: timestamppb.New(validateNow.Add(time.Hour)), Mfa: proto.Bool(true)},
		{Id: "2", Type: "grant.activated", Time: t0, Source: &pb.Source{System: "pam", RawId: "x"}, Subject: &pb.Identity{Id: "svc", Kind: "service_account", OwnerId: "bob"},
			Entitlement: &pb.Entitlement{Id: "admin", Privileged: true}, Attributes: map[string]string{"k": "v"}},
		{Id: "3", Type: "grant.nope", Time: t0, Source: &pb.Source{System: "pam"}, Subject: &pb.Identity{Id: "a"}},
		{Id: "4", Type: "session.started", Time: &timestamppb.Timestamp{Seconds: -1}, Source: &pb.Source{System: "pam"}, Subject: &pb.Identity{Id: "a"}},
		{Id: "5", Type: "breakglass.invoked", Time: t0, Source: &pb.Source{System: "pam"}, Subject: &pb.Identity{Id: "a"}, Reason: strings.Repeat("x", 9000)},
	}
}

// TestHasUnknownCoversEveryMessage: HasUnknown looks at a fixed list of the
// messages an Event holds; a message field added to the schema must be
// added there too, or unknown fields in it would pass the fast check.
func TestHasUnknownCoversEveryMessage(t *testing.T) {
	var got []string
	var walk func(md protoreflect.MessageDescriptor, path string, depth int)
	walk = func(md protoreflect.MessageDescriptor, path string, depth int) {
		fields := md.Fields()
		for i := range fields.Len() {
			fd := fields.Get(i)
			var sub protoreflect.MessageDescriptor
			switch {
			case fd.IsMap():
				sub = fd.MapValue().Message()
			default:
				sub = fd.Message()
			}
			if sub == nil {
				continue
			}
			p := path + string(fd.Name())
			got = append(got, p)
			if depth < 4 {
				walk(sub, p+".", depth+1)
			}
		}
	}
	walk((&pb.Event{}).ProtoReflect().Descriptor(), "", 0)
	want := []string{"time", "source", "subject", "actor", "entitlement", "refs", "expires_at"}
	if !slices.Equal(got, want) {
		t.Fatalf("the messages an Event holds are %v; HasUnknown checks %v: update it", got, want)
	}
	// And each of them is seen.
	ev := newEvent("s", "1", "grant.activated", "alice")
	ev.ExpiresAt = timestamppb.Now()
	unknown := protowire.AppendTag(nil, 99, protowire.VarintType)
	unknown = protowire.AppendVarint(unknown, 1)
	for _, m := range []proto.Message{ev, ev.GetTime(), ev.GetSource(), ev.GetSubject(), ev.GetActor(), ev.GetEntitlement(), ev.GetRefs(), ev.GetExpiresAt()} {
		r := m.ProtoReflect()
		r.SetUnknown(unknown)
		if !HasUnknown(ev) {
			t.Errorf("HasUnknown misses an unknown field in %s", r.Descriptor().FullName())
		}
		r.SetUnknown(nil)
	}
	if HasUnknown(ev) {
		t.Error("HasUnknown of an event without unknown fields = true")
	}
}
