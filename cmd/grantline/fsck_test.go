package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/grantline/grantline/ingest/auth"
	"github.com/grantline/grantline/internal/datadir"
	"github.com/grantline/grantline/internal/server"
	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/checkpoint"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// newDataDir creates a data directory laid out as serve does (keys/, ledger/)
// holding n events, with the ledger closed.
func newDataDir(t *testing.T, n int) string {
	t.Helper()
	dir := t.TempDir()
	l, err := openDataDir(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	evs := make([]*pb.Event, n)
	for i := range evs {
		evs[i] = testEvent(i, "alice")
	}
	if _, size, err := l.Append(t.Context(), evs); err != nil || size != uint64(n) {
		t.Fatalf("Append = size %d, %v; want %d", size, err, n)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestFsckCommand(t *testing.T) {
	dir := newDataDir(t, 300)
	code, out, errs := runCmd(t, "", "fsck", "--data", dir)
	if code != 0 || out != "fsck "+dir+": ok\n" {
		t.Fatalf("fsck = exit %d, stdout %q, stderr %q; want exit 0, ok", code, out, errs)
	}
	if !strings.Contains(errs, "fsck: ") {
		t.Errorf("fsck printed no progress on stderr: %q", errs)
	}

	empty := t.TempDir()
	if code, _, errs := runCmd(t, "", "fsck", "--data", empty); code != 2 || !strings.Contains(errs, "log.vkey") {
		t.Errorf("fsck of an empty dir = exit %d, %q; want exit 2 naming log.vkey", code, errs)
	}

	// Another log's key: the checkpoints no longer verify.
	other := newDataDir(t, 1)
	vkey, err := os.ReadFile(filepath.Join(other, "keys", "log.vkey"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "keys", "log.vkey"), vkey, 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := runCmd(t, "", "fsck", "--data", dir, "--quiet"); code != 1 || !strings.Contains(errs, "FAILED") {
		t.Errorf("fsck with a foreign key = exit %d, %q; want exit 1, FAILED", code, errs)
	}
}

func TestBackupRestore(t *testing.T) {
	dir := newDataDir(t, 500)
	bak := filepath.Join(t.TempDir(), "ledger.bak")
	if code, out, errs := runCmd(t, "", "backup", "--data", dir, "--out", bak); code != 0 || !strings.Contains(out, "written to "+bak) {
		t.Fatalf("backup = exit %d, %q, %q", code, out, errs)
	}
	if code, _, errs := runCmd(t, "", "backup", "--data", dir, "--out", bak); code != 1 || !strings.Contains(errs, "exists") {
		t.Errorf("backup over an existing file = exit %d, %q; want exit 1, exists", code, errs)
	}

	// Restore into a new data dir with the original keys: fsck runs and passes.
	dst := t.TempDir()
	if err := os.CopyFS(filepath.Join(dst, "keys"), os.DirFS(filepath.Join(dir, "keys"))); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runCmd(t, "", "restore", "--data", dst, "--in", bak)
	if code != 0 || !strings.Contains(out, "fsck "+dst+": ok") {
		t.Fatalf("restore = exit %d, stdout %q, stderr %q; want fsck ok", code, out, errs)
	}
	// The restored log holds the same tree.
	l, err := openDataDir(t, dst)
	if err != nil {
		t.Fatal(err)
	}
	orig, err := openDataDirClosedAfter(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := l.Latest(), orig; got.Size != want.Size || got.Root != want.Root {
		t.Errorf("restored checkpoint = size %d root %x; want size %d root %x", got.Size, got.Root, want.Size, want.Root)
	}

	// Restoring over a ledger is refused.
	l.Close()
	if code, _, errs := runCmd(t, "", "restore", "--data", dst, "--in", bak); code != 1 || !strings.Contains(errs, "already holds a ledger") {
		t.Errorf("restore over a ledger = exit %d, %q; want exit 1", code, errs)
	}
}

func openDataDir(t *testing.T, dir string) (*ledger.Log, error) {
	t.Helper()
	dd, err := datadir.Open(dir, "test.grantline/log", checkpoint.Ed25519)
	if err != nil {
		return nil, err
	}
	return dd.OpenLedger(t.Context(), ledger.Options{})
}

func openDataDirClosedAfter(t *testing.T, dir string) (ledger.Checkpoint, error) {
	t.Helper()
	l, err := openDataDir(t, dir)
	if err != nil {
		return ledger.Checkpoint{}, err
	}
	defer l.Close()
	return l.Latest(), nil
}

// TestOnlineBackup backs up a running server over GET /admin/backup (admin
// only), restores the file into a fresh data directory and checks the restored
// tree is the one the server had published.
func TestOnlineBackup(t *testing.T) {
	dir := newDataDir(t, 300)
	rs, err := server.Start(t.Context(), server.Config{DataDir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close(t.Context())
	st, err := datadir.OpenTokens(dir)
	if err != nil {
		t.Fatal(err)
	}
	auditor, err := st.Add("audit-team", auth.RoleAuditor)
	if err != nil {
		t.Fatal(err)
	}
	bak := filepath.Join(t.TempDir(), "online.bak")
	if code, _, errs := runCmd(t, "", "backup", "--server", rs.URL, "--token", auditor, "--out", bak); code != 1 || !strings.Contains(errs, "403") {
		t.Errorf("backup with an auditor token = exit %d, %q; want exit 1 and 403", code, errs)
	}
	if _, err := os.Stat(bak); !os.IsNotExist(err) {
		t.Errorf("a refused backup left %s behind (%v)", bak, err)
	}
	code, out, errs := runCmd(t, "", "backup", "--server", rs.URL, "--token", rs.AdminToken, "--out", bak)
	if code != 0 || !strings.Contains(out, "written to "+bak) {
		t.Fatalf("online backup = exit %d, %q, %q", code, out, errs)
	}
	want := rs.Ledger().Latest()
	if err := rs.Close(t.Context()); err != nil {
		t.Fatal(err)
	}

	dst := t.TempDir()
	if err := os.CopyFS(filepath.Join(dst, "keys"), os.DirFS(filepath.Join(dir, "keys"))); err != nil {
		t.Fatal(err)
	}
	if code, out, errs := runCmd(t, "", "restore", "--data", dst, "--in", bak); code != 0 || !strings.Contains(out, "fsck "+dst+": ok") {
		t.Fatalf("restore = exit %d, stdout %q, stderr %q; want fsck ok", code, out, errs)
	}
	l, err := openDataDir(t, dst)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if got := l.Latest(); got.Size != want.Size || got.Root != want.Root {
		t.Errorf("restored checkpoint = size %d root %x; want size %d root %x", got.Size, got.Root, want.Size, want.Root)
	}
}

// TestRestoreWithoutKeys: restore into a directory without keys still
// checks the restored tree (not its signatures) and says so; a damaged
// backup fails. Before, restore skipped fsck when the keys were absent.
func TestRestoreWithoutKeys(t *testing.T) {
	dir := newDataDir(t, 300)
	bak := filepath.Join(t.TempDir(), "ledger.bak")
	if code, _, errs := runCmd(t, "", "backup", "--data", dir, "--out", bak); code != 0 {
		t.Fatalf("backup: %s", errs)
	}
	dst := t.TempDir()
	code, out, errs := runCmd(t, "", "restore", "--data", dst, "--in", bak)
	if code != 0 || !strings.Contains(out, "signatures were NOT checked") || !strings.Contains(errs, "copy DIR/keys") {
		t.Fatalf("restore = exit %d, stdout %q, stderr %q; want the tree checked without signatures", code, out, errs)
	}

	// A backup of a store whose leaf 5 was altered behind the log's back.
	st, err := datadir.OpenStore(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Commit([][]byte{{'l', 0, 0, 0, 0, 0, 0, 0, 5}}, [][]byte{[]byte("altered")}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	bad := filepath.Join(t.TempDir(), "bad.bak")
	if code, _, errs := runCmd(t, "", "backup", "--data", dir, "--out", bad); code != 0 {
		t.Fatalf("backup: %s", errs)
	}
	code, out, errs = runCmd(t, "", "restore", "--data", t.TempDir(), "--in", bad)
	if code != 1 || !strings.Contains(errs, "FAILED") || !strings.Contains(errs, "leaf 5") {
		t.Fatalf("restore of a damaged backup = exit %d, stdout %q, stderr %q; want exit 1 naming leaf 5", code, out, errs)
	}
}
