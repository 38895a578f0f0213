package ledger

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/grantline/grantline/ledger/event"
	"github.com/grantline/grantline/ledger/runindex"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// withSmallRuns makes the leaf-hash and dedupe runs write a run every n leaves for
// the rest of the test, so that runs are written and merged.
func withSmallRuns(t *testing.T, n int) {
	t.Helper()
	old := runFlushEntries
	runFlushEntries = n
	t.Cleanup(func() { runFlushEntries = old })
}

// appendRounds appends rounds batches of n new events from first to l and
// records their answers in a.
func appendRounds(t *testing.T, l *Log, a acked, first, rounds, n int) {
	t.Helper()
	for r := range rounds {
		evs := testEvents(first+r*n, n)
		a.add(t, evs, mustAppend(t, l, evs))
	}
}

// TestLeafHashRuns appends with the leaf hashes in runs, with and without
// a subject map (whose map leaves have leaf hashes too), and checks that
// every leaf is found by its hash, that the index store holds no leaf-hash
// entry, and that a restart finds them all on disk (Close flushes).
func TestLeafHashRuns(t *testing.T) {
	withSmallRuns(t, 50)
	for _, smap := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "subject-map"}[smap], func(t *testing.T) {
			st, ix, dir := newFakeStore(), lazy(), t.TempDir()
			o := testOptions()
			o.Index, o.RunsDir, o.SubjectMap = ix, dir, smap
			l, err := Open(t.Context(), st, o)
			if err != nil {
				t.Fatal(err)
			}
			a := acked{}
			appendRounds(t, l, a, 0, 12, 97)
			checkInvariants(t, l, a)
			checkAllLeafHashes(t, l)
			if n := countKind(t, ix, kHash); n != 0 {
				t.Fatalf("the index store holds %d leaf-hash entries; the runs should hold them all", n)
			}
			if s := l.lh.Stats(); s.Flushes == 0 || s.Merges == 0 {
				t.Fatalf("runs stats %+v: want flushes and merges with runs of 50 leaves", s)
			}
			size := l.Latest().Size
			l.Close()

			o.Index = ix.clone()
			l, err = Open(t.Context(), st.clone(), o)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			if got := l.lh.Durable(); got != size {
				t.Fatalf("after a clean restart the runs hold %d leaves on disk, want all %d", got, size)
			}
			checkInvariants(t, l, a)
			checkAllLeafHashes(t, l)
		})
	}
}

// checkAllLeafHashes looks every leaf of l up by its leaf hash.
func checkAllLeafHashes(t *testing.T, l *Log) {
	t.Helper()
	size := l.Latest().Size
	es, err := l.Entries(t.Context(), 0, size)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		h := LeafHash(e.Leaf)
		got, err := l.LookupLeafHash(t.Context(), h[:])
		if err != nil || got != e.Index {
			t.Fatalf("LookupLeafHash(leaf %d) = %d, %v", e.Index, got, err)
		}
	}
	var absent [32]byte
	absent[0] = 0xaa
	if _, err := l.LookupLeafHash(t.Context(), absent[:]); !errors.Is(err, ErrNotFound) {
		t.Fatalf("LookupLeafHash(absent) = %v, want ErrNotFound", err)
	}
}

// TestLeafHashRunsLayoutSwitch opens a log indexed without runs with them,
// and back: each time the index store is emptied and rebuilt in the asked
// layout, and every leaf is still found by its hash.
func TestLeafHashRunsLayoutSwitch(t *testing.T) {
	withSmallRuns(t, 64)
	st, ix, dir := newFakeStore(), lazy(), t.TempDir()
	a := acked{}
	// Each Open is a restart on clones of the stores the last one closed.
	open := func(runs string) *Log {
		t.Helper()
		st, ix = st.clone(), ix.clone()
		l, err := openSplitRuns(t, st, ix, runs)
		if err != nil {
			t.Fatalf("Open (runs %q): %v", runs, err)
		}
		return l
	}
	l := open("")
	appendRounds(t, l, a, 0, 3, 100)
	l.Close()
	if n := countKind(t, ix.clone(), kHash); n != 300 {
		t.Fatalf("without runs the index store holds %d leaf-hash entries, want 300", n)
	}
	for step, runs := range []string{dir, "", dir} {
		l := open(runs)
		if ix.drops != 1 {
			t.Fatalf("step %d: the index store was emptied %d times on a layout switch, want once", step, ix.drops)
		}
		checkInvariants(t, l, a)
		checkAllLeafHashes(t, l)
		want := 0
		if runs == "" {
			want = int(l.Latest().Size)
		}
		if n := countKind(t, ix.clone(), kHash); n != want {
			t.Fatalf("step %d (runs %q): the index store holds %d leaf-hash entries, want %d", step, runs, n, want)
		}
		// The watermark says the layout: a binary that reads only
		// keyIndexed (opened without runs, or from before them) must find
		// data without it, and rebuild, rather than a complete store
		// lacking the leaf-hash and dedupe entries.
		marks, err := ix.clone().Get(keyIndexed, keyIndexedRuns)
		if err != nil {
			t.Fatal(err)
		}
		if (marks[0] != nil) != (runs == "") || (marks[1] != nil) != (runs != "") {
			t.Fatalf("step %d (runs %q): watermarks mindexed %x, mindexed-runs %x: want only the layout's own", step, runs, marks[0], marks[1])
		}
		appendRounds(t, l, a, 1000*(step+1), 2, 50)
		checkInvariants(t, l, a)
		l.Close()
		// The same layout again: nothing to empty.
		l = open(runs)
		if ix.drops != 0 {
			t.Fatalf("step %d: reopened in the same layout, the index store was emptied again", step)
		}
		checkInvariants(t, l, a)
		l.Close()
	}
}

