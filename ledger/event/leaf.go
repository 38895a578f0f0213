package event

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// ErrMalformedLeaf is the class of every error decoding a leaf (errors.Is).
var ErrMalformedLeaf = errors.New("malformed leaf")

// EncodeLeaf returns the leaf bytes of ev observed at t: the deterministic
// protobuf encoding of pb.Entry{Event: ev, ObservedTime: t}.
func EncodeLeaf(ev *pb.Event, observed time.Time) ([]byte, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(&pb.Entry{Event: ev, ObservedTime: timestamppb.New(observed)})
	if err != nil {
		return nil, fmt.Errorf("encoding leaf: %w", err)
	}
	return b, nil
}

// errNoEvent is the error of a leaf without an event or map root, which
// the log never writes.
var errNoEvent = fmt.Errorf("%w: the leaf holds no event", ErrMalformedLeaf)

// errBoth is the error of a leaf holding both an event and a map root,
// which the log never writes.
var errBoth = fmt.Errorf("%w: the leaf holds both an event and a map root", ErrMalformedLeaf)

// ErrMapLeaf is what DecodeLeaf and VisitLeaf return for a map leaf: a
// valid leaf, written by a log with a subject map (docs/completeness.md),
// that holds the subject map's root instead of an event. It does not match
// ErrMalformedLeaf. Readers of events skip it (it has no subject and is in
// no chain); DecodeMapLeaf reads it.
var ErrMapLeaf = errors.New("the leaf is a subject-map leaf, not an event")

// DecodeLeaf decodes leaf bytes into an Entry (proto.Unmarshal, keeping
// unknown fields); a leaf must hold an event, or be a map leaf, for which it
// returns ErrMapLeaf. VisitLeaf reads the same fields without building
// messages.
func DecodeLeaf(leaf []byte) (*pb.Entry, error) {
	e := new(pb.Entry)
	if err := proto.Unmarshal(leaf, e); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedLeaf, err)
	}
	switch {
	case e.GetEvent() != nil && e.MapRoot != nil:
		return nil, errBoth
	case e.MapRoot != nil:
		return nil, ErrMapLeaf
	case e.GetEvent() == nil:
		return nil, errNoEvent
	}
	return e, nil
}

// EncodeMapLeaf returns the leaf bytes of a map leaf at index covers holding
// the subject map's root over the leaves [0, covers): the deterministic
// encoding of pb.Entry{MapRoot: {Root: root, Covers: covers}}.
func EncodeMapLeaf(root [32]byte, covers uint64) []byte {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(&pb.Entry{MapRoot: &pb.MapRoot{Root: root[:], Covers: covers}})
	if err != nil {
		panic(err) // a MapRoot always encodes
	}
	return b
}

// DecodeMapLeaf decodes a map leaf: its root and the index it covers up to
// (its own index). It refuses, with an error matching ErrMalformedLeaf, a
// leaf that is not exactly what EncodeMapLeaf writes (an event leaf, an
// observed time, unknown fields, a root that is not 32 bytes).
func DecodeMapLeaf(leaf []byte) (root [32]byte, covers uint64, err error) {
	e := new(pb.Entry)
	if err := proto.Unmarshal(leaf, e); err != nil {
		return root, 0, fmt.Errorf("%w: %w", ErrMalformedLeaf, err)
	}
	m := e.GetMapRoot()
	if m == nil || e.Event != nil {
		return root, 0, fmt.Errorf("%w: not a map leaf (it holds an event or no map root)", ErrMalformedLeaf)
	}
	if len(m.GetRoot()) != 32 {
		return root, 0, fmt.Errorf("%w: map leaf root has %d bytes, want 32", ErrMalformedLeaf, len(m.GetRoot()))
	}
	if again := EncodeMapLeaf([32]byte(m.GetRoot()), m.GetCovers()); string(again) != string(leaf) {
		return root, 0, fmt.Errorf("%w: map leaf is not in its one deterministic encoding (extra or unknown fields)", ErrMalformedLeaf)
	}
	return [32]byte(m.GetRoot()), m.GetCovers(), nil
}

