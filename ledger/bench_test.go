package ledger

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/grantline/grantline/internal/cputime"
	"github.com/grantline/grantline/ledger/badgerstore"
	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// benchEvent is a ~500-byte event sharing its sub-messages with a template
// (encoding only reads them), so that making it costs little.
func benchEvent(tmpl *pb.Event, id string) *pb.Event {
	return &pb.Event{
		Id: id, Type: tmpl.Type, Time: tmpl.Time, Source: tmpl.Source, Subject: tmpl.Subject,
		Actor: tmpl.Actor, Entitlement: tmpl.Entitlement, Refs: tmpl.Refs, Reason: tmpl.Reason,
		Attributes: tmpl.Attributes,
	}
}

// BenchmarkAppend measures durable appends into badger (fsync per batch,
// dedupe on) from concurrent callers, each appending chunks of ~500-byte
// events. b.N counts events. The subjects=10000 pair spreads the events
// over 10,000 subjects, without and with the subject map (map=on), to
// measure the map's cost in the same run (docs/BENCHMARKS.md).
func BenchmarkAppend(b *testing.B) {
	for _, tc := range []struct {
		name           string
		callers, chunk int
		memory         bool // the in-memory fake store: the ledger's own ceiling, no disk
		subjects       int  // distinct subjects, round robin; 0: one
		smap           bool // Options.SubjectMap
		split          bool // the indexes in a separate badger store (Options.Index)
	}{
		{"callers=64/chunk=100", 64, 100, false, 0, false, false},
		{"callers=64/chunk=100/index=separate", 64, 100, false, 0, false, true},
		{"callers=16/chunk=1000", 16, 1000, false, 0, false, false},
		{"callers=16/chunk=1000/index=separate", 16, 1000, false, 0, false, true},
		{"callers=256/chunk=10", 256, 10, false, 0, false, false},
		{"callers=256/chunk=10/index=separate", 256, 10, false, 0, false, true},
		{"callers=64/chunk=100/store=memory", 64, 100, true, 0, false, false},
		{"callers=64/chunk=100/subjects=10000/map=off", 64, 100, false, 10000, false, true},
		{"callers=64/chunk=100/subjects=10000/map=on", 64, 100, false, 10000, true, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			st := appendBench(b, tc.callers, tc.chunk, tc.subjects, 1, tc.memory, tc.split, tc.smap)
			b.ReportMetric(float64(st.CommitTime.Milliseconds())/float64(max(st.Batches, 1)), "ms/batch")
			b.ReportMetric(float64(st.StoreTime.Milliseconds())/float64(max(st.Batches, 1)), "store-ms/batch")
		})
	}
}

// appendBench is one append benchmark run: a log on the in-memory fake
// store (memory) or on badger, its indexes in a separate badger store
// (split) or not, with the subject map (smap) or not, appended to by
// appendFromCallers and checked and reported by reportAppend. The events
// go to subjects distinct subjects, burst events in a row to one (subject
// (i/burst) mod subjects); subjects 0 keeps the template's one.
func appendBench(b *testing.B, callers, chunk, subjects, burst int, memory, split, smap bool) Stats {
	b.Helper()
	o := testOptions()
	o.Now = time.Now
	o.SubjectMap = smap
	var store Store = newFakeStore()
	if !memory {
		dir := filepath.Join(b.TempDir(), "ledger")
		store = openBadgerStore(b, dir, badgerstore.Options{})
		if split {
			o.Index = openBadgerStore(b, filepath.Join(dir, "index"), badgerstore.Options{NoSync: true})
			o.RunsDir = filepath.Join(dir, "runs")
		}
	}
	l, err := Open(context.Background(), store, o)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	tmpl := testEvent(0)
	if n := len(mustEncode(b, tmpl)); n < 450 || n > 600 {
		b.Fatalf("template event encodes to %d bytes, want ~500", n)
	}
	ids := make([]*pb.Identity, max(subjects, 1))
	for i := range ids {
		ids[i] = &pb.Identity{Id: "user-" + strconv.Itoa(i), Kind: "human", Display: "Some User"}
	}
	if subjects == 0 {
		ids[0] = tmpl.Subject
	}
	b.ResetTimer()
	cpu0 := cputime.Process()
	start := time.Now()
	appendFromCallers(b, l, callers, chunk, tmpl, "bench-",
		func(i int64) *pb.Identity { return ids[i/int64(burst)%int64(len(ids))] }, nil)
	elapsed := time.Since(start)
	cpu := cputime.Process() - cpu0
	b.StopTimer()
	return reportAppend(b, l, smap, elapsed, cpu)
}

