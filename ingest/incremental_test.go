package ingest

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/internal/synth"
	"github.com/grantline/grantline/ledger"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/rules"
)

// evalLog is the last "evaluation" line of a server's log.
type evalLog struct {
	Subjects  int    `json:"subjects"`
	Reused    int    `json:"subjects_reused"`
	Evaluated int    `json:"subjects_evaluated"`
	Cache     string `json:"cache"`
	BaseSize  uint64 `json:"cache_base_size"`
	Changed   int    `json:"changed_subjects"`
	Related   int    `json:"related_changed_subjects"`
	Written   int64  `json:"cache_written_bytes"`
}

func lastEvalLog(t *testing.T, e *testEnv) evalLog {
	t.Helper()
	var el evalLog
	found := false
	for line := range strings.Lines(e.logs.String()) {
		if strings.Contains(line, `"msg":"evaluation"`) {
			el = evalLog{}
			if err := json.Unmarshal([]byte(line), &el); err != nil {
				t.Fatal(err)
			}
			found = true
		}
	}
	if !found {
		t.Fatal("no evaluation log line")
	}
	return el
}

// sameStreamed fails unless got is what want is: findings, errors and
// exposure in the same order, the same trailer.
func sameStreamed(t *testing.T, what string, got, want streamed) {
	t.Helper()
	if !slices.EqualFunc(got.findings, want.findings, bytes.Equal) {
		t.Errorf("%s: findings differ: %d, full evaluation %d", what, len(got.findings), len(want.findings))
	}
	if !slices.EqualFunc(got.errors, want.errors, bytes.Equal) || !slices.Equal(got.exposure, want.exposure) {
		t.Errorf("%s: errors or exposure differ: %d/%d errors, %d/%d exposures", what, len(got.errors), len(want.errors), len(got.exposure), len(want.exposure))
	}
	if !proto.Equal(got.trailer, want.trailer) {
		t.Errorf("%s: trailer %v, full evaluation %v", what, got.trailer, want.trailer)
	}
}

// cachedEnv is a server over l with an evaluation cache in its own
// directory.
func cachedEnv(t *testing.T, l Ledger, set *rules.Set, mode ScanMode, maxBytes int64) (*testEnv, string) {
	t.Helper()
	dir := t.TempDir()
	return newEnv(t, func(c *Config) {
		c.Ledger, c.Evaluator, c.EvaluateChunkBytes = l, set, 4096
		c.EvaluateScan = EvaluateScan{Mode: mode, Dir: dir, PartitionBytes: 4 << 10}
		c.EvaluateCache = EvaluateCache{Dir: dir, MaxBytes: maxBytes}
	}), dir
}

