package ledger

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/grantline/grantline/ledger/badgerstore"
	"github.com/grantline/grantline/ledger/event"
)

// openSplit opens a log in st with its indexes in ix.
func openSplit(t testing.TB, st, ix Store) (*Log, error) {
	t.Helper()
	return openSplitRuns(t, st, ix, "")
}

// openSplitRuns opens a log in st with its indexes in ix and its leaf-hash
// runs in runs ("": in ix).
func openSplitRuns(t testing.TB, st, ix Store, runs string) (*Log, error) {
	t.Helper()
	o := testOptions()
	o.Index, o.RunsDir = ix, runs
	return Open(t.Context(), st, o)
}

// copyDir copies dir (the runs as a crash left them) into a new temporary
// directory, which it returns.
func copyDir(t testing.TB, dir string) string {
	t.Helper()
	out := t.TempDir()
	if err := os.CopyFS(out, os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	return out
}

func mustOpenSplit(t testing.TB, st, ix Store) *Log {
	t.Helper()
	l, err := openSplit(t, st, ix)
	if err != nil {
		t.Fatalf("Open with a separate index store: %v", err)
	}
	return l
}

// TestSplitIndexCrashAtEveryStep is TestCrashAtEveryStep with the indexes
// in a separate index store that need not be durable: a fault at every
// operation of either store, then a restart on the main store's durable
// state and the index store as it was, without its last commit, or empty
// (a crash may lose any suffix of its commits). The restarted log must
// rebuild what the index store lacks: every acknowledged event present
// once at its index, found by leaf hash and by subject, and the workload
// appended again answered as duplicates.
//
// With leaf-hash runs (a run written every 64 leaves here, merged every
// 8), the runs come back as the first log left them or lost; either way
// Open appends what they lack from the tiles.
func TestSplitIndexCrashAtEveryStep(t *testing.T) {
	t.Run("index-store", func(t *testing.T) { testSplitIndexCrash(t, false) })
	t.Run("runs", func(t *testing.T) {
		withSmallRuns(t, 64)
		testSplitIndexCrash(t, true)
	})
}

func testSplitIndexCrash(t *testing.T, withRuns bool) {
	ctx := t.Context()
	runsDir := func() string {
		if withRuns {
			return t.TempDir()
		}
		return ""
	}
	st, ix := newFakeStore(), lazy()
	l, err := openSplitRuns(t, st, ix, runsDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, evs := range crashWorkload() {
		mustAppend(t, l, evs)
	}
	l.Close()
	checkViolations(t, st)
	checkViolations(t, ix)
	if n := len(ix.history); n < len(crashWorkload()) {
		t.Fatalf("the index store saw %d commits for %d appends", n, len(crashWorkload()))
	}
	for _, target := range []string{"main", "index"} {
		total := map[string]int{"main": st.ops, "index": ix.ops}[target]
		for at := 1; at <= total; at++ {
			for _, kind := range []fault{failOp, failCommitButPersist} {
				t.Run(fmt.Sprintf("%s/op%d/%v", target, at, map[fault]string{failOp: "fail", failCommitButPersist: "persist"}[kind]), func(t *testing.T) {
					st, ix := newFakeStore(), lazy()
					f := map[string]*fakeStore{"main": st, "index": ix}[target]
					f.faultAt, f.kind = at, kind
					a := acked{}
					failed := false
					runs := runsDir()
					l, err := openSplitRuns(t, st, ix, runs)
					if err != nil {
						if !errors.Is(err, ErrStorage) {
							t.Fatalf("Open with a failing store: %v, want ErrStorage", err)
						}
						failed = true
					} else {
						for _, evs := range crashWorkload() {
							res, _, err := l.Append(ctx, evs)
							if err != nil {
								if !errors.Is(err, ErrStorage) {
									t.Fatalf("Append with a failing store: %v, want ErrStorage", err)
								}
								failed = true
								// A failed read of the index store (a dedupe
								// lookup) does not stop appends: the probe is
								// then answered after its durable commit, and
								// its index commit fails after (broken below).
								probe := testEvents(1000, 1)
								res, _, err := l.Append(ctx, probe)
								switch {
								case err == nil && target == "index":
									a.add(t, probe, res)
								case !errors.Is(err, ErrStorage):
									t.Fatalf("Append after a storage failure: %v, want ErrStorage", err)
								}
								break
							}
							a.add(t, evs, res)
						}
						l.Close()
						// Events are answered once durable: an index commit
						// failing after that stops appends (a broken log)
						// without failing any Append of the workload.
						failed = failed || l.broken.Load() != nil
					}
					if !failed && f.dead {
						t.Fatalf("fault at operation %d of the %s store did not surface", at, target)
					}
					// !f.dead: the run took fewer operations than the clean
					// one and never reached the fault (whether a repeated
					// dedupe key is found in flight or read from the index
					// store depends on whether the index commit before it is
					// done); the restart below still checks the run.
					checkViolations(t, st)
					checkViolations(t, ix)
					kept := map[string]func() *fakeStore{
						"kept":      ix.clone,
						"last-lost": func() *fakeStore { return historyAt(ix, len(ix.history)-2) },
						"all-lost":  newFakeStore,
						// An ordered commit (badgerstore with NoSync) applies a
						// batch as several transactions, the watermark last: a
						// crash may keep part of the last commit without it.
						"last-but-watermark": func() *fakeStore { return partialLast(ix, false) },
						"last-half":          func() *fakeStore { return partialLast(ix, true) },
					}
					type restart struct{ loss, runs string }
					var restarts []restart
					for _, loss := range []string{"kept", "last-lost", "all-lost", "last-but-watermark", "last-half"} {
						restarts = append(restarts, restart{loss, "kept"})
						if withRuns && (loss == "kept" || loss == "last-half") {
							restarts = append(restarts, restart{loss, "lost"})
						}
					}
					for _, r := range restarts {
						loss := r.loss
						m, x := st.clone(), kept[loss]()
						var runs2 string
						switch {
						case !withRuns:
						case r.runs == "lost":
							runs2 = t.TempDir()
						default:
							runs2 = copyDir(t, runs)
						}
						l2, err := openSplitRuns(t, m, x, runs2)
						if err != nil {
							t.Fatalf("restart with the index store %s, runs %s: %v", loss, r.runs, err)
						}
						b := acked{}
						for k, v := range a {
							b[k] = v
						}
						checkInvariants(t, l2, b)
						for _, evs := range crashWorkload() {
							b.add(t, evs, mustAppend(t, l2, evs))
						}
						checkInvariants(t, l2, b)
						// The probe event appended after the failure (1000)
						// may have landed: with the dedupe filter a new event
						// needs no index read, so its leaves can commit to the
						// main store before the failing index store stops it.
						want := uint64(3 + 2 + 300 + 2 + 1)
						got := l2.Latest().Size
						if r := mustAppend(t, l2, testEvents(1000, 1)); r[0].Duplicate {
							want++
						}
						if got != want {
							t.Fatalf("index store %s: size after retry = %d, want %d", loss, got, want)
						}
						l2.Close()
						checkViolations(t, m)
						checkViolations(t, x)
					}
				})
			}
		}
	}
}

// historyAt is the index store as it was after commit i (empty before the
// first).
func historyAt(s *fakeStore, i int) *fakeStore {
	if i < 0 {
		return newFakeStore()
	}
	c := s.history[i].clone()
	// A commit followed by a CommitAtomic is the first part of a batch whose
	// subject map records came after it (Log.commitIndex): without them,
	// its entries sit above the watermark, and Open writes them again.
	c.rewriteSame = !s.history[i].atomicCommit && i+1 < len(s.history) && s.history[i+1].atomicCommit
	return c
}

// partialLast is the index store as a crash may leave it in the middle of
// its last commit when commits are applied in key order with the watermark
// last (badgerstore with NoSync): the state before the last commit, plus
// the last commit's changed entries but its watermark, or only the first
// half of them in key order. A commit made by CommitAtomic is not torn: a
// crash keeps it whole or loses it, so when it is the last, the commit
// before it is torn (and it is lost).
func partialLast(s *fakeStore, half bool) *fakeStore {
	n := len(s.history)
	if n > 0 && s.history[n-1].atomicCommit {
		n--
	}
	out := historyAt(s, n-2)
	if n == 0 || s.history[n-1].atomicCommit {
		return out
	}
	last := s.history[n-1]
	var changed []string
	for _, k := range last.keys {
		if v, ok := out.data[k]; (!ok || !slices.Equal(v, last.data[k])) && k != string(keyIndexed) && k != string(keyIndexedRuns) {
			changed = append(changed, k)
		}
	}
	if half {
		changed = changed[:len(changed)/2]
	}
	for _, k := range changed {
		out.data[k] = last.data[k]
	}
	out.keys = out.keys[:0]
	for k := range out.data {
		out.keys = append(out.keys, k)
	}
	slices.Sort(out.keys)
	out.rewriteSame = len(changed) > 0
	return out
}

// noDrop hides a store's DropAll.
type noDrop struct{ Store }

// TestSplitIndexOpen covers how Open treats the index store it is given:
// a new one for an existing log (rebuilt from the leaves), one ahead of the
// tree (emptied and rebuilt, or refused when it cannot be emptied), and a
// main store used with an index store and opened without one (refused).
func TestSplitIndexOpen(t *testing.T) {
	ctx := t.Context()
	// A log with its indexes in the main store.
	st := newFakeStore()
	l := openFake(t, st)
	a := acked{}
	a.add(t, testEvents(0, 50), mustAppend(t, l, testEvents(0, 50)))
	l.Close()

	t.Run("new index store for an existing log", func(t *testing.T) {
		m, x := st.clone(), lazy()
		l := mustOpenSplit(t, m, x)
		checkInvariants(t, l, a)
		b := acked{}
		b.add(t, testEvents(0, 60), mustAppend(t, l, testEvents(0, 60)))
		for i, r := range mustAppend(t, l, testEvents(0, 60)) {
			if !r.Duplicate {
				t.Fatalf("event %d appended again: %+v, want a duplicate", i, r)
			}
		}
		l.Close()
		if err := Fsck(ctx, m.clone(), testVerifier, nil); err != nil {
			t.Fatalf("Fsck of the main store: %v", err)
		}
		// The main store is now marked: refused without its index store.
		if _, err := Open(ctx, m.clone(), testOptions()); err == nil || !strings.Contains(err.Error(), "Options.Index") {
			t.Fatalf("Open of a separately indexed store without an index store: %v, want a refusal naming Options.Index", err)
		}
		checkViolations(t, m)
		checkViolations(t, x)
	})

	t.Run("index store ahead of the tree", func(t *testing.T) {
		// An index store of a longer log.
		m, x := newFakeStore(), lazy()
		l := mustOpenSplit(t, m, x)
		mustAppend(t, l, testEvents(0, 80))
		l.Close()
		small := newFakeStore()
		l = mustOpenSplit(t, small, lazy())
		b := acked{}
		b.add(t, testEvents(100, 20), mustAppend(t, l, testEvents(100, 20)))
		l.Close()

		if _, err := openSplit(t, small.clone(), noDrop{x.clone()}); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Open with an index store ahead of the tree that cannot be emptied: %v, want ErrCorrupt", err)
		}
		x2 := x.clone()
		l = mustOpenSplit(t, small.clone(), x2)
		defer l.Close()
		if x2.drops != 1 {
			t.Fatalf("the index store ahead of the tree was emptied %d times, want 1", x2.drops)
		}
		checkInvariants(t, l, b)
		// Events of the other log are new here.
		for i, r := range mustAppend(t, l, testEvents(0, 5)) {
			if r.Duplicate || r.Conflict {
				t.Fatalf("event %d of another log answered %+v here, want new", i, r)
			}
		}
	})
}

// TestSplitIndexBadger runs a log with its indexes in a second, unsynced
// badger database inside the ledger's directory: reopened as is, and with
// the index database deleted, it answers resends as duplicates and finds
// every entry by subject.
func TestSplitIndexBadger(t *testing.T) {
	for _, smap := range []bool{false, true} {
		t.Run(fmt.Sprintf("subject-map=%v", smap), func(t *testing.T) { testSplitIndexBadger(t, smap) })
	}
}

// testSplitIndexBadger: a log with its indexes in a separate badger store,
// with or without a subject map (whose map leaves have a leaf-hash entry
// only), survives reopening and losing its index store entirely.
func testSplitIndexBadger(t *testing.T, smap bool) {
	dir := filepath.Join(t.TempDir(), "ledger")
	idir := filepath.Join(dir, "index")
	open := func() *Log {
		t.Helper()
		st := openBadgerStore(t, dir, badgerstore.Options{})
		ix := openBadgerStore(t, idir, badgerstore.Options{NoSync: true})
		o := testOptions()
		o.Index, o.SubjectMap = ix, smap
		l, err := Open(t.Context(), st, o)
		if err != nil {
			st.Close()
			ix.Close()
			t.Fatalf("Open: %v", err)
		}
		return l
	}
	subject := testEvents(0, 1)[0].GetSubject().GetId()
	checkProof := func(l *Log, step string) {
		t.Helper()
		if !smap {
			return
		}
		p, err := l.SubjectProof(t.Context(), subject, l.Latest().Size)
		if err != nil {
			t.Fatalf("%s: SubjectProof(%q): %v", step, subject, err)
		}
		if p.Count == 0 {
			t.Fatalf("%s: SubjectProof(%q) counts no entries", step, subject)
		}
	}
	l := open()
	a := acked{}
	for i := 0; i < 3; i++ {
		evs := testEvents(i*400, 500) // overlapping: duplicates within and across batches
		a.add(t, evs, mustAppend(t, l, evs))
	}
	checkInvariants(t, l, a)
	checkProof(l, "first open")
	l.Close()
	for _, step := range []string{"reopened", "index deleted"} {
		if step == "index deleted" {
			if err := os.RemoveAll(idir); err != nil {
				t.Fatal(err)
			}
		}
		l := open()
		checkInvariants(t, l, a)
		checkProof(l, step)
		for i := 0; i < 3; i++ {
			evs := testEvents(i*400, 500)
			for j, r := range mustAppend(t, l, evs) {
				if !r.Duplicate {
					t.Fatalf("%s: event %d appended again: %+v, want a duplicate", step, j, r)
				}
			}
		}
		l.Close()
	}
	if err := fsckBadger(t, dir); err != nil {
		t.Fatalf("Fsck of the main store: %v", err)
	}
}

// TestFsckWithIndex: the offline fsck of a log with a separate index store
// checks the index store up to its watermark: a missing or misdirected
// entry below it is corruption, named; leaves above it are not indexed yet
// (the next Open indexes them) and are reported, not refused; a watermark
// beyond the tree is refused.
func TestFsckWithIndex(t *testing.T) {
	st, ix := newFakeStore(), newFakeStore()
	l := mustOpenSplit(t, st, ix)
	mustAppend(t, l, testEvents(0, 600))
	mustAppend(t, l, testEvents(600, 400))
	l.Close()
	st = st.clone() // the stores after the log closed them, open again
	ix = ix.clone()
	ev := testEvent(10)
	d := event.DedupeKey(ev.GetSource().GetSystem(), ev.GetId())
	tests := []struct {
		name   string
		damage func(ix *fakeStore)
		want   string // "" for ok
		report string // a line report must have heard
	}{
		{"intact", func(*fakeStore) {}, "", "indexes match the leaves"},
		{"dedupe record lost", func(ix *fakeStore) { ix.corrupt(dedupeKey(d), nil) }, "dedupe record of leaf 10", ""},
		{"dedupe record misdirected", func(ix *fakeStore) { ix.corrupt(dedupeKey(d), be64(nil, 11)) }, "leaf 10", ""},
		{"leaves above the watermark", func(ix *fakeStore) {
			ix.corrupt(keyIndexed, be64(nil, 700))
			ix.corrupt(dedupeKey(event.DedupeKey(testEvent(800).GetSource().GetSystem(), testEvent(800).GetId())), nil)
		}, "", "covers 700 of 1000 leaves"},
		{"watermark beyond the tree", func(ix *fakeStore) { ix.corrupt(keyIndexed, be64(nil, 1001)) }, "indexes 1001 leaves but the tree has 1000", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			damaged := ix.clone()
			tc.damage(damaged)
			var heard []string
			err := FsckWithIndex(t.Context(), st, damaged, nil, func(f string, a ...any) { heard = append(heard, fmt.Sprintf(f, a...)) })
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("FsckWithIndex = %v, want ok", err)
			case tc.want != "" && (!errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("FsckWithIndex = %v, want ErrCorrupt naming %q", err, tc.want)
			}
			if tc.report != "" && !slices.ContainsFunc(heard, func(s string) bool { return strings.Contains(s, tc.report) }) {
				t.Errorf("report heard %q, want a line with %q", heard, tc.report)
			}
		})
	}
	// Without the index store the indexes are not checked, and it says so.
	var heard []string
	if err := Fsck(t.Context(), st, nil, func(f string, a ...any) { heard = append(heard, fmt.Sprintf(f, a...)) }); err != nil {
		t.Fatalf("Fsck without the index store = %v", err)
	}
	if !slices.ContainsFunc(heard, func(s string) bool { return strings.Contains(s, "indexes not checked") }) {
		t.Errorf("Fsck without the index store heard %q, want \"indexes not checked\"", heard)
	}
}
