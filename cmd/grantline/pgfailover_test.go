package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/grantline/grantline/ledger/pgstore/pgtest"
)

// startPGServer starts `grantline serve --store url` without waiting for it
// to serve.
func startPGServer(t *testing.T, dir, url string) *e2eServer {
	t.Helper()
	s := &e2eServer{addr: freeAddr(t), dir: dir, exited: make(chan struct{}), logs: &bytes.Buffer{}}
	s.url = "http://" + s.addr
	s.cmd = exec.Command(grantlineBin, "serve", "--data", dir, "--listen", s.addr, "--store", url, "--subject-map")
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.cmd.Wait(); close(s.exited) }()
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		<-s.exited
		if t.Failed() {
			t.Logf("server %s log:\n%s", s.addr, s.logs)
		}
	})
	return s
}

// tree reads and verifies s's checkpoint and returns its tree, with a hash
// reader over s's tiles.
func tree(t *testing.T, s *e2eServer) (tlog.Tree, tlog.HashReader) {
	t.Helper()
	vkey, err := os.ReadFile(filepath.Join(s.dir, "keys", "log.vkey"))
	if err != nil {
		t.Fatal(err)
	}
	v, err := note.NewVerifier(strings.TrimSpace(string(vkey)))
	if err != nil {
		t.Fatal(err)
	}
	n, err := note.Open(s.get(t, "/checkpoint"), note.VerifierList(v))
	if err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	lines := strings.Split(n.Text, "\n")
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	root, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(root) != tlog.HashSize {
		t.Fatalf("checkpoint root %q: %v", lines[2], err)
	}
	tr := tlog.Tree{N: size, Hash: tlog.Hash(root)}
	return tr, tlog.TileHashReader(tr, c2spTiles{t, s})
}

// role is the role a node of a PostgreSQL log reports at /cluster.
func role(t *testing.T, s *e2eServer) string {
	t.Helper()
	resp, err := http.Get(s.url + "/cluster")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var st struct{ Role string }
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("GET /cluster: %v", err)
	}
	return st.Role
}

// startPGCluster starts a throwaway PostgreSQL (skipping the test without
// one), a schema in it, and a first `grantline serve` node on it, ready and
// holding the admin token. The cluster stops when the test ends.
func startPGCluster(t *testing.T) (c *pgtest.Cluster, url, dir string, a *e2eServer) {
	t.Helper()
	requireBinary(t)
	c, err := pgtest.Start(t.Context(), pgtest.Options{})
	if errors.Is(err, pgtest.ErrNoPostgres) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop() })
	url, err = c.NewSchema(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	dir = t.TempDir()
	a = startPGServer(t, dir, url)
	tok, err := waitReady(t.Context(), a.addr, dir, a.exited)
	if err != nil {
		t.Fatalf("%v; log:\n%s", err, a.logs)
	}
	a.token = tok
	return c, url, dir, a
}

