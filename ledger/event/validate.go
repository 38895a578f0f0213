package event

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// ErrInvalid is the class of every validation error (errors.Is).
var ErrInvalid = errors.New("invalid argument")

// FieldError is a validation failure of one field. Path is the field path in
// the request, e.g. "events[3].subject.id".
type FieldError struct {
	Path string
	Msg  string
}

func (e *FieldError) Error() string { return e.Path + ": " + e.Msg }

// Is makes every FieldError match ErrInvalid.
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

// ValidateBatch validates every event of a request before anything is stored;
// paths are prefixed with field, e.g. "events[3].type".
func ValidateBatch(field string, evs []*pb.Event, now time.Time) error {
	if err := checkCount(field, len(evs)); err != nil {
		return err
	}
	for i, ev := range evs {
		if err := Validate(ev, now); err != nil {
			return batchError(field, i, err)
		}
	}
	return nil
}

// checkCount checks the number of events of a request.
func checkCount(field string, n int) error {
	if n == 0 {
		return &FieldError{field, "at least one event is required"}
	}
	if n > MaxBatchEvents {
		return &FieldError{field, fmt.Sprintf("%d events exceed the limit of %d per request; split the batch", n, MaxBatchEvents)}
	}
	return nil
}

// batchError puts the path of event i of field in front of its error.
func batchError(field string, i int, err error) error {
	var fe *FieldError
	if errors.As(err, &fe) {
		return &FieldError{fmt.Sprintf("%s[%d].%s", field, i, fe.Path), fe.Msg}
	}
	return err
}

// Validate checks one event against the contract of docs/design.md:
// required fields, the closed type vocabulary, timestamps (not before 1970,
// not more than MaxFutureSkew ahead of now), identity kinds, UTF-8 and length
// bounds, and the encoded size. The error is a *FieldError whose path starts
// at the event (e.g. "subject.id"); it matches ErrInvalid.
func Validate(ev *pb.Event, now time.Time) error {
	_, err := validate(ev, now, false)
	return err
}

// validate is Validate for an event known to hold no unknown fields when
// known is set (the decoder's, see Batch), which it then does not search
// again. plain reports, for a valid event, that it is known to hold no
// unknown fields and (as every valid event) only valid UTF-8 strings:
// TestValidateRefusesInvalidUTF8 holds every string field of the schema to
// that.
func validate(ev *pb.Event, now time.Time, known bool) (plain bool, err error) {
	if ev == nil {
		return false, &FieldError{"event", "required"}
	}
	v := validator{}
	v.id("id", ev.GetId(), true)
	v.bytes += len(ev.GetType()) + 8
	switch t := ev.GetType(); {
	case t == "":
		v.fail("type", "required")
	case !types[t]:
		v.fail("type", fmt.Sprintf("unknown event type %q; use one of the vocabulary in docs/design.md (e.g. access.approved, grant.activated)", Clip(t)))
	}
	v.timestamp("time", ev.GetTime(), true, now)
	if s := ev.GetSource(); s == nil {
		v.fail("source.system", "required")
	} else {
		v.id("source.system", s.GetSystem(), true)
		v.id("source.product", s.GetProduct(), false)
		v.id("source.tenant", s.GetTenant(), false)
		v.id("source.raw_type", s.GetRawType(), false)
		v.id("source.raw_id", s.GetRawId(), false)
	}
	if ev.GetSubject() == nil {
		v.fail("subject.id", "required")
	} else {
		v.identity(subjectPaths, ev.GetSubject(), true)
	}
	if ev.GetActor() != nil {
		v.identity(actorPaths, ev.GetActor(), false)
	}
	if e := ev.GetEntitlement(); e != nil {
		v.id("entitlement.id", e.GetId(), false)
		v.text("entitlement.resource", e.GetResource(), MaxTextBytes)
	}
	if r := ev.GetRefs(); r != nil {
		v.id("refs.request", r.GetRequest(), false)
		v.id("refs.grant", r.GetGrant(), false)
		v.id("refs.session", r.GetSession(), false)
		v.id("refs.credential", r.GetCredential(), false)
		v.id("refs.review", r.GetReview(), false)
		v.id("refs.ticket", r.GetTicket(), false)
	}
	v.timestamp("expires_at", ev.GetExpiresAt(), false, time.Time{})
	v.text("reason", ev.GetReason(), MaxTextBytes)
	if n := len(ev.GetAttributes()); n > MaxAttributes {
		v.fail("attributes", fmt.Sprintf("%d entries exceed the limit of %d", n, MaxAttributes))
	}
	if v.err == nil {
		// Report the smallest bad key, so the message is deterministic
		// without sorting every event's attributes.
		var bad *FieldError
		badKey := ""
		for k, val := range ev.GetAttributes() {
			v.bytes += len(k) + len(val) + 12
			if bad != nil && k >= badKey {
				continue
			}
			kv := validator{}
			switch {
			case k == "":
				kv.fail("attributes", "empty key")
			case len(k) > MaxAttrKeyBytes || !utf8.ValidString(k):
				kv.fail("attributes", fmt.Sprintf("key %q: not valid UTF-8 or longer than %d bytes", Clip(k), MaxAttrKeyBytes))
			case len(val) > MaxAttrValueBytes || !utf8.ValidString(val):
				// The path is built only for a value that fails.
				kv.text(fmt.Sprintf("attributes[%q]", Clip(k)), val, MaxAttrValueBytes)
			}
			if kv.err != nil {
				bad, badKey = kv.err, k
			}
		}
		if bad != nil {
			v.err = bad
		}
	}
	if v.err != nil {
		return false, v.err
	}
	// v.bytes bounds the encoded size from above unless a message carries
	// unknown fields; only near the limit is the exact size computed.
	if v.bytes+eventOverhead <= MaxEventBytes && (known || !HasUnknown(ev)) {
		return true, nil
	}
	if n := proto.Size(ev); n > MaxEventBytes {
		return false, &FieldError{"event", fmt.Sprintf("encoded size %d bytes exceeds the limit of %d; move bulky data out of reason and attributes", n, MaxEventBytes)}
	}
	return known, nil
}

