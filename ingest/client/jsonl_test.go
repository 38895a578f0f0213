package client

import (
	"strings"
	"testing"
)

func TestDecodeEventLine(t *testing.T) {
	const good = `{"id":"e1","type":"access.approved","time":"2026-01-02T03:04:05Z","source":{"system":"okta"},"subject":{"id":"alice","owner_id":"bob"},"expires_at":"2026-02-01T00:00:00Z"}`
	tests := []struct {
		line    string
		wantErr string // substring; "" for success
	}{
		{good, ""},
		{`{"id":"e1","type":"access.approved","time":"2026-01-02T03:04:05Z","source":{"system":"okta"},"subject":{"id":"alice","ownerId":"bob"}}`, ""},
		{`{"id":"e1","type":"access.approved","time":"2026-01-02T03:04:05Z","source":{"system":"okta"},"subject":{"id":"alice","bogus":1}}`, `field subject.bogus: unknown field "bogus"`},
		{`{"id":"e1","type":"access.approved","time":"yesterday","source":{"system":"okta"},"subject":{"id":"alice"}}`, "field time: "},
		{`{"id":"e1","type":"access.approved","time":"2026-01-02T03:04:05Z","source":{"system":"okta"},"subject":{"id":"alice"},"mfa":"yes"}`, "field mfa: "},
		{`{"id":"e1","type":"access.approved","time":"2026-01-02T03:04:05Z","source":{"system":"okta"},"subject":{"id":"alice"},"attributes":{"k":5}}`, "field attributes.k: "},
		{`{"id":"e1",`, "byte "},
		{`{"type":"access.approved","time":"2026-01-02T03:04:05Z","source":{"system":"okta"},"subject":{"id":"alice"}}`, "field id: required"},
		{`{"id":"e1","type":"access.approved","time":"2026-01-02T03:04:05Z","subject":{"id":"alice"}}`, "field source.system: required"},
		{`{"id":"e1","type":"access.approved","time":"2026-01-02T03:04:05Z","source":{"system":"okta"}}`, "field subject.id: required"},
	}
	for _, tt := range tests {
		ev, err := DecodeEventLine([]byte(tt.line))
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("DecodeEventLine(%s) = %v, want success", tt.line, err)
		case tt.wantErr == "" && ev.GetSubject().GetOwnerId() != "bob" && strings.Contains(tt.line, "bob"):
			t.Errorf("DecodeEventLine(%s): owner_id = %q, want bob", tt.line, ev.GetSubject().GetOwnerId())
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("DecodeEventLine(%s) = %v, want error containing %q", tt.line, err, tt.wantErr)
		}
	}
}

func TestJSONPathAt(t *testing.T) {
	line := `{"a":1,"b":{"c":[10,{"d":"x"}],"e":true},"f":"y"}`
	tests := []struct {
		at   string // the text whose first byte is probed
		want string
	}{
		{`1,`, "a"},
		{`"b"`, "b"},
		{`"c"`, "b.c"},
		{`10`, "b.c[0]"},
		{`"d"`, "b.c[1].d"},
		{`"x"`, "b.c[1].d"},
		{`true`, "b.e"},
		{`"y"`, "f"},
	}
	for _, tt := range tests {
		off := strings.Index(line, tt.at)
		if got := jsonPathAt([]byte(line), off); got != tt.want {
			t.Errorf("jsonPathAt(%q at %d) = %q, want %q", tt.at, off, got, tt.want)
		}
	}
}
