package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

func sampleEvaluateResponse() *pb.EvaluateResponse {
	return &pb.EvaluateResponse{
		Checkpoint: "grantline.example/log\n42\nq83vEjRsSIHPFAhEkl02HrC7Qb0cpWTc7BnZjW8bx6c=\n\n— grantline.example/log AAAA\n",
		AsOf:       timestamppb.New(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)),
		Findings: []*pb.Finding{{
			Rule: "grant-overstayed-expiry", Subject: "alice", Severity: "high",
			Entries:         []*pb.EntryRef{{Index: 7, EventId: "ev-7"}, {Index: 9, EventId: "ev-9"}},
			Message:         "grant g1 expired\nbut was not ended",
			ExposureSeconds: 900, Title: "Grant outlived its expiry", Controls: []string{"PR.AA-05"},
			OpenedAt: timestamppb.New(time.Date(2026, 2, 28, 23, 45, 0, 0, time.UTC)),
		}, {
			Rule: "self-approval", Subject: "bob", Severity: "high",
			Entries: []*pb.EntryRef{{Index: 3, EventId: "ev-3"}}, Message: "self",
			OpenedAt: timestamppb.New(time.Date(2026, 2, 1, 9, 0, 0, 0, time.UTC)),
			ClosedAt: timestamppb.New(time.Date(2026, 2, 1, 9, 0, 0, 0, time.UTC)),
		}},
		SubjectsEvaluated: 2, EntriesEvaluated: 12,
		ExposureBySubject: map[string]int64{"alice": 900},
	}
}

// evaluateJSON is the whole object of docs/design.md "Commands and what
// scripts may rely on", encoded at once: the reference the streamed output
// must equal byte for byte.
type evaluateJSON struct {
	Checkpoint        string           `json:"checkpoint"`
	AsOf              string           `json:"as_of"`
	From              string           `json:"from,omitempty"`
	Findings          []findingJSON    `json:"findings"`
	ExposureBySubject map[string]int64 `json:"exposure_by_subject"`
}

