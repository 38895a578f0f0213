package ingest

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"iter"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"github.com/transparency-dev/merkle/rfc6962"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/rules"
)

func (e *testEnv) get(t *testing.T, path, token string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, e.url+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := e.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

func (e *testEnv) fill(t *testing.T, n int) {
	t.Helper()
	c := e.clients(protocols[0], adminTok)
	for start := 0; start < n; start += 1000 {
		var evs []*pb.Event
		for i := start; i < min(n, start+1000); i++ {
			evs = append(evs, newEvent("okta", fmt.Sprint("t", i), "session.started", fmt.Sprint("u", i%7)))
		}
		if _, err := c.ingest.Append(t.Context(), connect.NewRequest(&pb.AppendRequest{Events: evs})); err != nil {
			t.Fatal(err)
		}
	}
}

func TestTiles(t *testing.T) {
	e := newEnv(t)
	e.fill(t, 300)
	resp, body := e.get(t, "/checkpoint", auditorTok)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET /checkpoint = %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	cp := e.ledger.Latest()
	verifyCheckpoint(t, e.ledger, string(body), 300, cp.Root[:])

	// Level-0 tile 0 is full: its 256 hashes are the leaf hashes.
	resp, body = e.get(t, "/tile/0/000", auditorTok)
	if resp.StatusCode != 200 || len(body) != 256*32 {
		t.Fatalf("GET /tile/0/000 = %d, %d bytes; want 200, %d", resp.StatusCode, len(body), 256*32)
	}
	if cc := resp.Header.Get("Cache-Control"); !strings.Contains(cc, "immutable") {
		t.Errorf("full tile Cache-Control = %q, want immutable", cc)
	}
	ents, _ := e.ledger.Entries(t.Context(), 0, 256)
	for i, en := range ents {
		if !bytes.Equal(body[i*32:(i+1)*32], rfc6962.DefaultHasher.HashLeaf(en.Leaf)) {
			t.Fatalf("tile 0/000 hash %d is not the hash of leaf %d", i, i)
		}
	}
	// The partial tile and entry bundle of the remaining 44 entries.
	resp, body = e.get(t, "/tile/0/001.p/44", auditorTok)
	if resp.StatusCode != 200 || len(body) != 44*32 || strings.Contains(resp.Header.Get("Cache-Control"), "immutable") {
		t.Errorf("GET /tile/0/001.p/44 = %d, %d bytes, %q", resp.StatusCode, len(body), resp.Header.Get("Cache-Control"))
	}
	resp, body = e.get(t, "/tile/entries/001.p/44", auditorTok)
	if resp.StatusCode != 200 {
		t.Fatalf("GET /tile/entries/001.p/44 = %d", resp.StatusCode)
	}
	ents, _ = e.ledger.Entries(t.Context(), 256, 44)
	for i := 0; len(body) > 0; i++ {
		n := int(binary.BigEndian.Uint16(body))
		if i >= len(ents) || !bytes.Equal(body[2:2+n], ents[i].Leaf) {
			t.Fatalf("entry bundle entry %d does not match leaf %d", i, 256+i)
		}
		body = body[2+n:]
	}
	for _, path := range []string{
		"/tile/0/001",       // not full yet
		"/tile/0/001.p/45",  // wider than the tree
		"/tile/1/000",       // level 1 needs 65536 leaves
		"/tile/entries/002", // past the end
		"/tile/0/1",         // not the canonical 3-digit encoding
		"/tile/0/x001/000",  // tile 256000: past the end
		"/tile/data/000",    // the Go sumdb spelling, not C2SP
		"/tile/0/000.p/256", // a partial width must be < 256
		"/tile/0/000.p/0",   // ... and > 0
		"/tile/-1/000",      // no such level
		"/tile/",            // nothing
		"/tile/0/999999999999999999999",
	} {
		if resp, _ := e.get(t, path, auditorTok); resp.StatusCode != 404 {
			t.Errorf("GET %s = %d, want 404", path, resp.StatusCode)
		}
	}
	for _, tc := range []struct {
		token string
		want  int
	}{{"", 401}, {"nope", 401}, {oktaTok, 403}, {adminTok, 200}} {
		if resp, _ := e.get(t, "/tile/0/000", tc.token); resp.StatusCode != tc.want {
			t.Errorf("GET /tile/0/000 with token %q = %d, want %d", tc.token, resp.StatusCode, tc.want)
		}
	}
}

func TestParseTilePath(t *testing.T) {
	tests := []struct {
		path    string
		l, n, w int64
		ok      bool
	}{
		{"tile/0/000", 0, 0, 256, true},
		{"tile/2/x001/x234/067", 2, 1234067, 256, true},
		{"tile/entries/x001/234.p/7", -1, 1234, 7, true},
		{"tile/0/0", 0, 0, 0, false},
		{"tile/entries/000.p/256", 0, 0, 0, false},
		{"tile/data/000", 0, 0, 0, false},
		{"tiles/0/000", 0, 0, 0, false},
	}
	for _, tt := range tests {
		got, err := parseTilePath(tt.path)
		if (err == nil) != tt.ok {
			t.Errorf("parseTilePath(%q) err = %v, want ok %v", tt.path, err, tt.ok)
			continue
		}
		if tt.ok && (int64(got.L) != tt.l || got.N != tt.n || int64(got.W) != tt.w) {
			t.Errorf("parseTilePath(%q) = L%d N%d W%d, want L%d N%d W%d", tt.path, got.L, got.N, got.W, tt.l, tt.n, tt.w)
		}
	}
}

func TestMetrics(t *testing.T) {
	e := newEnv(t)
	e.fill(t, 5)
	c := e.clients(protocols[0], adminTok)
	c.ingest.Append(t.Context(), connect.NewRequest(&pb.AppendRequest{Events: []*pb.Event{newEvent("okta", "t1", "session.started", "u1")}}))
	e.clients(protocols[0], "").log.GetCheckpoint(t.Context(), connect.NewRequest(&pb.GetCheckpointRequest{}))
	if resp, _ := e.get(t, "/metrics", ""); resp.StatusCode != 401 {
		t.Errorf("GET /metrics without a token = %d, want 401", resp.StatusCode)
	}
	resp, body := e.get(t, "/metrics", auditorTok)
	if resp.StatusCode != 200 {
		t.Fatalf("GET /metrics = %d", resp.StatusCode)
	}
	for _, want := range []string{
		`grantline_appended_events_total{result="new"} 5`,
		`grantline_appended_events_total{result="duplicate"} 1`,
		`grantline_append_batch_events_count 2`,
		`grantline_tree_size 5`,
		`grantline_refused_requests_total{code="unauthenticated",reason="no_token"} 2`,
		`grantline_rpc_requests_total{code="ok",procedure="/grantline.v1.IngestService/Append"} 2`,
		`grantline_checkpoint_age_seconds`,
		`grantline_rule_evaluation_seconds_count 0`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	pub := newEnv(t, func(c *Config) { c.MetricsPublic = true })
	if resp, _ := pub.get(t, "/metrics", ""); resp.StatusCode != 200 {
		t.Errorf("GET /metrics with MetricsPublic = %d, want 200", resp.StatusCode)
	}
}

// TestGRPCGoClient talks to the server with grpc-go itself: health, and
// Append and a proof through generic Invoke, with the token as metadata.
func TestGRPCGoClient(t *testing.T) {
	e := newEnv(t)
	conn, err := grpc.NewClient(strings.TrimPrefix(e.url, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+oktaTok)
	req := &pb.AppendRequest{Events: []*pb.Event{newEvent("okta", "g1", "grant.activated", "alice")}}
	var resp pb.AppendResponse
	if err := conn.Invoke(ctx, "/grantline.v1.IngestService/Append", req, &resp); err != nil {
		t.Fatal(err)
	}
	if resp.GetTreeSize() != 1 {
		t.Errorf("tree size %d, want 1", resp.GetTreeSize())
	}
	req.Events[0].Type = "grant.nope"
	err = conn.Invoke(ctx, "/grantline.v1.IngestService/Append", req, &resp)
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "events[0].type") {
		t.Errorf("grpc-go bad append = %v, want InvalidArgument naming events[0].type", err)
	}
	var cp pb.GetCheckpointResponse
	err = conn.Invoke(ctx, "/grantline.v1.LogService/GetCheckpoint", &pb.GetCheckpointRequest{}, &cp)
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("grpc-go source reading = %v, want PermissionDenied", err)
	}
}

func TestHealthAndReflection(t *testing.T) {
	e := newEnv(t)
	for _, p := range streamProtocols {
		hc := grpchealth.NewClient(e.hc, e.url, p.opts...)
		res, err := hc.Check(t.Context(), &grpchealth.CheckRequest{Service: "grantline.v1.IngestService"})
		if err != nil || res.Status != grpchealth.StatusServing {
			t.Errorf("%s health = %v, %v; want SERVING", p.name, res, err)
		}
	}
	e.srv.SetServing(false)
	res, err := grpchealth.NewClient(e.hc, e.url).Check(t.Context(), &grpchealth.CheckRequest{})
	if err != nil || res.Status != grpchealth.StatusNotServing {
		t.Errorf("health after SetServing(false) = %v, %v; want NOT_SERVING", res, err)
	}
	stream := grpcreflect.NewClient(e.hc, e.url).NewStream(t.Context())
	defer stream.Close()
	names, err := stream.ListServices()
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprint(names)
	for _, want := range []string{"grantline.v1.IngestService", "grantline.v1.LogService", "grantline.v1.EvidenceService"} {
		if !strings.Contains(got, want) {
			t.Errorf("reflection lists %s, missing %s", got, want)
		}
	}
}

// fakeEvaluator reports one finding per subject whose chain has a
// grant.activated event; it panics for the subject "panic".
type fakeEvaluator struct{}

func (fakeEvaluator) Rules() []rules.RuleInfo {
	return []rules.RuleInfo{{ID: "jit-outlived"}, {ID: "other"}}
}

// EvaluatePeriod is Evaluate at to, marking the result as a period.
func (f fakeEvaluator) EvaluatePeriod(ctx context.Context, subjects []string, src rules.ChainSource, from, to time.Time) (*rules.Result, error) {
	res, err := f.Evaluate(ctx, subjects, src, to)
	if err == nil {
		res.Period, res.From = true, from
	}
	return res, err
}

func (fakeEvaluator) Evaluate(ctx context.Context, subjects []string, src rules.ChainSource, asOf time.Time) (*rules.Result, error) {
	res := &rules.Result{Subjects: len(subjects)}
	for _, s := range subjects {
		if s == "panic" {
			panic("rule engine bug")
		}
		chain, err := src.Chain(ctx, s)
		if err != nil {
			return nil, err
		}
		res.Entries += len(chain)
		for _, ce := range chain {
			var ent pb.Entry
			if err := proto.Unmarshal(ce.Leaf, &ent); err != nil {
				return nil, err
			}
			if ent.GetEvent().GetType() == "grant.activated" {
				res.Findings = append(res.Findings, rules.Finding{Rule: "jit-outlived", Subject: s,
					Entries: []rules.EntryRef{{Index: ce.Index, EventID: ent.GetEvent().GetId()}}})
			}
		}
	}
	return res, nil
}

// Stream is Evaluate subject by subject.
func (f fakeEvaluator) Stream(ctx context.Context, subjects iter.Seq2[string, error], src rules.ChainSource, from, asOf time.Time, period bool, emit func(*rules.SubjectResult) error) (rules.Summary, error) {
	sum := rules.Summary{AsOf: asOf, Period: period}
	if period {
		sum.From = from
	}
	for s, err := range subjects {
		if err != nil {
			return sum, err
		}
		res, err := f.Evaluate(ctx, []string{s}, src, asOf)
		if err != nil {
			return sum, err
		}
		sum.Subjects++
		sum.Entries += res.Entries
		sum.Findings += len(res.Findings)
		if err := emit(&rules.SubjectResult{Subject: s, Findings: res.Findings, Entries: res.Entries}); err != nil {
			return sum, err
		}
	}
	return sum, nil
}

func TestEvaluate(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			e := newEnv(t, func(c *Config) { c.Evaluator = fakeEvaluator{} })
			a := e.clients(p, adminTok)
			a.ingest.Append(t.Context(), connect.NewRequest(&pb.AppendRequest{Events: []*pb.Event{
				newEvent("okta", "1", "grant.activated", "alice"),
				newEvent("okta", "2", "session.started", "bob"),
			}}))
			c := e.clients(p, auditorTok)
			asOf := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
			resp, err := c.evidence.Evaluate(t.Context(), connect.NewRequest(&pb.EvaluateRequest{AsOf: timestampOf(asOf)}))
			if err != nil {
				t.Fatal(err)
			}
			m := resp.Msg
			if m.GetSubjectsEvaluated() != 2 || m.GetEntriesEvaluated() != 2 || len(m.GetFindings()) != 1 ||
				m.GetFindings()[0].GetSubject() != "alice" || !m.GetAsOf().AsTime().Equal(asOf) {
				t.Fatalf("Evaluate = %v", m)
			}
			cp2 := e.ledger.Latest()
			verifyCheckpoint(t, e.ledger, m.GetCheckpoint(), 2, cp2.Root[:])
			resp, err = c.evidence.Evaluate(t.Context(), connect.NewRequest(&pb.EvaluateRequest{Rules: []string{"other"}}))
			if err != nil || len(resp.Msg.GetFindings()) != 0 {
				t.Errorf("Evaluate(rules: other) = %v, %v; want no findings", resp, err)
			}
			resp, err = c.evidence.Evaluate(t.Context(), connect.NewRequest(&pb.EvaluateRequest{Subjects: []string{"bob"}, TreeSize: 2}))
			if err != nil || resp.Msg.GetSubjectsEvaluated() != 1 || len(resp.Msg.GetFindings()) != 0 {
				t.Errorf("Evaluate(subjects: bob) = %v, %v; want 1 subject, no findings", resp, err)
			}
			_, err = c.evidence.Evaluate(t.Context(), connect.NewRequest(&pb.EvaluateRequest{Rules: []string{"other", "nope"}}))
			wantCode(t, err, connect.CodeInvalidArgument, `rules[1]: unknown rule "nope"`)
			_, err = c.evidence.Evaluate(t.Context(), connect.NewRequest(&pb.EvaluateRequest{TreeSize: 1}))
			wantCode(t, err, connect.CodeNotFound, "tree_size 1")
			// An audit period: the response says where it starts.
			from := asOf.AddDate(0, -1, 0)
			resp, err = c.evidence.Evaluate(t.Context(), connect.NewRequest(&pb.EvaluateRequest{From: timestampOf(from), To: timestampOf(asOf)}))
			if err != nil || !resp.Msg.GetFrom().AsTime().Equal(from) || !resp.Msg.GetAsOf().AsTime().Equal(asOf) {
				t.Errorf("Evaluate(from, to) = %v, %v; want from %s, as_of %s", resp, err, from, asOf)
			}
			_, err = c.evidence.Evaluate(t.Context(), connect.NewRequest(&pb.EvaluateRequest{From: timestampOf(from), AsOf: timestampOf(asOf)}))
			wantCode(t, err, connect.CodeInvalidArgument, "as_of: give either as_of")
			_, err = c.evidence.Evaluate(t.Context(), connect.NewRequest(&pb.EvaluateRequest{To: timestampOf(asOf)}))
			wantCode(t, err, connect.CodeInvalidArgument, "from: a period needs its start")
			_, err = c.evidence.Evaluate(t.Context(), connect.NewRequest(&pb.EvaluateRequest{From: timestampOf(asOf), To: timestampOf(from)}))
			wantCode(t, err, connect.CodeInvalidArgument, "to: the period ends")
			// A panic is recovered as Internal, and the server keeps serving.
			_, err = c.evidence.Evaluate(t.Context(), connect.NewRequest(&pb.EvaluateRequest{Subjects: []string{"panic"}}))
			wantCode(t, err, connect.CodeInternal, "internal error")
			if _, err := c.log.GetCheckpoint(t.Context(), connect.NewRequest(&pb.GetCheckpointRequest{})); err != nil {
				t.Errorf("after a recovered panic: %v", err)
			}
		})
	}
	e := newEnv(t)
	_, err := e.clients(protocols[0], auditorTok).evidence.Evaluate(t.Context(), connect.NewRequest(&pb.EvaluateRequest{}))
	wantCode(t, err, connect.CodeUnimplemented, "no rule set")
}

