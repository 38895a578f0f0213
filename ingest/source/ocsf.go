package source

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// An OCSF 1.x event of the Identity & Access Management category (3).
type ocsfEvent struct {
	ClassUID   int             `json:"class_uid"`
	ActivityID int             `json:"activity_id"`
	StatusID   int             `json:"status_id"`
	Time       json.RawMessage `json:"time"`
	TimeDT     string          `json:"time_dt"`
	Message    string          `json:"message"`
	Metadata   struct {
		UID       string `json:"uid"`
		Version   string `json:"version"`
		TenantUID string `json:"tenant_uid"`
		Product   struct {
			Name       string `json:"name"`
			VendorName string `json:"vendor_name"`
		} `json:"product"`
	} `json:"metadata"`
	User  *ocsfUser `json:"user"`
	Actor struct {
		User *ocsfUser `json:"user"`
	} `json:"actor"`
	Session *struct {
		UID            string          `json:"uid"`
		ExpirationTime json.RawMessage `json:"expiration_time"`
	} `json:"session"`
	IsMFA      *bool    `json:"is_mfa"`
	Privileges []string `json:"privileges"`
	Policy     *struct {
		UID  string `json:"uid"`
		Name string `json:"name"`
	} `json:"policy"`
	Group *struct {
		UID        string   `json:"uid"`
		Name       string   `json:"name"`
		Privileges []string `json:"privileges"`
	} `json:"group"`
	Resource *struct {
		UID  string `json:"uid"`
		Name string `json:"name"`
	} `json:"resource"`
}

type ocsfUser struct {
	UID    string `json:"uid"`
	Name   string `json:"name"`
	Email  string `json:"email_addr"`
	TypeID int    `json:"type_id"`
}

func (u *ocsfUser) identity() *pb.Identity {
	if u == nil {
		return nil
	}
	kind := ""
	switch u.TypeID {
	case 1, 2:
		kind = "human"
	case 3:
		kind = "system"
	}
	return identity(first(u.UID, u.Name), kind, first(u.Email, u.Name))
}

// ocsfTime reads an OCSF timestamp_t (milliseconds since the epoch) or,
// failing that, a datetime string.
func ocsfTime(field string, raw json.RawMessage, dt string) (time.Time, error) {
	if len(raw) > 0 && string(raw) != "null" {
		ms, err := strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64)
		if err != nil {
			f, ferr := strconv.ParseFloat(strings.TrimSpace(string(raw)), 64)
			if ferr != nil || f > 9e15 || f < -9e15 {
				return time.Time{}, &FieldError{field, "want milliseconds since 1970 (OCSF timestamp_t)"}
			}
			ms = int64(f)
		}
		if ms < 0 || ms > maxTime.UnixMilli() {
			return time.Time{}, &FieldError{field, "outside 1970..9999"}
		}
		return time.UnixMilli(ms).UTC(), nil
	}
	return parseTime(field+"_dt", dt, false)
}

