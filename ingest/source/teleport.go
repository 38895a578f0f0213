package source

import (
	"encoding/json"
	"sort"
	"strings"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// A Teleport audit event (the JSON the event handler and `tctl` export).
type tpEvent struct {
	Event       string   `json:"event"`
	Code        string   `json:"code"`
	UID         string   `json:"uid"`
	Time        string   `json:"time"`
	ClusterName string   `json:"cluster_name"`
	User        string   `json:"user"`
	UserKind    any      `json:"user_kind"`
	Login       string   `json:"login"`
	Roles       []string `json:"roles"`
	// UserMetadata.access_requests: the requests the user's certificate
	// was issued under; SessionMetadata.with_mfa: the per-session MFA device.
	AccessRequests []string `json:"access_requests"`
	WithMFA        string   `json:"with_mfa"`
	// access requests
	ID            string `json:"id"`
	State         string `json:"state"`
	Reason        string `json:"reason"`
	Reviewer      string `json:"reviewer"`
	ProposedState string `json:"proposed_state"`
	Expires       string `json:"expires"`
	MaxDuration   string `json:"max_duration"`
	// sessions
	SID            string `json:"sid"`
	ServerID       string `json:"server_id"`
	ServerHostname string `json:"server_hostname"`
	ServerAddr     string `json:"server_addr"`
	RemoteAddr     string `json:"addr.remote"`
	SessionStop    string `json:"session_stop"`
	Protocol       string `json:"proto"`
	// cert.create
	CertType string `json:"cert_type"`
	Identity *struct {
		User           string   `json:"user"`
		Roles          []string `json:"roles"`
		Expires        string   `json:"expires"`
		ActiveRequests []string `json:"active_requests"`
		MFAVerified    string   `json:"mfa_verified"`
		Impersonator   string   `json:"impersonator"`
	} `json:"identity"`
}

func rolesEntitlement(roles []string) *pb.Entitlement {
	if len(roles) == 0 {
		return nil
	}
	rs := append([]string(nil), roles...)
	sort.Strings(rs)
	j := strings.Join(rs, ",")
	return entitlement("teleport-roles:"+j, "roles "+j, true)
}

// Teleport maps one Teleport audit event (docs/sources.md#teleport).
func Teleport(rec []byte, system string) ([]*pb.Event, error) {
	// Fields differ per event type: the header is read first, and only the
	// mapped events are decoded in full, so an unrelated event never fails
	// a file.
	var h struct {
		Event string `json:"event"`
	}
	if err := json.Unmarshal(rec, &h); err != nil {
		return nil, &FieldError{"", "not a Teleport audit event: " + err.Error()}
	}
	var e tpEvent
	switch h.Event {
	case "access_request.create", "access_request.review", "access_request.update", "cert.create", "session.start", "session.end":
		if err := json.Unmarshal(rec, &e); err != nil {
			return nil, &FieldError{"", "not a Teleport " + h.Event + " event: " + err.Error()}
		}
	default:
		e.Event = h.Event
		var ids struct {
			UID  string `json:"uid"`
			Time string `json:"time"`
		}
		_ = json.Unmarshal(rec, &ids)
		e.UID, e.Time = ids.UID, ids.Time
	}
	if err := required("uid", e.UID); err != nil {
		return nil, err
	}
	if err := required("event", e.Event); err != nil {
		return nil, err
	}
	t, err := parseTime("time", e.Time, true)
	if err != nil {
		return nil, err
	}
	if strings.HasSuffix(e.Code, "E") || strings.HasSuffix(e.Code, "W") {
		return nil, nil // the failure or warning code of an event: nothing granted
	}
	r := &record{system: system, product: "teleport", tenant: e.ClusterName, rawType: e.Event, rawID: e.UID}
	var ev *pb.Event
	switch e.Event {
	case "access_request.create":
		if err := required("user", e.User); err != nil {
			return nil, err
		}
		if err := required("id", e.ID); err != nil {
			return nil, err
		}
		ev = r.event("", "access.requested", t)
		ev.Subject = identity(e.User, "human", "")
		ev.Entitlement = rolesEntitlement(e.Roles)
		ev.Refs = &pb.Refs{Request: idOf(e.ID)}
		ev.Reason = cut(e.Reason, maxReason)
		setAttr(ev, "teleport.state", e.State)
		setAttr(ev, "teleport.max_duration", e.MaxDuration)
	case "access_request.review", "access_request.update":
		// A review names the request and the reviewer; Teleport's event
		// carries the requester only in some versions (docs/sources.md#teleport).
		state := strings.ToUpper(first(e.ProposedState, e.State))
		typ := ""
		switch state {
		case "APPROVED":
			typ = "access.approved"
		case "DENIED":
			typ = "access.denied"
		default:
			return nil, nil
		}
		if err := required("id", e.ID); err != nil {
			return nil, err
		}
		if e.User == "" || e.User == e.Reviewer {
			return nil, nil
		}
		ev = r.event("", typ, t)
		ev.Subject = identity(e.User, "human", "")
		ev.Actor = identity(e.Reviewer, "human", "")
		ev.Entitlement = rolesEntitlement(e.Roles)
		ev.Refs = &pb.Refs{Request: idOf(e.ID)}
		ev.Reason = cut(e.Reason, maxReason)
		exp, err := parseTime("expires", e.Expires, false)
		if err != nil {
			return nil, err
		}
		ev.ExpiresAt = ts(exp)
		setAttr(ev, "teleport.state", e.State)
	case "cert.create":
		id := e.Identity
		if id == nil || len(id.ActiveRequests) == 0 || e.CertType != "user" {
			return nil, nil // a login certificate without an access request
		}
		if err := required("identity.user", id.User); err != nil {
			return nil, err
		}
		exp, err := parseTime("identity.expires", id.Expires, false)
		if err != nil {
			return nil, err
		}
		// An elevated certificate is the grant: it carries the requested
		// roles and ends when the certificate expires.
		ev = r.event("", "grant.activated", t)
		ev.Subject = identity(id.User, "human", "")
		ev.Entitlement = rolesEntitlement(id.Roles)
		ev.Refs = &pb.Refs{Grant: idOf("cert:" + e.UID), Request: idOf(id.ActiveRequests[0])}
		ev.ExpiresAt = ts(exp)
		if id.MFAVerified != "" {
			ev.Mfa = boolPtr(true)
		}
		setAttr(ev, "teleport.active_requests", strings.Join(id.ActiveRequests, ","))
		setAttr(ev, "teleport.impersonator", id.Impersonator)
	case "session.start", "session.end":
		if err := required("user", e.User); err != nil {
			return nil, err
		}
		if err := required("sid", e.SID); err != nil {
			return nil, err
		}
		typ := "session.started"
		if e.Event == "session.end" {
			typ = "session.ended"
			if e.SessionStop != "" {
				if stop, err := parseTime("session_stop", e.SessionStop, false); err == nil {
					t = stop
				}
			}
		}
		ev = r.event("", typ, t)
		ev.Subject = identity(e.User, "human", "")
		host := first(e.ServerHostname, e.ServerID)
		if e.Login != "" && host != "" {
			ev.Entitlement = entitlement("ssh:"+e.Login+"@"+host, e.Login+"@"+host, e.Login == "root" || e.Login == "Administrator")
		}
		ev.Refs = &pb.Refs{Session: idOf(e.SID)}
		if len(e.AccessRequests) > 0 {
			ev.Refs.Request = idOf(e.AccessRequests[0])
			setAttr(ev, "teleport.access_requests", strings.Join(e.AccessRequests, ","))
		}
		if e.WithMFA != "" {
			ev.Mfa = boolPtr(true)
		}
		setAttr(ev, "teleport.login", e.Login)
		setAttr(ev, "teleport.server_id", e.ServerID)
		setAttr(ev, "teleport.server_addr", e.ServerAddr)
		setAttr(ev, "teleport.remote_addr", e.RemoteAddr)
		setAttr(ev, "teleport.protocol", e.Protocol)
	default:
		return nil, nil
	}
	setAttr(ev, "teleport.code", e.Code)
	return []*pb.Event{ev}, nil
}