func oneShotJSON(t *testing.T, r *pb.EvaluateResponse) string {
	t.Helper()
	out := evaluateJSON{Checkpoint: r.GetCheckpoint(), AsOf: rfc3339(r.GetAsOf()), From: rfc3339(r.GetFrom()),
		Findings: []findingJSON{}, ExposureBySubject: map[string]int64{}}
	for _, f := range r.GetFindings() {
		out.Findings = append(out.Findings, findingOf(f))
	}
	for s, n := range r.GetExposureBySubject() {
		out.ExposureBySubject[s] = n
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// partsOf is r as an EvaluateStream would send it, perChunk findings to a
// chunk (the exposure and errors in the last), with the trailer.
func partsOf(r *pb.EvaluateResponse, perChunk int) []*pb.EvaluateStreamResponse {
	parts := []*pb.EvaluateStreamResponse{{Part: &pb.EvaluateStreamResponse_Header{Header: &pb.EvaluateHeader{
		Checkpoint: r.GetCheckpoint(), AsOf: r.GetAsOf(), From: r.GetFrom()}}}}
	fs := r.GetFindings()
	for len(fs) > 0 {
		n := min(perChunk, len(fs))
		parts = append(parts, &pb.EvaluateStreamResponse{Part: &pb.EvaluateStreamResponse_Chunk{Chunk: &pb.EvaluateChunk{Findings: fs[:n]}}})
		fs = fs[n:]
	}
	parts = append(parts, &pb.EvaluateStreamResponse{Part: &pb.EvaluateStreamResponse_Chunk{Chunk: &pb.EvaluateChunk{
		Errors: r.GetErrors(), ExposureBySubject: r.GetExposureBySubject()}}})
	return append(parts, &pb.EvaluateStreamResponse{Part: &pb.EvaluateStreamResponse_Trailer{Trailer: &pb.EvaluateTrailer{
		SubjectsEvaluated: r.GetSubjectsEvaluated(), EntriesEvaluated: r.GetEntriesEvaluated(),
		Findings: uint64(len(r.GetFindings())), Errors: uint64(len(r.GetErrors()))}}})
}

// fakeEvalStream replays parts, then fails with err (nil: ends cleanly).
type fakeEvalStream struct {
	parts []*pb.EvaluateStreamResponse
	i     int
	err   error
}

func (f *fakeEvalStream) Receive() bool {
	if f.i >= len(f.parts) {
		return false
	}
	f.i++
	return true
}
func (f *fakeEvalStream) Msg() *pb.EvaluateStreamResponse { return f.parts[f.i-1] }
func (f *fakeEvalStream) Err() error                      { return f.err }

// writeEvaluateJSON and writeEvaluateTable print r through the streaming
// path, one finding per chunk.
func writeEvaluateJSON(w io.Writer, r *pb.EvaluateResponse) error {
	_, err := receiveEvaluation(&fakeEvalStream{parts: partsOf(r, 1)}, &jsonSink{w: w}, io.Discard)
	return err
}

func writeEvaluateTable(w io.Writer, r *pb.EvaluateResponse) error {
	_, err := receiveEvaluation(&fakeEvalStream{parts: partsOf(r, 1)}, &tableSink{w: w}, io.Discard)
	return err
}

// TestEvaluateJSONStreamedEqualsOneShot: whatever the chunking, the
// streamed object is byte for byte the one encoded at once.
func TestEvaluateJSONStreamedEqualsOneShot(t *testing.T) {
	period := sampleEvaluateResponse()
	period.From = timestamppb.New(time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC))
	period.Findings[1].SharesPrimaryWith = "grant-overstayed-expiry"
	period.Findings[0].Message = "<html> & \"quotes\" \u2028"
	empty := sampleEvaluateResponse()
	empty.Findings, empty.ExposureBySubject = nil, nil
	for name, r := range map[string]*pb.EvaluateResponse{"instant": sampleEvaluateResponse(), "period": period, "empty": empty} {
		for _, per := range []int{1, 2, 100} {
			var buf bytes.Buffer
			if _, err := receiveEvaluation(&fakeEvalStream{parts: partsOf(r, per)}, &jsonSink{w: &buf}, io.Discard); err != nil {
				t.Fatalf("%s, %d per chunk: %v", name, per, err)
			}
			if want := oneShotJSON(t, r); buf.String() != want {
				t.Errorf("%s, %d per chunk: streamed\n%s\nwant\n%s", name, per, buf.String(), want)
			}
		}
	}
}

// TestEvaluateStreamBroken: a stream cut short, out of order or whose
// trailer disagrees is an error, never a quiet partial result.
func TestEvaluateStreamBroken(t *testing.T) {
	whole := partsOf(sampleEvaluateResponse(), 1)
	badCount := partsOf(sampleEvaluateResponse(), 1)
	badCount[len(badCount)-1] = &pb.EvaluateStreamResponse{Part: &pb.EvaluateStreamResponse_Trailer{Trailer: &pb.EvaluateTrailer{Findings: 3}}}
	for _, tc := range []struct {
		name  string
		parts []*pb.EvaluateStreamResponse
		err   error
		want  string
	}{
		{"no trailer", whole[:len(whole)-1], nil, "ended without its trailer"},
		{"cut by an error", whole[:2], connect.NewError(connect.CodeUnavailable, errors.New("connection reset")), "cut short"},
		{"chunk first", whole[1:], nil, "before the evaluation header"},
		{"counts differ", badCount, nil, "received 2 finding(s) and 0 rule error(s), the server counted 3 and 0"},
		{"after the trailer", append(slices.Clone(whole), whole[1]), nil, "after the evaluation's trailer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := receiveEvaluation(&fakeEvalStream{parts: tc.parts, err: tc.err}, &jsonSink{w: io.Discard}, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("receiveEvaluation = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestEvaluateJSON checks the exact object docs/design.md fixes for scripts.
func TestEvaluateJSON(t *testing.T) {
	var buf bytes.Buffer
	if err := writeEvaluateJSON(&buf, sampleEvaluateResponse()); err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatalf("output is not one JSON object: %v\n%s", err, buf.String())
	}
	want := map[string]any{
		"checkpoint": sampleEvaluateResponse().Checkpoint,
		"as_of":      "2026-03-01T00:00:00Z",
		"findings": []any{
			map[string]any{"rule": "grant-overstayed-expiry", "subject": "alice", "severity": "high",
				"entries": []any{
					map[string]any{"index": float64(7), "event_id": "ev-7"},
					map[string]any{"index": float64(9), "event_id": "ev-9"},
				},
				"message": "grant g1 expired\nbut was not ended", "exposure_seconds": float64(900),
				"opened_at": "2026-02-28T23:45:00Z", "closed_at": nil},
			map[string]any{"rule": "self-approval", "subject": "bob", "severity": "high",
				"entries": []any{map[string]any{"index": float64(3), "event_id": "ev-3"}},
				"message": "self", "exposure_seconds": float64(0),
				"opened_at": "2026-02-01T09:00:00Z", "closed_at": "2026-02-01T09:00:00Z"},
		},
		"exposure_by_subject": map[string]any{"alice": float64(900)},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("writeEvaluateJSON =\n%s\nwant the object\n%#v", buf.String(), want)
	}
}

func TestEvaluateJSONEmptyFindingsIsArray(t *testing.T) {
	var buf bytes.Buffer
	if err := writeEvaluateJSON(&buf, &pb.EvaluateResponse{Checkpoint: "x\n0\n"}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), `"findings": []`) {
		t.Errorf("no findings printed as %s, want \"findings\": []", buf.String())
	}
}

func TestEvaluateTable(t *testing.T) {
	var buf bytes.Buffer
	if err := writeEvaluateTable(&buf, sampleEvaluateResponse()); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 5 {
		t.Fatalf("table has %d lines, want header, 2 findings, blank, summary:\n%s", len(lines), out)
	}
	for _, want := range []string{"RULE", "SEVERITY", "SUBJECT", "ENTRY", "EXPOSURE", "MESSAGE"} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("header %q lacks %s", lines[0], want)
		}
	}
	for _, want := range []string{"grant-overstayed-expiry", "high", "alice", "7 (ev-7)", "2026-02-28T23:45:00Z", "open", "15m", "grant g1 expired but was not ended"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("row %q lacks %q", lines[1], want)
		}
	}
	if !strings.Contains(lines[2], "3 (ev-3)") || !strings.Contains(lines[2], " - ") {
		t.Errorf("row %q: want entry 3 (ev-3) and no exposure (-)", lines[2])
	}
	if want := "2 finding(s) over 2 subject(s) and 12 entries, as of 2026-03-01T00:00:00Z, at grantline.example/log tree size 42; privilege outlived its purpose for 15m over 1 identity(ies) (each interval counted once)"; lines[4] != want {
		t.Errorf("summary = %q, want %q", lines[4], want)
	}
}

