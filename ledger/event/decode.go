package event

import (
	"unicode/utf8"
	"weak"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// UnmarshalBatch is a hand-written decoder for the append requests, the
// bulk of what the server decodes (docs/BENCHMARKS.md, "End to end", round
// 4). data is the encoding of a message whose only fields are a uint64 at
// field number seqNum (0: the message has none) and a repeated Event at
// evNum: AppendStreamRequest is (1, 2), AppendRequest (0, 1).
//
// It decodes the common shape of such a request and nothing else: known
// fields with their own wire types, each singular field at most once per
// message, strings valid UTF-8, map entries holding only a key and a
// value. On anything else — a malformed encoding, an unknown field, a
// field repeated (which the runtime merges or overwrites), invalid UTF-8 —
// it returns ok false, and the caller decodes with proto.Unmarshal, whose
// result or error is then the answer. When ok, the events are exactly what
// proto.Unmarshal builds (proto.Equal; TestUnmarshalBatchIsProtoUnmarshal
// and FuzzUnmarshalBatch): only their allocation differs. The messages of
// a batch come from a few slabs, and each event's strings share one
// allocation, a copy of that event's bytes (data itself is not retained):
// keeping any part of an event keeps that event's bytes, no more.
func UnmarshalBatch(data []byte, seqNum, evNum protowire.Number) (seq uint64, evs []*pb.Event, ok bool) {
	seq, evs, _, ok = DecodeBatch(data, seqNum, evNum)
	return seq, evs, ok
}

// DecodeBatch is UnmarshalBatch, also returning what it knows of the
// events (nil when there are none): that they hold no unknown fields and
// only valid UTF-8, and, for each event whose bytes were its deterministic
// encoding (fields in number order, each in its one shortest encoding,
// nothing the encoder leaves out, map entries sorted by key: what
// MarshalBatch, StartLeaf and proto.MarshalOptions{Deterministic: true}
// write), those bytes, the copy its strings share. Decoded.Batch joins it
// with the events again, and the Batch then encodes their leaves by
// copying those bytes (TestDecodeBatchKeepsTheEncoding and
// FuzzUnmarshalBatch hold them to the runtime's encoding).
func DecodeBatch(data []byte, seqNum, evNum protowire.Number) (seq uint64, evs []*pb.Event, dec *Decoded, ok bool) {
	// First pass: the top level, counting events.
	n, seenSeq := 0, false
	for b := data; len(b) > 0; {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return 0, nil, nil, false
		}
		b = b[l:]
		switch {
		case num == evNum && typ == protowire.BytesType:
			_, l := consumeBytes(b)
			if l < 0 {
				return 0, nil, nil, false
			}
			b = b[l:]
			n++
		case seqNum != 0 && num == seqNum && typ == protowire.VarintType && !seenSeq:
			v, l := protowire.ConsumeVarint(b)
			if l < 0 {
				return 0, nil, nil, false
			}
			b = b[l:]
			seq, seenSeq = v, true
		default:
			return 0, nil, nil, false
		}
	}
	if n == 0 {
		return seq, nil, nil, true
	}
	d := &batchDecoder{n: n}
	evs = make([]*pb.Event, 0, n)
	dec = &Decoded{n: n, wire: make([]string, n), plain: make([]bool, n)}
	slab := make([]pb.Event, n)
	for b := data; len(b) > 0; {
		num, _, l := protowire.ConsumeTag(b)
		b = b[l:]
		if num != evNum {
			_, l = protowire.ConsumeVarint(b)
			b = b[l:]
			continue
		}
		v, l := consumeBytes(b)
		b = b[l:]
		ev := &slab[len(evs)]
		if !d.event(ev, v) {
			return 0, nil, nil, false
		}
		if d.canon {
			dec.wire[len(evs)] = d.s
		}
		dec.plain[len(evs)] = true
		evs = append(evs, ev)
	}
	dec.first = weak.Make(evs[0])
	return seq, evs, dec, true
}

// batchDecoder hands out the messages of one batch from slabs of n, made
// on first use, and the strings of the event being decoded.
type batchDecoder struct {
	n     int
	times []timestamppb.Timestamp
	srcs  []pb.Source
	ids   []pb.Identity
	ents  []pb.Entitlement
	refs  []pb.Refs
	// s is the event being decoded as a string and end the capacity of
	// its bytes: every field's bytes are a sub-slice of them, re-sliced
	// without a capacity bound (consumeBytes), so a sub-slice x starts at
	// end-cap(x) in s.
	s   string
	end int
	// canon is whether the event being decoded is, so far, in its
	// deterministic encoding; key is its last attribute key so far (the
	// entries of that encoding are sorted by key) and keyed whether it has
	// one.
	canon bool
	key   string
	keyed bool
}

