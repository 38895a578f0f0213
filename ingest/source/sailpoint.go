package source

import (
	"encoding/json"
	"strings"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// A SailPoint ISC trigger invocation as the Triggers API lists it
// (InvocationStatus: GET /trigger-invocations/status); a bare
// {"triggerId", "id", "created", "input"} is read the same way.
type spInvocation struct {
	ID                   string `json:"id"`
	TriggerID            string `json:"triggerId"`
	SubscriptionName     string `json:"subscriptionName"`
	Type                 string `json:"type"`
	Created              string `json:"created"`
	StartInvocationInput struct {
		TriggerID string          `json:"triggerId"`
		Input     json.RawMessage `json:"input"`
	} `json:"startInvocationInput"`
	Input json.RawMessage `json:"input"`
}

type spRef struct {
	Type string `json:"type"`
	ID   string `json:"id"`
	Name string `json:"name"`
}

// spRefs reads a reference that is sometimes one object and sometimes a list.
type spRefs []spRef

func (r *spRefs) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '[' {
		return json.Unmarshal(b, (*[]spRef)(r))
	}
	var one spRef
	if err := json.Unmarshal(b, &one); err != nil {
		return err
	}
	*r = spRefs{one}
	return nil
}

type spAccessDecision struct {
	AccessRequestID      string `json:"accessRequestId"`
	RequestedFor         spRefs `json:"requestedFor"`
	RequestedBy          spRef  `json:"requestedBy"`
	RequestedItemsStatus []struct {
		ID           string `json:"id"`
		Name         string `json:"name"`
		Type         string `json:"type"`
		Operation    string `json:"operation"`
		Comment      string `json:"comment"`
		ApprovalInfo []struct {
			ApprovalComment  string `json:"approvalComment"`
			ApprovalDecision string `json:"approvalDecision"`
			ApproverName     string `json:"approverName"`
			Approver         spRef  `json:"approver"`
		} `json:"approvalInfo"`
	} `json:"requestedItemsStatus"`
}

type spProvisioning struct {
	TrackingNumber  string `json:"trackingNumber"`
	Action          string `json:"action"`
	Recipient       spRef  `json:"recipient"`
	Requester       *spRef `json:"requester"`
	AccountRequests []struct {
		Source             spRef  `json:"source"`
		AccountID          string `json:"accountId"`
		AccountOperation   string `json:"accountOperation"`
		ProvisioningResult string `json:"provisioningResult"`
		TicketID           string `json:"ticketId"`
		AttributeRequests  []struct {
			AttributeName  string `json:"attributeName"`
			AttributeValue any    `json:"attributeValue"`
			Operation      string `json:"operation"`
		} `json:"attributeRequests"`
	} `json:"accountRequests"`
}

type spIdentityChange struct {
	Identity spRef `json:"identity"`
	Changes  []struct {
		Attribute string `json:"attribute"`
		OldValue  any    `json:"oldValue"`
		NewValue  any    `json:"newValue"`
	} `json:"changes"`
}

