package main

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/ingest/auth"
	"github.com/grantline/grantline/ingest/client"
	"github.com/grantline/grantline/internal/datadir"
	"github.com/grantline/grantline/internal/server"
	"github.com/grantline/grantline/internal/synth"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/rules"
	"github.com/grantline/grantline/verify"
	"github.com/grantline/grantline/verify/format"
)

func init() {
	register(&command{
		name:    "demo",
		usage:   "[--seed N] [--identities N] [--months N] [--failure-rate F] [--out DIR] | --generate-only --out FILE.jsonl [--params-out FILE.yaml]",
		summary: "the whole loop on a synthetic IGA/PAM organisation: serve, stream, evaluate, export, verify",
		run:     runDemoCmd,
	})
}

// demoAuditor is the principal the demo evaluates and exports as.
const demoAuditor = "demo-auditor"

type demoConfig struct {
	org          synth.Config
	out          string
	generateOnly bool
	paramsOut    string // with generateOnly: where to write the params file
	quiet        bool
}

func runDemoCmd(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, commands["demo"])
	dc := demoConfig{org: synth.DefaultConfig()}
	fs.Uint64Var(&dc.org.Seed, "seed", dc.org.Seed, "random seed: the same seed gives the same organisation, byte for byte")
	fs.IntVar(&dc.org.Identities, "identities", dc.org.Identities, fmt.Sprintf("identities to simulate (%d to %d): humans, non-human identities and vaulted accounts", synth.MinIdentities, synth.MaxIdentities))
	fs.IntVar(&dc.org.Months, "months", dc.org.Months, fmt.Sprintf("months of history (%d to %d)", synth.MinMonths, synth.MaxMonths))
	fs.Float64Var(&dc.org.FailureRate, "failure-rate", dc.org.FailureRate, "share of each rule's eligible identities given that failure (0: a clean organisation)")
	start := fs.String("start", dc.org.Start.Format(time.DateOnly), "first day of the simulated period (YYYY-MM-DD)")
	fs.StringVar(&dc.out, "out", "", "folder for the demo's data and evidence (default: a new temporary folder); with --generate-only, the JSON-lines file to write (- for stdout)")
	fs.BoolVar(&dc.generateOnly, "generate-only", false, "only write the synthetic feed as JSON lines to --out; start nothing")
	fs.StringVar(&dc.paramsOut, "params-out", "", "with --generate-only, also write the organisation's rule params (its separation-of-duties policy, sod_pairs) to this file, for serve --params")
	fs.BoolVar(&dc.quiet, "quiet", false, "print only the summary")
	rest, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return &exitError{code: 2, msg: fmt.Sprintf("unexpected argument %q; the demo takes only flags", rest[0])}
	}
	if dc.org.Start, err = time.Parse(time.DateOnly, *start); err != nil {
		return &exitError{code: 2, msg: fmt.Sprintf("--start %q: want a date such as 2026-03-02", *start)}
	}
	if dc.generateOnly {
		return demoGenerate(env, dc)
	}
	if dc.paramsOut != "" {
		return &exitError{code: 2, msg: "--params-out goes with --generate-only (the full demo writes its own params)"}
	}
	sum, err := runDemo(ctx, env, dc)
	if err != nil {
		return err
	}
	if len(sum.missed) > 0 || len(sum.unexpected) > 0 {
		return &exitError{code: 1, msg: fmt.Sprintf("the findings do not match the planted failures: %d planted but not found (%s), %d found but not planted (%s)",
			len(sum.missed), strings.Join(firstN(sum.missed, 3), "; "), len(sum.unexpected), strings.Join(firstN(sum.unexpected, 3), "; "))}
	}
	return nil
}

func firstN(xs []string, n int) []string { return xs[:min(n, len(xs))] }

