package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/internal/diskfree"
	"github.com/grantline/grantline/internal/synth"
	"github.com/grantline/grantline/ledger"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/rules"
)

// streamed is what one EvaluateStream sent, in order: every finding and
// error deterministically encoded, the exposure of each subject as it
// came, and the trailer.
type streamed struct {
	findings, errors [][]byte
	exposure         []string // "subject=seconds", in arrival order by chunk, sorted within one
	trailer          *pb.EvaluateTrailer
}

func evaluateStreamed(t *testing.T, e *testEnv, req *pb.EvaluateRequest) streamed {
	t.Helper()
	stream, err := e.clients(protocols[0], auditorTok).evidence.EvaluateStream(t.Context(), connect.NewRequest(&pb.EvaluateStreamRequest{Request: req}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	var out streamed
	det := proto.MarshalOptions{Deterministic: true}
	for stream.Receive() {
		m := stream.Msg()
		if tr := m.GetTrailer(); tr != nil {
			out.trailer = tr
		}
		ch := m.GetChunk()
		for _, f := range ch.GetFindings() {
			b, _ := det.Marshal(f)
			out.findings = append(out.findings, b)
		}
		for _, x := range ch.GetErrors() {
			b, _ := det.Marshal(x)
			out.errors = append(out.errors, b)
		}
		var exp []string
		for s, n := range ch.GetExposureBySubject() {
			exp = append(exp, s+"="+time.Duration(n).String())
		}
		slices.Sort(exp)
		out.exposure = append(out.exposure, exp...)
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if out.trailer == nil {
		t.Fatal("no trailer")
	}
	return out
}

// partLog is the last "partitioned evaluation" line of the server's log.
type partLog struct {
	Ranges     int   `json:"ranges"`
	Spilled    int   `json:"spilled_bytes"`
	Shared     bool  `json:"pass_shared_with_source_index"`
	Reserved   int64 `json:"spill_reserved_bytes"`
	Served     int   `json:"chains_from_ranges"`
	PointReads int   `json:"chains_by_point_reads"`
}

func lastPartLog(t *testing.T, e *testEnv) (partLog, bool) {
	t.Helper()
	var pl partLog
	found := false
	for line := range strings.Lines(e.logs.String()) {
		if strings.Contains(line, `"msg":"partitioned evaluation"`) {
			if err := json.Unmarshal([]byte(line), &pl); err != nil {
				t.Fatal(err)
			}
			found = true
		}
	}
	return pl, found
}

// withoutBackdated is set's rules but backdated-closure: a rule set that
// does not scan the log for a source index, so the partitioned evaluation
// makes its own pass.
func withoutBackdated(t *testing.T, seed uint64, identities int) *rules.Set {
	t.Helper()
	org, err := synth.Generate(synth.Config{Seed: seed, Identities: identities, FailureRate: 0.2})
	if err != nil {
		t.Fatal(err)
	}
	return synthRules(t, org, func(r *rules.Rule) bool { return r.ID == "backdated-closure" })
}

// TestPartitionedEvaluationMatchesPointReads: on the same ledger, a full
// evaluation read partitioned (one pass over the log, the subjects in
// ranges of a few KiB, owners' and holders' chains in other ranges read
// by point reads) streams exactly what the point-read evaluation streams:
// the same findings, errors and exposure in the same order, the same
// trailer; and the unary Evaluate answers the same.
func TestPartitionedEvaluationMatchesPointReads(t *testing.T) {
	defer func(n int) { maxOpenSpills = n }(maxOpenSpills)
	for _, tc := range []struct {
		name       string
		seed       uint64
		identities int
		partBytes  int64
		maxOpen    int
		ownRules   bool // without backdated-closure: the pass is not shared
	}{
		{"demo-org", 21, 60, 64 << 10, 512, false},
		{"demo-org/own-pass", 21, 60, 64 << 10, 512, true},
		{"random/tiny-ranges", 977, 90, 2 << 10, 512, false},
		{"random/tiny-ranges/files-reopened", 977, 90, 2 << 10, 4, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			maxOpenSpills = tc.maxOpen
			l, set, asOf := synthLedgerSeed(t, tc.seed, tc.identities)
			if tc.ownRules {
				set = withoutBackdated(t, tc.seed, tc.identities)
			}
			dir := t.TempDir()
			mode := func(m ScanMode) *testEnv {
				return newEnv(t, func(c *Config) {
					c.Ledger, c.Evaluator, c.EvaluateChunkBytes = l, set, 4096
					c.EvaluateScan = EvaluateScan{Mode: m, Dir: dir, PartitionBytes: tc.partBytes}
				})
			}
			point, part := mode(ScanOff), mode(ScanOn)
			for _, req := range []*pb.EvaluateRequest{
				{AsOf: timestamppb.New(asOf)},
				{From: timestamppb.New(asOf.AddDate(0, -2, 0)), To: timestamppb.New(asOf)},
			} {
				want := evaluateStreamed(t, point, req)
				got := evaluateStreamed(t, part, req)
				if _, ok := lastPartLog(t, point); ok {
					t.Fatal("the point-read server evaluated partitioned")
				}
				pl, ok := lastPartLog(t, part)
				if !ok {
					t.Fatal("the partitioned server did not evaluate partitioned")
				}
				if len(want.findings) < 20 {
					t.Fatalf("%d findings: too few to compare", len(want.findings))
				}
				if !slices.EqualFunc(got.findings, want.findings, bytes.Equal) {
					t.Errorf("findings differ: partitioned %d, point reads %d", len(got.findings), len(want.findings))
				}
				if !slices.EqualFunc(got.errors, want.errors, bytes.Equal) || !slices.Equal(got.exposure, want.exposure) {
					t.Errorf("errors or exposure differ: %d/%d errors, %d/%d exposures", len(got.errors), len(want.errors), len(got.exposure), len(want.exposure))
				}
				if !proto.Equal(got.trailer, want.trailer) {
					t.Errorf("trailer %v, point reads %v", got.trailer, want.trailer)
				}
				if pl.Ranges < 3 || pl.Served == 0 || pl.Spilled == 0 {
					t.Errorf("the partitioned evaluation did not use its ranges: %+v", pl)
				}
				if pl.Shared == tc.ownRules {
					t.Errorf("pass shared with the source index: %v, want %v", pl.Shared, !tc.ownRules)
				}
				if tc.partBytes < 4<<10 && pl.PointReads == 0 {
					t.Errorf("ranges of %d bytes and no chain read by point reads: owners and holders never crossed ranges (%+v)", tc.partBytes, pl)
				}
			}
			wantU, err := point.clients(protocols[0], auditorTok).evidence.Evaluate(t.Context(), connect.NewRequest(&pb.EvaluateRequest{AsOf: timestamppb.New(asOf)}))
			if err != nil {
				t.Fatal(err)
			}
			gotU, err := part.clients(protocols[0], auditorTok).evidence.Evaluate(t.Context(), connect.NewRequest(&pb.EvaluateRequest{AsOf: timestamppb.New(asOf)}))
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(gotU.Msg, wantU.Msg) {
				t.Errorf("unary Evaluate differs: partitioned %d findings, point reads %d", len(gotU.Msg.GetFindings()), len(wantU.Msg.GetFindings()))
			}
			assertNoSpill(t, dir)
		})
	}
}

// assertNoSpill fails if an evaluation's spill files are left under dir.
func assertNoSpill(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, SpillDirName))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if len(ents) > 0 {
		t.Errorf("%d spill entries left in %s after the evaluation ended (first %s)", len(ents), dir, ents[0].Name())
	}
}

