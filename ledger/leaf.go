package ledger

import (
	"fmt"

	"github.com/grantline/grantline/ledger/event"
)

// LeafHash is the RFC 6962 leaf hash SHA-256(0x00 || leaf).
func LeafHash(leaf []byte) [32]byte {
	return [32]byte(hasher.HashLeaf(leaf))
}

// prepared is an event encoded outside the sequencer.
type prepared struct {
	// leaf is 0x00 (the RFC 6962 leaf prefix) and the leaf's first field,
	// the encoded Event, with spare capacity for the observed time, which
	// the sequencer appends in place (appendObserved).
	leaf    []byte
	dedupe  [32]byte
	subject string
}

// prepare encodes event i of b and checks its size (i is its position for
// messages): from what b knows of it (event.Batch), with the same result.
func prepare(b *event.Batch, i int) (prepared, error) {
	ev := b.Events()[i]
	if ev == nil {
		return prepared{}, fmt.Errorf("event %d is nil: send an event", i)
	}
	n := b.EventSize(i)
	if n+event.LeafOverhead > MaxLeafSize {
		return prepared{}, fmt.Errorf("event %d (id %q) encodes to %d bytes, over the %d-byte leaf limit; shorten its reason or attributes: %w",
			i, ev.GetId(), n+event.LeafOverhead, MaxLeafSize, ErrTooLarge)
	}
	leaf, err := b.StartLeaf([]byte{0x00}, i, n)
	if err != nil {
		return prepared{}, fmt.Errorf("event %d (id %q): %w", i, ev.GetId(), err)
	}
	return prepared{
		leaf:    leaf,
		dedupe:  event.DedupeKey(ev.GetSource().GetSystem(), ev.GetId()),
		subject: ev.GetSubject().GetId(),
	}, nil
}

// eventField returns the leaf's event field (tag, length, event bytes), which
// appendObserved leaves unchanged.
func (p *prepared) eventField() []byte { return p.leaf[1:len(p.leaf):len(p.leaf)] }

// appendObserved completes p's leaf with the encoded observed timestamp
// (event.EncodeTimestamp) and returns 0x00 || leaf, the input of the leaf
// hash. It writes into p.leaf's spare capacity, so it is called once per
// event.
func (p *prepared) appendObserved(observed []byte) []byte {
	return event.FinishLeaf(p.leaf, observed)
}