// TestLeafHashRunsOlderMainStore opens runs that cover more leaves than the
// main store's tree (the main store was restored from an older backup):
// the runs beyond the tree are dropped, and the new leaves appended at
// those positions are found by their own hashes, never the old ones.
func TestLeafHashRunsOlderMainStore(t *testing.T) {
	withSmallRuns(t, 40)
	st, ix, dir := newFakeStore(), lazy(), t.TempDir()
	l, err := openSplitRuns(t, st, ix, dir)
	if err != nil {
		t.Fatal(err)
	}
	a := acked{}
	appendRounds(t, l, a, 0, 3, 70)
	older, olderIx := st.clone(), ix.clone()
	olderAcked := acked{}
	for k, v := range a {
		olderAcked[k] = v
	}
	later := testEvents(500, 150)
	res := mustAppend(t, l, later)
	l.Close()

	l, err = openSplitRuns(t, older, olderIx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if c := l.lh.Covered(); c != l.Latest().Size {
		t.Fatalf("runs cover %d leaves after Open, tree has %d", c, l.Latest().Size)
	}
	// The leaves appended after the backup are gone: not found.
	for i, r := range res {
		if _, err := l.LookupLeafHash(t.Context(), r.LeafHash[:]); !errors.Is(err, ErrNotFound) {
			t.Fatalf("leaf hash of event %d appended after the backup: %v, want ErrNotFound", i, err)
		}
	}
	appendRounds(t, l, olderAcked, 2000, 2, 90)
	checkInvariants(t, l, olderAcked)
	checkAllLeafHashes(t, l)
}

// TestLeafHashRunsFsck checks that Fsck, on an open log and offline,
// names what is wrong with the runs: a damaged file, and runs that are
// well formed but lack a leaf.
func TestLeafHashRunsFsck(t *testing.T) {
	withSmallRuns(t, 64)
	st, ix, dir := newFakeStore(), lazy(), t.TempDir()
	l, err := openSplitRuns(t, st, ix, dir)
	if err != nil {
		t.Fatal(err)
	}
	appendRounds(t, l, acked{}, 0, 4, 80)
	if err := l.Fsck(t.Context(), nil); err != nil {
		t.Fatalf("Fsck of sound runs: %v", err)
	}
	es, err := l.Entries(t.Context(), 0, l.Latest().Size)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if err := FsckWithRuns(t.Context(), st.clone(), ix.clone(), dir, testVerifier, nil); err != nil {
		t.Fatalf("offline fsck of sound runs: %v", err)
	}

	for _, sub := range []string{leafHashRuns, dedupeRuns} {
		t.Run("flipped byte/"+sub, func(t *testing.T) {
			d := copyDir(t, dir)
			ents, _ := os.ReadDir(filepath.Join(d, sub))
			if len(ents) == 0 {
				t.Fatal("no run files")
			}
			p := filepath.Join(d, sub, ents[0].Name())
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)/2] ^= 0x40 // a record, not the header or the sparse keys
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
			err = FsckWithRuns(t.Context(), st.clone(), ix.clone(), d, testVerifier, nil)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), d) {
				t.Fatalf("offline fsck of a run with a flipped byte: %v, want ErrCorrupt naming %s", err, d)
			}
		})
	}

	for _, tc := range []struct {
		sub, name string
		keyOf     func(e Entry) runindex.Key
	}{
		{leafHashRuns, "leaf-hash index", func(e Entry) runindex.Key { h := LeafHash(e.Leaf); return runindex.Key(h[:indexKeyLen]) }},
		{dedupeRuns, "dedupe index", func(e Entry) runindex.Key {
			en, err := event.DecodeLeaf(e.Leaf)
			if err != nil {
				t.Fatal(err)
			}
			d := event.DedupeKey(en.GetEvent().GetSource().GetSystem(), en.GetEvent().GetId())
			return runindex.Key(d[:indexKeyLen])
		}},
	} {
		t.Run("missing leaf/"+tc.sub, func(t *testing.T) {
			// Well-formed runs of every leaf's key but leaf 77's, which has
			// another: only comparing them with the leaves can tell.
			d := copyDir(t, dir)
			if err := os.RemoveAll(filepath.Join(d, tc.sub)); err != nil {
				t.Fatal(err)
			}
			x, err := runindex.Open(filepath.Join(d, tc.sub), uint64(len(es)), runindex.Options{})
			if err != nil {
				t.Fatal(err)
			}
			keys := make([]runindex.Key, len(es))
			for i, e := range es {
				keys[i] = tc.keyOf(e)
			}
			keys[77][0] ^= 1
			if err := x.Append(0, keys); err != nil {
				t.Fatal(err)
			}
			if err := x.Close(); err != nil {
				t.Fatal(err)
			}
			want := "the " + tc.name + "'s runs in " + d + " lack leaf 77 "
			err = FsckWithRuns(t.Context(), st.clone(), ix.clone(), d, testVerifier, nil)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), want) {
				t.Fatalf("offline fsck of runs lacking leaf 77: %v, want ErrCorrupt saying %q", err, want)
			}
			l, err := openSplitRuns(t, st.clone(), ix.clone(), d)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			if err := l.Fsck(t.Context(), nil); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), want) {
				t.Fatalf("Fsck of runs lacking leaf 77: %v, want ErrCorrupt saying %q", err, want)
			}
			if tc.sub == leafHashRuns {
				h := LeafHash(es[77].Leaf)
				if _, err := l.LookupLeafHash(t.Context(), h[:]); !errors.Is(err, ErrNotFound) {
					t.Fatalf("LookupLeafHash of the leaf the runs lack: %v, want ErrNotFound", err)
				}
			}
		})
	}

	t.Run("damaged at open", func(t *testing.T) {
		// A run file that no crash could leave (its header is wrong) is
		// moved aside with its directory, and the runs are rebuilt from
		// the tiles.
		d := copyDir(t, dir)
		ents, _ := os.ReadDir(filepath.Join(d, leafHashRuns))
		p := filepath.Join(d, leafHashRuns, ents[0].Name())
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b[0] ^= 0xff
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		l, err := openSplitRuns(t, st.clone(), ix.clone(), d)
		if err != nil {
			t.Fatalf("Open with a damaged run file: %v", err)
		}
		defer l.Close()
		aside, _ := filepath.Glob(filepath.Join(d, leafHashRuns) + ".damaged-*")
		if len(aside) != 1 {
			t.Fatalf("damaged runs moved aside to %v, want one directory", aside)
		}
		checkAllLeafHashes(t, l)
		if err := l.Fsck(t.Context(), nil); err != nil {
			t.Fatalf("Fsck after the rebuild: %v", err)
		}
	})
}

