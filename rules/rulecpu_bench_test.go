//go:build linux

package rules

import (
	"runtime"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// threadCPU is the CPU time of the calling OS thread (the goroutine must be
// locked to it): unlike wall time, another process's load cannot lengthen
// it, only interrupt it.
func threadCPU(tb testing.TB) time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ts.Nano())
}

// threadBench prepares a benchmark of evaluation's work on one locked
// thread: Catalog1M's organisation, a tenth of it (1,000 identities of 100
// events), as leaves, the catalog on one worker, and its source index. The
// calling goroutine is locked to its thread; the caller unlocks it.
func threadBench(b *testing.B) (s *Set, src *leafSource, subjects []string, now time.Time, idx *sourceIndex) {
	b.Helper()
	mem, subjects := genOrg(1_000, 100)
	src = newLeafSource(b, mem)
	s = benchSetOptions(b, Options{Workers: 1})
	now = benchStart.Add(200 * 24 * time.Hour)
	idx, err := buildSourceIndex(b.Context(), nil, src, now, 1)
	if err != nil {
		b.Fatal(err)
	}
	runtime.LockOSThread()
	return s, src, subjects, now, idx
}

// BenchmarkRuleCPU evaluates the catalog over 1,000 identities of 100
// events (Catalog1M's organisation, a tenth of it) on one locked thread and
// reports, per rule, the thread CPU time it took per event, the least of
// b.N passes (load can only lengthen a pass), and the same for building the
// views ("views"). It shows where evaluation time goes on a loaded machine.
// Run: go test -run '^$' -bench 'RuleCPU' -benchtime 5x ./rules/
func BenchmarkRuleCPU(b *testing.B) {
	s, src, subjects, now, idx := threadBench(b)
	defer runtime.UnlockOSThread()
	best := make([]time.Duration, len(s.rules)+1)
	for i := range best {
		best[i] = 1 << 62
	}
	var events int
	var over time.Duration
	for b.Loop() {
		pass := make([]time.Duration, len(s.rules)+1)
		events = 0
		for _, sub := range subjects {
			t0 := threadCPU(b)
			v, _, err := s.loadViews(b.Context(), sub, src, now, idx)
			if err != nil {
				b.Fatal(err)
			}
			act := &activation{vals: subjectVals(s.rules[0].rule.env.CELTypeAdapter(), v, now, now)}
			t1 := threadCPU(b)
			pass[0] += t1 - t0
			events += len(v.events)
			nonEmpty := v.nonEmpty()
			for i, c := range s.rules {
				act.params = c.params
				t0 := threadCPU(b)
				if c.emptyWhen.skips(nonEmpty) { // as evaluateSubject does
					pass[i+1] += threadCPU(b) - t0
					continue
				}
				out, _, err := c.long.Eval(act)
				if err == nil {
					_, err = toFindings(c, sub, out, now, now, false)
				}
				pass[i+1] += threadCPU(b) - t0
				if err != nil {
					b.Fatal(c.rule.ID, err)
				}
			}
			v.release()
			t2 := threadCPU(b)
			t3 := threadCPU(b)
			over += t3 - t2
		}
		for i := range pass {
			best[i] = min(best[i], pass[i])
		}
	}
	type row struct {
		name string
		ns   float64
	}
	// Each figure is less one clock reading per subject (the reading
	// itself is a system call, ~1 µs).
	clock := float64(over) / float64(b.N*len(subjects))
	perEvent := func(d time.Duration) float64 { return (float64(d) - clock*float64(len(subjects))) / float64(events) }
	rows := []row{{"views", perEvent(best[0])}}
	var total float64
	for i, c := range s.rules {
		rows = append(rows, row{c.rule.ID, perEvent(best[i+1])})
	}
	for _, r := range rows {
		total += r.ns
	}
	views := rows[0].ns
	slices.SortFunc(rows[1:], func(a, b row) int { return int(b.ns - a.ns) })
	for _, r := range rows {
		b.Logf("%-40s %7.1f ns/event", r.name, r.ns)
	}
	b.ReportMetric(total, "cpu-ns/event")
	b.ReportMetric(views, "views-ns/event")
}
