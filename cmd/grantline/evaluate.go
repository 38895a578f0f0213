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
	asJSON := fs.Bool("json", false, "print one JSON object: checkpoint, as_of, findings")
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
	resp, err := cl.Evidence().Evaluate(ctx, connect.NewRequest(req))
	if err != nil {
		return fmt.Errorf("%s", describeRPCError(err))
	}
	missing, err := subjectsWithoutEvents(ctx, cl.Log(), resp.Msg, subjects)
	if err != nil {
		return err
	}
	if *asJSON {
		err = writeEvaluateJSON(env.stdout, resp.Msg)
	} else {
		err = writeEvaluateTable(env.stdout, resp.Msg)
	}
	if err != nil {
		return err
	}
	if n := writeRuleErrors(env.stderr, resp.Msg.GetErrors()); n > 0 {
		return &exitError{code: 1, msg: fmt.Sprintf("%d rule evaluation(s) failed; their findings are missing from the output", n)}
	}
	if len(missing) > 0 {
		quoted := make([]string, len(missing))
		for i, m := range missing {
			quoted[i] = textsafe.Quote(m)
		}
		return &exitError{code: exitNoSubject, msg: fmt.Sprintf("no events for subject %s in the tree of size %d; check the id (grantline events ID lists a subject's chain)",
			strings.Join(quoted, ", "), checkpointSize(resp.Msg.GetCheckpoint()))}
	}
	return nil
}

// exitNoSubject is evaluate's exit status when a --subject has no events at
// the checkpoint (docs/design.md): its 0 findings mean nothing.
const exitNoSubject = 3

// subjectsWithoutEvents returns the requested subjects that have no entry in
// the tree the evaluation ran on, in the order given: one ListSubjectEvents
// page of one entry per subject, unless a single subject had entries
// evaluated.
func subjectsWithoutEvents(ctx context.Context, log grantlinev1connect.LogServiceClient, r *pb.EvaluateResponse, subjects []string) ([]string, error) {
	switch {
	case len(subjects) == 0:
		return nil, nil
	case len(subjects) == 1 && r.GetEntriesEvaluated() > 0:
		return nil, nil
	}
	// No entries evaluated does not prove a subject has none: the rules
	// read a chain only up to the as-of time. Ask the log.
	size := checkpointSize(r.GetCheckpoint())
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

// evaluateJSON is the object of docs/design.md "Commands and what scripts may
// rely on"; field order is fixed by the struct.
type evaluateJSON struct {
	Checkpoint string        `json:"checkpoint"`
	AsOf       string        `json:"as_of"`
	From       string        `json:"from,omitempty"` // the start of the period, with --from
	Findings   []findingJSON `json:"findings"`
	// ExposureBySubject: per subject, seconds in the union of its findings'
	// exposure intervals (a grant cited by several rules counts once).
	ExposureBySubject map[string]int64 `json:"exposure_by_subject"`
}

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

// writeEvaluateJSON prints the response as the fixed JSON object.
func writeEvaluateJSON(w io.Writer, r *pb.EvaluateResponse) error {
	out := evaluateJSON{Checkpoint: r.GetCheckpoint(), Findings: []findingJSON{}, ExposureBySubject: map[string]int64{}}
	if r.GetAsOf() != nil {
		out.AsOf = r.GetAsOf().AsTime().UTC().Format(time.RFC3339)
	}
	if r.GetFrom() != nil {
		out.From = r.GetFrom().AsTime().UTC().Format(time.RFC3339)
	}
	for s, n := range r.GetExposureBySubject() {
		out.ExposureBySubject[s] = n
	}
	for _, f := range r.GetFindings() {
		fj := findingJSON{Rule: f.GetRule(), Subject: f.GetSubject(), Severity: f.GetSeverity(),
			Entries: []entryJSON{}, Message: f.GetMessage(), ExposureSeconds: f.GetExposureSeconds(),
			SharesPrimaryWith: f.GetSharesPrimaryWith()}
		if f.GetOpenedAt() != nil {
			o := f.GetOpenedAt().AsTime().UTC().Format(time.RFC3339)
			fj.OpenedAt = &o
		}
		if f.GetClosedAt() != nil {
			c := f.GetClosedAt().AsTime().UTC().Format(time.RFC3339)
			fj.ClosedAt = &c
		}
		for _, e := range f.GetEntries() {
			fj.Entries = append(fj.Entries, entryJSON{Index: e.GetIndex(), EventID: e.GetEventId()})
		}
		out.Findings = append(out.Findings, fj)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// writeEvaluateTable prints a readable table and a one-line summary.
func writeEvaluateTable(w io.Writer, r *pb.EvaluateResponse) error {
	if len(r.GetFindings()) == 0 {
		// No header over an empty table: the summary says it all.
		return writeEvaluateSummary(w, r)
	}
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "RULE\tSEVERITY\tSUBJECT\tENTRY\tOPENED\tCLOSED\tEXPOSURE\tMESSAGE")
	for _, f := range r.GetFindings() {
		entry := "-"
		if es := f.GetEntries(); len(es) > 0 {
			entry = fmt.Sprintf("%d (%s)", es[0].GetIndex(), es[0].GetEventId())
		}
		opened, closed := "-", "open"
		if f.GetOpenedAt() != nil {
			opened = f.GetOpenedAt().AsTime().UTC().Format(time.RFC3339)
		}
		if f.GetClosedAt() != nil {
			closed = f.GetClosedAt().AsTime().UTC().Format(time.RFC3339)
		}
		msg := oneLine(f.GetMessage())
		if s := f.GetSharesPrimaryWith(); s != "" {
			msg += " (same entry as " + s + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", f.GetRule(), f.GetSeverity(), f.GetSubject(), entry,
			opened, closed, formatExposure(f.GetExposureSeconds()), msg)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	return writeEvaluateSummary(w, r)
}

// writeEvaluateSummary prints the one-line summary under the table.
func writeEvaluateSummary(w io.Writer, r *pb.EvaluateResponse) error {
	asOf := "-"
	if r.GetAsOf() != nil {
		asOf = r.GetAsOf().AsTime().UTC().Format(time.RFC3339)
	}
	when := "as of " + asOf
	if r.GetFrom() != nil {
		when = "in the period " + r.GetFrom().AsTime().UTC().Format(time.RFC3339) + " to " + asOf
	}
	var exposure int64
	for _, n := range r.GetExposureBySubject() {
		exposure += n
	}
	_, err := fmt.Fprintf(w, "%d finding(s) over %d subject(s) and %d entries, %s, at %s; privilege outlived its purpose for %s over %d identity(ies) (each interval counted once)\n",
		len(r.GetFindings()), r.GetSubjectsEvaluated(), r.GetEntriesEvaluated(), when, checkpointLine(r.GetCheckpoint()),
		format.Duration(exposure), len(r.GetExposureBySubject()))
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
		if t.AsTime().Before(f.AsTime()) {
			return nil, nil, &exitError{code: 2, msg: fmt.Sprintf("--to %s is before --from %s", to, from)}
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
