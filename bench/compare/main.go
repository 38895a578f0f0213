// Command compare measures durable in-process appends of Grantline's ledger
// (badger, dedupe and every index on) and of Tessera's POSIX driver
// (github.com/transparency-dev/tessera/storage/posix, fsync on, in-memory
// antispam) on the same entries, in interleaved rounds in one process, and
// prints each system's events/s and their ratio per round and the medians.
// It is a module of its own so that Grantline does not depend on Tessera's
// storage drivers; `make bench-compare` runs it. See docs/BENCHMARKS.md.
//
// Both systems get the same entries: the deterministic protobuf encoding of
// ~500-byte Grantline events. Grantline appends the events (each call
// answers once its events are durable, integrated into the tree and under a
// signed checkpoint); Tessera adds the encoded bytes and each caller waits
// for the index futures of its chunk (resolved once Tessera's sequencer has
// durably assigned the index), the weaker condition of the two. So Tessera
// gets two figures: "sequenced" (until the last future resolved) and
// "published" (until the checkpoint it publishes covers every entry, the
// condition Grantline's answer already meets), with a ratio for each, and
// each system's CPU time per event. Tessera publishes checkpoints every
// 100 ms (its POSIX driver's minimum) unless told otherwise; Grantline
// signs one per batch. The events spread over 1,000 subjects (-subjects),
// and are made as the driver appends them, as a server makes them from
// the wire: holding a round's events as live messages would make the Go
// GC mark them again and again while Grantline runs (-prebuilt measures
// that). docs/BENCHMARKS.md, "Round 5", says what each setting changes.
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/transparency-dev/tessera"
	"github.com/transparency-dev/tessera/storage/posix"
	"golang.org/x/mod/sumdb/note"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/klog/v2"

	"github.com/grantline/grantline/internal/cputime"
	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/badgerstore"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

