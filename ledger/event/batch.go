package event

import (
	"time"
	"weak"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// Batch is the events of one append request on their way into the log,
// with what is already known of each, so that each is checked and encoded
// once (docs/BENCHMARKS.md, "End to end", round 6): DecodeBatch knows the
// bytes it decoded an event from (and, when they are the event's
// deterministic encoding, keeps them as the event's encoding), and that it
// has no unknown fields and only valid UTF-8; Validate knows the same of
// the events it passed. EventSize and StartLeaf then encode from that
// instead of checking and encoding the event again, with the same result as
// the package functions of those names (the tests hold them to the
// runtime's encoding). The events must not change once in a Batch. A Batch
// is not safe for concurrent use while Validate runs; after it, every
// method only reads.
type Batch struct {
	evs []*pb.Event
	// wire is, per event, its deterministic encoding when the decoder saw
	// it in exactly that encoding, else "". nil: none known.
	wire []string
	// plain is, per event, whether it is known to hold no unknown fields
	// and only valid UTF-8 strings, so that the hand-written encoder
	// applies without its checks. nil: none known.
	plain []bool
}

// NewBatch is a Batch of evs about which nothing is known yet.
func NewBatch(evs []*pb.Event) *Batch { return &Batch{evs: evs} }

// Events returns the batch's events, which the caller must not change.
func (b *Batch) Events() []*pb.Event { return b.evs }

// Len is the number of events.
func (b *Batch) Len() int { return len(b.evs) }

// Validate is ValidateBatch(field, b.Events(), now): the same checks, the
// same errors. An event the decoder already knows to hold no unknown fields
// is not searched for them again, and the others that pass are recorded as
// such for the encoder.
func (b *Batch) Validate(field string, now time.Time) error {
	if err := checkCount(field, len(b.evs)); err != nil {
		return err
	}
	if b.plain == nil {
		b.plain = make([]bool, len(b.evs))
	}
	for i, ev := range b.evs {
		plain, err := validate(ev, now, b.plain[i])
		if err != nil {
			return batchError(field, i, err)
		}
		b.plain[i] = plain
	}
	return nil
}

// EventSize is EventSize(b.Events()[i]).
func (b *Batch) EventSize(i int) int {
	switch {
	case b.wire != nil && b.wire[i] != "":
		return len(b.wire[i])
	case b.plain != nil && b.plain[i]:
		return wireSize(b.evs[i])
	}
	return EventSize(b.evs[i])
}

// StartLeaf is StartLeaf(prefix, b.Events()[i], size), size being
// b.EventSize(i): the bytes the decoder kept when they are the event's
// encoding, else the event encoded without the checks its Batch already
// made, else StartLeaf itself.
func (b *Batch) StartLeaf(prefix []byte, i, size int) ([]byte, error) {
	plain := b.plain != nil && b.plain[i]
	w := ""
	if b.wire != nil {
		w = b.wire[i]
	}
	if w == "" && !plain {
		return StartLeaf(prefix, b.evs[i], size)
	}
	out := leafHead(prefix, size)
	head := len(out)
	if w != "" {
		out = append(out, w...)
	} else {
		out = appendFields(out, b.evs[i])
	}
	if err := checkLeafSize(out, head, size); err != nil {
		return nil, err
	}
	return out, nil
}

// Decoded is what DecodeBatch knows of the events it decoded, without the
// events (it does not keep them alive): a transport that hands the events
// on as a message keeps it beside them and joins the two again with Batch.
type Decoded struct {
	first weak.Pointer[pb.Event]
	n     int
	wire  []string
	plain []bool
}

// Batch joins d with the events it was decoded with: nil when evs are not
// those events (another message's, or none).
func (d *Decoded) Batch(evs []*pb.Event) *Batch {
	if d == nil || len(evs) != d.n || d.n == 0 || weak.Make(evs[0]) != d.first {
		return nil
	}
	return &Batch{evs: evs, wire: d.wire, plain: d.plain}
}

// Key is the key under which a transport finds d again from the events it
// was decoded with (weak: it does not keep them alive); KeyOf(evs) is the
// same key. The zero Pointer for an empty batch.
func (d *Decoded) Key() weak.Pointer[pb.Event] { return d.first }

// KeyOf is the key of the Decoded of evs (see Decoded.Key).
func KeyOf(evs []*pb.Event) weak.Pointer[pb.Event] {
	if len(evs) == 0 {
		return weak.Pointer[pb.Event]{}
	}
	return weak.Make(evs[0])
}
