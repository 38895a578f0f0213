package pgstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/grantline/grantline/ledger/storetest"
)

func TestContract(t *testing.T) {
	needPG(t)
	storetest.Run(t, storetest.Driver{
		Open: func(t *testing.T) storetest.Store { return leader(t, newURL(t), Options{}) },
		Reopen: func(t *testing.T, s storetest.Store) storetest.Store {
			url := s.(*Store).url
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			return leader(t, url, Options{})
		},
	})
}

func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// query runs one query as the superuser and scans its single row.
func query(t testing.TB, url, sql string, dest ...any) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if err := conn.QueryRow(context.Background(), sql).Scan(dest...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func execSQL(t testing.TB, url, sql string) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func TestMigrations(t *testing.T) {
	url := newURL(t)
	// Nodes starting together migrate once.
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := Open(t.Context(), url, Options{})
			if err == nil {
				err = s.Close()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("concurrent Open %d: %v", i, err)
		}
	}
	var n, v int
	query(t, url, "SELECT count(*), max(version) FROM grantline_schema", &n, &v)
	if n != len(migrations) || v != SchemaVersion {
		t.Fatalf("after concurrent opens: %d migrations recorded, version %d; want %d, %d", n, v, len(migrations), SchemaVersion)
	}
	// Reopening changes nothing and keeps the data.
	s := leader(t, url, Options{})
	if err := s.Commit([][]byte{[]byte("xkept"), []byte(TreeSizeKey)}, [][]byte{[]byte("1"), be64(1)}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	openStore(t, url, Options{}).Close()
	query(t, url, "SELECT count(*) FROM grantline_schema", &n)
	if n != len(migrations) {
		t.Fatalf("reopening recorded migrations again: %d rows", n)
	}

	// A schema from a newer grantline is refused, untouched.
	execSQL(t, url, fmt.Sprintf("INSERT INTO grantline_schema (version, description, applied_by) VALUES (%d, 'from the future', 'test')", SchemaVersion+1))
	_, err := Open(t.Context(), url, Options{})
	if !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("Open of a newer schema: %v, want ErrSchemaTooNew", err)
	}
	for _, want := range []string{fmt.Sprintf("version %d", SchemaVersion+1), fmt.Sprintf("up to %d", SchemaVersion)} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	var kept string
	query(t, url, "SELECT convert_from(v, 'UTF8') FROM grantline_kv WHERE k = 'xkept'", &kept)
	if kept != "1" {
		t.Fatalf("data after the refused open: %q", kept)
	}

	// A search_path naming no schema gets a clear error.
	_, err = Open(t.Context(), cluster.URL("postgres", "search_path=no_such_schema"), Options{})
	if err == nil || !strings.Contains(err.Error(), "CREATE SCHEMA") {
		t.Fatalf("Open with a missing schema: %v, want advice to create it", err)
	}
}

func TestDurabilitySettings(t *testing.T) {
	// synchronous_commit=off asked for by the URL is overridden: commits
	// must be durable when Commit returns.
	url := newURL(t) + "&synchronous_commit=off"
	s := leader(t, url, Options{})
	var sc string
	if err := s.read.QueryRow(t.Context(), "SHOW synchronous_commit").Scan(&sc); err != nil {
		t.Fatal(err)
	}
	if sc != "on" {
		t.Fatalf("the store's sessions run with synchronous_commit=%s, want on", sc)
	}
}

func TestCommitPreconditions(t *testing.T) {
	url := newURL(t)
	// Without the lease: fenced.
	s := openStore(t, url, Options{})
	if _, err := s.Get([]byte(TreeSizeKey), []byte(IntegratedSizeKey)); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit([][]byte{[]byte("xa")}, [][]byte{[]byte("1")}); !errors.Is(err, ErrFenced) {
		t.Fatalf("Commit without the lease = %v, want ErrFenced", err)
	}
	// With the lease but before reading the tree size: refused.
	s2 := openStore(t, url, Options{})
	if err := s2.Acquire(t.Context()); err != nil {
		t.Fatal(err)
	}
	err := s2.Commit([][]byte{[]byte("xa")}, [][]byte{[]byte("1")})
	if err == nil || errors.Is(err, ErrFenced) || !strings.Contains(err.Error(), "tree size") {
		t.Fatalf("Commit before reading the tree size = %v, want an error saying so", err)
	}
	// Reading only one of the two is not enough.
	if _, err := s2.Get([]byte(TreeSizeKey)); err != nil {
		t.Fatal(err)
	}
	if err := s2.Commit([][]byte{[]byte("xa")}, [][]byte{[]byte("1")}); err == nil || !strings.Contains(err.Error(), IntegratedSizeKey) {
		t.Fatalf("Commit before reading %s = %v, want an error naming it", IntegratedSizeKey, err)
	}
	if got, _ := s2.Get([]byte("xa")); got[0] != nil {
		t.Fatal("a refused commit wrote")
	}
}