// cacheFiles lists the cache files under dir.
func cacheFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, EvalCacheDirName, "*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestIncrementalMatchesFull: a random organisation's log grows round by
// round (the first part in time order, then the rest shuffled in small
// and large rounds, so that subjects, their owners and credential holders
// and every source system get entries, some older than what the log
// holds); after each round the servers with an evaluation cache (point
// reads and partitioned) stream, at a fixed as-of time and over a period,
// exactly what a server without one streams, and unary Evaluate answers
// the same. The evaluation log says the cache was used: subjects reused,
// fewer evaluated, some for a changed owner or holder.
func TestIncrementalMatchesFull(t *testing.T) {
	for _, tc := range []struct {
		name       string
		seed       uint64
		identities int
	}{
		{"demo-org", 21, 70},
		{"random", 977, 90},
	} {
		t.Run(tc.name, func(t *testing.T) {
			org, err := synth.Generate(synth.Config{Seed: tc.seed, Identities: tc.identities, FailureRate: 0.2})
			if err != nil {
				t.Fatal(err)
			}
			set := synthRules(t, org, nil)
			l := openBadgerLedger(t)
			evs := slices.Clone(org.Events)
			first := len(evs) * 6 / 10
			rest := evs[first:]
			rand.New(rand.NewPCG(tc.seed, 7)).Shuffle(len(rest), func(i, j int) { rest[i], rest[j] = rest[j], rest[i] })
			// Leavings first: terminations and moves of owners and holders
			// change the findings of the subjects that read their chains.
			slices.SortStableFunc(rest, func(a, b *pb.Event) int {
				return cmp.Compare(b2i(!rules.RelatedChainEvent(a.GetType())), b2i(!rules.RelatedChainEvent(b.GetType())))
			})
			// Round sizes, as shares of the log: 0 re-evaluates the same
			// tree; the last, large round makes most subjects change.
			cuts := []int{first, first, first + len(evs)/100, first + len(evs)/50, first + len(evs)/20, len(evs)}
			full := newEnv(t, func(c *Config) {
				c.Ledger, c.Evaluator, c.EvaluateChunkBytes = l, set, 4096
			})
			point, pointDir := cachedEnv(t, l, set, ScanOff, 64<<20)
			part, _ := cachedEnv(t, l, set, ScanOn, 64<<20)
			reqs := []*pb.EvaluateRequest{
				{AsOf: timestamppb.New(org.AsOf)},
				{From: timestamppb.New(org.AsOf.AddDate(0, -2, 0)), To: timestamppb.New(org.AsOf)},
			}
			appended, related, reusedRounds := 0, 0, 0
			for round, cut := range cuts {
				for chunk := range slices.Chunk(evs[appended:cut], 500) {
					if _, _, err := l.Append(t.Context(), chunk); err != nil {
						t.Fatal(err)
					}
				}
				appended = cut
				for ri, req := range reqs {
					want := evaluateStreamed(t, full, req)
					if len(want.findings) < 10 {
						t.Fatalf("%d findings: too few to compare", len(want.findings))
					}
					for _, srv := range []struct {
						name string
						env  *testEnv
					}{{"point reads", point}, {"partitioned", part}} {
						what := srv.name + ", round " + string(rune('0'+round)) + ", request " + string(rune('0'+ri))
						got := evaluateStreamed(t, srv.env, req)
						sameStreamed(t, what, got, want)
						el := lastEvalLog(t, srv.env)
						if el.Subjects != int(want.trailer.GetSubjectsEvaluated()) || el.Reused+el.Evaluated != el.Subjects {
							t.Errorf("%s: log says %+v, trailer %d subjects", what, el, want.trailer.GetSubjectsEvaluated())
						}
						switch {
						case round == 0:
							if el.Reused != 0 || el.Cache != "full: no cached evaluation" {
								t.Errorf("%s: the first evaluation reused results: %+v", what, el)
							}
						case round == 1:
							// The same tree again: nothing changed.
							if el.Cache != "reused" || el.Changed != 0 || el.Reused < el.Subjects*9/10 {
								t.Errorf("%s: the same tree was not replayed from the cache: %+v", what, el)
							}
						case round < len(cuts)-1:
							if el.Cache != "reused" || el.Reused == 0 || el.Evaluated == 0 || el.Changed == 0 {
								t.Errorf("%s: a small round was not incremental: %+v", what, el)
							}
							reusedRounds++
							related += el.Related
						default:
							if el.Cache == "reused" {
								t.Errorf("%s: most subjects changed and yet the cache was used: %+v", what, el)
							}
						}
					}
				}
				wantU, err := full.clients(protocols[0], auditorTok).evidence.Evaluate(t.Context(), connect.NewRequest(reqs[0]))
				if err != nil {
					t.Fatal(err)
				}
				gotU, err := point.clients(protocols[0], auditorTok).evidence.Evaluate(t.Context(), connect.NewRequest(reqs[0]))
				if err != nil {
					t.Fatal(err)
				}
				if !proto.Equal(gotU.Msg, wantU.Msg) {
					t.Errorf("round %d: unary Evaluate differs: %d findings, full evaluation %d", round, len(gotU.Msg.GetFindings()), len(wantU.Msg.GetFindings()))
				}
				// One file per as-of time or period: older sizes are replaced.
				if n := len(cacheFiles(t, pointDir)); n != len(reqs) {
					t.Errorf("round %d: %d cache files, want %d", round, n, len(reqs))
				}
			}
			if reusedRounds == 0 || related == 0 {
				t.Errorf("%d incremental evaluations, %d subjects evaluated again for a changed owner or holder: the test did not exercise them", reusedRounds, related)
			}
		})
	}
}