// TestLeafHashRunsNeedIndex: runs without a separate index store are
// refused, saying what is needed.
func TestLeafHashRunsNeedIndex(t *testing.T) {
	o := testOptions()
	o.RunsDir = t.TempDir()
	_, err := Open(t.Context(), newFakeStore(), o)
	if err == nil || !strings.Contains(err.Error(), "Options.Index") {
		t.Fatalf("Open with LeafHashDir but no Index: %v, want an error naming Options.Index", err)
	}
}

// TestRunsDedupe keeps the dedupe keys in runs (a run every 40 leaves,
// merged every 8) and retries events from every part of the log (merged
// runs, small runs, the buffer): each is answered as a duplicate at its
// original index, and an event changed under a stored key as a conflict,
// with nothing stored. So again after a clean restart (the dedupe filter
// filled from the runs), and after the dedupe runs were lost (rebuilt from
// the leaves); with and without the dedupe filter.
func TestRunsDedupe(t *testing.T) {
	withSmallRuns(t, 40)
	for _, filter := range []int64{0, -1} {
		t.Run(fmt.Sprintf("filter=%v", filter >= 0), func(t *testing.T) {
			st, ix, dir := newFakeStore(), lazy(), t.TempDir()
			o := testOptions()
			o.DedupeFilterBytes = filter
			open := func() *Log {
				t.Helper()
				st, ix = st.clone(), ix.clone()
				o.Index, o.RunsDir = ix, dir
				l, err := Open(t.Context(), st, o)
				if err != nil {
					t.Fatal(err)
				}
				return l
			}
			l := open()
			a := acked{}
			appendRounds(t, l, a, 0, 10, 101)
			retry := func(l *Log, phase string) {
				t.Helper()
				size := l.Latest().Size
				for _, from := range []int{0, 3, 333, 700, 1000} {
					evs := testEvents(from, 10)
					for i, r := range mustAppend(t, l, evs) {
						want := a[event.DedupeKey(evs[i].GetSource().GetSystem(), evs[i].GetId())]
						if !r.Duplicate || r.Index != want.Index || r.LeafHash != want.LeafHash {
							t.Fatalf("%s: retry of event %d = %+v, want a duplicate at %d", phase, from+i, r, want.Index)
						}
					}
				}
				changed := testEvent(555)
				changed.Reason = "changed"
				r := mustAppend(t, l, []*pb.Event{changed})[0]
				want := a[event.DedupeKey(changed.GetSource().GetSystem(), changed.GetId())]
				if !r.Conflict || r.Index != want.Index {
					t.Fatalf("%s: changed event 555 = %+v, want a conflict at %d", phase, r, want.Index)
				}
				if got := l.Latest().Size; got != size {
					t.Fatalf("%s: retries grew the log from %d to %d", phase, size, got)
				}
			}
			retry(l, "open")
			checkInvariants(t, l, a)
			l.Close()

			l = open()
			retry(l, "after a restart")
			l.Close()

			if err := os.RemoveAll(filepath.Join(dir, dedupeRuns)); err != nil {
				t.Fatal(err)
			}
			l = open()
			defer l.Close()
			if c := l.dd.Covered(); c != l.Latest().Size {
				t.Fatalf("the dedupe runs cover %d leaves after a rebuild, want %d", c, l.Latest().Size)
			}
			retry(l, "after the dedupe runs were lost")
			appendRounds(t, l, a, 5000, 2, 50)
			checkInvariants(t, l, a)
			if n := countKind(t, ix, kDedupe); n != 0 {
				t.Fatalf("the index store holds %d dedupe entries; the runs should hold them all", n)
			}
		})
	}
}