// TestFencing is the paused old leader: A stops renewing (as a SIGSTOPped
// process would), B takes over after the TTL and appends, then A resumes.
func TestFencing(t *testing.T) {
	url := newURL(t)
	ttl := time.Second
	a := leader(t, url, Options{Node: "a", LeaseTTL: ttl})
	if err := a.Commit([][]byte{[]byte("xa1"), []byte(TreeSizeKey)}, [][]byte{[]byte("a"), be64(1)}); err != nil {
		t.Fatal(err)
	}
	b := openStore(t, url, Options{Node: "b", LeaseTTL: ttl})
	ctx, cancel := context.WithTimeout(t.Context(), 2*ttl)
	err := b.Acquire(ctx)
	cancel()
	if err == nil {
		t.Fatal("B acquired the lease while A renews it")
	}
	if l, err := b.Lease(t.Context()); err != nil || l.Holder != a.Node() || !l.Valid || l.Mine {
		t.Fatalf("B sees lease %+v, %v; want A's, valid, not B's", l, err)
	}

	a.renewPaused.Store(true)
	t0 := time.Now()
	if err := b.Acquire(t.Context()); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d > 2*ttl {
		t.Errorf("B took over %v after A stopped renewing, want within 2 TTLs (%v)", d, 2*ttl)
	}
	got, err := b.Get([]byte(TreeSizeKey), []byte(IntegratedSizeKey))
	if err != nil || string(got[0]) != string(be64(1)) {
		t.Fatalf("B reads tree size %x, %v; want 1", got[0], err)
	}
	if err := b.Commit([][]byte{[]byte("xb2"), []byte(TreeSizeKey)}, [][]byte{[]byte("b"), be64(2)}); err != nil {
		t.Fatal(err)
	}

	// A resumes: its commit is fenced and writes nothing; so is the next.
	for i := range 2 {
		err := a.Commit([][]byte{[]byte("xa2"), []byte(TreeSizeKey)}, [][]byte{[]byte("a"), be64(2)})
		if !errors.Is(err, ErrFenced) {
			t.Fatalf("A's commit %d after the takeover = %v, want ErrFenced", i, err)
		}
	}
	select {
	case <-a.Lost():
	default:
		t.Error("A's Lost channel is not closed after it was fenced")
	}
	if _, ok := a.Holding(); ok {
		t.Error("A still thinks it holds the lease")
	}
	got, _ = b.Get([]byte("xa2"), []byte(TreeSizeKey), []byte("xb2"))
	if got[0] != nil || string(got[1]) != string(be64(2)) || string(got[2]) != "b" {
		t.Fatalf("after the fenced commits: xa2=%q size=%x xb2=%q; want nothing of A's", got[0], got[1], got[2])
	}
	if l, _ := b.Lease(t.Context()); !l.Mine || l.Epoch != 2 {
		t.Fatalf("lease after takeover: %+v, want B's at epoch 2", l)
	}
}