// LeafOverhead bounds what the Entry wrapper adds to an event's encoding:
// two tags, a length of at most 3 bytes for the event (MaxLeafBytes < 2^21),
// a 1-byte length and a Timestamp of at most 11+6 bytes.
const LeafOverhead = 1 + 3 + 1 + 1 + ObservedRoom

// ObservedRoom is the most bytes the observed-time field adds to a leaf: a
// tag, a 1-byte length and a Timestamp of at most 11+6 bytes.
const ObservedRoom = 1 + 1 + 17

// EventSize is the size of ev's deterministic encoding. EventSize+LeafOverhead
// bounds the size of ev's leaf.
func EventSize(ev *pb.Event) int {
	if wireable(ev) {
		return wireSize(ev)
	}
	// The order of map entries does not change the size.
	return proto.MarshalOptions{}.Size(ev)
}

// leafOptions returns the marshal options of ev's leaf encoding when the
// hand-written encoder (wire.go) does not apply. In the protobuf runtime the
// module pins, Deterministic changes one thing: map entries are sorted by
// key (through reflection, the costly part of encoding an event). An
// event's one map is its attributes, so with at most one attribute the plain
// encoding is the deterministic one; TestStartLeafFastPathDeterministic
// holds this to EncodeLeaf.
func leafOptions(ev *pb.Event) proto.MarshalOptions {
	return proto.MarshalOptions{Deterministic: len(ev.GetAttributes()) > 1}
}

// StartLeaf is the first half of EncodeLeaf, for a caller (the sequencer)
// that encodes events before it knows their observed time: it returns prefix
// followed by the leaf's first field — the deterministic encoding of ev
// behind its tag and length — with spare capacity for FinishLeaf. size is
// EventSize(ev), called just before with no change to ev in between.
func StartLeaf(prefix []byte, ev *pb.Event, size int) ([]byte, error) {
	b := leafHead(prefix, size)
	head := len(b)
	ok := false
	if wireable(ev) {
		b, ok = appendWire(b, ev)
	}
	if !ok {
		var err error
		if b, err = leafOptions(ev).MarshalAppend(b, ev); err != nil {
			return nil, fmt.Errorf("encoding event: %w", err)
		}
	}
	if err := checkLeafSize(b, head, size); err != nil {
		return nil, err
	}
	return b, nil
}

// leafHead is the start of StartLeaf's result: prefix, then the tag and
// length of the leaf's first field, an encoded event of size bytes, with
// room for that event and FinishLeaf.
func leafHead(prefix []byte, size int) []byte {
	b := make([]byte, 0, len(prefix)+1+protowire.SizeVarint(uint64(size))+size+ObservedRoom)
	b = append(b, prefix...)
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	return protowire.AppendVarint(b, uint64(size))
}

// checkLeafSize reports an event whose encoding, appended to the first head
// bytes of b, is not the size it was measured at before.
func checkLeafSize(b []byte, head, size int) error {
	if len(b)-head != size {
		return fmt.Errorf("event changed while being encoded (%d bytes, then %d); do not modify events during Append", size, len(b)-head)
	}
	return nil
}

// EncodeTimestamp is the deterministic encoding of a Timestamp for t, the
// observed argument of FinishLeaf.
func EncodeTimestamp(t time.Time) []byte {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(timestamppb.New(t))
	if err != nil {
		panic(err) // a Timestamp always encodes
	}
	return b
}

// FinishLeaf completes a StartLeaf result with the encoded observed time: the
// bytes after the prefix are then byte-for-byte what EncodeLeaf produces,
// because a deterministic encoding of a message is its fields in number
// order, each submessage its own deterministic encoding behind a tag and
// length. It writes into start's spare capacity, so it is called once per
// StartLeaf.
func FinishLeaf(start, observed []byte) []byte {
	b := protowire.AppendTag(start, 2, protowire.BytesType)
	return protowire.AppendBytes(b, observed)
}
