package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/internal/textsafe"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/proto/gen/grantline/v1/grantlinev1connect"
	"github.com/grantline/grantline/verify/format"
)

func init() {
	register(&command{
		name:    "evaluate",
		usage:   "[--server URL --token T] [--as-of RFC3339 | --from RFC3339 --to RFC3339] [--size N] [--subject ID ...] [--rule ID ...] [--json]",
		summary: "run the rules over identity chains at a checkpoint and print the findings",
		run:     runEvaluateCmd,
	})
}

// listFlag is a repeatable flag; each use may also hold comma-separated values.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error {
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			*l = append(*l, v)
		}
	}
	return nil
}

func runEvaluateCmd(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, commands["evaluate"])
	var cf clientFlags
	cf.register(fs, env)
	asOf := fs.String("as-of", "", "evaluate as of this RFC 3339 time (default: the server's current time)")
	from := fs.String("from", "", "start of an audit period (RFC 3339): every finding open at some time in [--from, --to]")
	to := fs.String("to", "", "end of the audit period (RFC 3339; default: the server's current time); the as-of time")
	size := fs.Uint64("size", 0, "evaluate the tree of this size (0: the latest checkpoint)")
	var subjects, ruleIDs listFlag
	fs.Var(&subjects, "subject", "evaluate only this subject id (repeatable; default: every subject)")
	fs.Var(&ruleIDs, "rule", "run only this rule id (repeatable; default: every loaded rule)")
	asJSON := fs.Bool("json", false, "print one JSON object: checkpoint, as_of, findings, exposure_by_subject (written as findings arrive)")
	rest, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		fs.Usage()
		return &exitError{code: 2, msg: fmt.Sprintf("unexpected argument %q: choose subjects with --subject ID", rest[0])}
	}
	req := &pb.EvaluateRequest{TreeSize: *size, Subjects: subjects, Rules: ruleIDs}
	if *asOf != "" {
		t, err := time.Parse(time.RFC3339, *asOf)
		if err != nil {
			return &exitError{code: 2, msg: fmt.Sprintf("--as-of %q: want an RFC 3339 time such as 2026-03-01T00:00:00Z", *asOf)}
		}
		req.AsOf = timestamppb.New(t)
	}
	if req.From, req.To, err = periodFlags(*asOf, *from, *to); err != nil {
		return err
	}
	cl, err := cf.dial()
	if err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	stream, err := cl.Evidence().EvaluateStream(ctx, connect.NewRequest(&pb.EvaluateStreamRequest{Request: req}))
	if err != nil {
		return fmt.Errorf("%s", describeRPCError(err))
	}
	defer stream.Close()
	var out evalSink = &tableSink{w: env.stdout}
	if *asJSON {
		out = &jsonSink{w: env.stdout}
	}
	res, err := receiveEvaluation(stream, out, env.stderr)
	if err != nil {
		return err
	}
	missing, err := subjectsWithoutEvents(ctx, cl.Log(), res.size, res.trailer.GetEntriesEvaluated(), subjects)
	if err != nil {
		return err
	}
	if n := res.trailer.GetErrors(); n > 0 {
		return &exitError{code: 1, msg: fmt.Sprintf("%d rule evaluation(s) failed; their findings are missing from the output", n)}
	}
	if len(missing) > 0 {
		quoted := make([]string, len(missing))
		for i, m := range missing {
			quoted[i] = textsafe.Quote(m)
		}
		return &exitError{code: exitNoSubject, msg: fmt.Sprintf("no events for subject %s in the tree of size %d; check the id (grantline events ID lists a subject's chain)",
			strings.Join(quoted, ", "), res.size)}
	}
	return nil
}

// exitNoSubject is evaluate's exit status when a --subject has no events at
// the checkpoint (docs/design.md): its 0 findings mean nothing.
const exitNoSubject = 3