// TestIncrementalUnfixedAndNamed: an as-of time of now and an evaluation
// of named subjects are not cached.
func TestIncrementalUnfixedAndNamed(t *testing.T) {
	l, set, asOf := synthLedger(t, 40)
	e, dir := cachedEnv(t, l, set, ScanOff, 64<<20)
	evaluateStreamed(t, e, &pb.EvaluateRequest{})
	if el := lastEvalLog(t, e); el.Cache != "full: as-of time is now" {
		t.Errorf("as of now: %+v", el)
	}
	evaluateStreamed(t, e, &pb.EvaluateRequest{From: timestamppb.New(asOf.AddDate(0, -1, 0))})
	if len(cacheFiles(t, dir)) != 0 {
		t.Errorf("an evaluation as of now was cached: %v", cacheFiles(t, dir))
	}
	evaluateStreamed(t, e, &pb.EvaluateRequest{AsOf: timestamppb.New(asOf), Subjects: []string{"nobody"}})
	if len(cacheFiles(t, dir)) != 0 {
		t.Errorf("an evaluation of named subjects was cached: %v", cacheFiles(t, dir))
	}
}

// TestIncrementalDamagedCache: a cache file that is cut short, has a
// flipped byte, is another evaluation's file under this one's name, or
// belongs to another log is ignored with a warning; the evaluation runs in
// full and answers what a server without a cache answers.
func TestIncrementalDamagedCache(t *testing.T) {
	org, err := synth.Generate(synth.Config{Seed: 5, Identities: 40, FailureRate: 0.2})
	if err != nil {
		t.Fatal(err)
	}
	set := synthRules(t, org, nil)
	half := len(org.Events) / 2
	open := func(evs []*pb.Event) *ledger.Log {
		l := openBadgerLedger(t)
		for chunk := range slices.Chunk(evs, 500) {
			if _, _, err := l.Append(t.Context(), chunk); err != nil {
				t.Fatal(err)
			}
		}
		return l
	}
	req := &pb.EvaluateRequest{AsOf: timestamppb.New(org.AsOf)}
	other := &pb.EvaluateRequest{AsOf: timestamppb.New(org.AsOf.AddDate(0, 0, -1))}
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, path, otherPath string)
		want   string
	}{
		{"cut short", func(t *testing.T, path, _ string) {
			b, _ := os.ReadFile(path)
			os.WriteFile(path, b[:len(b)*2/3], 0o600)
		}, "full: cache file damaged or foreign"},
		{"flipped byte", func(t *testing.T, path, _ string) {
			b, _ := os.ReadFile(path)
			b[len(b)/2] ^= 0x10
			os.WriteFile(path, b, 0o600)
		}, "full: cache file damaged or foreign"},
		{"trailer cut", func(t *testing.T, path, _ string) {
			b, _ := os.ReadFile(path)
			os.WriteFile(path, b[:len(b)-5], 0o600)
		}, "full: cache file damaged or foreign"},
		{"another evaluation's file", func(t *testing.T, path, otherPath string) {
			b, _ := os.ReadFile(otherPath)
			os.WriteFile(path, b, 0o600)
		}, "full: cache file damaged or foreign"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := open(org.Events[:half])
			e, dir := cachedEnv(t, l, set, ScanOff, 64<<20)
			evaluateStreamed(t, e, req)
			files := cacheFiles(t, dir)
			evaluateStreamed(t, e, other)
			if len(files) != 1 {
				t.Fatalf("cache files %v", files)
			}
			otherPath := ""
			for _, f := range cacheFiles(t, dir) {
				if f != files[0] {
					otherPath = f
				}
			}
			for chunk := range slices.Chunk(org.Events[half:half+len(org.Events)/50], 500) {
				if _, _, err := l.Append(t.Context(), chunk); err != nil {
					t.Fatal(err)
				}
			}
			tc.damage(t, files[0], otherPath)
			full := newEnv(t, func(c *Config) { c.Ledger, c.Evaluator, c.EvaluateChunkBytes = l, set, 4096 })
			sameStreamed(t, tc.name, evaluateStreamed(t, e, req), evaluateStreamed(t, full, req))
			if el := lastEvalLog(t, e); el.Cache != tc.want || el.Reused != 0 {
				t.Errorf("evaluation log %+v, want cache %q", el, tc.want)
			}
			if !strings.Contains(e.logs.String(), "ignoring a damaged or foreign cache file") {
				t.Error("no warning about the damaged cache file")
			}
			// The evaluation in full wrote a good file: the next one uses it.
			sameStreamed(t, tc.name+", again", evaluateStreamed(t, e, req), evaluateStreamed(t, full, req))
			if el := lastEvalLog(t, e); el.Cache != "reused" {
				t.Errorf("after the full evaluation, the cache was not used: %+v", el)
			}
		})
	}
	t.Run("another log", func(t *testing.T) {
		// The same origin and as-of time, another log: its tree is no
		// prefix of this one.
		l1 := open(org.Events[:half])
		l2 := open(org.Events[half/2 : half])
		e1, dir := cachedEnv(t, l1, set, ScanOff, 64<<20)
		evaluateStreamed(t, e1, req)
		for chunk := range slices.Chunk(append(slices.Clone(org.Events[:half/2]), org.Events[half:half+20]...), 500) {
			if _, _, err := l2.Append(t.Context(), chunk); err != nil {
				t.Fatal(err)
			}
		}
		if l1.Latest().Origin != l2.Latest().Origin || l2.Latest().Size <= l1.Latest().Size {
			t.Fatalf("origins %q %q, sizes %d %d", l1.Latest().Origin, l2.Latest().Origin, l1.Latest().Size, l2.Latest().Size)
		}
		e2 := newEnv(t, func(c *Config) {
			c.Ledger, c.Evaluator, c.EvaluateChunkBytes = l2, set, 4096
			c.EvaluateCache = EvaluateCache{Dir: dir, MaxBytes: 64 << 20}
		})
		full := newEnv(t, func(c *Config) { c.Ledger, c.Evaluator, c.EvaluateChunkBytes = l2, set, 4096 })
		sameStreamed(t, "another log", evaluateStreamed(t, e2, req), evaluateStreamed(t, full, req))
		if el := lastEvalLog(t, e2); el.Cache != "full: cache file damaged or foreign" {
			t.Errorf("another log's cache: %+v", el)
		}
	})
}

