package event

import (
	"encoding/binary"
	"fmt"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// Field names a scalar field of an Entry, as VisitLeaf reports it.
type Field uint8

// The fields of an Entry (proto/grantline/v1/event.proto).
const (
	ID Field = iota + 1
	Type
	Time
	SourceSystem
	SourceProduct
	SourceTenant
	SourceRawType
	SourceRawID
	SubjectID
	SubjectKind
	SubjectDisplay
	SubjectOwnerID
	ActorID
	ActorKind
	ActorDisplay
	ActorOwnerID
	EntitlementID
	EntitlementResource
	EntitlementPrivileged
	RefsRequest
	RefsGrant
	RefsSession
	RefsCredential
	RefsReview
	RefsTicket
	ExpiresAt
	Reason
	MFA
	Breakglass
	ObservedTime
)

// Visitor receives the fields of a leaf from VisitLeaf, in encoding order.
// A field may be reported more than once; as with proto.Unmarshal the last
// report wins. Fields absent from the leaf are not reported.
type Visitor interface {
	// String reports a string field. v is valid UTF-8 and aliases the
	// leaf: copy it (string(v)) to keep it.
	String(f Field, v []byte)
	// Bool reports EntitlementPrivileged, MFA (which is optional: its
	// report means it was recorded) or Breakglass.
	Bool(f Field, v bool)
	// Time reports Time, ExpiresAt or ObservedTime with its value so far,
	// in UTC: repeated occurrences of a timestamp merge field by field.
	Time(f Field, t time.Time)
	// Attribute reports one attributes entry; a later entry with the same
	// key replaces it. key and value alias the leaf.
	Attribute(key, value []byte)
}

// Ignore is a Visitor that ignores every report. A Visitor that wants only
// some reports embeds it and defines just those methods.
type Ignore struct{}

func (Ignore) String(Field, []byte)        {}
func (Ignore) Bool(Field, bool)            {}
func (Ignore) Time(Field, time.Time)       {}
func (Ignore) Attribute(key, value []byte) {}

// Field numbers of Entry, Event and the messages inside it.
const (
	entryEvent, entryObservedTime, entryMapRoot = 1, 2, 3

	evID, evType, evTime, evSource, evSubject, evActor, evEntitlement, evRefs = 1, 2, 3, 4, 5, 6, 7, 8
	evExpiresAt, evReason, evMFA, evBreakglass, evAttributes                  = 9, 10, 11, 12, 13
)

// Field tables of the string fields of the nested messages, by field number.
var (
	sourceFields = [...]Field{1: SourceSystem, SourceProduct, SourceTenant, SourceRawType, SourceRawID}
	subjectField = [...]Field{1: SubjectID, SubjectKind, SubjectDisplay, SubjectOwnerID}
	actorFields  = [...]Field{1: ActorID, ActorKind, ActorDisplay, ActorOwnerID}
	refsFields   = [...]Field{1: RefsRequest, RefsGrant, RefsSession, RefsCredential, RefsReview, RefsTicket}
)

// VisitLeaf decodes a leaf — the protobuf encoding of grantline.v1.Entry —
// reporting its fields to v without building the intermediate protobuf
// messages (for a rules evaluation that decoding was a third of the work).
// It follows proto.Unmarshal's rules (last value wins, repeated
// sub-messages merge, a field with an unexpected wire type is skipped as
// unknown, strings must be valid UTF-8), and like DecodeLeaf refuses a
// leaf without an event (ErrMapLeaf for a map leaf, which v may have seen
// nothing of): it accepts exactly the leaves DecodeLeaf accepts; a fuzz test checks both report the same fields. An
// error matches ErrMalformedLeaf; v may have seen some fields by then.
func VisitLeaf(leaf []byte, v Visitor) error {
	d := decoder{v: v}
	sawMap := false
	err := func() error {
		for b := leaf; len(b) > 0; {
			num, typ, x, rest, err := nextField(b)
			if err != nil {
				return err
			}
			b = rest
			if typ != protowire.BytesType {
				continue
			}
			switch num {
			case entryEvent:
				d.sawEvent = true
				if err := d.event(x); err != nil {
					return err
				}
			case entryObservedTime:
				if err := d.stamp(ObservedTime, &d.observed, x); err != nil {
					return err
				}
			case entryMapRoot:
				// Its fields are not reported, but they must parse, as
				// proto.Unmarshal parses them, for VisitLeaf to refuse
				// what DecodeLeaf refuses.
				sawMap = true
				for m := x; len(m) > 0; {
					_, _, _, rest, err := nextField(m)
					if err != nil {
						return err
					}
					m = rest
				}
			}
		}
		return nil
	}()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrMalformedLeaf, err)
	}
	switch {
	case d.sawEvent && sawMap:
		return errBoth
	case sawMap:
		return ErrMapLeaf
	case !d.sawEvent:
		return errNoEvent
	}
	return nil
}

// decoder holds the timestamps decoded so far, which later occurrences merge
// into.
type decoder struct {
	v                       Visitor
	time, expires, observed stamp
	sawEvent                bool
}

// stamp is a google.protobuf.Timestamp being merged.
type stamp struct{ sec, nsec int64 }