// subjectsWithoutEvents returns the requested subjects that have no entry in
// the tree of size the evaluation ran on, in the order given: one
// ListSubjectEvents page of one entry per subject, unless a single subject
// had entries evaluated.
func subjectsWithoutEvents(ctx context.Context, log grantlinev1connect.LogServiceClient, size, entriesEvaluated uint64, subjects []string) ([]string, error) {
	switch {
	case len(subjects) == 0:
		return nil, nil
	case len(subjects) == 1 && entriesEvaluated > 0:
		return nil, nil
	}
	// No entries evaluated does not prove a subject has none: the rules
	// read a chain only up to the as-of time. Ask the log.
	var missing []string
	for _, sub := range subjects {
		resp, err := log.ListSubjectEvents(ctx, connect.NewRequest(&pb.ListSubjectEventsRequest{SubjectId: sub, PageSize: 1, TreeSize: size}))
		if err != nil {
			return nil, fmt.Errorf("checking subject %s has events: %s", textsafe.Quote(sub), describeRPCError(err))
		}
		if len(resp.Msg.GetEntries()) == 0 {
			missing = append(missing, sub)
		}
	}
	return missing, nil
}

// checkpointSize reads the tree size line of a checkpoint note; 0 if it has
// none.
func checkpointSize(note string) uint64 {
	lines := strings.SplitN(note, "\n", 3)
	if len(lines) < 2 {
		return 0
	}
	n, _ := strconv.ParseUint(lines[1], 10, 64)
	return n
}

// findingJSON is one finding of the object evaluate --json prints
// (docs/design.md "Commands and what scripts may rely on"); field order is
// fixed by the struct.
type findingJSON struct {
	Rule            string      `json:"rule"`
	Subject         string      `json:"subject"`
	Severity        string      `json:"severity"`
	Entries         []entryJSON `json:"entries"`
	Message         string      `json:"message"`
	ExposureSeconds int64       `json:"exposure_seconds"`
	OpenedAt        *string     `json:"opened_at"`
	ClosedAt        *string     `json:"closed_at"` // null while open at the as-of time
	// SharesPrimaryWith: the rule of a more specific finding on the same entry.
	SharesPrimaryWith string `json:"shares_primary_with,omitempty"`
}

type entryJSON struct {
	Index   uint64 `json:"index"`
	EventID string `json:"event_id"`
}

// evalStream is the part of a Connect server stream receiveEvaluation
// reads.
type evalStream interface {
	Receive() bool
	Msg() *pb.EvaluateStreamResponse
	Err() error
}

// evalSink prints an evaluation as its parts arrive: the header, findings
// in the order received, then the end with the totals.
type evalSink interface {
	header(h *pb.EvaluateHeader) error
	findings(fs []*pb.Finding) error
	end(e *evalEnd) error
}

// evalEnd is what is known once the stream is complete.
type evalEnd struct {
	head     *pb.EvaluateHeader
	trailer  *pb.EvaluateTrailer
	size     uint64 // the evaluated tree's size, from the checkpoint
	findings uint64 // findings received
	// exposure is per subject, gathered from the chunks: the only part of
	// the result the client keeps until the end (exposure_by_subject closes
	// the JSON object).
	exposure map[string]int64
}

