package source_test

import (
	"bytes"
	"compress/gzip"
	"errors"
	"strings"
	"testing"

	"github.com/grantline/grantline/ingest/source"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

const oktaRec = `{"uuid":"%s","published":"2026-09-01T08:15:42.517Z","eventType":"user.lifecycle.create","outcome":{"result":"SUCCESS"},"actor":{"id":"00uadmin","type":"User"},"target":[{"id":"00u%s","type":"User","alternateId":"x@example.com"}]}`

func rec(id string) string { return strings.ReplaceAll(oktaRec, "%s", id) }

func gz(t *testing.T, s string) string {
	t.Helper()
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	if _, err := w.Write([]byte(s)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestRecordsShapes: every accepted input shape yields the same records,
// numbered in order, with the line each starts on.
func TestRecordsShapes(t *testing.T) {
	okta, _ := source.Lookup("okta")
	entra, _ := source.Lookup("entra")
	cloudtrail, _ := source.Lookup("cloudtrail")
	cyberark, _ := source.Lookup("cyberark")
	array := "[\n" + rec("a") + ",\n" + rec("b") + "\n]\n"
	for _, tc := range []struct {
		name      string
		f         source.Format
		in        string
		wantLines []int
	}{
		{"array", okta, array, []int{2, 3}},
		{"json lines", okta, rec("a") + "\n\n" + rec("b") + "\n", []int{1, 3}},
		{"pretty objects", okta, "{\n \"uuid\": \"a\"\n}\n{\n \"uuid\": \"b\"\n}", []int{1, 4}},
		{"gzip array", okta, gz(t, array), []int{2, 3}},
		{"graph page", entra, "{\"@odata.context\": \"x\",\n \"value\": [\n  {\"id\": \"a\"},\n  {\"id\": \"b\"}\n ],\n \"@odata.nextLink\": \"y\"}", []int{3, 4}},
		{"graph pages as lines", entra, `{"value":[{"id":"a"}]}` + "\n" + `{"value":[{"id":"b"}]}`, []int{1, 2}},
		{"cloudtrail file", cloudtrail, "{\"Records\": [\n{\"eventID\": \"a\"},\n{\"eventID\": \"b\"}]}", []int{2, 3}},
		{"cloudtrail one record a line", cloudtrail, `{"eventID": "a"}` + "\n" + `{"eventID": "b"}`, []int{1, 2}},
		{"envelope key ignored by formats without one", okta, `{"value": [1], "uuid": "a"}` + "\n" + `{"uuid": "b"}`, []int{1, 2}},
		{"syslog lines", cyberark, "<5>1 2026-09-30T03:47:12Z V - - - - CEF:0|a\r\n\n  \nline two\n", []int{1, 4}},
		{"syslog as json array", cyberark, "[{\"MessageID\": \"7\"},\n{\"MessageID\": \"8\"}]", []int{1, 2}},
		{"gzip syslog", cyberark, gz(t, "one\ntwo\n"), []int{1, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var lines []int
			err := tc.f.Records("in", strings.NewReader(tc.in), func(r source.Record) error {
				if r.N != len(lines)+1 {
					t.Errorf("record number %d, want %d", r.N, len(lines)+1)
				}
				lines = append(lines, r.Line)
				return nil
			})
			if err != nil {
				t.Fatalf("Records: %v", err)
			}
			if !equalInts(lines, tc.wantLines) {
				t.Errorf("Records(%s) lines = %v, want %v", tc.name, lines, tc.wantLines)
			}
		})
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestReadErrors: a bad record is named by file, line, record number and
// field, and matches ErrRecord.
func TestReadErrors(t *testing.T) {
	okta, _ := source.Lookup("okta")
	entra, _ := source.Lookup("entra")
	cyberark, _ := source.Lookup("cyberark")
	for _, tc := range []struct {
		name string
		f    source.Format
		in   string
		want string
	}{
		{"missing time", okta, rec("a") + "\n" + `{"uuid":"b","eventType":"user.lifecycle.create"}`, "in.json:2: record 2: published: required"},
		{"bad time", okta, "[\n" + rec("a") + ",\n" + strings.Replace(rec("b"), "2026-09-01T08:15:42.517Z", "yesterday", 1) + "]", `in.json:3: record 2: published: "yesterday" is not an RFC 3339 time`},
		{"not json", okta, rec("a") + "\n{\"uuid\": ", "in.json:2: record 2: not JSON"},
		{"scalar", okta, "42", "in.json:1: record 1: want a JSON object"},
		{"array of scalars", okta, "[\n1]", "in.json:2: record 1: want a JSON object for each record"},
		{"missing target", okta, `{"uuid":"a","published":"2026-09-01T08:15:42Z","eventType":"user.lifecycle.create","outcome":{"result":"SUCCESS"}}`, "in.json:1: record 1: target: no target of type User"},
		{"entra member", entra, `{"value":[` + "\n" + `{"id":"x","activityDisplayName":"Add member to role completed (PIM activation)","activityDateTime":"2026-09-06T17:40:45Z","loggedByService":"PIM","result":"success","targetResources":[{"id":"r","type":"Role"}]}]}`, "in.json:2: record 1: targetResources: no target of type User or ServicePrincipal"},
		{"bsd syslog without year", cyberark, "Sep 30 03:47:12 VAULT01 CEF:0|Cyber-Ark|Vault|14.2.0002|295|Retrieve password|5|act=x suser=a fname=Root\\b cs2Label=\"Safe Name\" cs2=s", "in.json:1: record 1: IsoTimestamp: required: the record has no time with a year"},
		{"truncated gzip", okta, gz(t, rec("a"))[:20], "in.json:1: record 1: not JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.f.Read("in.json", strings.NewReader(tc.in), "sys", func(source.Record, []*pb.Event) error { return nil })
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Read(%s) = %v, want an error containing %q", tc.name, err, tc.want)
			}
			if !errors.Is(err, source.ErrRecord) {
				t.Errorf("errors.Is(%v, ErrRecord) = false", err)
			}
		})
	}
}

func TestLookup(t *testing.T) {
	for _, name := range source.Names() {
		f, err := source.Lookup(name)
		if err != nil || f.Name != name || f.Adapt == nil || !strings.HasPrefix(f.Doc, "docs/sources.md#") {
			t.Errorf("Lookup(%q) = %+v, %v", name, f, err)
		}
	}
	if _, err := source.Lookup("splunk"); !errors.Is(err, source.ErrUnknownFormat) || !strings.Contains(err.Error(), "entra") {
		t.Errorf("Lookup(splunk) = %v, want ErrUnknownFormat listing the formats", err)
	}
}

// TestCallbackErrorStops: an error from the caller's callback ends the read
// and comes back unchanged.
func TestCallbackErrorStops(t *testing.T) {
	okta, _ := source.Lookup("okta")
	stop := errors.New("stop")
	n := 0
	err := okta.Read("in", strings.NewReader(rec("a")+"\n"+rec("b")), "sys", func(source.Record, []*pb.Event) error {
		n++
		return stop
	})
	if err != stop || n != 1 {
		t.Errorf("Read = %v after %d records, want the callback's error after 1", err, n)
	}
}