// OCSF maps one OCSF 1.x IAM event, classes 3001-3006 (docs/sources.md#ocsf).
func OCSF(rec []byte, system string) ([]*pb.Event, error) {
	var h struct {
		ClassUID int `json:"class_uid"`
	}
	if err := json.Unmarshal(rec, &h); err != nil {
		return nil, &FieldError{"", "not an OCSF event: " + err.Error()}
	}
	if h.ClassUID < 3001 || h.ClassUID > 3006 {
		return nil, nil // not the IAM category: not decoded further
	}
	var o ocsfEvent
	if err := json.Unmarshal(rec, &o); err != nil {
		return nil, &FieldError{"", "not an OCSF IAM event: " + err.Error()}
	}
	if err := required("metadata.uid", o.Metadata.UID); err != nil {
		return nil, err
	}
	t, err := ocsfTime("time", o.Time, o.TimeDT)
	if err != nil {
		return nil, err
	}
	if t.IsZero() {
		return nil, &FieldError{"time", "required"}
	}
	if o.StatusID == 2 {
		return nil, nil // Failure
	}
	product := strings.Trim(strings.ToLower(o.Metadata.Product.VendorName+"-"+o.Metadata.Product.Name), "-")
	r := &record{system: system, product: first(product, "ocsf"), tenant: o.Metadata.TenantUID,
		rawType: strconv.Itoa(o.ClassUID*100 + o.ActivityID), rawID: o.Metadata.UID}
	user := o.User.identity()
	needUser := func() error {
		if user == nil {
			return &FieldError{"user.uid", "required: whose access it is"}
		}
		return nil
	}
	var evs []*pb.Event
	add := func(part, typ string) *pb.Event {
		ev := r.event(part, typ, t)
		ev.Subject = user
		ev.Actor = o.Actor.User.identity()
		setAttr(ev, "ocsf.class_uid", strconv.Itoa(o.ClassUID))
		setAttr(ev, "ocsf.activity_id", strconv.Itoa(o.ActivityID))
		setAttr(ev, "ocsf.message", o.Message)
		setAttr(ev, "ocsf.version", o.Metadata.Version)
		evs = append(evs, ev)
		return ev
	}
	switch o.ClassUID {
	case 3001: // Account Change
		lifecycle := map[int]string{1: "identity.created", 2: "identity.enabled", 5: "identity.disabled",
			6: "identity.terminated", 9: "identity.disabled", 12: "identity.enabled"}
		switch typ := lifecycle[o.ActivityID]; {
		case typ != "":
			if err := needUser(); err != nil {
				return nil, err
			}
			add("", typ)
		case o.ActivityID == 3 || o.ActivityID == 4: // Password Change, Password Reset
			if err := needUser(); err != nil {
				return nil, err
			}
			ev := add("", "credential.rotated")
			ev.Refs = &pb.Refs{Credential: idOf(user.Id + ":password")}
		case o.ActivityID == 7 || o.ActivityID == 8: // Attach Policy, Detach Policy
			if err := needUser(); err != nil {
				return nil, err
			}
			if o.Policy == nil || first(o.Policy.UID, o.Policy.Name) == "" {
				return nil, &FieldError{"policy.uid", "required to name the policy"}
			}
			pid := first(o.Policy.UID, o.Policy.Name)
			ev := add("", grantType(o.ActivityID == 7))
			ev.Entitlement = entitlement("policy:"+pid, o.Policy.Name, awsPrivileged(first(o.Policy.Name, pid)))
			ev.Refs = &pb.Refs{Grant: idOf("policy:" + pid + ":" + user.Id)}
		}
	case 3002: // Authentication
		if o.ActivityID != 1 && o.ActivityID != 2 {
			return nil, nil
		}
		if err := needUser(); err != nil {
			return nil, err
		}
		typ := "session.started"
		if o.ActivityID == 2 {
			typ = "session.ended"
		}
		ev := add("", typ)
		ev.Refs = &pb.Refs{}
		if s := o.Session; s != nil {
			ev.Refs.Session = idOf(s.UID)
			if typ == "session.started" {
				exp, err := ocsfTime("session.expiration_time", s.ExpirationTime, "")
				if err != nil {
					return nil, err
				}
				ev.ExpiresAt = ts(exp)
			}
		}
		if o.IsMFA != nil {
			ev.Mfa = boolPtr(*o.IsMFA)
		}
	case 3003: // Authorize Session: the privileges a session was given
		if o.ActivityID != 1 && o.ActivityID != 2 {
			return nil, nil
		}
		if err := needUser(); err != nil {
			return nil, err
		}
		ev := add("", "session.started")
		ev.Refs = &pb.Refs{}
		if o.Session != nil {
			ev.Refs.Session = idOf(o.Session.UID)
		}
		privs := o.Privileges
		if o.ActivityID == 2 && o.Group != nil {
			ev.Entitlement = entitlement("group:"+first(o.Group.UID, o.Group.Name), o.Group.Name, len(o.Group.Privileges) > 0)
		} else if len(privs) > 0 {
			ev.Entitlement = entitlement("privileges:"+strings.Join(privs, ","), strings.Join(privs, ", "), true)
		}
		if o.IsMFA != nil {
			ev.Mfa = boolPtr(*o.IsMFA)
		}
	case 3005: // User Access Management
		if o.ActivityID != 1 && o.ActivityID != 2 {
			return nil, nil
		}
		if err := needUser(); err != nil {
			return nil, err
		}
		if len(o.Privileges) == 0 {
			return nil, &FieldError{"privileges", "required: which privileges were assigned or revoked"}
		}
		res, resName := "", ""
		if o.Resource != nil {
			res, resName = first(o.Resource.UID, o.Resource.Name), o.Resource.Name
		}
		for _, p := range o.Privileges {
			if p == "" {
				continue
			}
			ent := "privilege:" + p
			if res != "" {
				ent += "@" + res
			}
			part := p
			if len(o.Privileges) == 1 {
				part = ""
			}
			ev := add(part, grantType(o.ActivityID == 1))
			ev.Entitlement = entitlement(ent, strings.TrimSpace(p+" "+resName), true)
			ev.Refs = &pb.Refs{Grant: idOf(ent + ":" + user.Id)}
		}
	case 3006: // Group Management
		if o.ActivityID != 3 && o.ActivityID != 4 {
			return nil, nil // group privileges, creation, deletion: no user's access
		}
		if err := needUser(); err != nil {
			return nil, err
		}
		if o.Group == nil || first(o.Group.UID, o.Group.Name) == "" {
			return nil, &FieldError{"group.uid", "required to name the group"}
		}
		gid := first(o.Group.UID, o.Group.Name)
		ev := add("", grantType(o.ActivityID == 3))
		ev.Entitlement = entitlement("group:"+gid, o.Group.Name, len(o.Group.Privileges) > 0)
		ev.Refs = &pb.Refs{Grant: idOf("group:" + gid + ":" + user.Id)}
	}
	return evs, nil
}
