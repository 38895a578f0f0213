package ssf

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// Event type URIs mapped (CAEP 1.0, RISC 1.0).
const (
	CAEPSessionRevoked   = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
	CAEPCredentialChange = "https://schemas.openid.net/secevent/caep/event-type/credential-change"
	RISCAccountDisabled  = "https://schemas.openid.net/secevent/risc/event-type/account-disabled"
	RISCAccountEnabled   = "https://schemas.openid.net/secevent/risc/event-type/account-enabled"
	RISCAccountPurged    = "https://schemas.openid.net/secevent/risc/event-type/account-purged"
	RISCSessionsRevoked  = "https://schemas.openid.net/secevent/risc/event-type/sessions-revoked"
)

// subjectID is an RFC 9493 subject identifier (or a CAEP "complex" one).
type subjectID struct {
	Format      string     `json:"format"`
	Email       string     `json:"email"`
	Sub         string     `json:"sub"`
	ID          string     `json:"id"`
	URI         string     `json:"uri"`
	PhoneNumber string     `json:"phone_number"`
	User        *subjectID `json:"user"`
	Session     *subjectID `json:"session"`
}

// user returns the identity the subject names, and a session id if any.
func (s *subjectID) user() (id, session string) {
	if s == nil {
		return "", ""
	}
	if s.Session != nil {
		_, _ = s.Session.user()
		session = first(s.Session.ID, s.Session.Sub)
	}
	if s.User != nil {
		id, _ = s.User.user()
		return id, session
	}
	switch s.Format {
	case "email":
		return s.Email, session
	case "iss_sub":
		return s.Sub, session
	case "opaque":
		return s.ID, session
	case "account", "uri":
		return strings.TrimPrefix(s.URI, "acct:"), session
	case "phone_number":
		return s.PhoneNumber, session
	}
	return first(s.Email, s.Sub, s.ID, s.URI), session
}

func first(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}

// Map turns the events of a verified SET into Grantline events: one per
// mapped event type, ids JTI (or JTI#N for the N-th mapped type when there
// are several, in URI order), source.raw_id the jti and source.raw_type the
// event type URI. Unmapped event types yield nothing. The subject is the
// event's "subject" or the SET's sub_id; a mapped event without one is an
// *Error (invalid_request).
func Map(set *SET) ([]*pb.Event, error) {
	uris := make([]string, 0, len(set.Events))
	for u := range set.Events {
		uris = append(uris, u)
	}
	sort.Strings(uris)
	var out []*pb.Event
	for _, uri := range uris {
		var e struct {
			Subject        *subjectID `json:"subject"`
			EventTimestamp *float64   `json:"event_timestamp"`
			ReasonAdmin    any        `json:"reason_admin"`
			ReasonUser     any        `json:"reason_user"`
			Initiating     string     `json:"initiating_entity"`
			CredentialType string     `json:"credential_type"`
			ChangeType     string     `json:"change_type"`
			FriendlyName   string     `json:"friendly_name"`
			X509Serial     string     `json:"x509_serial"`
			FIDO2AAGUID    string     `json:"fido2_aaguid"`
		}
		if err := json.Unmarshal(set.Events[uri], &e); err != nil {
			return nil, refuse(InvalidRequest, "events[%s]: %v", uri, err)
		}
		typ := ""
		switch uri {
		case CAEPSessionRevoked, RISCSessionsRevoked:
			typ = "session.revoked"
		case CAEPCredentialChange:
			switch e.ChangeType {
			case "create":
				typ = "credential.created"
			case "revoke", "delete":
				typ = "credential.revoked"
			case "update":
				typ = "credential.rotated"
			default:
				return nil, refuse(InvalidRequest, "events[%s].change_type %q: want create, revoke, update or delete", uri, e.ChangeType)
			}
		case RISCAccountDisabled:
			typ = "identity.disabled"
		case RISCAccountEnabled:
			typ = "identity.enabled"
		case RISCAccountPurged:
			typ = "identity.terminated"
		default:
			continue
		}
		sub := e.Subject
		if sub == nil && len(set.SubID) > 0 {
			sub = &subjectID{}
			if err := json.Unmarshal(set.SubID, sub); err != nil {
				return nil, refuse(InvalidRequest, "sub_id: %v", err)
			}
		}
		user, session := sub.user()
		if user == "" {
			return nil, refuse(InvalidRequest, "events[%s]: no subject (give events[...].subject or sub_id naming a user)", uri)
		}
		t := set.IssuedAt
		if e.EventTimestamp != nil && *e.EventTimestamp > 0 && *e.EventTimestamp < 253402300799 {
			t = time.Unix(int64(*e.EventTimestamp), 0).UTC()
		}
		ev := &pb.Event{
			Type:    typ,
			Time:    timestamppb.New(t),
			Source:  &pb.Source{System: set.System, Product: "ssf", RawType: uri, RawId: set.JTI},
			Subject: &pb.Identity{Id: user},
			Refs:    &pb.Refs{},
		}
		if strings.HasPrefix(typ, "session.") {
			ev.Refs.Session = session
		}
		if strings.HasPrefix(typ, "credential.") {
			ev.Refs.Credential = strings.Trim(e.CredentialType+":"+first(e.X509Serial, e.FIDO2AAGUID, e.FriendlyName), ":")
		}
		ev.Reason = reasonText(e.ReasonAdmin)
		attrs := map[string]string{"ssf.issuer": set.Issuer}
		for k, v := range map[string]string{"ssf.initiating_entity": e.Initiating, "ssf.reason_user": reasonText(e.ReasonUser),
			"ssf.txn": set.TxnID, "ssf.credential_type": e.CredentialType, "ssf.change_type": e.ChangeType, "ssf.friendly_name": e.FriendlyName} {
			if v != "" {
				attrs[k] = v
			}
		}
		ev.Attributes = attrs
		out = append(out, ev)
	}
	for i, ev := range out {
		ev.Id = set.JTI
		if len(out) > 1 {
			ev.Id = fmt.Sprintf("%s#%d", set.JTI, i+1)
		}
	}
	return out, nil
}

// reasonText reads a CAEP reason: a string or a map of language tag to text
// (the "en" text first).
func reasonText(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case map[string]any:
		if s, ok := x["en"].(string); ok {
			return s
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if s, ok := x[k].(string); ok {
				return s
			}
		}
	}
	return ""
}