// TestPostgresFailover: two nodes on one PostgreSQL and one set of keys. A
// sequences while B follows: both serve the same checkpoint, and a stream
// of appends is sent through B, which forwards it to A. A is killed
// (SIGKILL) in the middle of the stream; B takes over, the stream is resent
// to B, and every acknowledged event is in the log exactly once, the whole
// log verifies from B's tiles with x/mod's tlog, and the last checkpoint
// seen from A is consistent with B's.
func TestPostgresFailover(t *testing.T) {
	_, url, dir, a := startPGCluster(t)
	tok := a.token
	b := startPGServer(t, dir, url)
	b.token = tok
	if _, err := waitReady(t.Context(), b.addr, dir, b.exited); err != nil {
		t.Fatalf("B does not serve while A sequences: %v; log:\n%s", err, b.logs)
	}
	if ra, rb := role(t, a), role(t, b); ra != "sequencer" || rb != "follower" {
		t.Fatalf("roles: A %q, B %q; want sequencer and follower", ra, rb)
	}

	// The first events of the stream through B; then both serve the same
	// checkpoint.
	warm, _ := writeJSONL(t, "failover", 100)
	if code, _, errs := runBin(t, "append", "--server", b.url, "--token", b.token, warm); code != 0 {
		t.Fatalf("append through B: exit %d: %s", code, errs)
	}
	ta, _ := tree(t, a)
	same := time.Now().Add(10 * time.Second)
	for tb, _ := tree(t, b); tb != ta; tb, _ = tree(t, b) {
		if time.Now().After(same) {
			t.Fatalf("B serves %+v, A %+v", tb, ta)
		}
		time.Sleep(20 * time.Millisecond)
	}

	const n = 20000
	file, ids := writeJSONL(t, "failover", n)
	// Bounded: a stream through B must end when A dies, never hang.
	appCtx, appCancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer appCancel()
	app := exec.CommandContext(appCtx, grantlineBin, "append", "--server", b.url, "--token", b.token,
		"--batch", "500", "--retries", "0", file)
	var appOut, appErr bytes.Buffer
	app.Stdout, app.Stderr = &appOut, &appErr
	if err := app.Start(); err != nil {
		t.Fatal(err)
	}
	appDone := make(chan error, 1)
	go func() { appDone <- app.Wait() }()
	var before tlog.Tree
	deadline := time.Now().Add(60 * time.Second)
	for before.N < 2000 && time.Now().Before(deadline) {
		before, _ = tree(t, a)
		time.Sleep(5 * time.Millisecond)
	}
	if err := a.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	<-a.exited
	t.Logf("killed A at checkpoint size >= %d; its append: %v %s", before.N, <-appDone, strings.TrimSpace(appErr.String()))

	for role(t, b) != "sequencer" {
		select {
		case <-b.exited:
			t.Fatalf("B exited; log:\n%s", b.logs)
		default:
		}
		if time.Since(killed) > 30*time.Second {
			t.Fatalf("B did not take over; log:\n%s", b.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(killed)
	t.Logf("B serves %v after A was killed", took)
	if took > 15*time.Second {
		t.Errorf("B took %v to take over, want about the lease TTL (3 s)", took)
	}
	code, out, errs := runBin(t, "append", "--server", b.url, "--token", b.token, "--batch", "1000", file)
	if code != 0 {
		t.Fatalf("append to B: exit %d: %s", code, errs)
	}
	acked, fresh, dup, size := parseSummary(t, out)
	if acked != n || fresh+dup != n {
		t.Fatalf("append to B %q: want all %d acknowledged", out, n)
	}
	entries := verifyC2SP(t, b)
	checkSize(t, b, entries, size)
	checkExactlyOnce(t, entries, ids)
	after, hr := tree(t, b)
	p, err := tlog.ProveTree(after.N, before.N, hr)
	if err != nil {
		t.Fatal(err)
	}
	if err := tlog.CheckTree(p, after.N, after.Hash, before.N, before.Hash); err != nil {
		t.Fatalf("the checkpoint of size %d from A is not consistent with B's of size %d: %v", before.N, after.N, err)
	}
	if !strings.Contains(b.logs.String(), "standing by") {
		t.Errorf("B did not log that it stood by; log:\n%s", b.logs)
	}

	// fsck refuses while B sequences, and passes once B stopped.
	if code, _, errs := runBin(t, "fsck", "--data", dir, "--store", url, "--quiet"); code != 2 || !strings.Contains(errs, "sequences this log") {
		t.Errorf("fsck while B sequences: exit %d, %q; want 2 and a refusal", code, errs)
	}
	b.stop(t)
	if code, out, errs := runBin(t, "fsck", "--data", dir, "--store", url, "--quiet"); code != 0 || !strings.Contains(out, ": ok") {
		t.Fatalf("fsck after failover: exit %d\n%s%s", code, out, errs)
	}
}

// TestPostgresBackupRestore: `grantline backup --store` takes an online
// backup while a node serves; it restores into an empty schema (restore
// --store, which runs fsck --store) and into a badger data directory, and a
// node serves the restored log from PostgreSQL. Restoring into a database a
// node runs on is refused.
func TestPostgresBackupRestore(t *testing.T) {
	c, url, dir, a := startPGCluster(t)
	tok := a.token
	file, _ := writeJSONL(t, "backup", 1000)
	if code, _, errs := runBin(t, "append", "--server", a.url, "--token", a.token, file); code != 0 {
		t.Fatalf("append: exit %d: %s", code, errs)
	}
	want, _ := tree(t, a)
	bak := filepath.Join(t.TempDir(), "log.bak")
	if code, out, errs := runBin(t, "backup", "--store", url, "--out", bak); code != 0 || !strings.Contains(out, "written to") {
		t.Fatalf("backup --store: exit %d: %s%s", code, out, errs)
	}
	if code, _, errs := runBin(t, "restore", "--data", dir, "--store", url, "--in", bak); code != 2 || !strings.Contains(errs, "runs on this database") {
		t.Fatalf("restore into the database a node runs on: exit %d, %q; want 2 and a refusal", code, errs)
	}
	a.stop(t)

	url2, err := c.NewSchema(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if code, out, errs := runBin(t, "restore", "--data", dir, "--store", url2, "--in", bak); code != 0 || !strings.Contains(out, ": ok") {
		t.Fatalf("restore --store: exit %d\n%s%s", code, out, errs)
	}
	b := startPGServer(t, dir, url2)
	if _, err := waitReady(t.Context(), b.addr, dir, b.exited); err != nil {
		t.Fatalf("%v; log:\n%s", err, b.logs)
	}
	b.token = tok
	if got, _ := tree(t, b); got != want {
		t.Fatalf("the restored log serves %+v, want %+v", got, want)
	}
	b.stop(t)

	bdir := t.TempDir()
	if err := os.CopyFS(filepath.Join(bdir, "keys"), os.DirFS(filepath.Join(dir, "keys"))); err != nil {
		t.Fatal(err)
	}
	if code, out, errs := runBin(t, "restore", "--data", bdir, "--in", bak); code != 0 || !strings.Contains(out, "ok") {
		t.Fatalf("restore of a PostgreSQL backup into badger: exit %d\n%s%s", code, out, errs)
	}
}
