// Package source turns what IGA, PAM and cloud identity systems already
// emit into Grantline events. Each format (entra, cloudtrail, okta,
// cyberark, sailpoint, teleport, ocsf) has an adapter: a pure function from
// one raw vendor record to zero or more *grantlinev1.Event, with no clock,
// no network and no state across records, so re-reading an export yields
// the same events with the same ids and the ledger stores nothing new.
// Read splits a file (a JSON array, JSON lines, the vendor's envelope, or
// syslog lines for cyberark; gzip detected by its magic bytes) into records
// and runs the adapter on each. The mapping tables (raw field to event
// field, raw type to event type, what is dropped) are in docs/sources.md;
// the package depends only on the generated protobuf types and the
// standard library.
package source

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// Adapter maps one raw record to events. system is the source.system of
// every event it returns (the caller's --source, or the push token's
// principal). A record the format knows but that says nothing about access
// yields no events and no error. A record that is not what the format
// promises (not JSON, a required field missing or malformed) yields a
// *FieldError naming the field. Adapters are safe for concurrent use.
type Adapter func(rec []byte, system string) ([]*pb.Event, error)

// Format is one source format.
type Format struct {
	Name  string // the --format value
	Title string // one line for `grantline adapters`
	Doc   string // where the mapping table is, relative to the repository
	// Envelopes are the keys of the vendor's wrapper objects whose array
	// holds the records ("value" for a Graph page and "records" for Azure
	// Monitor's export, "Records" for a CloudTrail log file); none when the
	// format has no wrapper.
	Envelopes []string
	// Lines means records may also be plain text lines (syslog) rather than
	// JSON values.
	Lines bool
	Adapt Adapter
}

// ErrUnknownFormat is returned by Lookup for a name no format has.
var ErrUnknownFormat = errors.New("unknown source format")

// ErrRecord is the class of every error about one input record (errors.Is):
// a *FieldError from an adapter or a *RecordError from Read.
var ErrRecord = errors.New("bad source record")

// FieldError says which field of a raw record was wrong. Field is the
// vendor's field path, e.g. "activityDateTime" or "userIdentity.arn".
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Msg
	}
	return e.Field + ": " + e.Msg
}

// Is makes every FieldError match ErrRecord.
func (e *FieldError) Is(target error) bool { return target == ErrRecord }

var formats = []Format{
	{Name: "entra", Title: "Microsoft Entra ID audit log with PIM (Graph directoryAudit)", Doc: "docs/sources.md#entra", Envelopes: []string{"value", "records"}, Adapt: Entra},
	{Name: "cloudtrail", Title: "AWS CloudTrail (IAM Identity Center, IAM users and keys, STS)", Doc: "docs/sources.md#cloudtrail", Envelopes: []string{"Records"}, Adapt: CloudTrail},
	{Name: "okta", Title: "Okta System Log (LogEvent)", Doc: "docs/sources.md#okta", Adapt: Okta},
	{Name: "cyberark", Title: "CyberArk Vault and PSM audit over syslog (JSON or CEF)", Doc: "docs/sources.md#cyberark", Lines: true, Adapt: CyberArk},
	{Name: "sailpoint", Title: "SailPoint Identity Security Cloud event triggers", Doc: "docs/sources.md#sailpoint", Adapt: SailPoint},
	{Name: "teleport", Title: "Teleport audit events", Doc: "docs/sources.md#teleport", Adapt: Teleport},
	{Name: "ocsf", Title: "OCSF 1.x Identity & Access Management events (classes 3001-3006)", Doc: "docs/sources.md#ocsf", Adapt: OCSF},
}

// Formats returns every format, in the order of docs/sources.md.
func Formats() []Format { return append([]Format(nil), formats...) }

// Lookup returns the format called name, or an error wrapping
// ErrUnknownFormat that lists the known names.
func Lookup(name string) (Format, error) {
	for _, f := range formats {
		if f.Name == name {
			return f, nil
		}
	}
	return Format{}, fmt.Errorf("%w %q: want one of %s (grantline adapters lists them)", ErrUnknownFormat, name, strings.Join(Names(), ", "))
}

// Names returns the format names.
func Names() []string {
	ns := make([]string, len(formats))
	for i, f := range formats {
		ns[i] = f.Name
	}
	return ns
}

