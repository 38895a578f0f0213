package source

import (
	"encoding/json"
	"strings"
	"time"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// Microsoft Graph directoryAudit, as returned by GET /auditLogs/directoryAudits.
type entraAudit struct {
	ID                  string `json:"id"`
	Category            string `json:"category"`
	CorrelationID       string `json:"correlationId"`
	Result              string `json:"result"`
	ResultReason        string `json:"resultReason"`
	ActivityDisplayName string `json:"activityDisplayName"`
	ActivityDateTime    string `json:"activityDateTime"`
	LoggedByService     string `json:"loggedByService"`
	OperationType       string `json:"operationType"`
	InitiatedBy         struct {
		User *struct {
			ID                string `json:"id"`
			DisplayName       string `json:"displayName"`
			UserPrincipalName string `json:"userPrincipalName"`
			IPAddress         string `json:"ipAddress"`
		} `json:"user"`
		App *struct {
			AppID              string `json:"appId"`
			DisplayName        string `json:"displayName"`
			ServicePrincipalID string `json:"servicePrincipalId"`
		} `json:"app"`
	} `json:"initiatedBy"`
	TargetResources   []entraTarget `json:"targetResources"`
	AdditionalDetails []struct {
		Key   string `json:"key"`
		Value string `json:"value"`
	} `json:"additionalDetails"`
}

type entraTarget struct {
	ID                 string `json:"id"`
	DisplayName        string `json:"displayName"`
	Type               string `json:"type"`
	UserPrincipalName  string `json:"userPrincipalName"`
	ModifiedProperties []struct {
		DisplayName string `json:"displayName"`
		OldValue    string `json:"oldValue"`
		NewValue    string `json:"newValue"`
	} `json:"modifiedProperties"`
}

// prop returns a modified property's new (or old) value with the JSON
// quoting Graph puts around it removed.
func (t *entraTarget) prop(name string, old bool) string {
	for _, p := range t.ModifiedProperties {
		if p.DisplayName == name {
			v := p.NewValue
			if old {
				v = p.OldValue
			}
			return unquoteGraph(v)
		}
	}
	return ""
}

func (t *entraTarget) changed(name string) bool {
	for _, p := range t.ModifiedProperties {
		if p.DisplayName == name {
			return unquoteGraph(p.OldValue) != unquoteGraph(p.NewValue)
		}
	}
	return false
}

// unquoteGraph turns `"x"` and `["x"]` (how Graph renders modified
// property values) into x.
func unquoteGraph(v string) string {
	v = strings.TrimSpace(v)
	if strings.HasPrefix(v, "[") && strings.HasSuffix(v, "]") {
		var xs []any
		if json.Unmarshal([]byte(v), &xs) == nil && len(xs) == 1 {
			if s, ok := xs[0].(string); ok {
				return s
			}
			if b, ok := xs[0].(bool); ok {
				if b {
					return "true"
				}
				return "false"
			}
		}
	}
	var s string
	if json.Unmarshal([]byte(v), &s) == nil {
		return s
	}
	return v
}

// msPIM reports whether the initiator is PIM itself (its Core Directory
// records duplicate what the PIM records say, with less).
func (a *entraAudit) byPIM() bool {
	if a.InitiatedBy.App != nil && strings.HasPrefix(a.InitiatedBy.App.DisplayName, "MS-PIM") {
		return true
	}
	return a.InitiatedBy.User != nil && a.InitiatedBy.User.DisplayName == "Azure AD PIM" && a.InitiatedBy.User.UserPrincipalName == ""
}

func (a *entraAudit) detail(key string) string {
	for _, d := range a.AdditionalDetails {
		if strings.EqualFold(d.Key, key) {
			return d.Value
		}
	}
	return ""
}

func (a *entraAudit) target(types ...string) *entraTarget {
	for _, typ := range types {
		for i := range a.TargetResources {
			if strings.EqualFold(a.TargetResources[i].Type, typ) {
				return &a.TargetResources[i]
			}
		}
	}
	return nil
}

func (a *entraAudit) actor() *pb.Identity {
	if u := a.InitiatedBy.User; u != nil && u.ID != "" {
		kind := "human"
		if a.byPIM() {
			kind = "system"
		}
		return identity(u.ID, kind, first(u.UserPrincipalName, u.DisplayName))
	}
	if ap := a.InitiatedBy.App; ap != nil && (ap.ServicePrincipalID != "" || ap.AppID != "" || ap.DisplayName != "") {
		kind := "workload"
		if a.byPIM() {
			kind = "system"
		}
		return identity(first(ap.ServicePrincipalID, ap.AppID, ap.DisplayName), kind, ap.DisplayName)
	}
	return nil
}

func entraKind(t *entraTarget) string {
	switch strings.ToLower(t.Type) {
	case "user":
		return "human"
	case "serviceprincipal", "application":
		return "workload"
	}
	return ""
}

// azureMonitorAudit is the AuditLogs record Azure Monitor diagnostic
// settings export (storage, Event Hubs): the directoryAudit in properties.
type azureMonitorAudit struct {
	Category   string          `json:"category"`
	TenantID   string          `json:"tenantId"`
	Properties json.RawMessage `json:"properties"`
}

// Entra maps one Graph directoryAudit record, or the Azure Monitor AuditLogs
// record that carries one in properties (docs/sources.md#entra).
func Entra(rec []byte, system string) ([]*pb.Event, error) {
	var a entraAudit
	if err := json.Unmarshal(rec, &a); err != nil {
		return nil, &FieldError{"", "not a Graph directoryAudit record: " + err.Error()}
	}
	tenant := ""
	if a.ID == "" && a.ActivityDisplayName == "" {
		var am azureMonitorAudit
		if json.Unmarshal(rec, &am) == nil && am.Category == "AuditLogs" && len(am.Properties) > 0 && am.Properties[0] == '{' {
			a = entraAudit{}
			if err := json.Unmarshal(am.Properties, &a); err != nil {
				return nil, &FieldError{"properties", "not a directoryAudit: " + err.Error()}
			}
			tenant = am.TenantID
		}
	}
	if err := required("id", a.ID); err != nil {
		return nil, err
	}
	if err := required("activityDisplayName", a.ActivityDisplayName); err != nil {
		return nil, err
	}
	t, err := parseTime("activityDateTime", a.ActivityDateTime, true)
	if err != nil {
		return nil, err
	}
	if !strings.EqualFold(a.Result, "success") {
		return nil, nil // a failed operation changed no access
	}
	r := &record{system: system, product: "entra", tenant: first(a.detail("tid"), tenant), rawType: a.ActivityDisplayName, rawID: a.ID}
	if a.LoggedByService == "PIM" {
		r.product = "entra-pim"
		return a.pim(r, t)
	}
	return a.directory(r, t)
}

// pim maps the records Privileged Identity Management logs.
func (a *entraAudit) pim(r *record, t time.Time) ([]*pb.Event, error) {
	act := a.ActivityDisplayName
	var typ string
	eligible, timebound := false, strings.Contains(act, "(timebound)")
	switch {
	case strings.Contains(act, "outside of PIM"):
		return nil, nil // the Core Directory record of the same change is mapped
	case strings.HasPrefix(act, "Add member to role requested (PIM activation)"):
		typ = "access.requested"
	case strings.HasPrefix(act, "Add member to role request approved"):
		typ = "access.approved"
	case strings.HasPrefix(act, "Add member to role request denied"):
		typ = "access.denied"
	case strings.HasPrefix(act, "Add member to role completed (PIM activation)"):
		typ = "grant.activated"
	case strings.Contains(act, "(PIM activation expired)"):
		typ = "grant.expired"
	case strings.HasPrefix(act, "Remove member from role completed (PIM deactivate)"):
		typ = "grant.deactivated"
	case strings.HasPrefix(act, "Add eligible member to role in PIM completed"):
		typ, eligible = "grant.assigned", true
	case strings.HasPrefix(act, "Remove eligible member from role in PIM completed"),
		strings.HasPrefix(act, "Remove permanent eligible role assignment"):
		typ, eligible = "grant.removed", true
	case strings.HasPrefix(act, "Add member to role in PIM completed"):
		typ = "grant.assigned"
	case strings.HasPrefix(act, "Remove member from role in PIM completed"),
		strings.HasPrefix(act, "Remove permanent direct role assignment"):
		typ = "grant.removed"
	default:
		return nil, nil // requests for steps, policy and settings changes: no access changed
	}
	member := a.target("User", "ServicePrincipal")
	if member == nil {
		return nil, &FieldError{"targetResources", "no target of type User or ServicePrincipal names the member"}
	}
	if err := required("targetResources[type=User].id", member.ID); err != nil {
		return nil, err
	}
	entID, entName := "", ""
	if role := a.target("Role"); role != nil {
		entID, entName = role.ID, role.DisplayName
	}
	if g := a.target("Group"); g != nil && a.Category == "GroupManagement" {
		// PIM for Groups: the group is the access, the role is member or owner.
		entID, entName = g.ID+":"+strings.ToLower(first(entName, "member")), g.DisplayName+" ("+first(entName, "member")+")"
	}
	if entID == "" {
		return nil, &FieldError{"targetResources", "no target of type Role (or Group) names the access"}
	}
	ev := r.event("", typ, t)
	ev.Subject = identity(member.ID, entraKind(member), first(member.UserPrincipalName, member.DisplayName))
	ev.Actor = a.actor()
	reqID := first(a.detail("RoleAssignmentRequestId"), a.detail("RequestId"))
	if req := a.target("Request"); req != nil && reqID == "" {
		reqID = req.ID
	}
	reqID = first(reqID, a.CorrelationID)
	ev.Refs = &pb.Refs{}
	switch {
	case eligible:
		// Eligibility is the standing right to activate, not access itself.
		ev.Entitlement = entitlement("eligible:"+entID, entName+" (eligible)", false)
		ev.Refs.Grant = idOf("eligible:" + entID + ":" + member.ID)
	case strings.HasPrefix(typ, "access."):
		ev.Entitlement = entitlement(entID, entName, true)
		ev.Refs.Request = idOf(reqID)
	case strings.Contains(act, "in PIM") || strings.Contains(act, "direct role assignment"):
		// An active assignment made through PIM, permanent or timebound.
		ev.Entitlement = entitlement(entID, entName, true)
		ev.Refs.Grant = idOf("active:" + entID + ":" + member.ID)
	default:
		// An activation: PIM links request, approval, activation and its end
		// through one request id.
		ev.Entitlement = entitlement(entID, entName, true)
		ev.Refs.Grant = idOf(reqID)
		ev.Refs.Request = idOf(reqID)
	}
	if typ == "grant.activated" || typ == "grant.assigned" && timebound {
		exp, err := entraTime("additionalDetails[ExpirationTime]", a.detail("ExpirationTime"))
		if err != nil {
			return nil, err
		}
		ev.ExpiresAt = ts(exp)
	}
	if typ == "grant.activated" || typ == "access.requested" || typ == "access.approved" || typ == "access.denied" {
		ev.Reason = cut(a.ResultReason, maxReason)
	}
	ev.Refs.Ticket = idOf(first(a.detail("TicketNumber"), a.detail("ticketNumber")))
	a.attrs(ev)
	setAttr(ev, "pim.start_time", a.detail("StartTime"))
	setAttr(ev, "pim.audit_type", a.detail("AuditType"))
	setAttr(ev, "pim.origin_role_assignment_id", a.detail("OriginRoleAssignmentId"))
	return []*pb.Event{ev}, nil
}

// entraTime reads the times PIM puts in additionalDetails: RFC 3339, or
// the US format some tenants show ("9/6/2026 6:40:45 PM").
func entraTime(field, s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse("1/2/2006 3:04:05 PM", s); err == nil {
		return checkRange(field, t.UTC())
	}
	return parseTime(field, s, false)
}

func (a *entraAudit) attrs(ev *pb.Event) {
	setAttr(ev, "entra.category", a.Category)
	setAttr(ev, "entra.correlation_id", a.CorrelationID)
	setAttr(ev, "entra.logged_by_service", a.LoggedByService)
	setAttr(ev, "entra.operation_type", a.OperationType)
	if u := a.InitiatedBy.User; u != nil {
		setAttr(ev, "entra.initiator_ip", u.IPAddress)
	}
}

// directory maps the Core Directory records: role membership outside PIM,
// user lifecycle and group membership.
func (a *entraAudit) directory(r *record, t time.Time) ([]*pb.Event, error) {
	act := a.ActivityDisplayName
	switch act {
	case "Add member to role", "Remove member from role":
		if a.byPIM() {
			return nil, nil // PIM's own record of the activation or its end is mapped
		}
		member := a.target("User", "ServicePrincipal")
		if member == nil || member.ID == "" {
			return nil, &FieldError{"targetResources", "no target of type User or ServicePrincipal names the member"}
		}
		old := act == "Remove member from role"
		role := member.prop("Role.TemplateId", old)
		roleName := member.prop("Role.DisplayName", old)
		if rt := a.target("Role"); rt != nil {
			role, roleName = first(role, rt.ID), first(roleName, rt.DisplayName)
		}
		if role == "" {
			return nil, &FieldError{"targetResources[0].modifiedProperties[Role.TemplateId]", "required to name the role"}
		}
		typ := "grant.assigned"
		if old {
			typ = "grant.removed"
		}
		ev := r.event("", typ, t)
		ev.Subject = identity(member.ID, entraKind(member), first(member.UserPrincipalName, member.DisplayName))
		ev.Actor = a.actor()
		ev.Entitlement = entitlement(role, roleName, true)
		ev.Refs = &pb.Refs{Grant: idOf("direct:" + role + ":" + member.ID)}
		setAttr(ev, "entra.outside_pim", "true")
		setAttr(ev, "entra.role_object_id", member.prop("Role.ObjectID", old))
		a.attrs(ev)
		return []*pb.Event{ev}, nil
	case "Add member to group", "Remove member from group":
		member := a.target("User", "ServicePrincipal", "Device")
		if member == nil || member.ID == "" {
			return nil, &FieldError{"targetResources", "no target of type User or ServicePrincipal names the member"}
		}
		old := act == "Remove member from group"
		group, name := member.prop("Group.ObjectID", old), member.prop("Group.DisplayName", old)
		if g := a.target("Group"); g != nil {
			group, name = first(group, g.ID), first(name, g.DisplayName)
		}
		if group == "" {
			return nil, &FieldError{"targetResources", "no Group target or Group.ObjectID names the group"}
		}
		typ := "grant.assigned"
		if old {
			typ = "grant.removed"
		}
		ev := r.event("", typ, t)
		ev.Subject = identity(member.ID, entraKind(member), first(member.UserPrincipalName, member.DisplayName))
		ev.Actor = a.actor()
		ev.Entitlement = entitlement("group:"+group, name, false)
		ev.Refs = &pb.Refs{Grant: idOf("group:" + group + ":" + member.ID)}
		a.attrs(ev)
		return []*pb.Event{ev}, nil
	case "Add user", "Delete user", "Restore user", "Disable account", "Enable account", "Update user":
		u := a.target("User")
		if u == nil || u.ID == "" {
			return nil, &FieldError{"targetResources", "no target of type User"}
		}
		var evs []*pb.Event
		add := func(part, typ string) *pb.Event {
			ev := r.event(part, typ, t)
			ev.Subject = identity(u.ID, "human", first(u.UserPrincipalName, u.DisplayName))
			ev.Actor = a.actor()
			a.attrs(ev)
			evs = append(evs, ev)
			return ev
		}
		switch act {
		case "Add user":
			add("", "identity.created")
		case "Delete user":
			add("", "identity.terminated")
		case "Restore user", "Enable account":
			add("", "identity.enabled")
		case "Disable account":
			add("", "identity.disabled")
		case "Update user":
			// One record may both move and disable a user: one event each.
			if u.changed("AccountEnabled") {
				if strings.EqualFold(u.prop("AccountEnabled", false), "false") {
					add("disabled", "identity.disabled")
				} else {
					add("enabled", "identity.enabled")
				}
			}
			if u.changed("Department") || u.changed("JobTitle") {
				ev := add("moved", "identity.moved")
				setAttr(ev, "entra.department", u.prop("Department", false))
				setAttr(ev, "entra.department_before", u.prop("Department", true))
				setAttr(ev, "entra.job_title", u.prop("JobTitle", false))
				setAttr(ev, "entra.job_title_before", u.prop("JobTitle", true))
			}
		}
		return evs, nil
	}
	return nil, nil
}