// TestEvaluateCacheBoundAndOff: results larger than the bound are not
// kept; a server with the cache off keeps nothing and removes the cache
// directory at start; temporary files of an interrupted evaluation are
// removed at start.
func TestEvaluateCacheBoundAndOff(t *testing.T) {
	l, set, asOf := synthLedger(t, 40)
	req := &pb.EvaluateRequest{AsOf: timestamppb.New(asOf)}
	small, dir := cachedEnv(t, l, set, ScanOff, 1024)
	evaluateStreamed(t, small, req)
	if f := cacheFiles(t, dir); len(f) != 0 {
		t.Errorf("results over the bound were kept: %v", f)
	}
	evaluateStreamed(t, small, req)
	if el := lastEvalLog(t, small); el.Cache != "full: no cached evaluation" {
		t.Errorf("bounded cache: %+v", el)
	}

	e, dir := cachedEnv(t, l, set, ScanOff, 64<<20)
	evaluateStreamed(t, e, req)
	if len(cacheFiles(t, dir)) != 1 {
		t.Fatalf("cache files: %v", cacheFiles(t, dir))
	}
	tmp := filepath.Join(dir, EvalCacheDirName, "eval-1.tmp")
	os.WriteFile(tmp, []byte("x"), 0o600)
	newEnv(t, func(c *Config) {
		c.Ledger, c.Evaluator = l, set
		c.EvaluateCache = EvaluateCache{Dir: dir, MaxBytes: 64 << 20}
	})
	if _, err := os.Stat(tmp); err == nil || len(cacheFiles(t, dir)) != 1 {
		t.Errorf("at start: leftover temporary file kept or cache file removed: %v", cacheFiles(t, dir))
	}
	off := newEnv(t, func(c *Config) {
		c.Ledger, c.Evaluator = l, set
		c.EvaluateCache = EvaluateCache{Dir: dir, MaxBytes: 0}
	})
	if _, err := os.Stat(filepath.Join(dir, EvalCacheDirName)); err == nil {
		t.Error("the cache directory stays with the cache off")
	}
	evaluateStreamed(t, off, req)
	if el := lastEvalLog(t, off); el.Cache != "full: off" {
		t.Errorf("cache off: %+v", el)
	}
	if len(cacheFiles(t, dir)) != 0 {
		t.Error("a server with the cache off wrote one")
	}
}