// eventOverhead bounds the encoded size of everything in an event that is
// not a string: tags, lengths of the nested messages, timestamps, booleans.
const eventOverhead = 256

// HasUnknown reports whether ev or a message in it carries fields unknown
// to this schema: a fast check of every message an Event can hold (a test
// keeps the list complete), for a decoder that refuses unknown fields and
// walks the message by reflection only to name the field of a refusal.
func HasUnknown(ev *pb.Event) bool {
	for _, m := range []proto.Message{ev, ev.GetTime(), ev.GetSource(), ev.GetSubject(), ev.GetActor(),
		ev.GetEntitlement(), ev.GetRefs(), ev.GetExpiresAt()} {
		if r := m.ProtoReflect(); r.IsValid() && len(r.GetUnknown()) > 0 {
			return true
		}
	}
	return false
}

// validator records the first failure and a bound on the bytes of the
// strings it saw (each plus the most a tag and length can take).
type validator struct {
	err   *FieldError
	bytes int
}

func (v *validator) fail(path, msg string) {
	if v.err == nil {
		v.err = &FieldError{path, msg}
	}
}

// ValidateID checks a required identifier (a subject id, say) outside an
// event the way Validate checks ids: present, valid UTF-8, no Hidden
// characters, at most MaxIDBytes. The error is a *FieldError naming path.
func ValidateID(path, s string) error {
	v := validator{}
	v.id(path, s, true)
	if v.err != nil {
		return v.err
	}
	return nil
}

// id checks an identifier: valid UTF-8, no Hidden characters, bounded.
func (v *validator) id(path, s string, required bool) {
	v.bytes += len(s) + 8
	switch {
	case s == "":
		if required {
			v.fail(path, "required")
		}
	case len(s) > MaxIDBytes:
		v.fail(path, fmt.Sprintf("%d bytes exceed the limit of %d", len(s), MaxIDBytes))
	case visibleASCII(s):
		// The common case, without decoding runes: printable ASCII is
		// valid UTF-8 and holds no Hidden character.
	case !utf8.ValidString(s):
		v.fail(path, "not valid UTF-8")
	default:
		if i := strings.IndexFunc(s, Hidden); i >= 0 {
			r, _ := utf8.DecodeRuneInString(s[i:])
			v.fail(path, fmt.Sprintf("contains %U (%s); ids must be visible text", r, HiddenKind(r)))
		}
	}
}