func main() {
	events := flag.Int("events", 200_000, "events appended per system per round")
	rounds := flag.Int("rounds", 5, "rounds; each runs both systems, in alternating order")
	callers := flag.Int("callers", 64, "concurrent appending goroutines")
	chunk := flag.Int("chunk", 100, "events per append call (Grantline) or per awaited group of adds (Tessera)")
	batch := flag.Int("batch", 4096, "largest batch of either system (Grantline MaxBatch, Tessera WithBatching)")
	batchAge := flag.Duration("tessera-batch-age", 100*time.Millisecond, "Tessera's batch age (WithBatching); Grantline needs none (group commit)")
	dir := flag.String("dir", "", "where the rounds' stores are made (and removed); default the system's temporary directory")
	separate := flag.Bool("separate-index", true, "Grantline keeps its indexes in a separate index store (ledger Options.Index), as grantline serve does")
	subjects := flag.Int("subjects", 1000, "distinct subjects the events spread over (1: every event has one subject, as the ledger's Append benchmark does)")
	cpInterval := flag.Duration("tessera-checkpoint-interval", 100*time.Millisecond, "Tessera's checkpoint interval (WithCheckpointInterval; its POSIX driver's minimum is 100ms); Grantline signs one per batch")
	prebuilt := flag.Bool("prebuilt", false, "hold every event of a round as its own message from the start (how the harness ran before round 5: hundreds of MB of live pointers that the Go GC marks again and again while Grantline runs, which Tessera's byte slices do not cost it)")
	only := flag.String("only", "", "run one system only: grantline or tessera (for profiling one of them; no ratios)")
	verbose := flag.Bool("v", false, "show Tessera's log lines")
	flag.Parse()
	if !*verbose {
		klog.LogToStderr(false)
		klog.SetOutput(io.Discard)
	}
	if *events <= 0 || *rounds <= 0 || *callers <= 0 || *chunk <= 0 || *subjects <= 0 {
		log.Fatal("-events, -rounds, -callers, -chunk and -subjects must be positive")
	}
	if *only != "" && *only != "grantline" && *only != "tessera" {
		log.Fatalf("-only %q: want grantline or tessera", *only)
	}
	base, err := os.MkdirTemp(*dir, "bench-compare-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(base)

	skey, vkey, err := note.GenerateKey(rand.Reader, "bench.grantline.example/compare")
	if err != nil {
		log.Fatal(err)
	}
	signer, err := note.NewSigner(skey)
	if err != nil {
		log.Fatal(err)
	}
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		log.Fatal(err)
	}
	// The entries: the same for both systems, new ids every round.
	tmpl := templateEvent()
	size := len(mustMarshal(tmpl))
	fmt.Printf("# %s; load average %s\n", time.Now().UTC().Format(time.RFC3339), loadAvg())
	fmt.Printf("# %d events of ~%d bytes per system per round over %d subjects, %d callers x %d, batch %d, fsync on; Tessera checkpoint interval %v\n",
		*events, size, *subjects, *callers, *chunk, *batch, *cpInterval)
	fmt.Printf("# cpu-µs/ev: the process's CPU time per event from the first append until the indexes cover the last event (Grantline) or the published checkpoint (Tessera); moved less by other load than ev/s\n")
	fmt.Printf("%-6s %14s %10s %16s %16s %10s %10s %10s\n", "round", "grantline ev/s", "cpu-µs/ev", "tessera seq ev/s", "tessera pub ev/s", "cpu-µs/ev", "ratio seq", "ratio pub")
	var gs, gcs, ts, tps, tcs, rs, rps []float64
	ctx := context.Background()
	for r := range *rounds {
		src := newEntries(tmpl, r, *events, *subjects, *prebuilt)
		raw := make([][]byte, *events)
		for i := range raw {
			raw[i] = mustMarshal(src.event(i))
		}
		var g, gc, t, tp, tc float64
		runG := func() {
			if *only == "tessera" {
				return
			}
			g, gc, err = runGrantline(ctx, filepath.Join(base, fmt.Sprintf("grantline-%d", r)), signer, verifier, src, *callers, *chunk, *batch, *separate)
			if err != nil {
				log.Fatalf("grantline, round %d: %v", r, err)
			}
		}
		runT := func() {
			if *only == "grantline" {
				return
			}
			t, tp, tc, err = runTessera(ctx, filepath.Join(base, fmt.Sprintf("tessera-%d", r)), signer, raw, *callers, *chunk, *batch, *batchAge, *cpInterval)
			if err != nil {
				log.Fatalf("tessera, round %d: %v", r, err)
			}
		}
		if r%2 == 0 {
			runG()
			runT()
		} else {
			runT()
			runG()
		}
		gs, gcs, ts, tps, tcs = append(gs, g), append(gcs, gc), append(ts, t), append(tps, tp), append(tcs, tc)
		rs, rps = append(rs, ratio(g, t)), append(rps, ratio(g, tp))
		fmt.Printf("%-6d %14.0f %10.1f %16.0f %16.0f %10.1f %10.2f %10.2f\n", r+1, g, gc, t, tp, tc, ratio(g, t), ratio(g, tp))
	}
	fmt.Printf("%-6s %14.0f %10.1f %16.0f %16.0f %10.1f %10.2f %10.2f\n", "median", median(gs), median(gcs), median(ts), median(tps), median(tcs), median(rs), median(rps))
	fmt.Printf("# load average at the end %s\n", loadAvg())
}

// perEvent is d in microseconds per event.
func perEvent(d time.Duration, n int) float64 { return float64(d.Microseconds()) / float64(n) }

// ratio is a/b, or 0 when one system did not run (-only).
func ratio(a, b float64) float64 {
	if a == 0 || b == 0 {
		return 0
	}
	return a / b
}