// TestEvaluateCacheLRU: past the bound the least recently used files go.
func TestEvaluateCacheLRU(t *testing.T) {
	l, set, asOf := synthLedger(t, 40)
	e, dir := cachedEnv(t, l, set, ScanOff, 64<<20)
	evaluateStreamed(t, e, &pb.EvaluateRequest{AsOf: timestamppb.New(asOf)})
	one := cacheFiles(t, dir)
	if len(one) != 1 {
		t.Fatal(one)
	}
	fi, _ := os.Stat(one[0])
	bound := fi.Size() * 3 / 2
	e2 := newEnv(t, func(c *Config) {
		c.Ledger, c.Evaluator, c.EvaluateChunkBytes = l, set, 4096
		c.EvaluateCache = EvaluateCache{Dir: dir, MaxBytes: bound}
	})
	var last []string
	for d := 1; d <= 3; d++ {
		before := cacheFiles(t, dir)
		evaluateStreamed(t, e2, &pb.EvaluateRequest{AsOf: timestamppb.New(asOf.AddDate(0, 0, -d))})
		last = slices.DeleteFunc(cacheFiles(t, dir), func(f string) bool { return slices.Contains(before, f) })
	}
	files := cacheFiles(t, dir)
	var total int64
	for _, f := range files {
		fi, _ := os.Stat(f)
		total += fi.Size()
	}
	if total > bound || slices.Contains(files, one[0]) || len(last) != 1 || !slices.Contains(files, last[0]) {
		t.Errorf("after three more evaluations with a bound of %d bytes: %v, %d bytes (the first was %s, the last %v)", bound, files, total, one[0], last)
	}
}