// Bounds that keep every produced event within the ledger's limits
// (docs/ARCHITECTURE.md, "The leaf"): ids longer than maxID are replaced by
// a digest, texts are cut, and at most maxAttrs attributes are kept.
const (
	maxID        = 512
	maxDisplay   = 512
	maxReason    = 2048
	maxAttrs     = 30
	maxAttrKey   = 64
	maxAttrValue = 512
)

// idOf returns s when it is a usable identifier (valid UTF-8, no control
// characters, at most maxID bytes), and otherwise a stable digest of it, so
// the same raw value always gives the same id.
func idOf(s string) string {
	if s == "" {
		return ""
	}
	if len(s) <= maxID && utf8.ValidString(s) && strings.IndexFunc(s, isControl) < 0 {
		return s
	}
	return digest(s)
}

func digest(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:%s", len(p), p)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)[:16])
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// cut returns s as valid UTF-8 of at most n bytes; a cut text ends in "…".
func cut(s string, n int) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if len(s) <= n {
		return s
	}
	s = s[:n-len("…")]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "…"
}

// deriveID is the event id of the event that a record with vendor id raw
// yields under part: the vendor id itself for the record's main event
// (part ""), raw + "#" + part for the others. Parts are fixed words of the
// mapping (docs/sources.md), so the ids are stable across re-reads.
func deriveID(raw, part string) string {
	if part != "" {
		raw += "#" + part
	}
	return idOf(raw)
}

// record holds what every event of one raw record shares.
type record struct {
	system, product, tenant string
	rawType, rawID          string
}

func (r *record) event(part, typ string, t time.Time) *pb.Event {
	return &pb.Event{
		Id:   deriveID(r.rawID, part),
		Type: typ,
		Time: timestamppb.New(t),
		Source: &pb.Source{
			System:  r.system,
			Product: idOf(r.product),
			Tenant:  idOf(r.tenant),
			RawType: idOf(r.rawType),
			RawId:   idOf(r.rawID),
		},
	}
}

func identity(id, kind, display string) *pb.Identity {
	if id == "" {
		return nil
	}
	return &pb.Identity{Id: idOf(id), Kind: kind, Display: cut(display, maxDisplay)}
}

func entitlement(id, resource string, privileged bool) *pb.Entitlement {
	if id == "" && resource == "" {
		return nil
	}
	return &pb.Entitlement{Id: idOf(id), Resource: cut(resource, maxDisplay), Privileged: privileged}
}

// setAttr keeps a non-empty value under key, within the attribute bounds.
func setAttr(ev *pb.Event, key, value string) {
	if value == "" || key == "" {
		return
	}
	if ev.Attributes == nil {
		ev.Attributes = map[string]string{}
	}
	key = cut(key, maxAttrKey)
	if _, ok := ev.Attributes[key]; !ok && len(ev.Attributes) >= maxAttrs {
		return
	}
	ev.Attributes[key] = cut(value, maxAttrValue)
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

var (
	minTime = time.Unix(0, 0)
	maxTime = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)
)

// parseTime reads an RFC 3339 time (fractional seconds and any offset
// allowed) of field; a missing required time is an error.
func parseTime(field, s string, required bool) (time.Time, error) {
	if s == "" {
		if required {
			return time.Time{}, &FieldError{field, "required"}
		}
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		// Some exports drop the zone; read those as UTC, as the vendors document.
		t2, err2 := time.Parse("2006-01-02T15:04:05.999999999", s)
		if err2 != nil {
			return time.Time{}, &FieldError{field, fmt.Sprintf("%q is not an RFC 3339 time such as 2026-01-02T15:04:05Z", cut(s, 64))}
		}
		t = t2
	}
	return checkRange(field, t.UTC())
}

func checkRange(field string, t time.Time) (time.Time, error) {
	if t.Before(minTime) || t.After(maxTime) {
		return time.Time{}, &FieldError{field, fmt.Sprintf("%s is outside 1970..9999", t.Format(time.RFC3339))}
	}
	return t, nil
}

func required(field, v string) error {
	if v == "" {
		return &FieldError{field, "required"}
	}
	return nil
}

// sortedKeys returns m's keys in order (for deterministic attribute picks).
func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func boolPtr(b bool) *bool { return &b }

// first returns the first non-empty string.
func first(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}
