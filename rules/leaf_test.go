package rules

import (
	"bytes"
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/internal/synth"
	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

func encodeLeaf(t testing.TB, ev *pb.Event) []byte {
	t.Helper()
	b, err := event.EncodeLeaf(ev, time.Unix(1767225600, 5))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// reference decodes a leaf the long way: event.DecodeLeaf (proto.Unmarshal),
// then fillEvent.
func reference(leaf []byte, index uint64) (Event, error) {
	ent, err := event.DecodeLeaf(leaf)
	if err != nil {
		return Event{}, err
	}
	var e Event
	fillEvent(&e, Entry{Index: index, Event: ent.GetEvent(), Observed: toTime(ent.GetObservedTime(), ent.ObservedTime != nil)})
	return e, nil
}

func TestDecodeLeafMatchesProtoUnmarshal(t *testing.T) {
	org, err := synth.Generate(synth.Config{Seed: 3, Identities: 60, FailureRate: 0.2})
	if err != nil {
		t.Fatal(err)
	}
	mfaFalse := false
	extra := []*pb.Event{
		{},
		{Id: "x", Mfa: &mfaFalse, Attributes: map[string]string{"a": "1", "": ""}, ExpiresAt: &timestamppb.Timestamp{}},
		{Id: "neg", Time: &timestamppb.Timestamp{Seconds: -5, Nanos: 999999999}, Breakglass: true,
			Source: &pb.Source{System: "s", Product: "p", Tenant: "t", RawType: "r", RawId: "i"},
			Actor:  &pb.Identity{Id: "a", Kind: "bot", Display: "A", OwnerId: "o"},
			Refs:   &pb.Refs{Request: "1", Grant: "2", Session: "3", Credential: "4", Review: "5", Ticket: "6"}},
	}
	// Every event decoded alone, and through one interning visitor that
	// has seen every event before (twice over: its table keeps the strings
	// of the earlier events, the second pass reuses them).
	interned := &leafVisitor{in: &interner{}}
	all := append(extra, org.Events...)
	for pass := range 3 {
		for i, ev := range all {
			leaf := encodeLeaf(t, ev)
			want, err := reference(leaf, uint64(i))
			if err != nil {
				t.Fatal(err)
			}
			var got Event
			got.Reason = "left over from a previous subject"
			if pass == 0 {
				err = decodeLeaf(&got, uint64(i), leaf)
			} else {
				err = decodeLeafWith(interned, &got, uint64(i), leaf)
			}
			if err != nil {
				t.Fatalf("pass %d, event %d (%s): decodeLeaf: %v", pass, i, ev.GetId(), err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("pass %d, event %d (%s): decodeLeaf = %+v\nwant %+v", pass, i, ev.GetId(), got, want)
			}
		}
	}
}

// TestInternerCollisions: with more distinct values than slots, so that
// values overwrite each other, every value handed out equals its bytes.
func TestInternerCollisions(t *testing.T) {
	in := &interner{}
	for round := range 3 {
		for i := range 3 * internSlots {
			b := fmt.Appendf(nil, "value-%d", i%(2*internSlots+round))
			if got := in.str(b); got != string(b) {
				t.Fatalf("round %d: str(%q) = %q", round, b, got)
			}
		}
	}
	long := bytes.Repeat([]byte("x"), internMaxLen+1)
	if got := in.str(long); got != string(long) {
		t.Fatalf("str of a long value = %q", got)
	}
	var none *interner
	if got := none.str([]byte("a")); got != "a" {
		t.Fatalf("nil interner: str = %q", got)
	}
}

func TestDecodeLeafRefusesBadInput(t *testing.T) {
	good := encodeLeaf(t, &pb.Event{Id: "a", Type: "grant.activated"})
	for _, tc := range []struct {
		name string
		leaf []byte
	}{
		{"truncated", good[:len(good)-1]},
		{"bad tag", []byte{0x00}},
		{"invalid UTF-8 in id", []byte{0x0a, 0x04, 0x0a, 0x02, 0xff, 0xfe}},
	} {
		var e Event
		if err := decodeLeaf(&e, 7, tc.leaf); err == nil {
			t.Errorf("decodeLeaf(%s) = nil error, want one", tc.name)
		}
		if _, err := reference(tc.leaf, 7); err == nil {
			t.Errorf("%s: proto.Unmarshal accepts it, so the test case is wrong", tc.name)
		}
	}
}

// FuzzDecodeLeaf: on any input, decodeLeaf and event.DecodeLeaf+fillEvent
// agree on whether it is valid and, when it is, on every field.
func FuzzDecodeLeaf(f *testing.F) {
	mfa := true
	for _, ev := range []*pb.Event{
		{Id: "e1", Type: "session.started", Time: timestamppb.Now(), Mfa: &mfa, Subject: &pb.Identity{Id: "u", Kind: "human"}},
		{Id: "e2", Attributes: map[string]string{"k": "v"}, Entitlement: &pb.Entitlement{Id: "x", Privileged: true}},
	} {
		f.Add(encodeLeaf(f, ev))
	}
	f.Fuzz(func(t *testing.T, leaf []byte) {
		want, werr := reference(leaf, 1)
		// proto.Unmarshal may leave an empty, non-nil attributes map behind
		// a map field of the wrong wire type; empty is empty.
		if len(want.Attributes) == 0 {
			want.Attributes = nil
		}
		interned := &leafVisitor{in: &interner{}}
		for pass := range 3 { // alone, then interned twice (the second reuses)
			var got Event
			var gerr error
			if pass == 0 {
				gerr = decodeLeaf(&got, 1, leaf)
			} else {
				gerr = decodeLeafWith(interned, &got, 1, leaf)
			}
			if (werr == nil) != (gerr == nil) {
				t.Fatalf("pass %d: proto.Unmarshal error %v, decodeLeaf error %v", pass, werr, gerr)
			}
			if werr == nil && !reflect.DeepEqual(got, want) {
				t.Fatalf("pass %d: decodeLeaf = %+v\nwant %+v", pass, got, want)
			}
		}
	})
}

// leafChains serves chains as ledger leaves, as the server does.
type leafChains map[string][]Entry

func (m leafChains) Chain(_ context.Context, s string) ([]Entry, error) { return m[s], nil }

// orgChains splits events (their index in the log is their position) into
// chains per subject, decoded and as leaves, with the subjects in order of
// first appearance.
func orgChains(t testing.TB, events []*pb.Event) (subjects []string, decoded, leaves leafChains) {
	t.Helper()
	decoded, leaves = leafChains{}, leafChains{}
	for i, ev := range events {
		s := ev.GetSubject().GetId()
		if _, ok := decoded[s]; !ok {
			subjects = append(subjects, s)
		}
		decoded[s] = append(decoded[s], Entry{Index: uint64(i), Event: ev})
		leaves[s] = append(leaves[s], Entry{Index: uint64(i), Leaf: encodeLeaf(t, ev)})
	}
	return subjects, decoded, leaves
}

// TestEvaluateFromLeaves: the catalog over leaves finds exactly what it finds
// over decoded events.
func TestEvaluateFromLeaves(t *testing.T) {
	org, err := synth.Generate(synth.Config{Seed: 5, Identities: 80, FailureRate: 0.2})
	if err != nil {
		t.Fatal(err)
	}
	params, err := ParseParams("sod.yaml", org.ParamsYAML())
	if err != nil {
		t.Fatal(err)
	}
	builtin, err := Builtin()
	if err != nil {
		t.Fatal(err)
	}
	set, err := NewSet(builtin, params)
	if err != nil {
		t.Fatal(err)
	}
	subjects, decoded, leaves := orgChains(t, org.Events)
	a, err := set.Evaluate(t.Context(), subjects, decoded, org.AsOf)
	if err != nil {
		t.Fatal(err)
	}
	b, err := set.Evaluate(t.Context(), subjects, leaves, org.AsOf)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Findings) == 0 || fmt.Sprint(a.Findings) != fmt.Sprint(b.Findings) || fmt.Sprint(a.Errors) != fmt.Sprint(b.Errors) {
		t.Errorf("findings from leaves differ from findings from events:\n%v\n%v", b.Findings, a.Findings)
	}

	// A leaf that does not decode fails the evaluation, naming the subject.
	leaves[subjects[0]] = append(leaves[subjects[0]], Entry{Index: 99999, Leaf: []byte{0x0a, 0x05}})
	if _, err := set.Evaluate(t.Context(), subjects, leaves, org.AsOf); err == nil {
		t.Error("Evaluate over a corrupt leaf = nil error, want one")
	}
}

// TestInternerEveryLength: values of every length the interner keeps (and
// one past it), differing only in one byte at every position, come back
// equal to their bytes, both when new and when found in the table; and the
// per-field last value a leafVisitor keeps never hands out a stale string.
func TestInternerEveryLength(t *testing.T) {
	in := &interner{}
	for n := 0; n <= internMaxLen+1; n++ {
		for pos := range n {
			for _, c := range []byte{'a', 'b', 0xc3} {
				b := bytes.Repeat([]byte{'x'}, n)
				b[pos] = c
				for range 2 {
					if got := in.str(b); got != string(b) {
						t.Fatalf("str(%q) = %q", b, got)
					}
				}
			}
		}
	}
	v := &leafVisitor{in: in}
	var e Event
	v.e = &e
	for _, s := range []string{"a", "a", "b", "", "b", "", "", "c", "c"} {
		v.String(event.SubjectID, []byte(s))
		v.String(event.Type, []byte(s+s))
		if e.Subject.ID != s || e.Type != s+s {
			t.Fatalf("after %q: subject.id %q, type %q", s, e.Subject.ID, e.Type)
		}
	}
}
