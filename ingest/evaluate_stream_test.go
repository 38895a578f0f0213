package ingest

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/internal/synth"
	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/rules"
)

// synthLedger is a real badger ledger holding a synthetic org, the built-in
// rule set with the org's params, and the org's as-of time.
func synthLedger(t testing.TB, identities int) (*ledger.Log, *rules.Set, time.Time) {
	t.Helper()
	return synthLedgerSeed(t, 21, identities)
}

// synthLedgerSeed is synthLedger with the org of another seed.
func synthLedgerSeed(t testing.TB, seed uint64, identities int) (*ledger.Log, *rules.Set, time.Time) {
	t.Helper()
	org, err := synth.Generate(synth.Config{Seed: seed, Identities: identities, FailureRate: 0.2})
	if err != nil {
		t.Fatal(err)
	}
	l := openBadgerLedger(t)
	for evs := range slices.Chunk(org.Events, 500) {
		if _, _, err := l.Append(t.Context(), evs); err != nil {
			t.Fatal(err)
		}
	}
	set := synthRules(t, org, nil)
	return l, set, org.AsOf
}

// synthRules is the built-in rules but those drop reports (nil: none),
// with org's parameters.
func synthRules(t testing.TB, org *synth.Org, drop func(*rules.Rule) bool) *rules.Set {
	t.Helper()
	params, err := rules.ParseParams("sod.yaml", org.ParamsYAML())
	if err != nil {
		t.Fatal(err)
	}
	builtin, err := rules.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	if drop != nil {
		builtin = slices.DeleteFunc(builtin, drop)
	}
	set, err := rules.NewSet(builtin, params)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// logChains is the log's chains built from a full read of its entries,
// independently of the subject index the server reads.
type logChains map[string][]rules.Entry

func readChains(t *testing.T, l *ledger.Log) (logChains, []string) {
	t.Helper()
	size := l.Latest().Size
	chains := logChains{}
	for start := uint64(0); start < size; {
		es, err := l.Entries(t.Context(), start, min(1000, size-start))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			ent, err := event.DecodeLeaf(e.Leaf)
			if err != nil {
				t.Fatal(err)
			}
			s := ent.GetEvent().GetSubject().GetId()
			chains[s] = append(chains[s], rules.Entry{Index: e.Index, Leaf: e.Leaf})
		}
		start = es[len(es)-1].Index + 1
	}
	var subjects []string
	for s := range chains {
		subjects = append(subjects, s)
	}
	slices.Sort(subjects)
	return chains, subjects
}

func (c logChains) Chain(_ context.Context, s string) ([]rules.Entry, error) { return c[s], nil }

