package ingest

import (
	"encoding/json"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/ingest/auth"
	"github.com/grantline/grantline/internal/cputime"
	"github.com/grantline/grantline/internal/synth"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// BenchmarkEvaluateIncremental measures the incremental evaluation
// (docs/design.md "Incremental evaluation") against a full one, through
// EvaluateStream over loopback on the same badger ledger: a synthetic org
// (all rules) whose last 1% of events, the later halves of the chains of a
// few subjects picked at random, are
// appended after an evaluation at a fixed as-of time was cached. full
// evaluates the grown log on a server without a cache; incremental on one
// whose cache holds the evaluation before the append (put back before each
// run, so each run reuses the same base); full-writing-cache is full on a
// server with a cache (of nothing reusable), which writes the results.
// cpu-us/event is the process's
// CPU time per entry of the log. BENCH_IDENTITIES sets the org's size
// (default 2000). Run:
//
//	go test -run '^$' -bench BenchmarkEvaluateIncremental -benchtime 1x -count 5 ./ingest
func BenchmarkEvaluateIncremental(b *testing.B) {
	identities := 2000
	if s := os.Getenv("BENCH_IDENTITIES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			b.Fatal(err)
		}
		identities = n
	}
	org, err := synth.Generate(synth.Config{Seed: 21, Identities: identities, FailureRate: 0.2})
	if err != nil {
		b.Fatal(err)
	}
	set := synthRules(b, org, nil)
	base, held := holdBack(org.Events, len(org.Events)/100)
	l := openBadgerLedger(b)
	for evs := range slices.Chunk(base, 500) {
		if _, _, err := l.Append(b.Context(), evs); err != nil {
			b.Fatal(err)
		}
	}
	req := &pb.EvaluateRequest{AsOf: timestamppb.New(org.AsOf)}
	dir := b.TempDir()
	logs := &syncBuffer{}
	newServer := func(cache EvaluateCache, w io.Writer) *Server {
		srv, err := New(Config{Ledger: l, Evaluator: set, Logger: slog.New(slog.NewJSONHandler(w, nil)),
			Auth:          &fakeAuth{tokens: map[string]auth.Principal{auditorTok: {Name: "audit", Role: auth.RoleAuditor}}},
			EvaluateCache: cache})
		if err != nil {
			b.Fatal(err)
		}
		return srv
	}
	cached := h2cEvidenceClient(b, newServer(EvaluateCache{Dir: dir, MaxBytes: 1 << 30}, logs))
	benchEvaluateOnce(b, cached, req, "stream") // the cache of the log before the append
	files, _ := filepath.Glob(filepath.Join(dir, EvalCacheDirName, "*"+evalCacheExt))
	if len(files) != 1 {
		b.Fatalf("cache files %v", files)
	}
	kept, err := os.ReadFile(files[0])
	if err != nil {
		b.Fatal(err)
	}
	for evs := range slices.Chunk(held, 500) {
		if _, _, err := l.Append(b.Context(), evs); err != nil {
			b.Fatal(err)
		}
	}
	full := h2cEvidenceClient(b, newServer(EvaluateCache{}, io.Discard))
	b.Logf("%d events, %d appended after the cached evaluation; cache file %d bytes", len(base)+len(held), len(held), len(kept))
	wdir := b.TempDir()
	writing := h2cEvidenceClient(b, newServer(EvaluateCache{Dir: wdir, MaxBytes: 1 << 30}, io.Discard))
	for _, mode := range []string{"full", "full-writing-cache", "incremental"} {
		b.Run(mode, func(b *testing.B) {
			var entries uint64
			var cpu time.Duration
			var el evalLog
			for range b.N {
				b.StopTimer()
				cl := full
				if mode == "full-writing-cache" {
					// An empty cache: nothing reused, the results written.
					cl = writing
					os.RemoveAll(filepath.Join(wdir, EvalCacheDirName))
				}
				if mode == "incremental" {
					cl = cached
					os.RemoveAll(filepath.Join(dir, EvalCacheDirName))
					os.MkdirAll(filepath.Join(dir, EvalCacheDirName), 0o700)
					if err := os.WriteFile(files[0], kept, 0o600); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				cpu0 := cputime.Process()
				entries, _ = benchEvaluateOnce(b, cl, req, "stream")
				cpu += cputime.Process() - cpu0
			}
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N)/float64(entries), "cpu-us/event")
			b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
			if mode == "incremental" {
				el = lastEvalLogOf(b, logs.String())
				if el.Cache != "reused" {
					b.Fatalf("the cache was not used: %+v", el)
				}
				b.ReportMetric(float64(el.Evaluated), "subjects-evaluated")
				b.ReportMetric(float64(el.Reused), "subjects-reused")
			}
		})
	}
}

// holdBack splits evs into a base and up to n events of a few subjects held
// back (their latest), in time order both.
func holdBack(evs []*pb.Event, n int) (base, held []*pb.Event) {
	perSubject := map[string]int{}
	for _, e := range evs {
		perSubject[e.GetSubject().GetId()]++
	}
	// Subjects in a fixed pseudo-random order, half of each one's chain,
	// until n are held.
	subjects := make([]string, 0, len(perSubject))
	for s := range perSubject {
		subjects = append(subjects, s)
	}
	slices.Sort(subjects)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(subjects), func(i, j int) { subjects[i], subjects[j] = subjects[j], subjects[i] })
	quota := map[string]int{}
	for i, total := 0, 0; i < len(subjects) && total < n; i++ {
		k := min(perSubject[subjects[i]]/2, n-total)
		quota[subjects[i]] = k
		total += k
	}
	for i := len(evs) - 1; i >= 0; i-- {
		s := evs[i].GetSubject().GetId()
		if quota[s] > 0 {
			quota[s]--
			held = append(held, evs[i])
			continue
		}
		base = append(base, evs[i])
	}
	slices.Reverse(base)
	slices.Reverse(held)
	return base, held
}

// lastEvalLogOf is the last "evaluation" line of a JSON log.
func lastEvalLogOf(tb testing.TB, logs string) evalLog {
	tb.Helper()
	var el evalLog
	for line := range strings.Lines(logs) {
		if strings.Contains(line, `"msg":"evaluation"`) {
			el = evalLog{}
			if err := json.Unmarshal([]byte(line), &el); err != nil {
				tb.Fatal(err)
			}
		}
	}
	return el
}