// runGrantline appends the events of src to a new ledger in dir from callers
// goroutines and returns events/s until the indexes cover the last event, and the
// process's CPU time per event (µs) from the first append to then.
func runGrantline(ctx context.Context, dir string, s note.Signer, v note.Verifier, src *entries, callers, chunk, batch int, separate bool) (rate, cpu float64, err error) {
	st, err := badgerstore.Open(filepath.Join(dir, "ledger"), badgerstore.Options{})
	if err != nil {
		return 0, 0, err
	}
	o := ledger.Options{Signer: s, Verifier: v, MaxBatch: batch}
	if separate {
		ix, err := badgerstore.Open(filepath.Join(dir, "ledger", "index"), badgerstore.Options{NoSync: true})
		if err != nil {
			st.Close()
			return 0, 0, err
		}
		o.Index = ix
		o.RunsDir = filepath.Join(dir, "ledger", "runs")
	}
	l, err := ledger.Open(ctx, st, o)
	if err != nil {
		st.Close()
		if o.Index != nil {
			o.Index.Close()
		}
		return 0, 0, err
	}
	defer os.RemoveAll(dir)
	defer l.Close()
	cpu0 := cputime.Process()
	n := src.n()
	elapsed, err := drive(n, callers, chunk, func(from, to int) error {
		evs := make([]*pb.Event, 0, to-from)
		for i := from; i < to; i++ {
			evs = append(evs, src.event(i))
		}
		for {
			_, _, err := l.Append(ctx, evs)
			if errors.Is(err, ledger.ErrPushback) {
				time.Sleep(time.Millisecond)
				continue
			}
			return err
		}
	})
	if err == nil {
		// Appends are answered after the durable commit, with the index
		// commit following: the clock stops once the indexes cover every
		// event, so that their work counts.
		t := time.Now()
		err = l.WaitIndexed(ctx)
		elapsed += time.Since(t)
	}
	cpu = perEvent(cputime.Process()-cpu0, n)
	if err != nil {
		return 0, 0, err
	}
	if got := l.Latest().Size; got != uint64(n) {
		return 0, 0, fmt.Errorf("tree size %d after %d appends", got, n)
	}
	return float64(n) / elapsed.Seconds(), cpu, nil
}

// runTessera adds raw to a new Tessera POSIX log in dir from callers
// goroutines and returns events/s until the last index future resolved
// (sequenced) and until the published checkpoint covered every entry
// (published), and the process's CPU time per event (µs) from the first add
// to the published checkpoint.
func runTessera(ctx context.Context, dir string, s note.Signer, raw [][]byte, callers, chunk, batch int, age, cpInterval time.Duration) (seq, pub, cpu float64, err error) {
	defer os.RemoveAll(dir)
	// Tessera's background loops (integration, publishing) run until ctx
	// ends: cancelled after the shutdown below, before dir is removed.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	driver, err := posix.New(ctx, posix.Config{Path: dir})
	if err != nil {
		return 0, 0, 0, err
	}
	app, shutdown, _, err := tessera.NewAppender(ctx, driver, tessera.NewAppendOptions().
		WithCheckpointSigner(s).
		WithCheckpointInterval(cpInterval).
		WithBatching(uint(batch), age).
		WithPushback(64*1024).
		WithAntispam(tessera.DefaultAntispamInMemorySize, nil))
	if err != nil {
		return 0, 0, 0, err
	}
	cpu0 := cputime.Process()
	start := time.Now()
	elapsed, err := drive(len(raw), callers, chunk, func(from, to int) error {
		fs := make([]tessera.IndexFuture, 0, to-from)
		for _, b := range raw[from:to] {
			fs = append(fs, app.Add(ctx, tessera.NewEntry(b)))
		}
		for _, f := range fs {
			for {
				_, err := f()
				if errors.Is(err, tessera.ErrPushback) {
					// Not expected with the pushback limit above; counted
					// as a failure rather than retried silently.
					return err
				}
				if err != nil {
					return err
				}
				break
			}
		}
		return nil
	})
	var published time.Duration
	if err == nil {
		err = awaitCheckpoint(ctx, filepath.Join(dir, "checkpoint"), uint64(len(raw)))
		published = time.Since(start)
		cpu = perEvent(cputime.Process()-cpu0, len(raw))
	}
	if serr := shutdown(ctx); err == nil && serr != nil {
		err = serr
	}
	cancel()
	time.Sleep(100 * time.Millisecond) // let the loops see it before dir goes
	if err != nil {
		return 0, 0, 0, err
	}
	return float64(len(raw)) / elapsed.Seconds(), float64(len(raw)) / published.Seconds(), cpu, nil
}

