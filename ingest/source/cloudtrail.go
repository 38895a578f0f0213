package source

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// One CloudTrail record (the elements of a log file's "Records").
type ctRecord struct {
	EventVersion string `json:"eventVersion"`
	UserIdentity struct {
		Type           string `json:"type"`
		PrincipalID    string `json:"principalId"`
		Arn            string `json:"arn"`
		AccountID      string `json:"accountId"`
		AccessKeyID    string `json:"accessKeyId"`
		UserName       string `json:"userName"`
		InvokedBy      string `json:"invokedBy"`
		SessionContext struct {
			Attributes struct {
				MfaAuthenticated string `json:"mfaAuthenticated"`
			} `json:"attributes"`
			SessionIssuer struct {
				Arn string `json:"arn"`
			} `json:"sessionIssuer"`
		} `json:"sessionContext"`
	} `json:"userIdentity"`
	EventTime          string          `json:"eventTime"`
	EventSource        string          `json:"eventSource"`
	EventName          string          `json:"eventName"`
	AwsRegion          string          `json:"awsRegion"`
	SourceIPAddress    string          `json:"sourceIPAddress"`
	UserAgent          string          `json:"userAgent"`
	ErrorCode          string          `json:"errorCode"`
	RequestParameters  json.RawMessage `json:"requestParameters"`
	ResponseElements   json.RawMessage `json:"responseElements"`
	RequestID          string          `json:"requestID"`
	EventID            string          `json:"eventID"`
	RecipientAccountID string          `json:"recipientAccountId"`
}

type ctParams struct {
	// IAM Identity Center
	InstanceArn      string `json:"instanceArn"`
	TargetID         string `json:"targetId"`
	TargetType       string `json:"targetType"`
	PermissionSetArn string `json:"permissionSetArn"`
	PrincipalType    string `json:"principalType"`
	PrincipalID      string `json:"principalId"`
	// IAM
	UserName    string `json:"userName"`
	GroupName   string `json:"groupName"`
	PolicyArn   string `json:"policyArn"`
	AccessKeyID string `json:"accessKeyId"`
	Status      string `json:"status"`
	// STS
	RoleArn         string `json:"roleArn"`
	RoleSessionName string `json:"roleSessionName"`
	DurationSeconds int64  `json:"durationSeconds"`
	PrincipalArn    string `json:"principalArn"`
}

type ctStatus struct {
	Status    string `json:"status"`
	RequestID string `json:"requestId"`
}

type ctResponse struct {
	AccountAssignmentCreationStatus *ctStatus `json:"accountAssignmentCreationStatus"`
	AccountAssignmentDeletionStatus *ctStatus `json:"accountAssignmentDeletionStatus"`
	User                            *struct {
		UserName string `json:"userName"`
		UserID   string `json:"userId"`
		Arn      string `json:"arn"`
	} `json:"user"`
	AccessKey *struct {
		AccessKeyID string `json:"accessKeyId"`
		UserName    string `json:"userName"`
		Status      string `json:"status"`
	} `json:"accessKey"`
	Credentials *struct {
		AccessKeyID string `json:"accessKeyId"`
		Expiration  string `json:"expiration"`
	} `json:"credentials"`
	AssumedRoleUser *struct {
		AssumedRoleID string `json:"assumedRoleId"`
		Arn           string `json:"arn"`
	} `json:"assumedRoleUser"`
	Subject                     string `json:"subject"`
	SubjectFromWebIdentityToken string `json:"subjectFromWebIdentityToken"`
	Issuer                      string `json:"issuer"`
}

// ctMapped are the eventSource and eventName pairs CloudTrail maps.
var ctMapped = map[string]bool{}

func init() {
	for _, k := range []string{
		"sso.amazonaws.com CreateAccountAssignment", "sso.amazonaws.com DeleteAccountAssignment",
		"iam.amazonaws.com CreateUser", "iam.amazonaws.com DeleteUser",
		"iam.amazonaws.com CreateAccessKey", "iam.amazonaws.com DeleteAccessKey", "iam.amazonaws.com UpdateAccessKey",
		"iam.amazonaws.com AttachUserPolicy", "iam.amazonaws.com DetachUserPolicy",
		"iam.amazonaws.com AddUserToGroup", "iam.amazonaws.com RemoveUserFromGroup",
		"sts.amazonaws.com AssumeRole", "sts.amazonaws.com AssumeRoleWithSAML", "sts.amazonaws.com AssumeRoleWithWebIdentity",
	} {
		ctMapped[k] = true
	}
}

