package ingest

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

func (e *testEnv) push(t *testing.T, method, format, token, body string, hdr ...string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, e.url+"/v1/sources/"+format, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := e.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// TestPush: a webhook delivery is mapped, validated and acknowledged only
// once stored; a redelivery stores nothing new; any bad record stores
// nothing; the vendors' push wrappers are unwrapped.
func TestPush(t *testing.T) {
	e := newEnv(t)
	export, err := os.ReadFile("../testdata/sources/okta/system-log.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []PushResult{
		{Records: 9, Events: 8, New: 8, TreeSize: 8},
		{Records: 9, Events: 8, Duplicate: 8, TreeSize: 8}, // redelivered
	} {
		code, _, body := e.push(t, "POST", "okta", oktaTok, string(export))
		var got PushResult
		if code != http.StatusOK || json.Unmarshal([]byte(body), &got) != nil || got != want {
			t.Fatalf("push okta export = %d %s, want 200 %+v", code, body, want)
		}
	}
	if sys := e.ledger.lastEvent(t).GetSource().GetSystem(); sys != "okta" {
		t.Errorf("stored source.system = %q, want the token's name okta", sys)
	}

	// An Okta event hook wraps LogEvents in data.events; its one-time
	// verification GET is answered.
	var arr []json.RawMessage
	if err := json.Unmarshal(export, &arr); err != nil {
		t.Fatal(err)
	}
	hook := `{"eventType":"com.okta.event_hook","eventTypeVersion":"1.0","cloudEventsVersion":"0.1","source":"https://example.okta.com/api/v1/eventHooks/who8i3","eventId":"b5a188b9-5ece-4636-b041-482ffda96311","data":{"events":[` +
		strings.Replace(string(arr[0]), "b0c1f7a2-6821-11f1-9a3f-0d2c4e5f6a71", "b0c1f7a2-6821-11f1-9a3f-000000000001", 1) + `]}}`
	if code, _, body := e.push(t, "POST", "okta", oktaTok, hook); code != 200 || !strings.Contains(body, `"new":1`) {
		t.Errorf("push okta event hook = %d %s, want 200 with one new event", code, body)
	}
	if code, _, body := e.push(t, "GET", "okta", oktaTok, "", "X-Okta-Verification-Challenge", "X1y2Z3"); code != 200 || strings.TrimSpace(body) != `{"verification":"X1y2Z3"}` {
		t.Errorf("okta verification = %d %s", code, body)
	}

	// CloudTrail through EventBridge: the record is the event's detail.
	ct, err := os.ReadFile("../testdata/sources/cloudtrail/111122223333_CloudTrail_us-east-1_20260915T1005Z_a1b2c3.json")
	if err != nil {
		t.Fatal(err)
	}
	var file struct{ Records []json.RawMessage }
	if err := json.Unmarshal(ct, &file); err != nil {
		t.Fatal(err)
	}
	eb := `{"version":"0","id":"6a7e8feb-b491-4cf7-a9f1-bf3703467718","detail-type":"AWS API Call via CloudTrail","source":"aws.iam","account":"111122223333","time":"2026-09-15T10:03:21Z","region":"us-east-1","resources":[],"detail":` + string(file.Records[4]) + `}`
	if code, _, body := e.push(t, "POST", "cloudtrail", pamTok, eb); code != 200 || !strings.Contains(body, `"events":1`) {
		t.Errorf("push cloudtrail via EventBridge = %d %s, want 200 with one event", code, body)
	}

	before := e.ledger.appendCount()
	for _, tc := range []struct {
		name, format, token, body string
		code                      int
		want                      string
	}{
		{"bad record", "okta", oktaTok, "[" + string(arr[1]) + ",\n" + `{"uuid":"x","eventType":"user.lifecycle.create"}]`, 400, "body:20: record 2: published: required"},
		{"not json", "okta", oktaTok, `{"uuid": `, 400, "not JSON"},
		{"no token", "okta", "", string(export), 401, "no bearer token"},
		{"auditor token", "okta", auditorTok, string(export), 403, "webhooks take a source token"},
		{"unknown format", "splunk", oktaTok, "{}", 404, `unknown source format`},
	} {
		code, hdr, body := e.push(t, "POST", tc.format, tc.token, tc.body)
		if code != tc.code || !strings.Contains(body, tc.want) || hdr.Get("Content-Type") != "application/json" {
			t.Errorf("%s: push = %d %s, want %d containing %q", tc.name, code, body, tc.code, tc.want)
		}
	}
	if got := e.ledger.appendCount(); got != before {
		t.Errorf("refused deliveries stored something: %d appends, want %d", got, before)
	}

	// A full queue: 429 with Retry-After, nothing stored.
	e.ledger.setFail(ledger.ErrPushback)
	code, hdr, body := e.push(t, "POST", "okta", oktaTok, strings.Replace(string(arr[0]), "0d2c4e5f6a71", "0d2c4e5f6a72", 1))
	if code != http.StatusTooManyRequests || hdr.Get("Retry-After") == "" || !strings.Contains(body, "retry after") {
		t.Errorf("push under pushback = %d %v %s, want 429 with Retry-After", code, hdr, body)
	}
	e.ledger.setFail(nil)

	// A body over the limit.
	big := bytes.Repeat([]byte(" "), event.MaxMessageBytes+1)
	if code, _, _ := e.push(t, "POST", "okta", oktaTok, string(big)); code != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized push = %d, want 413", code)
	}
}

func (l *fakeLedger) lastEvent(t *testing.T) *pb.Event {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.leaves) == 0 {
		t.Fatal("ledger is empty")
	}
	var e pb.Entry
	if err := proto.Unmarshal(l.leaves[len(l.leaves)-1], &e); err != nil {
		t.Fatal(err)
	}
	return e.GetEvent()
}

func (l *fakeLedger) appendCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.appends
}

func (l *fakeLedger) setFail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failAppend = err
}
