package event

import (
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
	err := eachField(leaf, func(num protowire.Number, typ protowire.Type, b []byte) error {
		switch {
		case num == entryEvent && typ == protowire.BytesType:
			d.sawEvent = true
			return d.event(b)
		case num == entryObservedTime && typ == protowire.BytesType:
			return d.stamp(ObservedTime, &d.observed, b)
		case num == entryMapRoot && typ == protowire.BytesType:
			sawMap = true
		}
		return nil
	})
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

// eachField calls fn for each field of a message. For a length-delimited
// field b is its content, for a varint field its encoding; other wire types
// are skipped.
func eachField(b []byte, fn func(num protowire.Number, typ protowire.Type, v []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		if !num.IsValid() {
			return fmt.Errorf("invalid field number %d", num)
		}
		b = b[n:]
		switch typ {
		case protowire.BytesType:
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return protowire.ParseError(m)
			}
			if err := fn(num, typ, v); err != nil {
				return err
			}
			b = b[m:]
		case protowire.VarintType:
			_, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return protowire.ParseError(m)
			}
			if err := fn(num, typ, b[:m]); err != nil {
				return err
			}
			b = b[m:]
		default:
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return protowire.ParseError(m)
			}
			b = b[m:]
		}
	}
	return nil
}

func varint(v []byte) uint64 {
	x, _ := protowire.ConsumeVarint(v)
	return x
}

// str reports a string field after checking it is UTF-8.
func (d *decoder) str(f Field, v []byte, name string) error {
	if !utf8.Valid(v) {
		return fmt.Errorf("field %s: invalid UTF-8", name)
	}
	d.v.String(f, v)
	return nil
}

func (d *decoder) event(b []byte) error {
	return eachField(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		if typ == protowire.VarintType {
			switch num {
			case evMFA:
				d.v.Bool(MFA, varint(v) != 0)
			case evBreakglass:
				d.v.Bool(Breakglass, varint(v) != 0)
			}
			return nil
		}
		switch num {
		case evID:
			return d.str(ID, v, "id")
		case evType:
			return d.str(Type, v, "type")
		case evTime:
			return d.stamp(Time, &d.time, v)
		case evSource:
			return d.strings(v, sourceFields[:], "source")
		case evSubject:
			return d.strings(v, subjectField[:], "subject")
		case evActor:
			return d.strings(v, actorFields[:], "actor")
		case evEntitlement:
			return eachField(v, func(n protowire.Number, t protowire.Type, w []byte) error {
				switch {
				case n == 1 && t == protowire.BytesType:
					return d.str(EntitlementID, w, "entitlement.id")
				case n == 2 && t == protowire.BytesType:
					return d.str(EntitlementResource, w, "entitlement.resource")
				case n == 3 && t == protowire.VarintType:
					d.v.Bool(EntitlementPrivileged, varint(w) != 0)
				}
				return nil
			})
		case evRefs:
			return d.strings(v, refsFields[:], "refs")
		case evExpiresAt:
			return d.stamp(ExpiresAt, &d.expires, v)
		case evReason:
			return d.str(Reason, v, "reason")
		case evAttributes:
			return d.attribute(v)
		}
		return nil
	})
}

// strings decodes a message whose fields are all strings, numbered from 1
// as in table.
func (d *decoder) strings(b []byte, table []Field, name string) error {
	return eachField(b, func(n protowire.Number, t protowire.Type, w []byte) error {
		if t != protowire.BytesType || int(n) >= len(table) {
			return nil
		}
		return d.str(table[n], w, name)
	})
}

// attribute decodes one map entry; a missing key or value is empty.
func (d *decoder) attribute(b []byte) error {
	var key, val []byte
	err := eachField(b, func(n protowire.Number, t protowire.Type, w []byte) error {
		if t != protowire.BytesType {
			return nil
		}
		switch n {
		case 1:
			key = w
		case 2:
			val = w
		default:
			return nil
		}
		if !utf8.Valid(w) {
			return fmt.Errorf("field attributes: invalid UTF-8")
		}
		return nil
	})
	if err == nil {
		d.v.Attribute(key, val)
	}
	return err
}

// stamp decodes a google.protobuf.Timestamp, merged over s the way
// proto.Unmarshal merges a repeated message field (each field present
// replaces the one before), and reports it in UTC, as AsTime gives it.
func (d *decoder) stamp(f Field, s *stamp, b []byte) error {
	err := eachField(b, func(n protowire.Number, t protowire.Type, w []byte) error {
		if t != protowire.VarintType {
			return nil
		}
		switch n {
		case 1:
			s.sec = int64(varint(w))
		case 2:
			s.nsec = int64(int32(varint(w)))
		}
		return nil
	})
	if err == nil {
		d.v.Time(f, time.Unix(s.sec, s.nsec).UTC())
	}
	return err
}
