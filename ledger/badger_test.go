package ledger

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/grantline/grantline/ledger/badgerstore"
)

// openBadgerStore opens a badger store in dir and closes it when the test
// ends unless a Log took it over (closing twice is harmless for the test).
func openBadgerStore(t testing.TB, dir string, o badgerstore.Options) *badgerstore.Store {
	t.Helper()
	bs, err := badgerstore.Open(dir, o)
	if err != nil {
		t.Fatalf("badgerstore.Open(%s): %v", dir, err)
	}
	return bs
}

// openBadgerLog opens the log in a badger store in dir with o; on error the
// store is closed.
func openBadgerLog(t testing.TB, dir string, bo badgerstore.Options, o Options) (*Log, error) {
	t.Helper()
	bs := openBadgerStore(t, dir, bo)
	l, err := Open(context.Background(), bs, o)
	if err != nil {
		bs.Close()
	}
	return l, err
}

func openBadger(t testing.TB, dir string) *Log {
	t.Helper()
	l, err := openBadgerLog(t, dir, badgerstore.Options{}, testOptions())
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	return l
}

// fsckBadger runs Fsck over the badger store in dir.
func fsckBadger(t testing.TB, dir string) error {
	t.Helper()
	bs := openBadgerStore(t, dir, badgerstore.Options{})
	defer bs.Close()
	return Fsck(context.Background(), bs, testVerifier, nil)
}

// restoreBadger restores a backup into the badger store in dir.
func restoreBadger(t testing.TB, dir string, r io.Reader) error {
	t.Helper()
	bs := openBadgerStore(t, dir, badgerstore.Options{})
	defer bs.Close()
	return Restore(context.Background(), bs, r)
}

func TestBadgerReopenDedupeBackup(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "ledger")
	l := openBadger(t, dir)
	a := acked{}
	evs := testEvents(0, 1000)
	a.add(t, evs, mustAppend(t, l, evs))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openBadger(t, dir)
	evs = testEvents(900, 200)
	res := mustAppend(t, l, evs)
	if !res[0].Duplicate || res[0].Index != 900 || res[100].Duplicate || res[100].Index != 1000 {
		t.Fatalf("after reopen: results[0] = %+v, results[100] = %+v; want duplicate 900 and new 1000", res[0], res[100])
	}
	a.add(t, evs, res)
	checkInvariants(t, l, a)

	var buf bytes.Buffer
	if err := l.Backup(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	want := l.Latest()
	l.Close()
	restored := filepath.Join(t.TempDir(), "restored")
	if err := restoreBadger(t, restored, &buf); err != nil {
		t.Fatal(err)
	}
	if err := fsckBadger(t, restored); err != nil {
		t.Fatalf("Fsck(restored): %v", err)
	}
	l = openBadger(t, restored)
	defer l.Close()
	if got := l.Latest(); !bytes.Equal(got.Note, want.Note) {
		t.Fatalf("restored checkpoint = %q, want %q", got.Note, want.Note)
	}
	checkInvariants(t, l, a)
	l.Close()
	if err := restoreBadger(t, restored, bytes.NewReader(nil)); err == nil || !strings.Contains(err.Error(), "already holds a ledger") {
		t.Fatalf("Restore into a non-empty ledger = %v, want a refusal", err)
	}
}

func TestBadgerCorruptTile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ledger")
	l := openBadger(t, dir)
	mustAppend(t, l, testEvents(0, 700))
	l.Close()

	bs, err := badgerstore.Open(dir, badgerstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	vals, err := bs.Get(tileKey(0, 2))
	if err != nil || len(vals[0]) != (700-512)*32 {
		t.Fatalf("edge tile 0/2: %d bytes, %v", len(vals[0]), err)
	}
	vals[0][77] ^= 0x80
	if err := bs.Commit([][]byte{tileKey(0, 2)}, vals); err != nil {
		t.Fatal(err)
	}
	bs.Close()

	if _, err := openBadgerLog(t, dir, badgerstore.Options{}, testOptions()); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "grantline fsck") {
		t.Fatalf("Open(corrupt) = %v, want ErrCorrupt suggesting grantline fsck", err)
	}
	if err := fsckBadger(t, dir); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "tile 0/2") {
		t.Fatalf("Fsck(corrupt) = %v, want ErrCorrupt naming tile 0/2", err)
	}
}

// TestBadgerFlippedFileByte flips a byte inside badger's value log, where
// leaves and tiles live: Open or Fsck must report it.
func TestBadgerFlippedFileByte(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "ledger")
	l := openBadger(t, dir)
	mustAppend(t, l, testEvents(0, 2000))
	l.Close()
	vlogs, _ := filepath.Glob(filepath.Join(dir, "*.vlog"))
	if len(vlogs) == 0 {
		t.Fatal("no value log files")
	}
	f, err := os.OpenFile(vlogs[0], os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Leaves take ~600 bytes each; the middle of the data is inside one.
	at := int64(300_000)
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, at); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x20
	if _, err := f.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
	f.Close()
	l2, err := openBadgerLog(t, dir, badgerstore.Options{}, testOptions())
	if err != nil {
		if !isErr(err, ErrCorrupt, ErrStorage) {
			t.Fatalf("Open(flipped byte) = %v, want ErrCorrupt or ErrStorage", err)
		}
		t.Logf("Open refused: %v", err)
		return
	}
	defer l2.Close()
	err = l2.Fsck(ctx, nil)
	if err == nil {
		t.Fatal("Fsck found nothing wrong after a byte of the value log was flipped")
	}
	t.Logf("Fsck: %v", err)
}