// TestFencingStaleTreeSize: a node that takes the lease again, but whose
// view of the tree predates another node's appends, cannot write.
func TestFencingStaleTreeSize(t *testing.T) {
	url := newURL(t)
	ttl := time.Second
	a := leader(t, url, Options{Node: "a", LeaseTTL: ttl})
	if err := a.Commit([][]byte{[]byte(TreeSizeKey)}, [][]byte{be64(1)}); err != nil {
		t.Fatal(err)
	}
	a.renewPaused.Store(true) // A freezes
	b := leader(t, url, Options{Node: "b", LeaseTTL: ttl})
	if err := b.Commit([][]byte{[]byte("xb"), []byte(TreeSizeKey)}, [][]byte{[]byte("b"), be64(5)}); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil { // B leaves, releasing the lease
		t.Fatal(err)
	}
	a.renewPaused.Store(false) // A thaws: its renewal finds the lease gone
	select {
	case <-a.Lost():
	case <-time.After(5 * ttl):
		t.Fatal("A did not notice it lost the lease")
	}
	if err := a.Acquire(t.Context()); err != nil { // and takes it again, at a new epoch
		t.Fatal(err)
	}
	if e, _ := a.Holding(); e != 3 {
		t.Fatalf("A holds epoch %d, want 3", e)
	}
	err := a.Commit([][]byte{[]byte("xa"), []byte(TreeSizeKey)}, [][]byte{[]byte("a"), be64(2)})
	if !errors.Is(err, ErrFenced) || !strings.Contains(err.Error(), "tree size") {
		t.Fatalf("A's commit on a stale tree size = %v, want ErrFenced about the tree size", err)
	}
	// A batch that does not write the tree size is fenced the same way.
	a2 := openStore(t, url, Options{Node: "a2", LeaseTTL: ttl})
	if _, err := a2.Get([]byte(TreeSizeKey), []byte(IntegratedSizeKey)); err != nil { // reads 5
		t.Fatal(err)
	}
	a.Close()
	if err := a2.Acquire(t.Context()); err != nil {
		t.Fatal(err)
	}
	execSQL(t, url, "UPDATE grantline_kv SET v = '\\x0000000000000006'::bytea WHERE k = 'mlatest'") // someone else moved it
	if err := a2.Commit([][]byte{[]byte("xa2")}, [][]byte{[]byte("a")}); !errors.Is(err, ErrFenced) {
		t.Fatalf("commit without a tree size over a moved tree = %v, want ErrFenced", err)
	}
	got, _ := a2.Get([]byte("xa"), []byte("xa2"), []byte("xb"))
	if got[0] != nil || got[1] != nil || string(got[2]) != "b" {
		t.Fatalf("after fenced commits: xa=%q xa2=%q xb=%q, want only B's", got[0], got[1], got[2])
	}
}

// TestTakeoverWaitsForCommitInFlight: a commit that passed the lease check
// holds the lease row until it ends, so a node that takes over afterwards
// sees it: the history stays linear.
func TestTakeoverWaitsForCommitInFlight(t *testing.T) {
	url := newURL(t)
	ttl := time.Second
	a := leader(t, url, Options{Node: "a", LeaseTTL: ttl})
	a.commitSQL = "SELECT grantline_commit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10), pg_sleep(3)"
	a.renewPaused.Store(true)
	done := make(chan error, 1)
	go func() {
		done <- a.Commit([][]byte{[]byte("xslow"), []byte(TreeSizeKey)}, [][]byte{[]byte("a"), be64(1)})
	}()
	time.Sleep(200 * time.Millisecond) // the commit is in its sleep, lease row locked
	b := openStore(t, url, Options{Node: "b", LeaseTTL: ttl})
	if err := b.Acquire(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("A's commit, which held the lease, failed: %v", err)
	}
	got, err := b.Get([]byte(TreeSizeKey), []byte("xslow"))
	if err != nil || string(got[0]) != string(be64(1)) || string(got[1]) != "a" {
		t.Fatalf("B, after taking over, reads size=%x xslow=%q (%v); want A's commit", got[0], got[1], err)
	}
}