func demoGenerate(env *cmdEnv, dc demoConfig) error {
	if dc.out == "" {
		return &exitError{code: 2, msg: "--generate-only needs --out FILE.jsonl (or --out - for stdout)"}
	}
	org, err := synth.Generate(dc.org)
	if err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	w, closeOut := env.stdout, func() error { return nil }
	if dc.out != "-" {
		f, err := os.Create(dc.out)
		if err != nil {
			return fmt.Errorf("--out: %w", err)
		}
		bw := bufio.NewWriterSize(f, 1<<20)
		w, closeOut = bw, func() error {
			if err := bw.Flush(); err != nil {
				f.Close()
				return err
			}
			return f.Close()
		}
	}
	if err := synth.WriteJSONL(w, org.Events); err != nil {
		closeOut()
		return err
	}
	if err := closeOut(); err != nil {
		return fmt.Errorf("writing %s: %w", dc.out, err)
	}
	if dc.paramsOut != "" {
		if err := os.WriteFile(dc.paramsOut, org.ParamsYAML(), 0o644); err != nil {
			return fmt.Errorf("--params-out: %w", err)
		}
		if dc.out != "-" {
			fmt.Fprintf(env.stderr, "wrote %d events (%d identities, %d sources, %d planted failures) to %s, and its separation-of-duties policy to %s (for serve --params); evaluate it as of %s\n",
				len(org.Events), org.Identities, len(synth.Sources), len(org.Planted), dc.out, dc.paramsOut, org.AsOf.Format(time.RFC3339))
		}
		return nil
	}
	if dc.out != "-" {
		fmt.Fprintf(env.stderr, "wrote %d events (%d identities, %d sources, %d planted failures) to %s\n",
			len(org.Events), org.Identities, len(synth.Sources), len(org.Planted), dc.out)
		fmt.Fprintf(env.stderr, "evaluate it as of %s; its separation-of-duties policy (for serve --params):\n%s",
			org.AsOf.Format(time.RFC3339), org.ParamsYAML())
	}
	return nil
}

// demoSummary is what a demo run found, for the summary and for tests.
type demoSummary struct {
	org      *synth.Org
	dir      string
	dataDir  string
	evidence string
	findings []*pb.Finding
	// exposureBySubject is the server's union exposure per subject.
	exposureBySubject map[string]int64
	asOf              time.Time
	missed            []string // planted, not found: "rule subject event"
	unexpected        []string // found, not planted
	verified          *verify.Report
	kept              bool   // the folder stays (--out); else it is removed at the end
	prog              string // the program name to print in commands
	newEvents         uint64
	elapsed           time.Duration
}