// TestEvaluateStreamMatchesEvaluate: over a real ledger, EvaluateStream with
// a small chunk limit sends every finding of the in-process evaluation
// across many chunks, never a message over the limit, subject by subject
// in id order, with the header and trailer saying the same as Evaluate.
func TestEvaluateStreamMatchesEvaluate(t *testing.T) {
	const limit = 2048
	l, set, asOf := synthLedger(t, 80)
	chains, subjects := readChains(t, l)
	e := newEnv(t, func(c *Config) { c.Ledger, c.Evaluator, c.EvaluateChunkBytes = l, set, limit })
	for _, tc := range []struct {
		name   string
		period bool
	}{{"instant", false}, {"period", true}} {
		from := asOf.AddDate(0, -2, 0)
		var want *rules.Result
		var err error
		req := &pb.EvaluateRequest{}
		if tc.period {
			want, err = set.EvaluatePeriod(t.Context(), subjects, chains, from, asOf)
			req.From, req.To = timestamppb.New(from), timestamppb.New(asOf)
		} else {
			want, err = set.Evaluate(t.Context(), subjects, chains, asOf)
			req.AsOf = timestamppb.New(asOf)
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(want.Findings) < 20 {
			t.Fatalf("only %d findings in process: too few to cross chunk boundaries", len(want.Findings))
		}
		for _, p := range []protocol{protocols[0], protocols[2]} {
			t.Run(tc.name+"/"+p.name, func(t *testing.T) {
				stream, err := e.clients(p, auditorTok).evidence.EvaluateStream(t.Context(), connect.NewRequest(&pb.EvaluateStreamRequest{Request: req}))
				if err != nil {
					t.Fatal(err)
				}
				defer stream.Close()
				var msgs []*pb.EvaluateStreamResponse
				for stream.Receive() {
					m := stream.Msg()
					if n := proto.Size(m); n > limit {
						t.Errorf("message %d is %d bytes, over the %d-byte chunk limit", len(msgs), n, limit)
					}
					msgs = append(msgs, m)
				}
				if err := stream.Err(); err != nil {
					t.Fatal(err)
				}
				head, trailer := msgs[0].GetHeader(), msgs[len(msgs)-1].GetTrailer()
				if head == nil || trailer == nil {
					t.Fatalf("stream of %d messages: want a header first and a trailer last", len(msgs))
				}
				if !head.GetAsOf().AsTime().Equal(asOf) || (tc.period != (head.GetFrom() != nil)) || checkpointSizeOf(head.GetCheckpoint()) != l.Latest().Size {
					t.Errorf("header %v", head)
				}
				var got []*pb.Finding
				var errs []*pb.RuleError
				exposure := map[string]int64{}
				for _, m := range msgs[1 : len(msgs)-1] {
					ch := m.GetChunk()
					if ch == nil {
						t.Fatalf("a %T between header and trailer", m.GetPart())
					}
					got = append(got, ch.GetFindings()...)
					errs = append(errs, ch.GetErrors()...)
					for s, n := range ch.GetExposureBySubject() {
						if _, dup := exposure[s]; dup {
							t.Errorf("subject %s's exposure in two chunks", s)
						}
						exposure[s] = n
					}
				}
				if len(msgs) < 5 {
					t.Errorf("%d messages: the findings did not cross chunk boundaries", len(msgs))
				}
				// Subject by subject in id order; within one, by (rule, index).
				if !slices.IsSortedFunc(got, func(a, b *pb.Finding) int {
					return cmp.Or(strings.Compare(a.GetSubject(), b.GetSubject()), strings.Compare(a.GetRule(), b.GetRule()),
						cmp.Compare(a.GetEntries()[0].GetIndex(), b.GetEntries()[0].GetIndex()))
				}) {
					t.Error("streamed findings are not by (subject, rule, primary index)")
				}
				slices.SortStableFunc(got, func(a, b *pb.Finding) int {
					return cmp.Or(strings.Compare(a.GetRule(), b.GetRule()), strings.Compare(a.GetSubject(), b.GetSubject()),
						cmp.Compare(a.GetEntries()[0].GetIndex(), b.GetEntries()[0].GetIndex()))
				})
				if len(got) != len(want.Findings) {
					t.Fatalf("streamed %d findings, in process %d", len(got), len(want.Findings))
				}
				for i, f := range want.Findings {
					if !proto.Equal(got[i], findingPB(f)) {
						t.Fatalf("finding %d: streamed %v\nin process %v", i, got[i], findingPB(f))
					}
				}
				if len(errs) != len(want.Errors) {
					t.Errorf("streamed %d rule errors, in process %d", len(errs), len(want.Errors))
				}
				if len(exposure) != len(want.ExposureBySubject) {
					t.Errorf("streamed exposure for %d subjects, in process %d", len(exposure), len(want.ExposureBySubject))
				}
				for s, n := range want.ExposureBySubject {
					if exposure[s] != n {
						t.Errorf("exposure of %s: streamed %d, in process %d", s, exposure[s], n)
					}
				}
				if trailer.GetSubjectsEvaluated() != uint64(want.Subjects) || trailer.GetEntriesEvaluated() != uint64(want.Entries) ||
					trailer.GetFindings() != uint64(len(want.Findings)) || trailer.GetErrors() != uint64(len(want.Errors)) {
					t.Errorf("trailer %v, want %d subjects, %d entries, %d findings, %d errors", trailer, want.Subjects, want.Entries, len(want.Findings), len(want.Errors))
				}
			})
		}
	}
}

// checkpointSizeOf reads the tree size line of a checkpoint note.
// TestEvaluateStreamRules: with rules named, only their findings are sent
// and the trailer counts those.
func TestEvaluateStreamRules(t *testing.T) {
	l, set, asOf := synthLedger(t, 40)
	chains, subjects := readChains(t, l)
	all, err := set.Evaluate(t.Context(), subjects, chains, asOf)
	if err != nil {
		t.Fatal(err)
	}
	rule := all.Findings[0].Rule
	want := 0
	for _, f := range all.Findings {
		if f.Rule == rule {
			want++
		}
	}
	if want == len(all.Findings) {
		t.Fatal("every finding is of one rule: the filter would prove nothing")
	}
	e := newEnv(t, func(c *Config) { c.Ledger, c.Evaluator = l, set })
	stream, err := e.clients(protocols[0], auditorTok).evidence.EvaluateStream(t.Context(), connect.NewRequest(&pb.EvaluateStreamRequest{
		Request: &pb.EvaluateRequest{AsOf: timestamppb.New(asOf), Rules: []string{rule}}}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	got := 0
	var trailer *pb.EvaluateTrailer
	for stream.Receive() {
		for _, f := range stream.Msg().GetChunk().GetFindings() {
			if f.GetRule() != rule {
				t.Errorf("a finding of rule %s, asked for %s only", f.GetRule(), rule)
			}
			got++
		}
		if tr := stream.Msg().GetTrailer(); tr != nil {
			trailer = tr
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if got != want || trailer.GetFindings() != uint64(want) {
		t.Errorf("received %d findings, trailer says %d; want %d of rule %s", got, trailer.GetFindings(), want, rule)
	}
}

// checkpointSizeOf reads the tree size line of a checkpoint note.
func checkpointSizeOf(note string) uint64 {
	lines := strings.SplitN(note, "\n", 3)
	if len(lines) < 2 {
		return 0
	}
	n, _ := strconv.ParseUint(lines[1], 10, 64)
	return n
}

// TestEvaluateUnaryLimit: Evaluate answers a small result whole, and
// refuses one over its limit with ResourceExhausted naming EvaluateStream.
func TestEvaluateUnaryLimit(t *testing.T) {
	l, set, asOf := synthLedger(t, 40)
	for _, tc := range []struct {
		name  string
		limit int
		code  connect.Code
	}{{"fits", 0, 0}, {"too large", 4096, connect.CodeResourceExhausted}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, func(c *Config) { c.Ledger, c.Evaluator, c.UnaryEvaluateMaxBytes = l, set, tc.limit })
			resp, err := e.clients(protocols[0], auditorTok).evidence.Evaluate(t.Context(), connect.NewRequest(&pb.EvaluateRequest{AsOf: timestamppb.New(asOf)}))
			if tc.code == 0 {
				if err != nil {
					t.Fatal(err)
				}
				if len(resp.Msg.GetFindings()) == 0 || proto.Size(resp.Msg) <= 4096 {
					t.Fatalf("Evaluate: %d findings in %d bytes; the refusal case below would prove nothing", len(resp.Msg.GetFindings()), proto.Size(resp.Msg))
				}
				return
			}
			if connect.CodeOf(err) != tc.code || !strings.Contains(err.Error(), "EvaluateStream") {
				t.Errorf("Evaluate over the limit = %v, want %v naming EvaluateStream", err, tc.code)
			}
		})
	}
}

// gatedLedger is the real ledger whose chain reads, past the first open,
// wait until their call is cancelled: an evaluation can only end by
// cancellation.
type gatedLedger struct {
	Ledger
	open  int64
	reads atomic.Int64
}

func (g *gatedLedger) SubjectEntries(ctx context.Context, subject string, size, start uint64, limit int) ([]ledger.Entry, error) {
	if g.reads.Add(1) > g.open {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return g.Ledger.SubjectEntries(ctx, subject, size, start, limit)
}

// TestEvaluateStreamCancel: a client that goes away mid-stream stops the
// server's evaluation: the handler returns, and no chain is read after.
func TestEvaluateStreamCancel(t *testing.T) {
	l, set, asOf := synthLedger(t, 40)
	_, subjects := readChains(t, l)
	// The source index reads every chain once; then a few subjects.
	g := &gatedLedger{Ledger: l, open: int64(len(subjects) + 5)}
	e := newEnv(t, func(c *Config) { c.Ledger, c.Evaluator, c.EvaluateChunkBytes = g, set, 512 })
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	stream, err := e.clients(protocols[0], auditorTok).evidence.EvaluateStream(ctx, connect.NewRequest(&pb.EvaluateStreamRequest{Request: &pb.EvaluateRequest{AsOf: timestamppb.New(asOf)}}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if !stream.Receive() || stream.Msg().GetHeader() == nil {
		t.Fatalf("first message %v, err %v; want the header", stream.Msg(), stream.Err())
	}
	cancel()
	for stream.Receive() {
	}
	if err := stream.Err(); connect.CodeOf(err) != connect.CodeCanceled && !errors.Is(err, context.Canceled) {
		t.Errorf("stream after cancel: %v, want canceled", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(e.logs.String(), "EvaluateStream") {
		if time.Now().After(deadline) {
			t.Fatalf("the server's EvaluateStream did not end within 10s of the client's cancel; log:\n%s", e.logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	n := g.reads.Load()
	time.Sleep(100 * time.Millisecond)
	if g.reads.Load() != n {
		t.Errorf("chains still read after the call ended: %d, then %d", n, g.reads.Load())
	}
	if n >= int64(2*len(subjects)) {
		t.Errorf("%d chain reads for %d subjects: the evaluation ran to the end", n, len(subjects))
	}
}

// TestChunkerMaxAge: a chunk is sent when it is full, and also, after a
// subject's results, once it is maxAge old, so that a slow evaluation with
// few findings reaches the client as it goes; with no age bound, small
// results share one chunk until flushed.
func TestChunkerMaxAge(t *testing.T) {
	results := make([]*rules.SubjectResult, 5)
	for i := range results {
		s := "user-" + strconv.Itoa(i)
		results[i] = &rules.SubjectResult{Subject: s, Entries: 1, Findings: []rules.Finding{{Rule: "r", Subject: s, Message: "m"}}}
	}
	for _, tc := range []struct {
		name   string
		maxAge time.Duration
		want   int // chunks before the final flush
	}{
		{"no age bound", 0, 0},
		{"every subject is old enough", time.Nanosecond, 5},
		{"an hour", time.Hour, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var sent []*pb.EvaluateChunk
			c := &chunker{limit: 1 << 20, maxAge: tc.maxAge, send: func(ch *pb.EvaluateChunk) error { sent = append(sent, ch); return nil }}
			for _, r := range results {
				if err := c.add(r); err != nil {
					t.Fatal(err)
				}
			}
			if len(sent) != tc.want {
				t.Fatalf("%d chunks sent before the flush, want %d", len(sent), tc.want)
			}
			if err := c.flush(); err != nil {
				t.Fatal(err)
			}
			n := 0
			for _, ch := range sent {
				n += len(ch.GetFindings())
			}
			if n != len(results) {
				t.Fatalf("%d findings sent in %d chunks, want %d", n, len(sent), len(results))
			}
		})
	}
}