type fakeExporter struct{}

func (fakeExporter) Export(ctx context.Context, req ExportRequest, create func(string) (io.WriteCloser, error)) error {
	w, err := create("checkpoint")
	if err != nil {
		return err
	}
	w.Write(req.Checkpoint.Note)
	if err := w.Close(); err != nil {
		return err
	}
	if w, err = create("entries.jsonl"); err != nil {
		return err
	}
	big := bytes.Repeat([]byte("e"), exportChunk*2+10)
	w.Write(big[:10])
	w.Write(big[10 : exportChunk+20])
	w.Write(big[exportChunk+20:])
	return w.Close()
}

func TestExportEvidence(t *testing.T) {
	for _, p := range streamProtocols {
		t.Run(p.name, func(t *testing.T) {
			e := newEnv(t, func(c *Config) { c.Exporter = fakeExporter{} })
			e.fill(t, 3)
			stream, err := e.clients(p, auditorTok).evidence.ExportEvidence(t.Context(), connect.NewRequest(&pb.ExportEvidenceRequest{}))
			if err != nil {
				t.Fatal(err)
			}
			files := map[string][]byte{}
			var order []string
			eofs := 0
			for stream.Receive() {
				m := stream.Msg()
				if _, ok := files[m.GetPath()]; !ok {
					order = append(order, m.GetPath())
				}
				files[m.GetPath()] = append(files[m.GetPath()], m.GetData()...)
				if m.GetEof() {
					eofs++
				}
			}
			if err := stream.Err(); err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(order) != "[checkpoint entries.jsonl]" || eofs != 2 ||
				!bytes.Equal(files["checkpoint"], e.ledger.Latest().Note) || len(files["entries.jsonl"]) != exportChunk*2+10 {
				t.Errorf("export = files %v, %d eofs, entries %d bytes", order, eofs, len(files["entries.jsonl"]))
			}
		})
	}
	e := newEnv(t)
	stream, err := e.clients(protocols[0], auditorTok).evidence.ExportEvidence(t.Context(), connect.NewRequest(&pb.ExportEvidenceRequest{}))
	if err == nil {
		for stream.Receive() {
		}
		err = stream.Err()
	}
	wantCode(t, err, connect.CodeUnimplemented, "not available")
}