// awaitCheckpoint polls the checkpoint a Tessera POSIX log publishes at path
// until its tree size (its second line) is at least n, for at most a minute.
func awaitCheckpoint(ctx context.Context, path string, n uint64) error {
	deadline := time.Now().Add(time.Minute)
	for {
		if b, err := os.ReadFile(path); err == nil {
			if lines := strings.SplitN(string(b), "\n", 3); len(lines) == 3 {
				if size, err := strconv.ParseUint(lines[1], 10, 64); err == nil && size >= n {
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("tessera's checkpoint at %s did not reach size %d within a minute", path, n)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// drive runs n events through add in chunks from callers goroutines and
// returns the wall time.
func drive(n, callers, chunk int, add func(from, to int) error) (time.Duration, error) {
	var next atomic.Int64
	var mu sync.Mutex
	var first error
	start := time.Now()
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for {
				from := int(next.Add(int64(chunk))) - chunk
				if from >= n {
					return
				}
				if err := add(from, min(from+chunk, n)); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	return time.Since(start), first
}

// templateEvent is a ~500-byte event like the ledger's benchmarks use.
func templateEvent() *pb.Event {
	return &pb.Event{
		Type:        "access.approved",
		Time:        timestamppb.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
		Source:      &pb.Source{System: "iga-1", Product: "sailpoint", Tenant: "acme"},
		Subject:     &pb.Identity{Id: "user-042", Kind: "human", Display: "Some User"},
		Actor:       &pb.Identity{Id: "approver-1", Kind: "human"},
		Entitlement: &pb.Entitlement{Id: "role-7", Resource: "aws:prod", Privileged: true},
		Refs:        &pb.Refs{Request: "req-1", Ticket: "CHG-1234"},
		Reason:      strings.Repeat("quarterly access for on-call duty ", 9),
		Attributes:  map[string]string{"region": "eu-west-1", "cost_center": "4711"},
	}
}

// entries are a round's events: event i is tmpl with the id "rROUND-i" and
// the subject of i, one of subjects identities. They are made when the
// driver appends them, sharing every sub-message but the subject with tmpl,
// as a server makes them from the wire and drops them once answered; with
// prebuilt, every event is a deep copy made in advance and held for the
// whole round.
type entries struct {
	tmpl     *pb.Event
	ids      []string
	subjects []*pb.Identity
	all      []*pb.Event // prebuilt
}

func newEntries(tmpl *pb.Event, round, n, subjects int, prebuilt bool) *entries {
	e := &entries{tmpl: tmpl, ids: make([]string, n), subjects: make([]*pb.Identity, subjects)}
	for i := range e.ids {
		e.ids[i] = fmt.Sprintf("r%d-%d", round, i)
	}
	for i := range e.subjects {
		e.subjects[i] = &pb.Identity{Id: "user-" + strconv.Itoa(i), Kind: tmpl.Subject.Kind, Display: tmpl.Subject.Display}
	}
	if prebuilt {
		e.all = make([]*pb.Event, n)
		for i := range e.all {
			ev := proto.CloneOf(tmpl)
			ev.Id, ev.Subject.Id = e.ids[i], e.subject(i).Id
			e.all[i] = ev
		}
	}
	return e
}

func (e *entries) n() int { return len(e.ids) }

func (e *entries) subject(i int) *pb.Identity { return e.subjects[i*7919%len(e.subjects)] }

// event returns event i.
func (e *entries) event(i int) *pb.Event {
	if e.all != nil {
		return e.all[i]
	}
	t := e.tmpl
	return &pb.Event{
		Id: e.ids[i], Type: t.Type, Time: t.Time, Source: t.Source, Subject: e.subject(i),
		Actor: t.Actor, Entitlement: t.Entitlement, Refs: t.Refs, Reason: t.Reason,
		Attributes: t.Attributes,
	}
}

func mustMarshal(ev *pb.Event) []byte {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(ev)
	if err != nil {
		log.Fatal(err)
	}
	return b
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// loadAvg is the first three fields of /proc/loadavg ("?" elsewhere).
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