func TestWriteRuleErrors(t *testing.T) {
	var buf bytes.Buffer
	n := writeRuleErrors(&buf, []*pb.RuleError{{Rule: "r", Subject: "s", Message: "cost limit\nexceeded"}})
	if n != 1 || buf.String() != "rule error: rule r, subject s: cost limit exceeded\n" {
		t.Errorf("writeRuleErrors = %d, %q", n, buf.String())
	}
}

func TestEvaluateFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--token", "t", "--as-of", "yesterday"}, "--as-of \"yesterday\": want an RFC 3339 time"},
		{[]string{"--token", "t", "alice"}, "unexpected argument \"alice\""},
		{[]string{"--token", "t", "--from", "2026-01-01T00:00:00Z", "--as-of", "2026-02-01T00:00:00Z"}, "give --as-of (one instant) or --from/--to (a period), not both"},
		{[]string{"--token", "t", "--to", "2026-02-01T00:00:00Z"}, "--to needs --from"},
		{[]string{"--token", "t", "--from", "2026-03-01T00:00:00Z", "--to", "2026-02-01T00:00:00Z"}, "must be after --from"},
		{[]string{"--token", "t", "--from", "2026-03-01T00:00:00Z", "--to", "2026-03-01T00:00:00Z"}, "for one instant, use --as-of"},
		{[]string{"--token", "t", "--from", "last week"}, "--from \"last week\": want an RFC 3339 time"},
	} {
		var stderr bytes.Buffer
		env := &cmdEnv{stdin: strings.NewReader(""), stdout: &bytes.Buffer{}, stderr: &stderr, getenv: func(string) string { return "" }}
		code := runMain(t.Context(), env, append([]string{"evaluate"}, tc.args...))
		if code != 2 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("evaluate %v: exit %d, stderr %q; want 2 and %q", tc.args, code, stderr.String(), tc.want)
		}
	}
}