func runDemo(ctx context.Context, env *cmdEnv, dc demoConfig) (*demoSummary, error) {
	began := time.Now()
	logf := func(format string, args ...any) {
		if !dc.quiet {
			fmt.Fprintf(env.stderr, "demo: "+format+"\n", args...)
		}
	}
	org, err := synth.Generate(dc.org)
	if err != nil {
		return nil, &exitError{code: 2, msg: err.Error()}
	}
	dir := dc.out
	if dir == "" {
		// No folder named: work in a temporary one and remove it at the
		// end (about 10 MB), saying so; --out keeps everything.
		if dir, err = os.MkdirTemp("", "grantline-demo-"); err != nil {
			return nil, fmt.Errorf("creating the demo folder: %w", err)
		}
		defer os.RemoveAll(dir) // runs after the server is closed
	}
	sum := &demoSummary{org: org, dir: dir, dataDir: filepath.Join(dir, "data"), evidence: filepath.Join(dir, "evidence"), kept: dc.out != "", prog: env.prog()}
	for _, p := range []string{sum.dataDir, sum.evidence} {
		if ents, err := os.ReadDir(p); err == nil && len(ents) > 0 {
			return nil, &exitError{code: 1, msg: fmt.Sprintf("%s is not empty (a previous demo?): choose a new --out folder or remove it", p)}
		}
	}
	if err := os.MkdirAll(sum.dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating %s: %w", sum.dataDir, err)
	}
	feed := filepath.Join(dir, "feed.jsonl")
	if err := writeFile(feed, func(w io.Writer) error { return synth.WriteJSONL(w, org.Events) }); err != nil {
		return nil, err
	}
	params := filepath.Join(dir, "params.yaml")
	if err := os.WriteFile(params, org.ParamsYAML(), 0o644); err != nil {
		return nil, fmt.Errorf("writing %s: %w", params, err)
	}
	logf("generated %d events for %d identities over %d months (seed %d), %d planted failures; feed in %s",
		len(org.Events), org.Identities, org.Config.Months, org.Config.Seed, len(org.Planted), feed)

	srv, err := server.Start(ctx, server.Config{DataDir: sum.dataDir, Listen: "127.0.0.1:0", ParamsFile: params, SubjectMap: true})
	if err != nil {
		return nil, fmt.Errorf("starting the server: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		srv.Close(cctx)
	}()
	logf("server listening on %s, data in %s", srv.URL, sum.dataDir)

	store, err := datadir.OpenTokens(sum.dataDir)
	if err != nil {
		return nil, fmt.Errorf("opening the token store: %w", err)
	}
	tokens := map[string]string{}
	for _, name := range append(slices.Clone(synth.Sources), demoAuditor) {
		role := auth.RoleSource
		if name == demoAuditor {
			role = auth.RoleAuditor
		}
		if tokens[name], err = store.Add(name, role); err != nil {
			return nil, fmt.Errorf("adding token %s: %w", name, err)
		}
	}

	// One client and one AppendStream per source, all at once.
	t0 := time.Now()
	var st client.Stats
	var wg sync.WaitGroup
	errs := make([]error, len(synth.Sources))
	bySource := org.BySource()
	for i, src := range synth.Sources {
		wg.Go(func() {
			errs[i] = demoStream(ctx, srv.URL, tokens[src], bySource[src], &st)
			if errs[i] != nil {
				errs[i] = fmt.Errorf("streaming %s: %w", src, errs[i])
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	sum.newEvents = st.Fresh.Load()
	el := time.Since(t0)
	logf("streamed %d events from %d sources in %s (%.0f events/s), %d new, %d duplicate",
		len(org.Events), len(synth.Sources), el.Round(time.Millisecond), float64(len(org.Events))/el.Seconds(), st.Fresh.Load(), st.Dup.Load())

	cf := clientFlags{server: srv.URL, token: tokens[demoAuditor]}
	cl, err := cf.dial()
	if err != nil {
		return nil, err
	}
	asOf := timestamppb.New(org.AsOf)
	ev, err := cl.Evidence().Evaluate(ctx, connect.NewRequest(&pb.EvaluateRequest{AsOf: asOf}))
	if err != nil {
		return nil, fmt.Errorf("evaluate: %s", describeRPCError(err))
	}
	if errs := ev.Msg.GetErrors(); len(errs) > 0 {
		e := errs[0]
		return nil, fmt.Errorf("evaluate: %d rule errors, the first: rule %s on %s: %s", len(errs), e.GetRule(), e.GetSubject(), e.GetMessage())
	}
	sum.findings = ev.Msg.GetFindings()
	sum.exposureBySubject = ev.Msg.GetExposureBySubject()
	sum.asOf = ev.Msg.GetAsOf().AsTime()
	sum.missed, sum.unexpected = comparePlanted(org.Planted, sum.findings)
	logf("evaluated %d subjects, %d entries as of %s: %d findings",
		ev.Msg.GetSubjectsEvaluated(), ev.Msg.GetEntriesEvaluated(), org.AsOf.Format(time.RFC3339), len(sum.findings))

	stream, err := cl.Evidence().ExportEvidence(ctx, connect.NewRequest(&pb.ExportEvidenceRequest{AsOf: asOf}))
	if err != nil {
		return nil, fmt.Errorf("export: %s", describeRPCError(err))
	}
	files, err := receivePackage(stream, verify.DirSink{Dir: sum.evidence})
	stream.Close()
	if err != nil {
		return nil, fmt.Errorf("export: %s", describeRPCError(err))
	}
	logf("exported the evidence package to %s (%d files)", sum.evidence, len(files))

	logKey, err := os.ReadFile(filepath.Join(sum.dataDir, "keys", "log.vkey"))
	if err != nil {
		return nil, fmt.Errorf("reading the log key: %w", err)
	}
	evKey, err := os.ReadFile(filepath.Join(sum.dataDir, "keys", "evidence.pub"))
	if err != nil {
		return nil, fmt.Errorf("reading the evidence key: %w", err)
	}
	sum.verified, err = verify.Verify(ctx, sum.evidence, verify.Keys{LogKey: string(logKey), EvidenceKey: evKey}, verify.Options{})
	var ce *verify.CheckError
	if errors.As(err, &ce) {
		return nil, fmt.Errorf("the exported package does not verify: %s: %s: %w", ce.File, ce.Check, ce.Err)
	}
	if err != nil {
		return nil, fmt.Errorf("verifying %s: %w", sum.evidence, err)
	}
	sum.elapsed = time.Since(began)
	printDemoSummary(env.stdout, sum)
	return sum, nil
}

func writeFile(name string, fill func(io.Writer) error) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	if err := fill(bw); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", name, err)
	}
	return f.Close()
}

// demoStream sends one source's events, in time order, over one AppendStream.
func demoStream(ctx context.Context, url, token string, evs []*pb.Event, st *client.Stats) error {
	cl, err := client.Dial(url, client.Options{Token: token})
	if err != nil {
		return err
	}
	const size = 500
	in := make(chan *client.Batch, (len(evs)+size-1)/size)
	for i, seq := 0, uint64(0); i < len(evs); i, seq = i+size, seq+1 {
		in <- &client.Batch{Seq: seq, Events: evs[i:min(i+size, len(evs))], Where: fmt.Sprintf("event %d", i+1)}
	}
	close(in)
	// One batch in flight: the ledger then keeps each source's events in the
	// order sent, which backdated-closure relies on (docs/rules.md).
	return client.AppendStream(ctx, cl.Ingest(), client.StreamOptions{Streams: 1, Window: 1, Retries: 8}, in,
		func(_ *client.Batch, resp *pb.AppendStreamResponse, _ time.Duration) { st.Add(resp) })
}

// comparePlanted lists planted failures the findings miss and findings
// that were not planted, each as "rule subject event-id".
func comparePlanted(planted []synth.Planted, fs []*pb.Finding) (missed, unexpected []string) {
	want := map[string]bool{}
	for _, p := range planted {
		want[p.Rule+" "+p.Subject+" "+p.EventID] = true
	}
	got := map[string]bool{}
	for _, f := range fs {
		k := f.GetRule() + " " + f.GetSubject()
		if len(f.GetEntries()) > 0 {
			k += " " + f.GetEntries()[0].GetEventId()
		}
		got[k] = true
		if !want[k] {
			unexpected = append(unexpected, k)
		}
	}
	for k := range want {
		if !got[k] {
			missed = append(missed, k)
		}
	}
	slices.Sort(missed)
	slices.Sort(unexpected)
	return missed, unexpected
}

var severityOrder = map[string]int{"critical": 0, "high": 1, "medium": 2, "low": 3}

func printDemoSummary(w io.Writer, s *demoSummary) {
	type row struct {
		rule, severity string
		n, subjects    int
		exposure       int64
		subjectsSeen   map[string]bool
	}
	rows := map[string]*row{}
	var exposure int64
	for _, n := range s.exposureBySubject {
		exposure += n
	}
	byRule := map[string][]rules.Finding{}
	shared := 0
	sev := map[string]int{}
	for _, f := range s.findings {
		if f.GetSharesPrimaryWith() != "" {
			shared++
		}
		rf := rules.Finding{Subject: f.GetSubject(), ExposureSeconds: f.GetExposureSeconds()}
		if f.GetClosedAt() != nil {
			rf.ClosedAt = f.GetClosedAt().AsTime()
		}
		byRule[f.GetRule()] = append(byRule[f.GetRule()], rf)
		r := rows[f.GetRule()]
		if r == nil {
			r = &row{rule: f.GetRule(), severity: f.GetSeverity(), subjectsSeen: map[string]bool{}}
			rows[f.GetRule()] = r
		}
		r.n++
		r.subjectsSeen[f.GetSubject()] = true
		sev[f.GetSeverity()]++
	}
	for id, fs := range byRule {
		for _, n := range rules.ExposureBySubject(fs, s.asOf) {
			rows[id].exposure += n
		}
	}
	list := make([]*row, 0, len(rows))
	for _, r := range rows {
		list = append(list, r)
	}
	slices.SortFunc(list, func(a, b *row) int {
		return cmp.Or(cmp.Compare(severityOrder[a.severity], severityOrder[b.severity]), cmp.Compare(b.n, a.n), cmp.Compare(a.rule, b.rule))
	})
	o := s.org
	fmt.Fprintf(w, "Grantline demo: %d events from %d sources (%s), %d identities, %s to %s\n",
		len(o.Events), len(synth.Sources), strings.Join(synth.Sources, ", "), o.Identities,
		o.Config.Start.Format(time.DateOnly), o.AsOf.Format(time.DateOnly))
	fmt.Fprintf(w, "checkpoint: tree size %d; evaluated as of %s\n\n", s.verified.Size, o.AsOf.Format(time.RFC3339))
	var sevs []string
	for _, k := range []string{"critical", "high", "medium", "low"} {
		if sev[k] > 0 {
			sevs = append(sevs, fmt.Sprintf("%d %s", sev[k], k))
		}
	}
	if len(s.findings) == 0 {
		fmt.Fprintln(w, "no findings")
	} else {
		fmt.Fprintf(w, "%d findings (%s), %d of them on the same entry as a more specific one; privilege outlived its purpose for %s in total over %d identity(ies) (each interval counted once)\n",
			len(s.findings), strings.Join(sevs, ", "), shared, humanDuration(exposure), len(s.exposureBySubject))
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if len(list) > 0 {
		fmt.Fprintln(tw, "  SEVERITY\tRULE\tFINDINGS\tIDENTITIES\tEXPOSURE")
	}
	for _, r := range list {
		exp := "-"
		if r.exposure > 0 {
			exp = humanDuration(r.exposure)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%d\t%d\t%s\n", r.severity, r.rule, r.n, len(r.subjectsSeen), exp)
	}
	tw.Flush()
	if len(s.missed) == 0 && len(s.unexpected) == 0 {
		fmt.Fprintf(w, "\nevery one of the %d failures planted in the synthetic organisation was found, and nothing else\n", len(o.Planted))
	} else {
		fmt.Fprintf(w, "\nMISMATCH: %d planted failures not found, %d findings not planted\n", len(s.missed), len(s.unexpected))
	}
	if !s.kept {
		fmt.Fprintf(w, "\nevidence package verified: %d checks passed\n", len(s.verified.Checks))
		fmt.Fprintf(w, "the demo's temporary folder %s is removed now; run with --out DIR to keep the evidence package, its report and the data\n", s.dir)
		fmt.Fprintf(w, "done in %s\n", s.elapsed.Round(100*time.Millisecond))
		return
	}
	prog := s.prog
	if prog == "" {
		prog = "grantline"
	}
	fmt.Fprintf(w, "\nevidence package: %s (verified: %d checks passed)\n", s.evidence, len(s.verified.Checks))
	fmt.Fprintf(w, "report:           %s\n", filepath.Join(s.evidence, "report.html"))
	fmt.Fprintf(w, "feed:             %s\n", filepath.Join(s.dir, "feed.jsonl"))
	fmt.Fprintf(w, "re-check it:      %s verify %s --log-key %s --evidence-key %s\n", prog,
		shellQuote(s.evidence), shellQuote(filepath.Join(s.dataDir, "keys", "log.vkey")), shellQuote(filepath.Join(s.dataDir, "keys", "evidence.pub")))
	fmt.Fprintf(w, "done in %s\n", s.elapsed.Round(100*time.Millisecond))
}

// humanDuration is format.Duration, the one human duration format.
func humanDuration(sec int64) string { return format.Duration(sec) }
