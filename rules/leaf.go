package rules

import (
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// Field numbers of grantline.v1.Entry, Event and the messages inside it
// (proto/grantline/v1/event.proto).
const (
	entryEvent, entryObservedTime = 1, 2

	evID, evType, evTime, evSource, evSubject, evActor, evEntitlement, evRefs = 1, 2, 3, 4, 5, 6, 7, 8
	evExpiresAt, evReason, evMFA, evBreakglass, evAttributes                  = 9, 10, 11, 12, 13
)

var errLeaf = errors.New("malformed leaf")

// decodeLeaf fills e (which may hold a previous subject's event) from a
// ledger leaf — the protobuf encoding of grantline.v1.Entry — reading the
// event's fields straight into e, without building the intermediate protobuf
// messages: on a large evaluation that decoding was a third of the work. It
// follows proto.Unmarshal's rules (last value wins, repeated sub-messages
// merge, a field with an unexpected wire type is skipped as unknown, strings
// must be valid UTF-8), and tests check it agrees with proto.Unmarshal
// followed by fillEvent.
func decodeLeaf(e *Event, index uint64, leaf []byte) error {
	resetEvent(e)
	e.Index = int64(index)
	err := eachField(leaf, func(num protowire.Number, typ protowire.Type, v []byte) error {
		switch {
		case num == entryEvent && typ == protowire.BytesType:
			return decodeEvent(e, v)
		case num == entryObservedTime && typ == protowire.BytesType:
			var err error
			e.ObservedTime, err = mergeTime(e.ObservedTime, v)
			e.HasObservedTime = true
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%w: leaf %d: %w", errLeaf, index, err)
	}
	e.Privileged = e.Entitlement.Privileged
	return nil
}

// resetEvent clears every field fillEvent or decodeLeaf sets.
func resetEvent(e *Event) {
	*e = Event{}
}

// eachField calls fn for each field of a message. For a length-delimited
// field v is its content; for a varint field v is nil and the value is
// passed through varintOf; other wire types are skipped.
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
			start := b
			_, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return protowire.ParseError(m)
			}
			if err := fn(num, typ, start[:m]); err != nil {
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

func str(v []byte, field string) (string, error) {
	if !utf8.Valid(v) {
		return "", fmt.Errorf("field %s: invalid UTF-8", field)
	}
	return string(v), nil
}

func decodeEvent(e *Event, b []byte) error {
	return eachField(b, func(num protowire.Number, typ protowire.Type, v []byte) (err error) {
		if typ == protowire.VarintType {
			switch num {
			case evMFA:
				e.MFA, e.MFARecorded = varint(v) != 0, true
			case evBreakglass:
				e.Breakglass = varint(v) != 0
			}
			return nil
		}
		switch num {
		case evID:
			e.ID, err = str(v, "id")
		case evType:
			e.Type, err = str(v, "type")
		case evTime:
			e.Time, err = mergeTime(e.Time, v)
		case evSource:
			err = eachField(v, func(n protowire.Number, t protowire.Type, w []byte) (err error) {
				if n == 1 && t == protowire.BytesType {
					e.System, err = str(w, "source.system")
				} else if t == protowire.BytesType && !utf8.Valid(w) && n <= 5 {
					err = fmt.Errorf("field source: invalid UTF-8")
				}
				return err
			})
		case evSubject:
			err = decodeIdentity(&e.Subject, v)
		case evActor:
			err = decodeIdentity(&e.Actor, v)
		case evEntitlement:
			err = eachField(v, func(n protowire.Number, t protowire.Type, w []byte) (err error) {
				switch {
				case n == 1 && t == protowire.BytesType:
					e.Entitlement.ID, err = str(w, "entitlement.id")
				case n == 2 && t == protowire.BytesType:
					e.Entitlement.Resource, err = str(w, "entitlement.resource")
				case n == 3 && t == protowire.VarintType:
					e.Entitlement.Privileged = varint(w) != 0
				}
				return err
			})
		case evRefs:
			err = eachField(v, func(n protowire.Number, t protowire.Type, w []byte) (err error) {
				if t != protowire.BytesType {
					return nil
				}
				var dst *string
				switch n {
				case 1:
					dst = &e.Refs.Request
				case 2:
					dst = &e.Refs.Grant
				case 3:
					dst = &e.Refs.Session
				case 4:
					dst = &e.Refs.Credential
				case 5:
					dst = &e.Refs.Review
				case 6:
					dst = &e.Refs.Ticket
				default:
					return nil
				}
				*dst, err = str(w, "refs")
				return err
			})
		case evExpiresAt:
			e.ExpiresAt, err = mergeTime(e.ExpiresAt, v)
			e.HasExpiry = true
		case evReason:
			e.Reason, err = str(v, "reason")
		case evAttributes:
			var key, val string
			err = eachField(v, func(n protowire.Number, t protowire.Type, w []byte) (err error) {
				if t != protowire.BytesType {
					return nil
				}
				switch n {
				case 1:
					key, err = str(w, "attributes key")
				case 2:
					val, err = str(w, "attributes value")
				}
				return err
			})
			if err == nil {
				if e.Attributes == nil {
					e.Attributes = map[string]string{}
				}
				e.Attributes[key] = val
			}
		}
		return err
	})
}

func decodeIdentity(id *Identity, b []byte) error {
	return eachField(b, func(n protowire.Number, t protowire.Type, w []byte) (err error) {
		if t != protowire.BytesType {
			return nil
		}
		switch n {
		case 1:
			id.ID, err = str(w, "identity id")
		case 2:
			id.Kind, err = str(w, "identity kind")
		case 3:
			id.Display, err = str(w, "identity display")
		case 4:
			id.OwnerID, err = str(w, "identity owner_id")
		}
		return err
	})
}

// mergeTime decodes a google.protobuf.Timestamp, merged over prev the way
// proto.Unmarshal merges a repeated message field: each field present
// replaces the one before. The result is in UTC, as AsTime gives it.
func mergeTime(prev time.Time, b []byte) (time.Time, error) {
	sec, nsec := prev.Unix(), int64(prev.Nanosecond())
	if prev.IsZero() {
		sec, nsec = 0, 0
	}
	err := eachField(b, func(n protowire.Number, t protowire.Type, w []byte) error {
		if t != protowire.VarintType {
			return nil
		}
		switch n {
		case 1:
			sec = int64(varint(w))
		case 2:
			nsec = int64(int32(varint(w)))
		}
		return nil
	})
	return time.Unix(sec, nsec).UTC(), err
}