// take returns the next element of *slab, making a slab of n when it is
// used up (each singular field is decoded at most once per event, so a
// batch needs at most 2n timestamps and identities, n of the others).
// (Slabs of at most 64, for the allocator's per-core caches, cost ~15%
// more CPU in BenchmarkUnmarshalBatch: docs/BENCHMARKS.md, round 6.)
func take[T any](slab *[]T, n int) *T {
	if len(*slab) == 0 {
		*slab = make([]T, n)
	}
	p := &(*slab)[0]
	*slab = (*slab)[1:]
	return p
}

// str returns x, a sub-slice of the event being decoded, as a part of
// d.s; false if it is not valid UTF-8.
func (d *batchDecoder) str(x []byte) (string, bool) {
	if len(x) == 0 {
		return "", true
	}
	off := d.end - cap(x)
	s := d.s[off : off+len(x)]
	return s, utf8.ValidString(s)
}

// consumeBytes is protowire.ConsumeBytes, with the value's capacity running
// to the end of b's, which batchDecoder.str relies on. protowire's own
// slices the same way today but does not document it, so this package
// keeps its own copy rather than depend on that detail.
func consumeBytes(b []byte) ([]byte, int) {
	m, n := protowire.ConsumeVarint(b)
	if n < 0 {
		return nil, n
	}
	if m > uint64(len(b)-n) {
		return nil, -1
	}
	return b[n : n+int(m)], n + int(m)
}

// field reads one field's tag and, for the two wire types the schema
// uses, its value: v for a varint, x for bytes. ok false on a malformed
// field or another wire type. A tag, varint or length in more bytes than
// its shortest encoding clears d.canon.
func (d *batchDecoder) field(b []byte) (num protowire.Number, typ protowire.Type, v uint64, x, rest []byte, ok bool) {
	num, typ, l := protowire.ConsumeTag(b)
	if l < 0 {
		return 0, 0, 0, nil, nil, false
	}
	if l != protowire.SizeTag(num) {
		d.canon = false
	}
	b = b[l:]
	switch typ {
	case protowire.VarintType:
		v, l = protowire.ConsumeVarint(b)
		if l > 0 && l != protowire.SizeVarint(v) {
			d.canon = false
		}
	case protowire.BytesType:
		x, l = consumeBytes(b)
		if l > 0 && l != protowire.SizeBytes(len(x)) {
			d.canon = false
		}
	default:
		return 0, 0, 0, nil, nil, false
	}
	if l < 0 {
		return 0, 0, 0, nil, nil, false
	}
	return num, typ, v, x, b[l:], true
}

// order clears d.canon unless field num comes after prev, which it then
// becomes: the deterministic encoding writes fields in number order.
func (d *batchDecoder) order(prev *protowire.Number, num protowire.Number) {
	if num <= *prev {
		d.canon = false
	}
	*prev = num
}

// once marks field num seen in *seen and reports whether it was not
// seen before (field numbers below 64).
func once(seen *uint64, num protowire.Number) bool {
	bit := uint64(1) << uint(num)
	if *seen&bit != 0 {
		return false
	}
	*seen |= bit
	return true
}

// strings decodes a message whose fields are all strings, numbered 1 to
// len(dst), into dst (proto3 strings: the deterministic encoding leaves an
// empty one out).
func (d *batchDecoder) strings(b []byte, dst ...*string) bool {
	_, ok := d.stringFields(b, false, dst...)
	return ok
}

// stringFields is strings, also returning the number of fields decoded;
// with empties, an empty string is as its deterministic encoding writes
// it (a map entry's key and value).
func (d *batchDecoder) stringFields(b []byte, empties bool, dst ...*string) (int, bool) {
	var seen uint64
	var prev protowire.Number
	n := 0
	for len(b) > 0 {
		num, typ, _, x, rest, ok := d.field(b)
		if !ok || typ != protowire.BytesType || num < 1 || int(num) > len(dst) || !once(&seen, num) {
			return 0, false
		}
		d.order(&prev, num)
		if len(x) == 0 && !empties {
			d.canon = false
		}
		if *dst[num-1], ok = d.str(x); !ok {
			return 0, false
		}
		b = rest
		n++
	}
	return n, true
}

func (d *batchDecoder) timestamp(b []byte) (*timestamppb.Timestamp, bool) {
	t := take(&d.times, 2*d.n)
	var seen uint64
	var prev protowire.Number
	for len(b) > 0 {
		num, typ, v, _, rest, ok := d.field(b)
		if !ok || typ != protowire.VarintType || num < 1 || num > 2 || !once(&seen, num) {
			return nil, false
		}
		d.order(&prev, num)
		if num == 1 {
			t.Seconds = int64(v)
		} else {
			t.Nanos = int32(v)
			// The encoder writes nanos sign-extended to 64 bits.
			if v != uint64(int64(t.Nanos)) {
				d.canon = false
			}
		}
		if v == 0 {
			d.canon = false
		}
		b = rest
	}
	return t, true
}