// appendFromCallers appends b.N events from callers goroutines, each taking
// the next chunk of indexes: event i is benchEvent(tmpl, prefix+i) on
// subject(i). After each successful append, appended (if not nil) gets its
// events. The append benchmarks share it so that they measure the same
// load. It returns once the indexes cover every event (WaitIndexed): the
// index commits that follow the last answers are part of the work timed.
func appendFromCallers(b *testing.B, l *Log, callers, chunk int, tmpl *pb.Event, prefix string,
	subject func(i int64) *pb.Identity, appended func(evs []*pb.Event)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			evs := make([]*pb.Event, 0, chunk)
			for {
				first := next.Add(int64(chunk)) - int64(chunk)
				if first >= int64(b.N) {
					return
				}
				evs = evs[:0]
				for i := first; i < min(first+int64(chunk), int64(b.N)); i++ {
					ev := benchEvent(tmpl, prefix+strconv.FormatInt(i, 10))
					ev.Subject = subject(i)
					evs = append(evs, ev)
				}
				if err := appendRetrying(l, evs); err != nil {
					b.Error(err)
					return
				}
				if appended != nil {
					appended(evs)
				}
			}
		})
	}
	wg.Wait()
	if err := l.WaitIndexed(context.Background()); err != nil {
		b.Fatal(err)
	}
}

// reportAppend checks that the log holds b.N events (and a map leaf per
// batch with a subject map) and reports the metrics every append benchmark
// gives: events/s, events/batch and cpu-µs/event.
func reportAppend(b *testing.B, l *Log, smap bool, elapsed, cpu time.Duration) Stats {
	b.Helper()
	st := l.Stats()
	if got := l.Latest().Size; got != uint64(b.N) && (!smap || got != uint64(b.N)+st.Batches) {
		b.Fatalf("size = %d, want %d events (and a map leaf for each of %d batches with a subject map)", got, b.N, st.Batches)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(st.BatchEvents)/float64(max(st.Batches, 1)), "events/batch")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/event")
	return st
}

func mustEncode(b testing.TB, ev *pb.Event) []byte {
	leaf, err := event.EncodeLeaf(ev, testNow)
	if err != nil {
		b.Fatal(err)
	}
	return leaf
}

