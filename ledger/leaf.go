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
	var buf [128]byte // stays on the stack for the usual short system and id
	b := append(append(append(buf[:0], system...), 0), id...)
	return sha256.Sum256(b)
}

// maxLeafOverhead bounds what the Entry wrapper adds to the event encoding:
// two tags, a length of at most 3 bytes for the event (MaxLeafSize < 2^21),
// a 1-byte length and a Timestamp of at most 11+6 bytes.
const maxLeafOverhead = 1 + 3 + 1 + 1 + 17

// prepared is an event encoded outside the sequencer.
type prepared struct {
	// leaf is 0x00 (the RFC 6962 leaf prefix) and the leaf's first field,
	// the encoded Event behind its tag and length, with spare capacity for
	// the observed time, which the sequencer appends in place (appendObserved).
	leaf    []byte
	dedupe  [32]byte
	subject string
}

// observedRoom is the most bytes the observed-time field adds to a leaf: a
// tag, a 1-byte length and a Timestamp of at most 11+6 bytes.
const observedRoom = 1 + 1 + 17

// prepare encodes ev and checks its size; i is its position for messages.
func prepare(i int, ev *pb.Event) (prepared, error) {
	if ev == nil {
		return prepared{}, fmt.Errorf("event %d is nil: send an event", i)
	}
	n := proto.MarshalOptions{Deterministic: true}.Size(ev)
	if n+maxLeafOverhead > MaxLeafSize {
		return prepared{}, fmt.Errorf("event %d (id %q) encodes to %d bytes, over the %d-byte leaf limit; shorten its reason or attributes: %w",
			i, ev.GetId(), n+maxLeafOverhead, MaxLeafSize, ErrTooLarge)
	}
	b := make([]byte, 0, 2+protowire.SizeVarint(uint64(n))+n+observedRoom)
	b = append(b, 0x00)
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(n))
	head := len(b)
	// Size above cached the sizes of ev and its sub-messages.
	b, err := proto.MarshalOptions{Deterministic: true, UseCachedSize: true}.MarshalAppend(b, ev)
	if err != nil {
		return prepared{}, fmt.Errorf("event %d (id %q): encoding: %w", i, ev.GetId(), err)
	}
	if len(b)-head != n {
		return prepared{}, fmt.Errorf("event %d (id %q) changed while being encoded (%d bytes, then %d); do not modify events during Append", i, ev.GetId(), n, len(b)-head)
	}
	return prepared{
		leaf:    b,
		dedupe:  DedupeKey(ev.GetSource().GetSystem(), ev.GetId()),
		subject: ev.GetSubject().GetId(),
	}, nil
}

// event returns the leaf's event field (tag, length, event bytes), which
// appendObserved leaves unchanged.
func (p *prepared) event() []byte { return p.leaf[1:len(p.leaf):len(p.leaf)] }

// encodeTimestamp is the deterministic encoding of a Timestamp for t.
func encodeTimestamp(t time.Time) []byte {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(timestamppb.New(t))
	if err != nil {
		panic(err) // a Timestamp always encodes
	}
	return b
}

// appendObserved completes p's leaf with the encoded observed timestamp and
// returns 0x00 || leaf, the input of the leaf hash: byte-for-byte what
// EncodeLeaf produces behind the prefix, because a deterministic encoding of
// a message is its fields in number order, each submessage being its own
// deterministic encoding behind a tag and length. It writes into p.leaf's
// spare capacity, so it is called once per event.
func (p *prepared) appendObserved(observed []byte) []byte {
	b := protowire.AppendTag(p.leaf, 2, protowire.BytesType)
	return protowire.AppendBytes(b, observed)
}