// TestCrashMidCommit kills the committing backend: all or nothing.
func TestCrashMidCommit(t *testing.T) {
	url := newURL(t)
	s := leader(t, url, Options{})
	// kill terminates the committing backend after a delay, in a goroutine
	// whose end the caller waits for: it must not outlive the test (it
	// reports through t).
	kill := func(after time.Duration) (wait func()) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			time.Sleep(after)
			// Not execSQL: t.Fatal may only be called from the test's goroutine.
			conn, err := pgx.Connect(context.Background(), url)
			if err != nil {
				t.Errorf("connecting to kill the commit: %v", err)
				return
			}
			defer conn.Close(context.Background())
			if _, err := conn.Exec(context.Background(), "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'SELECT grantline_commit%' AND pid <> pg_backend_pid()"); err != nil {
				t.Errorf("killing the commit: %v", err)
			}
		}()
		return func() { <-done }
	}
	batch := func(gen, n int) ([][]byte, [][]byte) {
		ks, vs := make([][]byte, n), make([][]byte, n)
		for i := range ks {
			ks[i], vs[i] = fmt.Appendf(nil, "xc%02d-%06d", gen, i), make([]byte, 500)
		}
		return ks, vs
	}
	count := func(gen int) int {
		n := 0
		if err := s.Scan(fmt.Appendf(nil, "xc%02d-", gen), fmt.Appendf(nil, "xc%02d.", gen), func(k, v []byte) error { n++; return nil }); err != nil {
			t.Fatal(err)
		}
		return n
	}

	// Killed after every row was written, before the commit: nothing.
	s.commitSQL = "SELECT grantline_commit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10), pg_sleep(2)"
	ks, vs := batch(0, 1000)
	waitKill := kill(500 * time.Millisecond)
	err := s.Commit(ks, vs)
	waitKill()
	if err == nil || errors.Is(err, ErrFenced) {
		t.Fatalf("Commit whose connection was killed = %v, want a storage error", err)
	}
	if n := count(0); n != 0 {
		t.Fatalf("%d of 1000 entries of a killed commit are present", n)
	}

	// Killed at random points of large commits: all or nothing each time.
	s.commitSQL = "SELECT grantline_commit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
	for gen, ms := range []int{10, 50, 100, 200, 400, 800, 1600} {
		ks, vs := batch(gen+1, 20000)
		waitKill := kill(time.Duration(ms) * time.Millisecond)
		err := s.Commit(ks, vs)
		waitKill()
		n := count(gen + 1)
		t.Logf("kill after %d ms: commit error %v; %d entries present", ms, err, n)
		if n != 0 && n != len(ks) {
			t.Fatalf("a commit killed after %d ms left %d of %d entries", ms, n, len(ks))
		}
		if err == nil && n != len(ks) {
			t.Fatalf("Commit returned nil but %d of %d entries are present", n, len(ks))
		}
	}
}

// TestCommitSurvivesServerCrash: what Commit acknowledged is there after
// an immediate shutdown of the server (WAL recovery).
func TestCommitSurvivesServerCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("restarts the shared cluster")
	}
	url := newURL(t)
	s := leader(t, url, Options{})
	ks, vs := make([][]byte, 5000), make([][]byte, 5000)
	for i := range ks {
		ks[i], vs[i] = fmt.Appendf(nil, "xd%06d", i), fmt.Appendf(nil, "value %d", i)
	}
	ks, vs = append(ks, []byte(TreeSizeKey)), append(vs, be64(7))
	if err := s.Commit(ks, vs); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if err := cluster.Restart(t.Context()); err != nil {
		t.Fatal(err)
	}
	r := openStore(t, url, Options{})
	got, err := r.Get(ks...)
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range got {
		if string(v) != string(vs[i]) {
			t.Fatalf("after the crash %q = %q, want %q", ks[i], v, vs[i])
		}
	}
}

func TestReleaseOnClose(t *testing.T) {
	url := newURL(t)
	ttl := 10 * time.Second
	a := leader(t, url, Options{Node: "a", LeaseTTL: ttl})
	lost := a.Lost()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lost:
	default:
		t.Fatal("Lost is not closed after Close")
	}
	b := openStore(t, url, Options{Node: "b", LeaseTTL: ttl})
	t0 := time.Now()
	if err := b.Acquire(t.Context()); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d > ttl/2 {
		t.Fatalf("taking over a released lease took %v, want far less than the TTL (%v)", d, ttl)
	}
}

