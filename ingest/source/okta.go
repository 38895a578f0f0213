package source

import (
	"encoding/json"
	"strconv"
	"strings"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// An Okta System Log LogEvent (GET /api/v1/logs).
type oktaEvent struct {
	UUID           string      `json:"uuid"`
	Published      string      `json:"published"`
	EventType      string      `json:"eventType"`
	DisplayMessage string      `json:"displayMessage"`
	Severity       string      `json:"severity"`
	Actor          oktaActor   `json:"actor"`
	Target         []oktaActor `json:"target"`
	Outcome        struct {
		Result string `json:"result"`
		Reason string `json:"reason"`
	} `json:"outcome"`
	Client struct {
		IPAddress string `json:"ipAddress"`
		UserAgent struct {
			RawUserAgent string `json:"rawUserAgent"`
		} `json:"userAgent"`
	} `json:"client"`
	AuthenticationContext struct {
		AuthenticationProvider string `json:"authenticationProvider"`
		CredentialProvider     string `json:"credentialProvider"`
		CredentialType         string `json:"credentialType"`
		Interface              string `json:"interface"`
		AuthenticationStep     *int   `json:"authenticationStep"`
		ExternalSessionID      string `json:"externalSessionId"`
	} `json:"authenticationContext"`
	Transaction struct {
		Type string `json:"type"`
		ID   string `json:"id"`
	} `json:"transaction"`
	DebugContext struct {
		DebugData map[string]any `json:"debugData"`
	} `json:"debugContext"`
}

type oktaActor struct {
	ID          string `json:"id"`
	Type        string `json:"type"`
	AlternateID string `json:"alternateId"`
	DisplayName string `json:"displayName"`
}

func (a *oktaActor) identity() *pb.Identity {
	kind := ""
	switch a.Type {
	case "User":
		kind = "human"
	case "SystemPrincipal":
		kind = "system"
	case "PublicClientApp", "AppInstance":
		kind = "workload"
	}
	return identity(a.ID, kind, first(a.AlternateID, a.DisplayName))
}

func (o *oktaEvent) target(typ string) *oktaActor {
	for i := range o.Target {
		if o.Target[i].Type == typ {
			return &o.Target[i]
		}
	}
	return nil
}

func (o *oktaEvent) debug(key string) string {
	switch v := o.DebugContext.DebugData[key].(type) {
	case string:
		return v
	case nil:
		return ""
	default:
		b, _ := json.Marshal(v)
		return string(b)
	}
}

var oktaLifecycle = map[string]string{
	"user.lifecycle.create":           "identity.created",
	"user.lifecycle.activate":         "identity.enabled",
	"user.lifecycle.reactivate":       "identity.enabled",
	"user.lifecycle.unsuspend":        "identity.enabled",
	"user.lifecycle.suspend":          "identity.disabled",
	"user.lifecycle.deactivate":       "identity.terminated",
	"user.lifecycle.delete.initiated": "identity.terminated",
}

// Okta maps one System Log LogEvent (docs/sources.md#okta).
func Okta(rec []byte, system string) ([]*pb.Event, error) {
	var o oktaEvent
	if err := json.Unmarshal(rec, &o); err != nil {
		return nil, &FieldError{"", "not an Okta LogEvent: " + err.Error()}
	}
	if err := required("uuid", o.UUID); err != nil {
		return nil, err
	}
	if err := required("eventType", o.EventType); err != nil {
		return nil, err
	}
	t, err := parseTime("published", o.Published, true)
	if err != nil {
		return nil, err
	}
	if o.Outcome.Result != "" && o.Outcome.Result != "SUCCESS" && o.Outcome.Result != "ALLOW" {
		return nil, nil // failed, denied or challenged: no access changed
	}
	r := &record{system: system, product: "okta", rawType: o.EventType, rawID: o.UUID}
	subjectOf := func(typ string) (*oktaActor, error) {
		if u := o.target(typ); u != nil && u.ID != "" {
			return u, nil
		}
		return nil, &FieldError{"target", "no target of type " + typ}
	}
	var ev *pb.Event
	switch typ := oktaLifecycle[o.EventType]; {
	case typ != "":
		u, err := subjectOf("User")
		if err != nil {
			return nil, err
		}
		ev = r.event("", typ, t)
		ev.Subject = u.identity()
	case o.EventType == "group.user_membership.add" || o.EventType == "group.user_membership.remove":
		u, err := subjectOf("User")
		if err != nil {
			return nil, err
		}
		g, err := subjectOf("UserGroup")
		if err != nil {
			return nil, err
		}
		ev = r.event("", grantType(strings.HasSuffix(o.EventType, ".add")), t)
		ev.Subject = u.identity()
		ev.Entitlement = entitlement("group:"+g.ID, g.DisplayName, false)
		ev.Refs = &pb.Refs{Grant: idOf("group:" + g.ID + ":" + u.ID)}
	case o.EventType == "application.user_membership.add" || o.EventType == "application.user_membership.remove":
		u, err := subjectOf("User")
		if err != nil {
			return nil, err
		}
		app, err := subjectOf("AppInstance")
		if err != nil {
			return nil, err
		}
		ev = r.event("", grantType(strings.HasSuffix(o.EventType, ".add")), t)
		ev.Subject = u.identity()
		ev.Entitlement = entitlement("app:"+app.ID, app.DisplayName, false)
		ev.Refs = &pb.Refs{Grant: idOf("app:" + app.ID + ":" + u.ID)}
	case o.EventType == "user.account.privilege.grant" || o.EventType == "user.account.privilege.revoke" ||
		o.EventType == "group.privilege.grant" || o.EventType == "group.privilege.revoke":
		typ := "User"
		if strings.HasPrefix(o.EventType, "group.") {
			typ = "UserGroup"
		}
		u, err := subjectOf(typ)
		if err != nil {
			return nil, err
		}
		grant := strings.HasSuffix(o.EventType, ".grant")
		role := o.debug("privilegeGranted")
		if !grant {
			role = o.debug("privilegeRevoked")
		}
		if role == "" {
			return nil, &FieldError{"debugContext.debugData.privilegeGranted", "required to name the admin role"}
		}
		// One record may grant several roles ("Super administrator, Report
		// administrator"): one event per role, each with its own id.
		var evs []*pb.Event
		for _, name := range strings.Split(role, ",") {
			name = strings.TrimSpace(name)
			if name == "" {
				continue
			}
			ent := "admin-role:" + name
			ev := r.event(name, grantType(grant), t)
			ev.Subject = u.identity()
			ev.Entitlement = entitlement(ent, name, true)
			ev.Refs = &pb.Refs{Grant: idOf(ent + ":" + u.ID)}
			o.attrs(ev)
			evs = append(evs, ev)
		}
		if len(evs) == 1 {
			evs[0].Id = deriveID(o.UUID, "")
		}
		return evs, nil
	case o.EventType == "user.session.start" || o.EventType == "user.session.end":
		if o.Actor.ID == "" {
			return nil, &FieldError{"actor.id", "required: the user whose session it is"}
		}
		typ := "session.started"
		if o.EventType == "user.session.end" {
			typ = "session.ended"
		}
		ev = r.event("", typ, t)
		ev.Subject = o.Actor.identity()
		ev.Refs = &pb.Refs{Session: idOf(o.AuthenticationContext.ExternalSessionID)}
		ac := &o.AuthenticationContext
		setAttr(ev, "okta.authentication_provider", ac.AuthenticationProvider)
		setAttr(ev, "okta.credential_provider", ac.CredentialProvider)
		setAttr(ev, "okta.credential_type", ac.CredentialType)
		setAttr(ev, "okta.interface", ac.Interface)
		if ac.AuthenticationStep != nil {
			setAttr(ev, "okta.authentication_step", strconv.Itoa(*ac.AuthenticationStep))
		}
		setAttr(ev, "okta.behaviors", o.debug("behaviors"))
		setAttr(ev, "okta.risk", o.debug("risk"))
	default:
		return nil, nil
	}
	if ev.Actor == nil && ev.Subject.GetId() != o.Actor.ID {
		ev.Actor = o.Actor.identity()
	}
	o.attrs(ev)
	return []*pb.Event{ev}, nil
}

func (o *oktaEvent) attrs(ev *pb.Event) {
	if ev.Actor == nil && ev.Subject.GetId() != o.Actor.ID {
		ev.Actor = o.Actor.identity()
	}
	setAttr(ev, "okta.display_message", o.DisplayMessage)
	setAttr(ev, "okta.outcome_reason", o.Outcome.Reason)
	setAttr(ev, "okta.transaction_id", o.Transaction.ID)
	setAttr(ev, "okta.client_ip", o.Client.IPAddress)
	setAttr(ev, "okta.user_agent", o.Client.UserAgent.RawUserAgent)
}

func grantType(add bool) string {
	if add {
		return "grant.assigned"
	}
	return "grant.removed"
}