// SailPoint maps one ISC event-trigger invocation (docs/sources.md#sailpoint).
func SailPoint(rec []byte, system string) ([]*pb.Event, error) {
	var inv spInvocation
	if err := json.Unmarshal(rec, &inv); err != nil {
		return nil, &FieldError{"", "not a SailPoint trigger invocation: " + err.Error()}
	}
	trigger := first(inv.TriggerID, inv.StartInvocationInput.TriggerID)
	if err := required("triggerId", trigger); err != nil {
		return nil, err
	}
	if err := required("id", inv.ID); err != nil {
		return nil, err
	}
	t, err := parseTime("created", inv.Created, true)
	if err != nil {
		return nil, err
	}
	input := inv.StartInvocationInput.Input
	if len(input) == 0 || string(input) == "null" {
		input = inv.Input
	}
	if len(input) == 0 || string(input) == "null" {
		return nil, &FieldError{"startInvocationInput.input", "required: the trigger's payload"}
	}
	r := &record{system: system, product: "sailpoint-isc", rawType: trigger, rawID: inv.ID}
	var evs []*pb.Event
	attrs := func(ev *pb.Event) {
		setAttr(ev, "sailpoint.subscription", inv.SubscriptionName)
		setAttr(ev, "sailpoint.invocation_type", inv.Type)
		evs = append(evs, ev)
	}
	switch trigger {
	case "idn:access-request-post-approval":
		var d spAccessDecision
		if err := json.Unmarshal(input, &d); err != nil {
			return nil, &FieldError{"startInvocationInput.input", err.Error()}
		}
		if err := required("input.accessRequestId", d.AccessRequestID); err != nil {
			return nil, err
		}
		if len(d.RequestedFor) == 0 || d.RequestedFor[0].ID == "" {
			return nil, &FieldError{"input.requestedFor", "required: whom the access is for"}
		}
		for _, item := range d.RequestedItemsStatus {
			if item.ID == "" || len(item.ApprovalInfo) == 0 {
				continue // no item or no decision recorded
			}
			last := item.ApprovalInfo[len(item.ApprovalInfo)-1]
			typ := ""
			switch strings.ToUpper(last.ApprovalDecision) {
			case "APPROVED":
				typ = "access.approved"
			case "REJECTED", "DENIED":
				typ = "access.denied"
			default:
				continue
			}
			for _, who := range d.RequestedFor {
				if who.ID == "" {
					continue
				}
				// The decision's id comes from the request and the item, so
				// the same decision delivered twice is one event.
				part := item.ID
				if len(d.RequestedFor) > 1 {
					part += "/" + who.ID
				}
				ev := r.event("", typ, t)
				ev.Id = deriveID(d.AccessRequestID, part)
				ev.Subject = identity(who.ID, "human", who.Name)
				ev.Actor = identity(last.Approver.ID, "human", first(last.Approver.Name, last.ApproverName))
				ev.Entitlement = entitlement(strings.ToLower(item.Type)+":"+item.ID, item.Name, false)
				ev.Refs = &pb.Refs{Request: idOf(d.AccessRequestID)}
				ev.Reason = cut(item.Comment, maxReason)
				setAttr(ev, "sailpoint.operation", item.Operation)
				setAttr(ev, "sailpoint.approval_comment", last.ApprovalComment)
				setAttr(ev, "sailpoint.requested_by", d.RequestedBy.ID)
				attrs(ev)
			}
		}
	case "idn:post-provisioning":
		var p spProvisioning
		if err := json.Unmarshal(input, &p); err != nil {
			return nil, &FieldError{"startInvocationInput.input", err.Error()}
		}
		if err := required("input.recipient.id", p.Recipient.ID); err != nil {
			return nil, err
		}
		if err := required("input.trackingNumber", p.TrackingNumber); err != nil {
			return nil, err
		}
		for _, ar := range p.AccountRequests {
			if res := strings.ToUpper(ar.ProvisioningResult); res != "SUCCESS" && res != "COMMITTED" {
				continue // failed or pending: nothing changed yet
			}
			for _, at := range ar.AttributeRequests {
				typ := ""
				switch strings.ToLower(at.Operation) {
				case "add":
					typ = "grant.assigned"
				case "remove":
					typ = "grant.removed"
				default:
					continue // Set: an attribute value, not access
				}
				for _, v := range spValues(at.AttributeValue) {
					ent := ar.Source.ID + ":" + at.AttributeName + "=" + v
					ev := r.event("", typ, t)
					ev.Id = deriveID(p.TrackingNumber, ar.Source.ID+"/"+ar.AccountID+"/"+at.AttributeName+"="+v+"/"+strings.ToLower(at.Operation))
					ev.Subject = identity(p.Recipient.ID, "human", p.Recipient.Name)
					if p.Requester != nil {
						ev.Actor = identity(p.Requester.ID, "", p.Requester.Name)
					}
					ev.Entitlement = entitlement(ent, ar.Source.Name+": "+v, false)
					ev.Refs = &pb.Refs{Grant: idOf(digest(ar.Source.ID, ar.AccountID, at.AttributeName, v)), Ticket: idOf(ar.TicketID)}
					setAttr(ev, "sailpoint.source", ar.Source.Name)
					setAttr(ev, "sailpoint.account_id", ar.AccountID)
					setAttr(ev, "sailpoint.account_operation", ar.AccountOperation)
					setAttr(ev, "sailpoint.tracking_number", p.TrackingNumber)
					setAttr(ev, "sailpoint.action", p.Action)
					attrs(ev)
				}
			}
		}
	case "idn:identity-attributes-changed":
		var c spIdentityChange
		if err := json.Unmarshal(input, &c); err != nil {
			return nil, &FieldError{"startInvocationInput.input", err.Error()}
		}
		if err := required("input.identity.id", c.Identity.ID); err != nil {
			return nil, err
		}
		moved := false
		for _, ch := range c.Changes {
			nv, ov := spString(ch.NewValue), spString(ch.OldValue)
			typ, part := "", ""
			switch strings.ToLower(ch.Attribute) {
			case "cloudlifecyclestate", "lifecyclestate":
				switch strings.ToLower(nv) {
				case "terminated", "leaver", "deleted":
					typ, part = "identity.terminated", "lifecycle"
				case "inactive", "disabled", "suspended":
					typ, part = "identity.disabled", "lifecycle"
				case "active":
					typ, part = "identity.enabled", "lifecycle"
				}
			case "department", "title", "jobtitle", "manager", "location", "costcenter":
				if !moved {
					typ, part, moved = "identity.moved", "moved", true
				}
			}
			if typ == "" {
				continue
			}
			ev := r.event(part, typ, t)
			ev.Subject = identity(c.Identity.ID, "human", c.Identity.Name)
			setAttr(ev, "sailpoint.attribute", ch.Attribute)
			setAttr(ev, "sailpoint.old_value", ov)
			setAttr(ev, "sailpoint.new_value", nv)
			attrs(ev)
		}
	case "idn:identity-created", "idn:identity-deleted":
		var c struct {
			Identity spRef `json:"identity"`
		}
		if err := json.Unmarshal(input, &c); err != nil {
			return nil, &FieldError{"startInvocationInput.input", err.Error()}
		}
		if err := required("input.identity.id", c.Identity.ID); err != nil {
			return nil, err
		}
		typ := "identity.created"
		if trigger == "idn:identity-deleted" {
			typ = "identity.terminated"
		}
		ev := r.event("", typ, t)
		ev.Subject = identity(c.Identity.ID, "human", c.Identity.Name)
		attrs(ev)
	}
	return evs, nil
}

func spString(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// spValues reads an attribute value that is a string or a list of them.
func spValues(v any) []string {
	switch x := v.(type) {
	case string:
		if x != "" {
			return []string{x}
		}
	case []any:
		var out []string
		for _, e := range x {
			if s := spString(e); s != "" {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}