// nextField reads the first field of the message b and returns the rest of
// b after it. For a length-delimited field x is its content, for a varint
// field its encoding; a field of another wire type is consumed with x nil.
// The decoding loops call it in turn rather than taking a callback per
// field, which made VisitLeaf several times slower.
func nextField(b []byte) (num protowire.Number, typ protowire.Type, x, rest []byte, err error) {
	// The usual case first: a one-byte tag of a field numbered 1-15
	// followed by a one-byte length or a one-byte varint. Anything else,
	// including every malformed input, takes the general path below.
	if len(b) >= 2 && b[0] < 0x80 && b[0] >= 8 && b[1] < 0x80 {
		num, typ = protowire.Number(b[0]>>3), protowire.Type(b[0]&7)
		switch typ {
		case protowire.BytesType:
			if end := 2 + int(b[1]); end <= len(b) {
				return num, typ, b[2:end], b[end:], nil
			}
		case protowire.VarintType:
			return num, typ, b[1:2], b[2:], nil
		}
	}
	num, typ, n := protowire.ConsumeTag(b)
	if n < 0 {
		return 0, 0, nil, nil, protowire.ParseError(n)
	}
	if !num.IsValid() {
		return 0, 0, nil, nil, fmt.Errorf("invalid field number %d", num)
	}
	b = b[n:]
	switch typ {
	case protowire.BytesType:
		v, m := protowire.ConsumeBytes(b)
		if m < 0 {
			return 0, 0, nil, nil, protowire.ParseError(m)
		}
		return num, typ, v, b[m:], nil
	case protowire.VarintType:
		_, m := protowire.ConsumeVarint(b)
		if m < 0 {
			return 0, 0, nil, nil, protowire.ParseError(m)
		}
		return num, typ, b[:m], b[m:], nil
	default:
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return 0, 0, nil, nil, protowire.ParseError(m)
		}
		return num, typ, nil, b[m:], nil
	}
}

func varint(v []byte) uint64 {
	x, _ := protowire.ConsumeVarint(v)
	return x
}

// validUTF8 is utf8.Valid with the usual case, a short ASCII string,
// checked inline: most of a leaf's strings are ids of a few dozen bytes.
func validUTF8(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b)&0x8080808080808080 != 0 {
			return utf8.Valid(b)
		}
		b = b[8:]
	}
	for _, c := range b {
		if c >= 0x80 {
			return utf8.Valid(b)
		}
	}
	return true
}

// str reports a string field after checking it is UTF-8.
func (d *decoder) str(f Field, v []byte, name string) error {
	if !validUTF8(v) {
		return fmt.Errorf("field %s: invalid UTF-8", name)
	}
	d.v.String(f, v)
	return nil
}

func (d *decoder) event(b []byte) error {
	for len(b) > 0 {
		num, typ, v, rest, err := nextField(b)
		if err != nil {
			return err
		}
		b = rest
		if typ == protowire.VarintType {
			switch num {
			case evMFA:
				d.v.Bool(MFA, varint(v) != 0)
			case evBreakglass:
				d.v.Bool(Breakglass, varint(v) != 0)
			}
			continue
		}
		if typ != protowire.BytesType {
			continue
		}
		switch num {
		case evID:
			err = d.str(ID, v, "id")
		case evType:
			err = d.str(Type, v, "type")
		case evTime:
			err = d.stamp(Time, &d.time, v)
		case evSource:
			err = d.strings(v, sourceFields[:], "source")
		case evSubject:
			err = d.strings(v, subjectField[:], "subject")
		case evActor:
			err = d.strings(v, actorFields[:], "actor")
		case evEntitlement:
			err = d.entitlement(v)
		case evRefs:
			err = d.strings(v, refsFields[:], "refs")
		case evExpiresAt:
			err = d.stamp(ExpiresAt, &d.expires, v)
		case evReason:
			err = d.str(Reason, v, "reason")
		case evAttributes:
			err = d.attribute(v)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// entitlement decodes a grantline.v1.Entitlement.
func (d *decoder) entitlement(b []byte) error {
	for len(b) > 0 {
		n, t, w, rest, err := nextField(b)
		if err != nil {
			return err
		}
		b = rest
		switch {
		case n == 1 && t == protowire.BytesType:
			err = d.str(EntitlementID, w, "entitlement.id")
		case n == 2 && t == protowire.BytesType:
			err = d.str(EntitlementResource, w, "entitlement.resource")
		case n == 3 && t == protowire.VarintType:
			d.v.Bool(EntitlementPrivileged, varint(w) != 0)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// strings decodes a message whose fields are all strings, numbered from 1
// as in table.
func (d *decoder) strings(b []byte, table []Field, name string) error {
	for len(b) > 0 {
		n, t, w, rest, err := nextField(b)
		if err != nil {
			return err
		}
		b = rest
		if t != protowire.BytesType || int(n) >= len(table) {
			continue
		}
		if err := d.str(table[n], w, name); err != nil {
			return err
		}
	}
	return nil
}

// attribute decodes one map entry; a missing key or value is empty.
func (d *decoder) attribute(b []byte) error {
	var key, val []byte
	for len(b) > 0 {
		n, t, w, rest, err := nextField(b)
		if err != nil {
			return err
		}
		b = rest
		if t != protowire.BytesType {
			continue
		}
		switch n {
		case 1:
			key = w
		case 2:
			val = w
		default:
			continue
		}
		if !validUTF8(w) {
			return fmt.Errorf("field attributes: invalid UTF-8")
		}
	}
	d.v.Attribute(key, val)
	return nil
}

// stamp decodes a google.protobuf.Timestamp, merged over s the way
// proto.Unmarshal merges a repeated message field (each field present
// replaces the one before), and reports it in UTC, as AsTime gives it.
func (d *decoder) stamp(f Field, s *stamp, b []byte) error {
	for len(b) > 0 {
		n, t, w, rest, err := nextField(b)
		if err != nil {
			return err
		}
		b = rest
		if t != protowire.VarintType {
			continue
		}
		switch n {
		case 1:
			s.sec = int64(varint(w))
		case 2:
			s.nsec = int64(int32(varint(w)))
		}
	}
	d.v.Time(f, time.Unix(s.sec, s.nsec).UTC())
	return nil
}