func TestMetrics(t *testing.T) {
	url := newURL(t)
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	if m2, err := NewMetrics(reg); err != nil || m2.commits != m.commits {
		t.Fatalf("registering twice: %v; want the first collectors reused", err)
	}
	s := leader(t, url, Options{Node: "n1", Metrics: m})
	if err := s.Commit([][]byte{[]byte(TreeSizeKey)}, [][]byte{be64(1)}); err != nil {
		t.Fatal(err)
	}
	other := leader(t, newURL(t), Options{Node: "n2", Metrics: m})
	other.renewPaused.Store(true)
	execSQL(t, other.url, "UPDATE grantline_lease SET epoch = epoch + 1") // taken over
	if err := other.Commit([][]byte{[]byte(TreeSizeKey)}, [][]byte{be64(1)}); !errors.Is(err, ErrFenced) {
		t.Fatalf("commit after takeover = %v", err)
	}
	for _, tc := range []struct {
		c    prometheus.Collector
		want float64
	}{
		{m.sequencer.WithLabelValues("n1"), 1},
		{m.sequencer.WithLabelValues("n2"), 0},
		{m.epoch.WithLabelValues("n1"), 1},
		{m.changes.WithLabelValues("n1", "acquired"), 1},
		{m.changes.WithLabelValues("n2", "acquired"), 1},
		{m.changes.WithLabelValues("n2", "lost"), 1},
		{m.commits.WithLabelValues("n1", "ok"), 1},
		{m.commits.WithLabelValues("n2", "fenced"), 1},
	} {
		if got := testutil.ToFloat64(tc.c); got != tc.want {
			t.Errorf("%v = %v, want %v", tc.c.(prometheus.Metric).Desc(), got, tc.want)
		}
	}
	if n := testutil.CollectAndCount(m.latency); n != 1 {
		t.Errorf("commit latency series: %d, want 1", n)
	}
	s.Close()
	if got := testutil.ToFloat64(m.changes.WithLabelValues("n1", "released")); got != 1 {
		t.Errorf("released = %v after Close, want 1", got)
	}
	if got := testutil.ToFloat64(m.sequencer.WithLabelValues("n1")); got != 0 {
		t.Errorf("sequencer = %v after Close, want 0", got)
	}
}

// TestCommitOverwritesWriteOnceKinds: keys of the kinds the ledger writes
// once take a plain insert; if one exists after all, the batch is upserted
// with the same result. A later duplicate in a batch wins.
func TestCommitOverwritesWriteOnceKinds(t *testing.T) {
	s := leader(t, newURL(t), Options{})
	commit := func(kv ...string) {
		t.Helper()
		var ks, vs [][]byte
		for i := 0; i < len(kv); i += 2 {
			ks, vs = append(ks, []byte(kv[i])), append(vs, []byte(kv[i+1]))
		}
		if err := s.Commit(ks, vs); err != nil {
			t.Fatal(err)
		}
	}
	commit("l1", "a", "h1", "a", "t1", "a")
	commit("l2", "b", "l1", "b", "t1", "b", "l2", "c", "t1", "c", "x1", "d", "x1", "e")
	got, err := s.Get([]byte("l1"), []byte("l2"), []byte("h1"), []byte("t1"), []byte("x1"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "[b c a c e]"; fmt.Sprintf("%s", got) != want {
		t.Fatalf("Get = %s, want %s", got, want)
	}
}

// TestFencingIntegratedSize: between checkpoints (a checkpoint interval) a
// commit writes only the integrated tree size; a stale node is fenced on it.
func TestFencingIntegratedSize(t *testing.T) {
	url := newURL(t)
	ttl := time.Second
	a := leader(t, url, Options{Node: "a", LeaseTTL: ttl})
	mtree := func(n uint64, leaf string) ([][]byte, [][]byte) {
		return [][]byte{[]byte(IntegratedSizeKey), fmt.Appendf(nil, "l%d", n)}, [][]byte{be64(n), []byte(leaf)}
	}
	if err := a.Commit(mtree(1, "a")); err != nil {
		t.Fatal(err)
	}
	a.renewPaused.Store(true)
	b := leader(t, url, Options{Node: "b", LeaseTTL: ttl})
	if err := b.Commit(mtree(2, "b")); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	a.renewPaused.Store(false)
	<-a.Lost()
	if err := a.Acquire(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := a.Commit(mtree(2, "a")); !errors.Is(err, ErrFenced) {
		t.Fatalf("a stale node's commit of the integrated size = %v, want ErrFenced", err)
	}
	var leaf string
	query(t, url, "SELECT convert_from(v, 'UTF8') FROM grantline_kv WHERE k = 'l2'", &leaf)
	if leaf != "b" {
		t.Fatalf("leaf 2 = %q after the fenced commit, want B's", leaf)
	}
	var v []byte
	query(t, url, "SELECT v FROM grantline_kv WHERE k = 'mtree'", &v)
	if string(v) != string(be64(2)) {
		t.Fatalf("mtree = %x after the fenced commit, want B's 2", v)
	}
}