// receiveEvaluation reads an EvaluateStream into out as it arrives, rule
// errors to errw, and checks the stream is whole: a header first, a
// trailer last whose counts match what arrived. A stream cut short leaves
// out incomplete and returns why.
func receiveEvaluation(stream evalStream, out evalSink, errw io.Writer) (*evalEnd, error) {
	e := &evalEnd{exposure: map[string]int64{}}
	var errs uint64
	for stream.Receive() {
		m := stream.Msg()
		if e.trailer != nil {
			return nil, fmt.Errorf("the server sent more after the evaluation's trailer; its output is not trustworthy")
		}
		switch p := m.GetPart().(type) {
		case *pb.EvaluateStreamResponse_Header:
			if e.head != nil {
				return nil, fmt.Errorf("the server sent a second evaluation header")
			}
			e.head = p.Header
			e.size = checkpointSize(p.Header.GetCheckpoint())
			if err := out.header(p.Header); err != nil {
				return nil, err
			}
		case *pb.EvaluateStreamResponse_Chunk:
			if e.head == nil {
				return nil, fmt.Errorf("the server sent findings before the evaluation header")
			}
			e.findings += uint64(len(p.Chunk.GetFindings()))
			errs += uint64(writeRuleErrors(errw, p.Chunk.GetErrors()))
			for s, n := range p.Chunk.GetExposureBySubject() {
				e.exposure[s] = n
			}
			if err := out.findings(p.Chunk.GetFindings()); err != nil {
				return nil, err
			}
		case *pb.EvaluateStreamResponse_Trailer:
			if e.head == nil {
				return nil, fmt.Errorf("the server sent the evaluation trailer before its header")
			}
			e.trailer = p.Trailer
		default:
			return nil, fmt.Errorf("the server sent an evaluation message of an unknown kind; upgrade grantline")
		}
	}
	if err := stream.Err(); err != nil {
		return nil, fmt.Errorf("evaluation cut short, the output above is incomplete: %s", describeRPCError(err))
	}
	switch {
	case e.trailer == nil:
		return nil, fmt.Errorf("evaluation cut short: the stream ended without its trailer, so the output above is incomplete; run it again")
	case e.trailer.GetFindings() != e.findings || e.trailer.GetErrors() != errs:
		return nil, fmt.Errorf("evaluation incomplete: received %d finding(s) and %d rule error(s), the server counted %d and %d; run it again",
			e.findings, errs, e.trailer.GetFindings(), e.trailer.GetErrors())
	}
	return e, out.end(e)
}

// jsonSink writes the object of docs/design.md "Commands and what scripts
// may rely on" as it receives it, byte for byte what encoding the whole
// evaluateJSON with two-space indentation gives: the fields before
// "findings", each finding as it arrives, then exposure_by_subject.
type jsonSink struct {
	w   io.Writer
	n   int    // findings written
	buf []byte // a chunk's findings, written at once
}

func (j *jsonSink) header(h *pb.EvaluateHeader) error {
	var b strings.Builder
	b.WriteString("{\n")
	field := func(name, v string) {
		q, _ := json.Marshal(v) // a string always marshals
		fmt.Fprintf(&b, "  %q: %s,\n", name, q)
	}
	field("checkpoint", h.GetCheckpoint())
	field("as_of", rfc3339(h.GetAsOf()))
	if h.GetFrom() != nil {
		field("from", rfc3339(h.GetFrom()))
	}
	b.WriteString(`  "findings": [`)
	_, err := io.WriteString(j.w, b.String())
	return err
}

func (j *jsonSink) findings(fs []*pb.Finding) error {
	// One write per chunk: a write per finding made a 335,000-finding
	// evaluation 670,000 system calls (docs/BENCHMARKS.md, "Streamed
	// evaluation"). The chunk is written before the next is read, so the
	// output still follows the stream.
	j.buf = j.buf[:0]
	for _, f := range fs {
		if j.n == 0 {
			j.buf = append(j.buf, "\n    "...)
		} else {
			j.buf = append(j.buf, ",\n    "...)
		}
		j.buf = appendFindingJSON(j.buf, f)
		j.n++
	}
	if len(j.buf) == 0 {
		return nil
	}
	_, err := j.w.Write(j.buf)
	if cap(j.buf) > maxSinkBuffer {
		j.buf = nil // a chunk of unusually large findings: do not keep its buffer
	}
	return err
}

// maxSinkBuffer is the largest buffer jsonSink keeps between chunks; a
// chunk is at most about a megabyte of protobuf, a little more as JSON.
const maxSinkBuffer = 4 << 20