// visibleASCII reports whether every byte of s is printable ASCII (0x20 to
// 0x7e): no control character (Cc), and ASCII has no Cf, Zl or Zp.
func visibleASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

func (v *validator) text(path, s string, max int) {
	v.bytes += len(s) + 8
	switch {
	case len(s) > max:
		v.fail(path, fmt.Sprintf("%d bytes exceed the limit of %d", len(s), max))
	case !utf8.ValidString(s):
		v.fail(path, "not valid UTF-8")
	}
}

// identityPaths are the field paths of one Identity field, built once
// rather than per event.
type identityPaths struct{ id, kind, display, ownerID string }

func pathsOf(field string) identityPaths {
	return identityPaths{field + ".id", field + ".kind", field + ".display", field + ".owner_id"}
}

var subjectPaths, actorPaths = pathsOf("subject"), pathsOf("actor")

func (v *validator) identity(p identityPaths, id *pb.Identity, required bool) {
	v.id(p.id, id.GetId(), required)
	v.bytes += len(id.GetKind()) + 8
	if k := id.GetKind(); k != "" && !identityKinds[k] {
		v.fail(p.kind, fmt.Sprintf("unknown kind %q; want human, service_account, workload, bot, system, vendor or contractor", Clip(k)))
	}
	v.text(p.display, id.GetDisplay(), MaxTextBytes)
	v.id(p.ownerID, id.GetOwnerId(), false)
}

var epoch = time.Unix(0, 0)

// timestamp checks a timestamp; a zero now disables the future bound.
func (v *validator) timestamp(path string, ts *timestamppb.Timestamp, required bool, now time.Time) {
	if ts == nil {
		if required {
			v.fail(path, "required")
		}
		return
	}
	if err := ts.CheckValid(); err != nil {
		v.fail(path, "not a valid timestamp (seconds and nanos out of range)")
		return
	}
	t := ts.AsTime()
	switch {
	case t.Before(epoch):
		v.fail(path, fmt.Sprintf("%s is before 1970-01-01T00:00:00Z", t.Format(time.RFC3339Nano)))
	case !now.IsZero() && t.After(now.Add(MaxFutureSkew)):
		v.fail(path, fmt.Sprintf("%s is more than %s in the future (server time %s); check the source's clock", t.Format(time.RFC3339Nano), MaxFutureSkew, now.UTC().Format(time.RFC3339)))
	}
}

// Hidden reports whether r is a character that is invisible or changes how
// the text around it is shown: a control (Unicode Cc, e.g. TAB or U+0085),
// format (Cf, e.g. the bidi override U+202E or the zero-width space U+200B),
// line separator (Zl, U+2028) or paragraph separator (Zp, U+2029) character.
// Ids and system names must not hold one: "alice" and "alice\u200b" would be
// two subjects that look the same. internal/textsafe uses the same set to
// escape such characters on output.
func Hidden(r rune) bool {
	return unicode.In(r, unicode.Cc, unicode.Cf, unicode.Zl, unicode.Zp)
}

// HiddenKind names the category of a Hidden character for an error message,
// e.g. "format character"; "" for any other character.
func HiddenKind(r rune) string {
	switch {
	case unicode.Is(unicode.Cc, r):
		return "control character"
	case unicode.Is(unicode.Cf, r):
		return "format character"
	case unicode.Is(unicode.Zl, r):
		return "line separator"
	case unicode.Is(unicode.Zp, r):
		return "paragraph separator"
	}
	return ""
}

// Clip shortens a user value quoted back in an error to 64 bytes (and an
// ellipsis), cutting on a UTF-8 boundary.
func Clip(s string) string {
	if len(s) <= 64 {
		return s
	}
	s = s[:64]
	for !utf8.ValidString(s) && len(s) > 0 {
		s = s[:len(s)-1]
	}
	return s + "…"
}
