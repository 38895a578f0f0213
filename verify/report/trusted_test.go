package report

import (
	"bytes"
	"strings"
	"testing"

	"github.com/grantline/grantline/verify/format"
)

// TestTrustedExpirySources: the report names the sources the rule set
// trusts to end access at expiry (expiry_enforced_by), and says nothing of
// the kind when it trusts none.
func TestTrustedExpirySources(t *testing.T) {
	tests := []struct {
		name  string
		param string // "": the rule does not record the param
		want  string // "": no such line
	}{
		{"two sources", "[teleport-prod, entra-prod]", "Sources trusted to end access when it expires (<code>expiry_enforced_by</code>): <code>entra-prod</code>, <code>teleport-prod</code>."},
		{"one source", "[entra-prod]", "(<code>expiry_enforced_by</code>): <code>entra-prod</code>."},
		{"none", "[]", ""},
		{"not recorded", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := scope()
			params := map[string]string{"revoke_grace": "15m0s"}
			if tt.param != "" {
				params["expiry_enforced_by"] = tt.param
			}
			s.Findings.Rules = append(s.Findings.Rules, format.Rule{ID: "grant-overstayed-expiry", Title: "Grant outlived its expiry", Severity: "high", Params: params})
			var b bytes.Buffer
			if err := WriteHTML(&b, s, Options{}); err != nil {
				t.Fatal(err)
			}
			got := b.String()
			if tt.want == "" && strings.Contains(got, "Sources trusted to end access") {
				t.Errorf("the report names trusted sources, but the rule set trusts none")
			}
			if tt.want != "" && !strings.Contains(got, tt.want) {
				t.Errorf("the report lacks %q", tt.want)
			}
		})
	}
}