// appendFindingJSON appends f as json.MarshalIndent(findingOf(f), "    ",
// "  ") writes it, byte for byte (TestAppendFindingJSON holds it to that),
// without reflection or a copy per finding.
func appendFindingJSON(b []byte, f *pb.Finding) []byte {
	const in1, in2, in3 = "\n      ", "\n        ", "\n          "
	b = append(b, "{"+in1+`"rule": `...)
	b = appendJSONString(b, f.GetRule())
	b = append(b, ","+in1+`"subject": `...)
	b = appendJSONString(b, f.GetSubject())
	b = append(b, ","+in1+`"severity": `...)
	b = appendJSONString(b, f.GetSeverity())
	b = append(b, ","+in1+`"entries": [`...)
	for i, e := range f.GetEntries() {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, in2+"{"+in3+`"index": `...)
		b = strconv.AppendUint(b, e.GetIndex(), 10)
		b = append(b, ","+in3+`"event_id": `...)
		b = appendJSONString(b, e.GetEventId())
		b = append(b, in2+"}"...)
	}
	if len(f.GetEntries()) > 0 {
		b = append(b, in1...)
	}
	b = append(b, "],"+in1+`"message": `...)
	b = appendJSONString(b, f.GetMessage())
	b = append(b, ","+in1+`"exposure_seconds": `...)
	b = strconv.AppendInt(b, f.GetExposureSeconds(), 10)
	b = append(b, ","+in1+`"opened_at": `...)
	b = appendJSONTime(b, f.GetOpenedAt())
	b = append(b, ","+in1+`"closed_at": `...)
	b = appendJSONTime(b, f.GetClosedAt())
	if s := f.GetSharesPrimaryWith(); s != "" {
		b = append(b, ","+in1+`"shares_primary_with": `...)
		b = appendJSONString(b, s)
	}
	return append(b, "\n    }"...)
}

// appendJSONTime appends ts as findingJSON's *string: null when unset.
func appendJSONTime(b []byte, ts *timestamppb.Timestamp) []byte {
	if ts == nil {
		return append(b, "null"...)
	}
	b = append(b, '"')
	b = ts.AsTime().UTC().AppendFormat(b, time.RFC3339)
	return append(b, '"')
}

// appendJSONString appends s quoted as encoding/json writes a string:
// HTML characters, U+2028 and U+2029 escaped, invalid UTF-8 replaced by
// U+FFFD.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