// TestCacheRecordRoundTrip: a record decodes to what was encoded, open and
// closed findings, errors and related subjects included; any cut of it is
// refused.
func TestCacheRecordRoundTrip(t *testing.T) {
	l, set, asOf := synthLedger(t, 40)
	var recs []*cacheRecord
	_, err := set.Stream(t.Context(), LedgerSubjects(t.Context(), l, l.Latest().Size), &chainSource{l: l, size: l.Latest().Size},
		asOf.AddDate(0, -1, 0), asOf, true, func(r *rules.SubjectResult) error {
			recs = append(recs, &cacheRecord{subject: r.Subject, related: []string{"owner-1", r.Subject + "x"}, result: *r})
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	recs = append(recs, &cacheRecord{subject: "zz-errors", result: rules.SubjectResult{Subject: "zz-errors", Entries: 3,
		Findings: []rules.Finding{}, Errors: []rules.RuleError{{Rule: "r1", Subject: "zz-errors", Message: "cost limit"}}}})
	closed, open := 0, 0
	for _, r := range recs {
		for _, f := range r.result.Findings {
			if f.Open() {
				open++
			} else {
				closed++
			}
		}
		b := encodeRecord(nil, r)
		var got cacheRecord
		if err := decodeRecord(b, &got); err != nil {
			t.Fatal(err)
		}
		if got.subject != r.subject || !slices.Equal(got.related, r.related) || got.result.Entries != r.result.Entries ||
			got.result.Exposure != r.result.Exposure || !slices.Equal(got.result.Errors, r.result.Errors) ||
			!slices.EqualFunc(got.result.Findings, r.result.Findings, func(a, b rules.Finding) bool {
				return proto.Equal(findingPB(a), findingPB(b)) && a.OpenedAt.Equal(b.OpenedAt) && a.ClosedAt.IsZero() == b.ClosedAt.IsZero()
			}) {
			t.Fatalf("record of %s does not round-trip", r.subject)
		}
		for _, cut := range []int{1, len(b) / 2, len(b) - 1} {
			if cut < len(b) && decodeRecord(b[:cut], &got) == nil {
				t.Fatalf("record of %s cut at %d of %d decodes", r.subject, cut, len(b))
			}
		}
	}
	if open == 0 || closed == 0 {
		t.Errorf("%d open and %d closed findings: both kinds should round-trip", open, closed)
	}
}

// TestIncrementalOwnerAndHolder: findings of subjects that did not change
// themselves change when their owner or a holder of their credential
// leaves (orphaned-nhi, shared-credential-not-rotated); the incremental
// evaluation evaluates those subjects again and answers what the full
// evaluation answers, while the subjects nothing changed for are reused.
func TestIncrementalOwnerAndHolder(t *testing.T) {
	asOf := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	n := 0
	ev := func(typ, subject, kind, owner, actor string, daysBefore int, edit func(*pb.Event)) *pb.Event {
		n++
		e := &pb.Event{
			Id: fmt.Sprintf("e-%d", n), Type: typ, Time: timestamppb.New(asOf.AddDate(0, 0, -daysBefore)),
			Source:  &pb.Source{System: "okta", Product: "test"},
			Subject: &pb.Identity{Id: subject, Kind: kind, OwnerId: owner},
		}
		if actor != "" {
			e.Actor = &pb.Identity{Id: actor, Kind: "human"}
		}
		if edit != nil {
			edit(e)
		}
		return e
	}
	grant := func(e *pb.Event) {
		e.Entitlement = &pb.Entitlement{Id: "role/admin", Resource: "aws:prod", Privileged: true}
		e.Refs = &pb.Refs{Grant: "g-1", Request: "r-1"}
	}
	cred := func(e *pb.Event) { e.Refs = &pb.Refs{Credential: "c-1"} }
	first := []*pb.Event{
		ev("session.started", "alice", "human", "", "", 40, nil),
		ev("session.started", "bob", "human", "", "", 40, nil),
		ev("grant.assigned", "svc-owned", "service", "alice", "", 30, grant),
		ev("credential.created", "svc-shared", "service", "", "", 30, cred),
		ev("credential.checked_out", "svc-shared", "service", "", "bob", 20, cred),
	}
	for i := range 12 {
		first = append(first, ev("session.started", fmt.Sprintf("h-%02d", i), "human", "", "", 35, nil))
	}
	later := []*pb.Event{
		ev("identity.terminated", "alice", "human", "", "", 10, nil),
		ev("identity.terminated", "bob", "human", "", "", 10, nil),
		ev("session.started", "h-03", "human", "", "", 5, nil),
	}
	l := openBadgerLedger(t)
	builtin, err := rules.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	set, err := rules.NewSet(builtin, rules.Params{})
	if err != nil {
		t.Fatal(err)
	}
	full := newEnv(t, func(c *Config) { c.Ledger, c.Evaluator = l, set })
	inc, _ := cachedEnv(t, l, set, ScanOff, 64<<20)
	req := &pb.EvaluateRequest{AsOf: timestamppb.New(asOf)}
	about := func(s streamed, rule, subject string) bool {
		for _, b := range s.findings {
			var f pb.Finding
			if err := proto.Unmarshal(b, &f); err != nil {
				t.Fatal(err)
			}
			if f.GetRule() == rule && f.GetSubject() == subject {
				return true
			}
		}
		return false
	}
	for round, evs := range [][]*pb.Event{first, later} {
		if _, _, err := l.Append(t.Context(), evs); err != nil {
			t.Fatal(err)
		}
		want := evaluateStreamed(t, full, req)
		got := evaluateStreamed(t, inc, req)
		sameStreamed(t, fmt.Sprintf("round %d", round), got, want)
		for _, f := range [][2]string{{"orphaned-nhi", "svc-owned"}, {"shared-credential-not-rotated", "svc-shared"}} {
			if about(want, f[0], f[1]) != (round == 1) {
				t.Fatalf("round %d: finding %s about %s: %v", round, f[0], f[1], round != 1)
			}
		}
		el := lastEvalLog(t, inc)
		// A rules filter applies to what is sent; the cache holds all.
		filtered := &pb.EvaluateRequest{AsOf: req.AsOf, Rules: []string{"orphaned-nhi"}}
		sameStreamed(t, fmt.Sprintf("round %d, one rule", round), evaluateStreamed(t, inc, filtered), evaluateStreamed(t, full, filtered))
		if round == 1 && (el.Cache != "reused" || el.Changed != 3 || el.Related != 2 || el.Reused != el.Subjects-5) {
			t.Errorf("round 1: %+v; want 3 subjects changed, 2 evaluated again for their owner or holder, the rest reused", el)
		}
		if el := lastEvalLog(t, inc); round == 1 && (el.Cache != "reused" || el.Evaluated != 0) {
			t.Errorf("round 1, one rule, after the evaluation of all rules at this size: %+v; want all reused", el)
		}
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestReplayOfChangedFile: a cache file that is damaged after it was
// checked fails the replay (and is removed) rather than give a result.
func TestReplayOfChangedFile(t *testing.T) {
	dir := t.TempDir()
	c := &evalCache{cfg: EvaluateCache{Dir: dir, MaxBytes: 1 << 20}, log: slog.New(slog.DiscardHandler)}
	k := cacheKey{origin: "o", asOf: time.Unix(1e9, 0), rules: "r"}
	w, err := c.create(k, 10, [32]byte{1})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4000 {
		s := fmt.Sprintf("s-%04d", i)
		if err := w.add(&cacheRecord{subject: s, result: rules.SubjectResult{Subject: s, Entries: i,
			Findings: []rules.Finding{{Rule: "r", Subject: s, Entries: []rules.EntryRef{{Index: uint64(i), EventID: "e"}}, Message: strings.Repeat("x", 200)}}}}); err != nil {
			t.Fatal(err)
		}
	}
	if kept, _, err := w.commit(); !kept || err != nil {
		t.Fatal(kept, err)
	}
	path, _, ok := c.best(k, 10)
	if !ok {
		t.Fatal("no cache file")
	}
	cr, err := openCache(path, k)
	if err != nil {
		t.Fatal(err)
	}
	inc := &incremental{base: cr}
	defer inc.close()
	fi, _ := os.Stat(path)
	if err := os.Truncate(path, fi.Size()/2); err != nil {
		t.Fatal(err)
	}
	n := 0
	err = inc.finish(func(*rules.SubjectResult) error { n++; return nil })
	if !errors.Is(err, errCacheDamaged) || n == 0 || n >= 4000 {
		t.Fatalf("replay of a file cut after its check: %d subjects, err %v", n, err)
	}
	if _, err := os.Stat(path); err == nil {
		t.Error("the damaged file stays")
	}
}