// TestEvaluateTableNoFindings: no header over an empty table, only the
// summary.
func TestEvaluateTableNoFindings(t *testing.T) {
	var buf bytes.Buffer
	r := sampleEvaluateResponse()
	r.Findings = nil
	if err := writeEvaluateTable(&buf, r); err != nil {
		t.Fatal(err)
	}
	want := "0 finding(s) over 2 subject(s) and 12 entries, as of 2026-03-01T00:00:00Z, at grantline.example/log tree size 42"
	if out := buf.String(); !strings.HasPrefix(out, want) || strings.Count(out, "\n") != 1 {
		t.Errorf("table with no findings = %q, want only the summary line %q...", out, want)
	}
}

func TestCheckpointSize(t *testing.T) {
	for note, want := range map[string]uint64{"o\n42\nroot\n\nsig\n": 42, "o\n": 0, "": 0, "o\nx\n": 0} {
		if got := checkpointSize(note); got != want {
			t.Errorf("checkpointSize(%q) = %d, want %d", note, got, want)
		}
	}
}

// TestAppendFindingJSON holds the hand-written finding encoder of
// evaluate --json to encoding/json's output for the same finding, byte for
// byte: fixed cases, then random findings whose strings mix every escape
// encoding/json knows (control characters, quotes, HTML characters, U+2028,
// invalid UTF-8) with plain and multi-byte text.
func TestAppendFindingJSON(t *testing.T) {
	ts := func(sec int64) *timestamppb.Timestamp { return timestamppb.New(time.Unix(sec, 0)) }
	cases := []*pb.Finding{
		{},
		{Rule: "r", Subject: "s", Severity: "low", Entries: []*pb.EntryRef{}, Message: ""},
		{Rule: "r", Subject: "s", Entries: []*pb.EntryRef{{Index: 0}}, OpenedAt: ts(0)},
		{Rule: "r", Entries: []*pb.EntryRef{{Index: 1<<64 - 1, EventId: "a"}, {Index: 2, EventId: "b"}}, ExposureSeconds: -5,
			OpenedAt: ts(1767225600), ClosedAt: ts(4102444800), SharesPrimaryWith: "other"},
		{Message: "<html> & \"quotes\" \\ \u2028 \u2029 \x00\x01\x1f\x7f \b\f\n\r\t \xff\xfe é 日本 \U0001F600 \xe2\x80"},
	}
	r := rand.New(rand.NewPCG(7, 11))
	alphabet := []string{"a", "Z", "0", " ", "\"", "\\", "<", ">", "&", "\u2028", "\u2029", "\x00", "\x1f", "\x7f", "\b", "\f", "\n", "\r", "\t",
		"\xff", "\xc3", "é", "日", "\U0001F600", "\ufffd", "\xed\xa0\x80", "/", "'", "%"}
	str := func() string {
		var b strings.Builder
		for range r.IntN(12) {
			b.WriteString(alphabet[r.IntN(len(alphabet))])
		}
		return b.String()
	}
	for range 2000 {
		f := &pb.Finding{Rule: str(), Subject: str(), Severity: str(), Message: str(), ExposureSeconds: r.Int64N(1<<40) - 1<<39,
			SharesPrimaryWith: str()}
		for range r.IntN(4) {
			f.Entries = append(f.Entries, &pb.EntryRef{Index: r.Uint64(), EventId: str()})
		}
		if r.IntN(2) == 0 {
			f.OpenedAt = ts(r.Int64N(1 << 33))
		}
		if r.IntN(2) == 0 {
			f.ClosedAt = &timestamppb.Timestamp{Seconds: r.Int64N(1 << 33), Nanos: r.Int32N(1e9)}
		}
		cases = append(cases, f)
	}
	for i, f := range cases {
		want, err := json.MarshalIndent(findingOf(f), "    ", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if got := appendFindingJSON([]byte("x"), f); string(got[1:]) != string(want) {
			t.Fatalf("case %d (%q): wrote\n%s\nencoding/json writes\n%s", i, f.GetMessage(), got[1:], want)
		}
	}
}