func (j *jsonSink) end(e *evalEnd) error {
	closing := "]"
	if j.n > 0 {
		closing = "\n  ]"
	}
	b, err := json.MarshalIndent(e.exposure, "  ", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(j.w, "%s,\n  \"exposure_by_subject\": %s\n}\n", closing, b)
	return err
}

// findingOf is a finding in the JSON object.
func findingOf(f *pb.Finding) findingJSON {
	fj := findingJSON{Rule: f.GetRule(), Subject: f.GetSubject(), Severity: f.GetSeverity(),
		Entries: []entryJSON{}, Message: f.GetMessage(), ExposureSeconds: f.GetExposureSeconds(),
		SharesPrimaryWith: f.GetSharesPrimaryWith()}
	if f.GetOpenedAt() != nil {
		o := rfc3339(f.GetOpenedAt())
		fj.OpenedAt = &o
	}
	if f.GetClosedAt() != nil {
		c := rfc3339(f.GetClosedAt())
		fj.ClosedAt = &c
	}
	for _, e := range f.GetEntries() {
		fj.Entries = append(fj.Entries, entryJSON{Index: e.GetIndex(), EventID: e.GetEventId()})
	}
	return fj
}

// rfc3339 formats a timestamp in UTC; "" when unset.
func rfc3339(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}

// tableSink prints a readable table as findings arrive, aligned within
// each chunk the server sends (a chunk holds up to about a megabyte of
// findings), then a one-line summary.
type tableSink struct {
	w    io.Writer
	head *pb.EvaluateHeader
	n    int
}

func (t *tableSink) header(h *pb.EvaluateHeader) error {
	t.head = h
	return nil
}

func (t *tableSink) findings(fs []*pb.Finding) error {
	if len(fs) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(t.w, 2, 8, 2, ' ', 0)
	if t.n == 0 {
		// No header over an empty table: the summary says it all.
		fmt.Fprintln(tw, "RULE\tSEVERITY\tSUBJECT\tENTRY\tOPENED\tCLOSED\tEXPOSURE\tMESSAGE")
	}
	for _, f := range fs {
		entry := "-"
		if es := f.GetEntries(); len(es) > 0 {
			entry = fmt.Sprintf("%d (%s)", es[0].GetIndex(), es[0].GetEventId())
		}
		opened, closed := "-", "open"
		if f.GetOpenedAt() != nil {
			opened = rfc3339(f.GetOpenedAt())
		}
		if f.GetClosedAt() != nil {
			closed = rfc3339(f.GetClosedAt())
		}
		msg := oneLine(f.GetMessage())
		if s := f.GetSharesPrimaryWith(); s != "" {
			msg += " (same entry as " + s + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", f.GetRule(), f.GetSeverity(), f.GetSubject(), entry,
			opened, closed, formatExposure(f.GetExposureSeconds()), msg)
	}
	t.n += len(fs)
	return tw.Flush()
}

// end prints the one-line summary under the table.
func (t *tableSink) end(e *evalEnd) error {
	if t.n > 0 {
		fmt.Fprintln(t.w)
	}
	asOf := "-"
	if e.head.GetAsOf() != nil {
		asOf = rfc3339(e.head.GetAsOf())
	}
	when := "as of " + asOf
	if e.head.GetFrom() != nil {
		when = "in the period " + rfc3339(e.head.GetFrom()) + " to " + asOf
	}
	var exposure int64
	for _, n := range e.exposure {
		exposure += n
	}
	_, err := fmt.Fprintf(t.w, "%d finding(s) over %d subject(s) and %d entries, %s, at %s; privilege outlived its purpose for %s over %d identity(ies) (each interval counted once)\n",
		e.findings, e.trailer.GetSubjectsEvaluated(), e.trailer.GetEntriesEvaluated(), when, checkpointLine(e.head.GetCheckpoint()),
		format.Duration(exposure), len(e.exposure))
	return err
}

// periodFlags parses --from/--to (an audit period; --to defaults to the
// server's time) against --as-of (one instant).
func periodFlags(asOf, from, to string) (*timestamppb.Timestamp, *timestamppb.Timestamp, error) {
	if from == "" && to == "" {
		return nil, nil, nil
	}
	if asOf != "" {
		return nil, nil, &exitError{code: 2, msg: "give --as-of (one instant) or --from/--to (a period), not both: the as-of time of a period is --to"}
	}
	if from == "" {
		return nil, nil, &exitError{code: 2, msg: "--to needs --from: a period is [--from, --to]"}
	}
	parse := func(name, v string) (*timestamppb.Timestamp, error) {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return nil, &exitError{code: 2, msg: fmt.Sprintf("%s %q: want an RFC 3339 time such as 2026-03-01T00:00:00Z", name, v)}
		}
		return timestamppb.New(t), nil
	}
	f, err := parse("--from", from)
	if err != nil {
		return nil, nil, err
	}
	var t *timestamppb.Timestamp
	if to != "" {
		if t, err = parse("--to", to); err != nil {
			return nil, nil, err
		}
		if !t.AsTime().After(f.AsTime()) {
			return nil, nil, &exitError{code: 2, msg: fmt.Sprintf("--to %s must be after --from %s (for one instant, use --as-of)", to, from)}
		}
	}
	return f, t, nil
}

// writeRuleErrors prints rule errors and returns how many there were.
func writeRuleErrors(w io.Writer, errs []*pb.RuleError) int {
	for _, e := range errs {
		fmt.Fprintf(w, "rule error: rule %s, subject %s: %s\n", e.GetRule(), e.GetSubject(), oneLine(e.GetMessage()))
	}
	return len(errs)
}

// formatExposure renders seconds as a duration, "-" for none.
func formatExposure(s int64) string {
	if s <= 0 {
		return "-"
	}
	return format.Duration(s)
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// checkpointLine summarises a signed checkpoint note by its size line.
func checkpointLine(note string) string {
	lines := strings.SplitN(note, "\n", 3)
	if len(lines) < 2 {
		return "checkpoint (none)"
	}
	return fmt.Sprintf("%s tree size %s", lines[0], lines[1])
}