// CloudTrail maps one CloudTrail record (docs/sources.md#cloudtrail).
func CloudTrail(rec []byte, system string) ([]*pb.Event, error) {
	var c ctRecord
	if err := json.Unmarshal(rec, &c); err != nil {
		return nil, &FieldError{"", "not a CloudTrail record: " + err.Error()}
	}
	if err := required("eventID", c.EventID); err != nil {
		return nil, err
	}
	if err := required("eventName", c.EventName); err != nil {
		return nil, err
	}
	t, err := parseTime("eventTime", c.EventTime, true)
	if err != nil {
		return nil, err
	}
	if c.ErrorCode != "" || !ctMapped[c.EventSource+" "+c.EventName] {
		return nil, nil // a failed call changed no access; other calls are not read
	}
	// Request and response shapes differ per API: only the mapped calls'
	// are decoded, so an unrelated record never fails a file.
	var p ctParams
	if len(c.RequestParameters) > 0 && string(c.RequestParameters) != "null" {
		if err := json.Unmarshal(c.RequestParameters, &p); err != nil {
			return nil, &FieldError{"requestParameters", err.Error()}
		}
	}
	var resp ctResponse
	if len(c.ResponseElements) > 0 && string(c.ResponseElements) != "null" {
		if err := json.Unmarshal(c.ResponseElements, &resp); err != nil {
			return nil, &FieldError{"responseElements", err.Error()}
		}
	}
	r := &record{system: system, product: "aws-cloudtrail", tenant: c.RecipientAccountID, rawType: c.EventName, rawID: c.EventID}
	acct := first(c.RecipientAccountID, c.UserIdentity.AccountID)
	var ev *pb.Event
	switch c.EventSource + " " + c.EventName {
	case "sso.amazonaws.com CreateAccountAssignment", "sso.amazonaws.com DeleteAccountAssignment":
		ev, err = c.accountAssignment(r, t, &p, &resp)
	case "iam.amazonaws.com CreateUser", "iam.amazonaws.com DeleteUser":
		name := p.UserName
		if err := required("requestParameters.userName", name); err != nil {
			return nil, err
		}
		typ := "identity.created"
		if c.EventName == "DeleteUser" {
			typ = "identity.terminated"
		}
		ev = r.event("", typ, t)
		ev.Subject = identity(iamUserArn(acct, name), "", name)
		if resp.User != nil {
			setAttr(ev, "aws.user_id", resp.User.UserID)
			setAttr(ev, "aws.user_arn", resp.User.Arn)
		}
	case "iam.amazonaws.com CreateAccessKey", "iam.amazonaws.com DeleteAccessKey", "iam.amazonaws.com UpdateAccessKey":
		name, key := p.UserName, p.AccessKeyID
		if resp.AccessKey != nil {
			name, key = first(name, resp.AccessKey.UserName), first(key, resp.AccessKey.AccessKeyID)
		}
		if name == "" && c.UserIdentity.Type == "IAMUser" {
			name = c.UserIdentity.UserName // a user managing their own keys
		}
		if err := required("requestParameters.userName", name); err != nil {
			return nil, err
		}
		if err := required("accessKeyId", key); err != nil {
			return nil, err
		}
		typ := "credential.created"
		switch c.EventName {
		case "DeleteAccessKey":
			typ = "credential.revoked"
		case "UpdateAccessKey":
			if !strings.EqualFold(p.Status, "Inactive") {
				return nil, nil // reactivation: see docs/sources.md#cloudtrail
			}
			typ = "credential.revoked"
		}
		ev = r.event("", typ, t)
		ev.Subject = identity(iamUserArn(acct, name), "", name)
		ev.Refs = &pb.Refs{Credential: idOf(key)}
		setAttr(ev, "aws.key_status", p.Status)
	case "iam.amazonaws.com AttachUserPolicy", "iam.amazonaws.com DetachUserPolicy":
		if err := required("requestParameters.userName", p.UserName); err != nil {
			return nil, err
		}
		if err := required("requestParameters.policyArn", p.PolicyArn); err != nil {
			return nil, err
		}
		typ := "grant.assigned"
		if c.EventName == "DetachUserPolicy" {
			typ = "grant.removed"
		}
		ev = r.event("", typ, t)
		ev.Subject = identity(iamUserArn(acct, p.UserName), "", p.UserName)
		ev.Entitlement = entitlement(p.PolicyArn, lastSegment(p.PolicyArn), awsPrivileged(p.PolicyArn))
		ev.Refs = &pb.Refs{Grant: idOf("iam-policy:" + iamUserArn(acct, p.UserName) + ":" + p.PolicyArn)}
	case "iam.amazonaws.com AddUserToGroup", "iam.amazonaws.com RemoveUserFromGroup":
		if err := required("requestParameters.userName", p.UserName); err != nil {
			return nil, err
		}
		if err := required("requestParameters.groupName", p.GroupName); err != nil {
			return nil, err
		}
		typ := "grant.assigned"
		if c.EventName == "RemoveUserFromGroup" {
			typ = "grant.removed"
		}
		group := fmt.Sprintf("arn:aws:iam::%s:group/%s", acct, p.GroupName)
		ev = r.event("", typ, t)
		ev.Subject = identity(iamUserArn(acct, p.UserName), "", p.UserName)
		ev.Entitlement = entitlement(group, p.GroupName, awsPrivileged(p.GroupName))
		ev.Refs = &pb.Refs{Grant: idOf("iam-group:" + iamUserArn(acct, p.UserName) + ":" + group)}
	case "sts.amazonaws.com AssumeRole", "sts.amazonaws.com AssumeRoleWithSAML", "sts.amazonaws.com AssumeRoleWithWebIdentity":
		ev, err = c.roleSession(r, t, &p, &resp)
	default:
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if ev.Actor == nil {
		ev.Actor = c.caller()
	}
	setAttr(ev, "aws.event_source", c.EventSource)
	setAttr(ev, "aws.region", c.AwsRegion)
	setAttr(ev, "aws.source_ip", c.SourceIPAddress)
	setAttr(ev, "aws.request_id", c.RequestID)
	setAttr(ev, "aws.user_agent", c.UserAgent)
	return []*pb.Event{ev}, nil
}

// accountAssignment maps IAM Identity Center's asynchronous
// Create/DeleteAccountAssignment: the record is the request; provisioning
// finishes later and CloudTrail logs no completion.
func (c *ctRecord) accountAssignment(r *record, t time.Time, p *ctParams, resp *ctResponse) (*pb.Event, error) {
	for _, f := range []struct{ name, v string }{
		{"requestParameters.principalId", p.PrincipalID},
		{"requestParameters.permissionSetArn", p.PermissionSetArn},
		{"requestParameters.targetId", p.TargetID},
	} {
		if err := required(f.name, f.v); err != nil {
			return nil, err
		}
	}
	typ, st := "grant.assigned", resp.AccountAssignmentCreationStatus
	if c.EventName == "DeleteAccountAssignment" {
		typ, st = "grant.removed", resp.AccountAssignmentDeletionStatus
	}
	ev := r.event("", typ, t)
	kind := "human"
	if !strings.EqualFold(p.PrincipalType, "USER") {
		kind = ""
	}
	ev.Subject = identity(p.PrincipalID, kind, "")
	ent := p.PermissionSetArn + "@" + p.TargetID
	ev.Entitlement = entitlement(ent, "permission set "+lastSegment(p.PermissionSetArn)+" in "+strings.ToLower(first(p.TargetType, "AWS_ACCOUNT"))+" "+p.TargetID, true)
	ev.Refs = &pb.Refs{Grant: idOf("sso:" + ent + ":" + p.PrincipalID)}
	if st != nil {
		ev.Refs.Request = idOf(st.RequestID)
		setAttr(ev, "aws.assignment_status", st.Status)
	}
	setAttr(ev, "aws.principal_type", p.PrincipalType)
	setAttr(ev, "aws.instance_arn", p.InstanceArn)
	setAttr(ev, "aws.asynchronous", "true: this is the request; CloudTrail logs no completion (DescribeAccountAssignmentCreationStatus has it)")
	if strings.EqualFold(p.PrincipalType, "GROUP") {
		setAttr(ev, "aws.group_expanded", "false: the record names the group only; its members are in the Identity Store")
	}
	return ev, nil
}

// roleSession maps an STS role session; it ends when its credentials
// expire, which CloudTrail never logs.
func (c *ctRecord) roleSession(r *record, t time.Time, p *ctParams, resp *ctResponse) (*pb.Event, error) {
	if err := required("requestParameters.roleArn", p.RoleArn); err != nil {
		return nil, err
	}
	if resp.Credentials == nil || resp.Credentials.AccessKeyID == "" {
		return nil, &FieldError{"responseElements.credentials.accessKeyId", "required to name the session"}
	}
	ev := r.event("", "session.started", t)
	switch c.EventName {
	case "AssumeRoleWithSAML":
		ev.Subject = identity(first(resp.Subject, c.UserIdentity.UserName), "human", "")
		setAttr(ev, "aws.saml_issuer", resp.Issuer)
	case "AssumeRoleWithWebIdentity":
		ev.Subject = identity(first(resp.SubjectFromWebIdentityToken, c.UserIdentity.UserName), "workload", "")
	default:
		ev.Subject = c.caller()
	}
	if ev.Subject == nil {
		return nil, &FieldError{"userIdentity", "names no caller"}
	}
	ev.Actor = nil
	ev.Entitlement = entitlement(p.RoleArn, lastSegment(p.RoleArn), awsPrivileged(p.RoleArn))
	ev.Refs = &pb.Refs{Session: idOf(resp.Credentials.AccessKeyID)}
	exp, err := awsTime("responseElements.credentials.expiration", resp.Credentials.Expiration)
	if err != nil {
		return nil, err
	}
	ev.ExpiresAt = ts(exp)
	switch c.UserIdentity.SessionContext.Attributes.MfaAuthenticated {
	case "true":
		ev.Mfa = boolPtr(true)
	case "false":
		ev.Mfa = boolPtr(false)
	}
	setAttr(ev, "aws.role_session_name", p.RoleSessionName)
	if resp.AssumedRoleUser != nil {
		setAttr(ev, "aws.assumed_role_arn", resp.AssumedRoleUser.Arn)
	}
	return ev, nil
}

// caller is the identity that made the call.
func (c *ctRecord) caller() *pb.Identity {
	u := &c.UserIdentity
	acct := first(u.AccountID, c.RecipientAccountID)
	switch u.Type {
	case "IAMUser":
		if u.UserName != "" {
			return identity(iamUserArn(acct, u.UserName), "", u.UserName)
		}
	case "Root":
		return identity("arn:aws:iam::"+acct+":root", "human", "root")
	case "AWSService":
		return identity(u.InvokedBy, "system", u.InvokedBy)
	}
	return identity(first(u.Arn, u.PrincipalID), "", u.UserName)
}

// iamUserArn names an IAM user the same way whichever event mentions it
// (events carry the user name, not its path).
func iamUserArn(account, name string) string {
	return "arn:aws:iam::" + account + ":user/" + name
}

func lastSegment(arn string) string {
	if i := strings.LastIndexAny(arn, "/:"); i >= 0 && i+1 < len(arn) {
		return arn[i+1:]
	}
	return arn
}

// awsPrivileged is the documented guess of docs/sources.md#cloudtrail: a
// policy, group or role named for administration.
func awsPrivileged(name string) bool {
	n := strings.ToLower(lastSegment(name))
	return strings.Contains(n, "admin") || n == "poweruseraccess" || n == "iamfullaccess"
}

// awsTime reads CloudTrail's credential expiration, rendered either as
// RFC 3339 or as "Oct 2, 2026, 5:05:22 AM" (UTC).
func awsTime(field, s string) (time.Time, error) {
	for _, layout := range []string{"Jan 2, 2006, 3:04:05 PM", "Jan 2, 2006 3:04:05 PM"} {
		if t, err := time.Parse(layout, s); err == nil {
			return checkRange(field, t.UTC())
		}
	}
	return parseTime(field, s, false)
}