// spillCount counts the files and directories under dir's spill
// directory: an evaluation's own directory exists from its plan to its
// end, its range files from the pass until each is read back.
func spillCount(dir string) int {
	n := 0
	root := filepath.Join(dir, SpillDirName)
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && p != root {
			n++
		}
		return nil
	})
	return n
}

// failingLog is a ledger.Log whose point reads of chains (SubjectEntries)
// fail, or wait for the call's end, while a partitioned evaluation's spill
// directory exists; it keeps the upgrades a partitioned evaluation needs.
type failingLog struct {
	*ledger.Log
	dir     string
	block   bool          // wait for ctx instead of failing
	inside  chan struct{} // closed at the first gated read
	once    atomic.Bool
	spilled atomic.Int64 // spill entries seen at the first gated read
}

func (f *failingLog) SubjectEntries(ctx context.Context, subject string, size, start uint64, limit int) ([]ledger.Entry, error) {
	n := spillCount(f.dir)
	if n == 0 {
		return f.Log.SubjectEntries(ctx, subject, size, start, limit)
	}
	if f.once.CompareAndSwap(false, true) {
		f.spilled.Store(int64(n))
		close(f.inside)
	}
	if f.block {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return nil, errors.New("injected read failure")
}

// spillEnv is a server evaluating on led with set, spilling to dir in
// ranges of 2 KiB (owners' chains are read by point reads).
func spillEnv(t *testing.T, led Ledger, set *rules.Set, dir string) *testEnv {
	t.Helper()
	return newEnv(t, func(c *Config) {
		c.Ledger, c.Evaluator, c.EvaluateChunkBytes = led, set, 512
		c.EvaluateScan = EvaluateScan{Mode: ScanOn, Dir: dir, PartitionBytes: 2 << 10}
	})
}

// drainEvaluation runs req on e's server, reading the stream to its end.
func drainEvaluation(ctx context.Context, e *testEnv, req *pb.EvaluateStreamRequest) error {
	stream, err := e.clients(protocols[0], auditorTok).evidence.EvaluateStream(ctx, connect.NewRequest(req))
	if err != nil {
		return err
	}
	defer stream.Close()
	for stream.Receive() {
	}
	return stream.Err()
}

// waitPartitionedEnded waits (10s at most) for e's server to log the end
// of a partitioned evaluation.
func waitPartitionedEnded(t *testing.T, e *testEnv) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(e.logs.String(), `"msg":"partitioned evaluation"`) {
		if time.Now().After(deadline) {
			t.Fatalf("the evaluation did not end within 10s; log:\n%s", e.logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPartitionSpillRemoved: the spill files are removed when the
// evaluation fails and when its client cancels; a disk without room fails
// up front, saying what and how much, and leaves nothing.
func TestPartitionSpillRemoved(t *testing.T) {
	l, set, asOf := synthLedger(t, 40)
	req := &pb.EvaluateStreamRequest{Request: &pb.EvaluateRequest{AsOf: timestamppb.New(asOf)}}
	env := func(led Ledger, dir string) *testEnv { return spillEnv(t, led, set, dir) }
	drain := func(ctx context.Context, e *testEnv) error { return drainEvaluation(ctx, e, req) }

	t.Run("error", func(t *testing.T) {
		dir := t.TempDir()
		f := &failingLog{Log: l, dir: dir, inside: make(chan struct{})}
		e := env(f, dir)
		err := drain(t.Context(), e)
		if err == nil || !strings.Contains(err.Error(), "injected read failure") {
			t.Fatalf("evaluation: %v, want the injected failure", err)
		}
		if f.spilled.Load() == 0 {
			t.Fatal("the failure came before any spill file existed: the test checks nothing")
		}
		waitPartitionedEnded(t, e)
		assertNoSpill(t, dir)
	})
	t.Run("cancel", func(t *testing.T) {
		dir := t.TempDir()
		f := &failingLog{Log: l, dir: dir, block: true, inside: make(chan struct{})}
		e := env(f, dir)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- drain(ctx, e) }()
		select {
		case <-f.inside:
		case err := <-done:
			t.Fatalf("the evaluation ended (%v) before reading a chain by point reads", err)
		case <-time.After(20 * time.Second):
			t.Fatal("no point read within 20s")
		}
		cancel()
		if err := <-done; connect.CodeOf(err) != connect.CodeCanceled && !errors.Is(err, context.Canceled) {
			t.Errorf("stream after cancel: %v, want canceled", err)
		}
		waitPartitionedEnded(t, e)
		assertNoSpill(t, dir)
	})
	t.Run("no-room", func(t *testing.T) {
		defer func(s *diskfree.Space) { spillSpace = s }(spillSpace)
		spillSpace = diskfree.NewSpace(func(string) int64 { return 1 << 20 })
		dir, cacheDir := t.TempDir(), t.TempDir()
		e := newEnv(t, func(c *Config) {
			c.Ledger, c.Evaluator, c.EvaluateChunkBytes = l, set, 512
			c.EvaluateScan = EvaluateScan{Mode: ScanOn, Dir: dir, PartitionBytes: 2 << 10}
			// A fixed as-of time: the evaluation would write the cache.
			c.EvaluateCache = EvaluateCache{Dir: cacheDir, MaxBytes: 64 << 20}
		})
		err := drain(t.Context(), e)
		if connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), "MiB are free") ||
			!strings.Contains(err.Error(), "--evaluate-scan off") {
			t.Fatalf("evaluation on a full disk: %v, want FailedPrecondition saying what is needed and what to do", err)
		}
		assertNoSpill(t, dir)
		// The refused evaluation's cache file is closed and removed, not
		// left for each retry to add another.
		if left, _ := os.ReadDir(filepath.Join(cacheDir, EvalCacheDirName)); len(left) != 0 {
			t.Errorf("the refused evaluation left %d files in the cache directory (first %s)", len(left), left[0].Name())
		}
	})
}

// gateLog is a ledger.Log whose first log scan (ScanEntries) made while a
// partitioned evaluation's spill directory exists waits for the call's end:
// that evaluation holds its disk reservation and has written nothing.
// Every other call goes through.
type gateLog struct {
	*ledger.Log
	dir    string
	inside chan struct{} // closed when the scan waits
	once   atomic.Bool
}

func (g *gateLog) ScanEntries(ctx context.Context, start, end uint64, fn func(ledger.Entry) error) error {
	if spillCount(g.dir) > 0 && g.once.CompareAndSwap(false, true) {
		close(g.inside)
		<-ctx.Done()
		return ctx.Err()
	}
	return g.Log.ScanEntries(ctx, start, end, fn)
}

// TestConcurrentEvaluationsReserveSpill: an evaluation that starts while
// another is running counts the spill the other reserved, whether the
// other is still before its pass (nothing written) or evaluating from its
// spill files, and is refused (FailedPrecondition, saying what it needs,
// what is free, what the others reserved and that --evaluate-scan off
// needs no disk) when the free disk would hold one spill and not two; once
// the first has ended, the same evaluation runs.
func TestConcurrentEvaluationsReserveSpill(t *testing.T) {
	defer func(s *diskfree.Space) { spillSpace = s }(spillSpace)
	l, set, asOf := synthLedger(t, 40)
	req := &pb.EvaluateStreamRequest{Request: &pb.EvaluateRequest{AsOf: timestamppb.New(asOf)}}
	env := func(led Ledger, dir string) *testEnv { return spillEnv(t, led, set, dir) }
	drain := func(ctx context.Context, e *testEnv) error { return drainEvaluation(ctx, e, req) }

	// What one evaluation reserves, with the guard off.
	spillSpace = diskfree.NewSpace(func(string) int64 { return -1 })
	plain := env(l, t.TempDir())
	if err := drain(t.Context(), plain); err != nil {
		t.Fatal(err)
	}
	pl, ok := lastPartLog(t, plain)
	if !ok || pl.Reserved <= 0 {
		t.Fatalf("no reservation logged (%+v, found %v)", pl, ok)
	}
	one := pl.Reserved

	for _, tc := range []struct {
		name string
		gate func(dir string) (Ledger, chan struct{}) // the first evaluation's ledger, and when it waits
	}{
		{"first before its pass", func(dir string) (Ledger, chan struct{}) {
			g := &gateLog{Log: l, dir: dir, inside: make(chan struct{})}
			return g, g.inside
		}},
		{"first evaluating from its spill", func(dir string) (Ledger, chan struct{}) {
			f := &failingLog{Log: l, dir: dir, block: true, inside: make(chan struct{})}
			return f, f.inside
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			// Room for one spill and a half: the spill files on disk
			// take from it, as on a real disk.
			room := one + one/2
			spillSpace = diskfree.NewSpace(func(string) int64 {
				var used int64
				filepath.WalkDir(filepath.Join(dir, SpillDirName), func(_ string, d os.DirEntry, err error) error {
					if err == nil && d.Type().IsRegular() {
						if fi, err := d.Info(); err == nil {
							used += fi.Size()
						}
					}
					return nil
				})
				return room - used
			})
			led, inside := tc.gate(dir)
			e := env(led, dir)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			first := make(chan error, 1)
			go func() { first <- drain(ctx, e) }()
			select {
			case <-inside:
			case err := <-first:
				t.Fatalf("the first evaluation ended (%v) before it waited", err)
			case <-time.After(20 * time.Second):
				t.Fatal("the first evaluation did not reach its wait within 20s")
			}

			// Bounded: admitted by mistake, it would wait in the same
			// gated reads as the first.
			ctx2, cancel2 := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel2()
			err := drain(ctx2, e)
			msg := ""
			if err != nil {
				msg = err.Error()
			}
			if connect.CodeOf(err) != connect.CodeFailedPrecondition {
				t.Fatalf("second evaluation while the first runs: %v, want FailedPrecondition", err)
			}
			for _, want := range []string{fmt.Sprintf("about %d MiB", one>>20), "MiB are free", "1 partitioned evaluation(s) already running reserved", "--evaluate-scan off, which needs no disk"} {
				if !strings.Contains(msg, want) {
					t.Errorf("refusal %q does not say %q", msg, want)
				}
			}

			cancel()
			<-first
			waitPartitionedEnded(t, e)
			assertNoSpill(t, dir)
			if n, held := spillSpace.Reserved(dir); n != 0 || held != 0 {
				t.Fatalf("%d bytes still reserved by %d evaluations after the first ended", n, held)
			}
			if err := drain(t.Context(), env(l, dir)); err != nil {
				t.Fatalf("the same evaluation after the first ended: %v", err)
			}
		})
	}
}

// TestSpillLeftoversRemovedAtStart: New removes the spill files a crashed
// evaluation left in DIR/evaluate-spill, and nothing else of DIR.
func TestSpillLeftoversRemovedAtStart(t *testing.T) {
	dir := t.TempDir()
	left := filepath.Join(dir, SpillDirName, "eval-123")
	if err := os.MkdirAll(left, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(left, "range-000001"), filepath.Join(dir, "keep.txt")} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	newEnv(t, func(c *Config) { c.EvaluateScan = EvaluateScan{Dir: dir} })
	if _, err := os.Stat(filepath.Join(dir, SpillDirName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the spill directory survived the start: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "keep.txt")); err != nil {
		t.Errorf("a file beside the spill directory was removed: %v", err)
	}
}

// TestPartialTeeStartsOver: when the source index's scan saw only part of
// the log (or some of it twice), the pass reads the whole log itself, and
// the chains are the point reads' chains.
func TestPartialTeeStartsOver(t *testing.T) {
	l, _, _ := synthLedger(t, 40)
	chains, subjects := readChains(t, l)
	dir := t.TempDir()
	e := newEnv(t, func(c *Config) {
		c.Ledger = l
		c.EvaluateScan = EvaluateScan{Mode: ScanOn, Dir: dir, PartitionBytes: 8 << 10}
	})
	size := l.Latest().Size
	for _, scans := range [][][2]uint64{
		{{0, size / 2}},                      // a gap
		{{0, size / 2}, {size / 3, size}},    // overlap
		{{size / 2, size}, {0, size / 2}},    // complete, out of order: kept
		{{0, size}, {size / 4, size/4 + 10}}, // a piece twice
	} {
		p, err := e.srv.newPartSource(t.Context(), &chainSource{l: l, size: size})
		if err != nil {
			t.Fatal(err)
		}
		for _, sc := range scans {
			if err := p.ScanLog(t.Context(), sc[0], sc[1], func(rules.Entry) error { return nil }); err != nil {
				t.Fatal(err)
			}
		}
		n := 0
		for s, err := range p.subjects(t.Context()) {
			if err != nil {
				t.Fatal(err)
			}
			if s != subjects[n] {
				t.Fatalf("subject %d: %q, want %q", n, s, subjects[n])
			}
			n++
			got, err := p.Chain(t.Context(), s)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(chains[s]) {
				t.Fatalf("%v: chain of %q has %d entries, want %d", scans, s, len(got), len(chains[s]))
			}
			for i := range got {
				if got[i].Index != chains[s][i].Index || !bytes.Equal(got[i].Leaf, chains[s][i].Leaf) {
					t.Fatalf("%v: chain of %q differs at %d", scans, s, i)
				}
			}
		}
		if n != len(subjects) {
			t.Fatalf("%d subjects, want %d", n, len(subjects))
		}
		if want := len(scans) == 2 && scans[0][0] == size/2; p.stats.teed != want {
			t.Errorf("%v: pass taken from the tee: %v, want %v", scans, p.stats.teed, want)
		}
		if p.stats.fellBack != 0 {
			t.Errorf("%v: %d chains read by point reads, want all from ranges", scans, p.stats.fellBack)
		}
		p.Close()
	}
	assertNoSpill(t, dir)
}

// TestScanModeChoice: auto partitions a full evaluation when the store's
// files are larger than half the mapped bound, never without a bound or a
// spill directory; on and off force it.
func TestScanModeChoice(t *testing.T) {
	l, _, _ := synthLedger(t, 40)
	store := t.TempDir()
	if err := os.WriteFile(filepath.Join(store, "000001.vlog"), make([]byte, 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(store, "index"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(store, "index", "000001.sst"), make([]byte, 200), 0o600); err != nil {
		t.Fatal(err)
	}
	cs := &chainSource{l: l, size: l.Latest().Size}
	for _, tc := range []struct {
		mode  ScanMode
		dir   string
		bound int64
		want  bool
	}{
		{ScanAuto, "d", 2000, true},  // 1,200 bytes > 1,000
		{ScanAuto, "d", 2400, false}, // = half the bound
		{ScanAuto, "d", 0, false},    // no bound
		{ScanAuto, "", 100, false},   // no spill directory
		{ScanOn, "d", 0, true},
		{ScanOn, "", 0, false},
		{ScanOff, "d", 100, false},
	} {
		s := &Server{cfg: Config{EvaluateScan: EvaluateScan{Mode: tc.mode, StoreDir: store, MappedBound: tc.bound}}}
		if tc.dir != "" {
			s.cfg.EvaluateScan.Dir = t.TempDir()
		}
		if got := s.usePartitions(cs); got != tc.want {
			t.Errorf("%v, dir %q, bound %d: partitioned %v, want %v", tc.mode, tc.dir, tc.bound, got, tc.want)
		}
	}
	// A ledger without the upgrades (ForEachSubjectCount, ScanEntries):
	// point reads.
	s := &Server{cfg: Config{EvaluateScan: EvaluateScan{Mode: ScanOn, Dir: t.TempDir()}}}
	if s.usePartitions(&chainSource{l: &gatedLedger{Ledger: l}, size: 5}) {
		t.Error("partitioned over a ledger that cannot count subjects")
	}
}