func (d *batchDecoder) identity(b []byte) (*pb.Identity, bool) {
	id := take(&d.ids, 2*d.n)
	return id, d.strings(b, &id.Id, &id.Kind, &id.Display, &id.OwnerId)
}

func (d *batchDecoder) entitlement(b []byte) (*pb.Entitlement, bool) {
	e := take(&d.ents, d.n)
	var seen uint64
	var prev protowire.Number
	for len(b) > 0 {
		num, typ, v, x, rest, ok := d.field(b)
		if !ok || !once(&seen, num) {
			return nil, false
		}
		d.order(&prev, num)
		if (typ == protowire.BytesType && len(x) == 0) || (typ == protowire.VarintType && v != 1) {
			d.canon = false // an empty string or a false is left out, a true is 1
		}
		switch {
		case num == 1 && typ == protowire.BytesType:
			e.Id, ok = d.str(x)
		case num == 2 && typ == protowire.BytesType:
			e.Resource, ok = d.str(x)
		case num == 3 && typ == protowire.VarintType:
			e.Privileged = v != 0
		default:
			return nil, false
		}
		if !ok {
			return nil, false
		}
		b = rest
	}
	return e, true
}

// entry decodes one attributes map entry into m: a key and a value, either
// absent meaning "".
func (d *batchDecoder) entry(b []byte, m map[string]string) bool {
	var k, v string
	n, ok := d.stringFields(b, true, &k, &v)
	if !ok {
		return false
	}
	// The deterministic encoding writes the key, then the value, both
	// even when empty (their order is checked with the rest), and the
	// entries in increasing key order.
	if n != 2 || (d.keyed && k <= d.key) {
		d.canon = false
	}
	d.key, d.keyed = k, true
	m[k] = v
	return true
}

// event decodes one event from eb, and d.canon reports whether eb is its
// deterministic encoding.
func (d *batchDecoder) event(ev *pb.Event, eb []byte) bool {
	d.s, d.end = string(eb), cap(eb)
	d.canon, d.keyed = true, false
	var seen uint64
	var prev protowire.Number
	for b := eb; len(b) > 0; {
		num, typ, v, x, rest, ok := d.field(b)
		if !ok || (num != 13 && !once(&seen, num)) {
			return false
		}
		if num != 13 || prev != 13 {
			d.order(&prev, num) // entries (13) in a row: entry checks their order
		}
		isBytes := typ == protowire.BytesType
		switch {
		case isBytes && (num <= 2 || num == 10):
			if len(x) == 0 {
				d.canon = false // an empty string is left out
			}
		case num == 11 && v > 1, num == 12 && v != 1:
			d.canon = false // mfa (optional) is written as set, breakglass only when true, as 0 or 1
		}
		switch {
		case num == 1 && isBytes:
			ev.Id, ok = d.str(x)
		case num == 2 && isBytes:
			ev.Type, ok = d.str(x)
		case num == 3 && isBytes:
			ev.Time, ok = d.timestamp(x)
		case num == 4 && isBytes:
			s := take(&d.srcs, d.n)
			ev.Source, ok = s, d.strings(x, &s.System, &s.Product, &s.Tenant, &s.RawType, &s.RawId)
		case num == 5 && isBytes:
			ev.Subject, ok = d.identity(x)
		case num == 6 && isBytes:
			ev.Actor, ok = d.identity(x)
		case num == 7 && isBytes:
			ev.Entitlement, ok = d.entitlement(x)
		case num == 8 && isBytes:
			r := take(&d.refs, d.n)
			ev.Refs, ok = r, d.strings(x, &r.Request, &r.Grant, &r.Session, &r.Credential, &r.Review, &r.Ticket)
		case num == 9 && isBytes:
			ev.ExpiresAt, ok = d.timestamp(x)
		case num == 10 && isBytes:
			ev.Reason, ok = d.str(x)
		case num == 11 && !isBytes:
			mfa := v != 0
			ev.Mfa = &mfa
		case num == 12 && !isBytes:
			ev.Breakglass = v != 0
		case num == 13 && isBytes:
			if ev.Attributes == nil {
				ev.Attributes = make(map[string]string, 1)
			}
			ok = d.entry(x, ev.Attributes)
		default:
			return false
		}
		if !ok {
			return false
		}
		b = rest
	}
	return true
}
