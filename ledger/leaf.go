package ledger

import (
	"crypto/sha256"
	"fmt"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// EncodeLeaf returns the leaf bytes of ev observed at t: the deterministic
// protobuf encoding of pb.Entry{Event: ev, ObservedTime: t}.
func EncodeLeaf(ev *pb.Event, observed time.Time) ([]byte, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(&pb.Entry{Event: ev, ObservedTime: timestamppb.New(observed)})
	if err != nil {
		return nil, fmt.Errorf("encoding leaf: %w", err)
	}
	return b, nil
}

// LeafHash is the RFC 6962 leaf hash SHA-256(0x00 || leaf).
func LeafHash(leaf []byte) [32]byte {
	return [32]byte(hasher.HashLeaf(leaf))
}

// DecodeLeaf decodes leaf bytes into an Entry.
func DecodeLeaf(leaf []byte) (*pb.Entry, error) {
	e := new(pb.Entry)
	if err := proto.Unmarshal(leaf, e); err != nil {
		return nil, fmt.Errorf("decoding leaf: %w", err)
	}
	return e, nil
}

// DedupeKey is the idempotency key of an event: SHA-256 of
// source.system, a zero byte, and id.
func DedupeKey(system, id string) [32]byte {
	h := sha256.New()
	h.Write([]byte(system))
	h.Write([]byte{0})
	h.Write([]byte(id))
	return [32]byte(h.Sum(nil))
}

// maxLeafOverhead bounds what the Entry wrapper adds to the event encoding:
// two tags, a length of at most 3 bytes for the event (MaxLeafSize < 2^21),
// a 1-byte length and a Timestamp of at most 11+6 bytes.
const maxLeafOverhead = 1 + 3 + 1 + 1 + 17

// prepared is an event encoded outside the sequencer.
type prepared struct {
	event   []byte // deterministic encoding of the Event
	dedupe  [32]byte
	subject string
}

// prepare encodes ev and checks its size; i is its position for messages.
func prepare(i int, ev *pb.Event) (prepared, error) {
	if ev == nil {
		return prepared{}, fmt.Errorf("event %d is nil: send an event", i)
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(ev)
	if err != nil {
		return prepared{}, fmt.Errorf("event %d (id %q): encoding: %w", i, ev.GetId(), err)
	}
	if n := len(b) + maxLeafOverhead; n > MaxLeafSize {
		return prepared{}, fmt.Errorf("event %d (id %q) encodes to %d bytes, over the %d-byte leaf limit; shorten its reason or attributes: %w",
			i, ev.GetId(), n, MaxLeafSize, ErrTooLarge)
	}
	return prepared{
		event:   b,
		dedupe:  DedupeKey(ev.GetSource().GetSystem(), ev.GetId()),
		subject: ev.GetSubject().GetId(),
	}, nil
}

// encodeTimestamp is the deterministic encoding of a Timestamp for t.
func encodeTimestamp(t time.Time) []byte {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(timestamppb.New(t))
	if err != nil {
		panic(err) // a Timestamp always encodes
	}
	return b
}

// appendLeaf appends the leaf for an already encoded event and observed
// timestamp: byte-for-byte what EncodeLeaf produces, because a deterministic
// encoding of a message is its fields in number order, each submessage
// being its own deterministic encoding behind a tag and length.
func appendLeaf(dst, event, observed []byte) []byte {
	dst = protowire.AppendTag(dst, 1, protowire.BytesType)
	dst = protowire.AppendBytes(dst, event)
	dst = protowire.AppendTag(dst, 2, protowire.BytesType)
	return protowire.AppendBytes(dst, observed)
}