// BenchmarkInclusionProof measures warm inclusion proofs at the latest size
// of a 200,000-leaf badger log, for random leaves; p50 and p99 are reported.
func BenchmarkInclusionProof(b *testing.B) {
	const n = 200_000
	l, err := Open(context.Background(), openBadgerStore(b, filepath.Join(b.TempDir(), "ledger"), badgerstore.Options{}), testOptions())
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	tmpl := testEvent(0)
	for i := 0; i < n; i += 5000 {
		evs := make([]*pb.Event, 5000)
		for j := range evs {
			evs[j] = benchEvent(tmpl, "p-"+strconv.Itoa(i+j))
		}
		mustAppend(b, l, evs)
	}
	ctx := context.Background()
	size := l.Latest().Size
	r := rand.New(rand.NewPCG(1, 2))
	for range 20_000 { // warm the tile cache
		if _, err := l.InclusionProof(ctx, r.Uint64N(size), size); err != nil {
			b.Fatal(err)
		}
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for b.Loop() {
		i := r.Uint64N(size)
		t0 := time.Now()
		if _, err := l.InclusionProof(ctx, i, size); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
}

// BenchmarkAppendGrowth appends b.N events (at least 2,000,000 are
// meant: -benchtime 2000000x) to one badger log with the separate index
// store, 64 callers x 100 ~500-byte events, and reports the rate of every
// 250,000-event segment (seg1-events/s, seg2-events/s, ...), so that a
// slowdown as the store grows shows (docs/BENCHMARKS.md, "Appends at the
// limit"). Opt-in: the plain Append pattern does not match it.
//
// Two environment variables help find where a segment's time goes:
// GRANTLINE_GROWTH_PROFILE=dir writes a CPU profile of every segment to
// dir/segN.pprof (not together with -cpuprofile), and GRANTLINE_GROWTH_LOG=1
// prints badger's own log lines (flushes, compactions, value-log files) of
// both stores to stderr, each with the seconds since the start and the
// events appended by then. GRANTLINE_GROWTH_INDEX_L0=n, an experiment, lets
// the index store gather n level-0 tables (badger's default: 5) before it
// compacts them.
func BenchmarkAppendGrowth(b *testing.B) {
	const segment, callers, chunk = 250_000, 64, 100
	o := testOptions()
	o.Now = time.Now
	dir := filepath.Join(b.TempDir(), "ledger")
	var done atomic.Int64
	mainOpts, indexOpts := badgerstore.Options{}, badgerstore.Options{NoSync: true}
	if os.Getenv("GRANTLINE_GROWTH_LOG") != "" {
		t0 := time.Now()
		mainOpts.BadgerOptions = growthLogger("main", t0, &done)
		indexOpts.BadgerOptions = growthLogger("index", t0, &done)
		stop := make(chan struct{})
		defer close(stop)
		go watchFiles("main", dir, t0, &done, stop)
		go watchFiles("index", filepath.Join(dir, "index"), t0, &done, stop)
	}
	if v := os.Getenv("GRANTLINE_GROWTH_INDEX_L0"); v != "" {
		// An experiment (docs/BENCHMARKS.md, "Round 4, continued"): how
		// many level-0 tables the index store gathers before compacting.
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("GRANTLINE_GROWTH_INDEX_L0=%q: want a positive number of tables", v)
		}
		logOpts := indexOpts.BadgerOptions
		indexOpts.BadgerOptions = func(bo badger.Options) badger.Options {
			if logOpts != nil {
				bo = logOpts(bo)
			}
			return bo.WithNumLevelZeroTables(n).WithNumLevelZeroTablesStall(max(15, 2*n))
		}
	}
	store := openBadgerStore(b, dir, mainOpts)
	o.Index = openBadgerStore(b, filepath.Join(dir, "index"), indexOpts)
	o.RunsDir = filepath.Join(dir, "runs")
	l, err := Open(context.Background(), store, o)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	tmpl := testEvent(0)
	subjects := make([]*pb.Identity, 5000)
	for i := range subjects {
		subjects[i] = &pb.Identity{Id: "user-" + strconv.Itoa(i), Kind: "human", Display: "Some User"}
	}
	segs := make([]time.Duration, (b.N+segment-1)/segment)
	cpus := make([]time.Duration, len(segs))
	var segMu sync.Mutex
	profDir := os.Getenv("GRANTLINE_GROWTH_PROFILE")
	var prof *os.File
	profile := func(k int) { // stop the running profile, start segment k's
		if profDir == "" {
			return
		}
		if prof != nil {
			pprof.StopCPUProfile()
			prof.Close()
			prof = nil
		}
		if k >= len(segs) {
			return
		}
		f, err := os.Create(filepath.Join(profDir, "seg"+strconv.Itoa(k+1)+".pprof"))
		if err != nil {
			b.Error(err)
			return
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Error(err)
			f.Close()
			return
		}
		prof = f
	}
	b.ResetTimer()
	profile(0)
	defer profile(len(segs))
	start, cpu0 := time.Now(), cputime.Process()
	segStart, segCPU := start, cpu0
	appendFromCallers(b, l, callers, chunk, tmpl, "growth-",
		func(i int64) *pb.Identity { return subjects[i%int64(len(subjects))] },
		func(evs []*pb.Event) {
			n := done.Add(int64(len(evs)))
			if s := (n - int64(len(evs))) / segment; s != n/segment || n == int64(b.N) {
				// This append completed a segment.
				segMu.Lock()
				now, c := time.Now(), cputime.Process()
				k := min(int((n-1)/segment), len(segs)-1)
				segs[k], cpus[k] = now.Sub(segStart), c-segCPU
				segStart, segCPU = now, c
				profile(k + 1)
				segMu.Unlock()
			}
		})
	elapsed := time.Since(start)
	cpu := cputime.Process() - cpu0
	b.StopTimer()
	for k, d := range segs {
		n := min(segment, b.N-k*segment)
		if d > 0 {
			b.ReportMetric(float64(n)/d.Seconds(), "seg"+strconv.Itoa(k+1)+"-events/s")
			b.ReportMetric(float64(cpus[k].Microseconds())/float64(n), "seg"+strconv.Itoa(k+1)+"-cpu-µs/event")
		}
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/event")
}

// growthLogger returns badger options that print badger's log lines, all
// levels, to stderr with the store's name, the seconds since t0 and the
// events done by then (BenchmarkAppendGrowth, GRANTLINE_GROWTH_LOG).
func growthLogger(name string, t0 time.Time, done *atomic.Int64) func(badger.Options) badger.Options {
	return func(bo badger.Options) badger.Options {
		return bo.WithLogger(growthLog{name: name, t0: t0, done: done})
	}
}

// watchFiles prints to stderr, once a second until stop is closed, when the
// number of value-log (.vlog) or table (.sst) files in dir changes.
func watchFiles(name, dir string, t0 time.Time, done *atomic.Int64, stop <-chan struct{}) {
	last := ""
	for {
		select {
		case <-stop:
			return
		case <-time.After(time.Second):
		}
		vlog, _ := filepath.Glob(filepath.Join(dir, "*.vlog"))
		sst, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
		if now := fmt.Sprintf("%d vlog, %d sst files", len(vlog), len(sst)); now != last {
			growthLog{name: name, t0: t0, done: done}.printf("FILES", "%s", now)
			last = now
		}
	}
}

type growthLog struct {
	name string
	t0   time.Time
	done *atomic.Int64
}

func (g growthLog) printf(level, f string, a ...any) {
	fmt.Fprintf(os.Stderr, "%8.2fs %9d %s %s: %s\n", time.Since(g.t0).Seconds(), g.done.Load(), g.name, level,
		strings.TrimSpace(fmt.Sprintf(f, a...)))
}
func (g growthLog) Errorf(f string, a ...any)   { g.printf("ERROR", f, a...) }
func (g growthLog) Warningf(f string, a ...any) { g.printf("WARN", f, a...) }
func (g growthLog) Infof(f string, a ...any)    { g.printf("INFO", f, a...) }
func (g growthLog) Debugf(f string, a ...any) {
	// Only memtable flushes and finished compactions: the other debug
	// lines come with every write.
	if strings.HasPrefix(f, "Flushing memtable, mt.size") || strings.Contains(f, "LOG Compact. Added") {
		g.printf("DEBUG", f, a...)
	}
}

// appendRetrying appends evs, waiting a millisecond and retrying while the
// log pushes back.
func appendRetrying(l *Log, evs []*pb.Event) error {
	for {
		_, _, err := l.Append(context.Background(), evs)
		if !isErr(err, ErrPushback) {
			return err
		}
		time.Sleep(time.Millisecond)
	}
}