// TestRunsFsckWithoutReport runs the offline fsck of a log indexed with
// runs with report nil (its doc allows it), both when the runs are not
// given and when they cover fewer leaves than the tree: no report, no
// panic, and the log is sound.
func TestRunsFsckWithoutReport(t *testing.T) {
	withSmallRuns(t, 64)
	st, ix, dir := newFakeStore(), lazy(), t.TempDir()
	l, err := openSplitRuns(t, st, ix, dir)
	if err != nil {
		t.Fatal(err)
	}
	appendRounds(t, l, acked{}, 0, 3, 50)
	l.Close()
	if err := FsckWithIndex(t.Context(), st.clone(), ix.clone(), testVerifier, nil); err != nil {
		t.Fatalf("offline fsck without the runs' directory: %v", err)
	}
	if err := os.RemoveAll(filepath.Join(dir, dedupeRuns)); err != nil {
		t.Fatal(err)
	}
	if err := FsckWithRuns(t.Context(), st.clone(), ix.clone(), dir, testVerifier, nil); err != nil {
		t.Fatalf("offline fsck with runs behind the tree: %v", err)
	}
}

// TestRunsAfterARunWithout is a log kept with runs, its main store then
// restored from a backup of fewer leaves and appended to without runs, then
// opened with the same runs again: the runs still cover the positions of
// the leaves appended since, with the old leaves' keys. Open must not trust
// them (the index store, rebuilt without runs, does not vouch for them):
// the new leaves are found by hash, their retries are duplicates, and
// fsck passes.
func TestRunsAfterARunWithout(t *testing.T) {
	withSmallRuns(t, 32)
	st, ix, dir := newFakeStore(), lazy(), t.TempDir()
	l, err := openSplitRuns(t, st, ix, dir)
	if err != nil {
		t.Fatal(err)
	}
	appendRounds(t, l, acked{}, 0, 1, 100)
	backup := st.clone()
	appendRounds(t, l, acked{}, 100, 2, 100)
	l.Close()

	restored, ix2 := backup.clone(), ix.clone()
	l, err = openSplitRuns(t, restored, ix2, "")
	if err != nil {
		t.Fatal(err)
	}
	a := acked{}
	appendRounds(t, l, a, 5000, 2, 100) // leaves 100-299, other events than before
	l.Close()

	l, err = openSplitRuns(t, restored.clone(), ix2.clone(), dir)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	checkInvariants(t, l, a)
	checkAllLeafHashes(t, l)
	size := l.Latest().Size
	for _, r := range mustAppend(t, l, testEvents(5000, 200)) {
		if !r.Duplicate {
			t.Fatalf("retry after reopening with runs = %+v, want a duplicate", r)
		}
	}
	if got := l.Latest().Size; got != size {
		t.Fatalf("retries grew the log from %d to %d", size, got)
	}
}
