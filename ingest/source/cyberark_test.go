package source

import (
	"reflect"
	"testing"
)

func TestCEFExtension(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want map[string]string
	}{
		{`act="Retrieve password" suser=noa.katz fname=Root\Operating System-WinDomain-x-adm app= reason="Urgent fix INC-4471"`,
			map[string]string{"act": "Retrieve password", "suser": "noa.katz", "fname": `Root\Operating System-WinDomain-x-adm`, "app": "", "reason": "Urgent fix INC-4471"}},
		{`msg=a\=b c\\d cs1Label="Affected User Name" cs1=omar`,
			map[string]string{"msg": `a=b c\d`, "cs1Label": "Affected User Name", "cs1": "omar"}},
		{``, map[string]string{}},
	} {
		if got := cefExtension(tc.in); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("cefExtension(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

// TestCyberArkDualControl: a confirmed or rejected request (matched by the
// action text, docs/sources.md#cyberark) is the requester's approval or
// denial, with the request id.
func TestCyberArkDualControl(t *testing.T) {
	for _, tc := range []struct{ action, wantType string }{
		{"Confirm Request", "access.approved"},
		{"Reject Request", "access.denied"},
		{"Store password", ""},
	} {
		rec := `{"IsoTimestamp":"2026-09-30T03:45:00Z","MessageID":"0","Desc":"` + tc.action + `","Action":"` + tc.action +
			`","Issuer":"vault.approver","TargetUser":"noa.katz","Safe":"T0-DomainAdmins","File":"Root\\Operating System-WinDomain-x-adm","RequestId":"41","Reason":"INC-4471"}`
		evs, err := CyberArk([]byte(rec), "pam")
		if err != nil {
			t.Fatalf("%s: %v", tc.action, err)
		}
		if tc.wantType == "" {
			if len(evs) != 0 {
				t.Errorf("%s: %d events, want none", tc.action, len(evs))
			}
			continue
		}
		if len(evs) != 1 || evs[0].GetType() != tc.wantType || evs[0].GetSubject().GetId() != "noa.katz" ||
			evs[0].GetActor().GetId() != "vault.approver" || evs[0].GetRefs().GetRequest() != "41" {
			t.Errorf("%s: events %v, want one %s of noa.katz by vault.approver for request 41", tc.action, evs, tc.wantType)
		}
	}
}
