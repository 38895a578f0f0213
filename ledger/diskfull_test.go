package ledger

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/dgraph-io/badger/v4"

	"github.com/grantline/grantline/ledger/badgerstore"
)

const diskFullEnv = "GRANTLINE_LEDGER_DISKFULL_CHILD"

func smallBadger(o badger.Options) badger.Options {
	return o.WithMemTableSize(1 << 20).WithNumMemtables(2).WithValueLogFileSize(2 << 20).
		WithBlockCacheSize(1 << 20).WithIndexCacheSize(1 << 20).WithBaseTableSize(256 << 10)
}

// TestDiskFull fills a small tmpfs (root only) from a child process until
// appends fail with ErrStorage, then grows the filesystem, reopens the
// ledger and checks that every acknowledged event is there exactly once.
// The child runs in its own process because without the store's free-space
// guard, badger's memory-mapped files raise SIGBUS on a full disk.
func TestDiskFull(t *testing.T) {
	if dir := os.Getenv(diskFullEnv); dir != "" {
		diskFullChild(dir)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	mnt := t.TempDir()
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=12m"); err != nil {
		t.Skipf("cannot mount tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(mnt, 0) })
	dir := filepath.Join(mnt, "ledger")

	cmd := exec.Command(os.Args[0], "-test.run=^TestDiskFull$", "-test.count=1")
	cmd.Env = append(os.Environ(), diskFullEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked, failure := 0, ""
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		if n, ok := strings.CutPrefix(line, "acked "); ok {
			acked, _ = strconv.Atoi(n)
		}
		if f, ok := strings.CutPrefix(line, "failed "); ok {
			failure = f
		}
	}
	werr := cmd.Wait()
	t.Logf("child: %d events acknowledged; failure: %q; exit: %v", acked, failure, werr)
	if werr != nil {
		t.Logf("child stderr (first lines): %s", firstLines(stderr.String(), 6))
	}
	if werr != nil || failure == "" {
		t.Fatalf("the child died or filled the disk without an error: %v", werr)
	}
	if !strings.Contains(failure, ErrStorage.Error()) || !strings.Contains(failure, badgerstore.ErrDiskFull.Error()) {
		t.Fatalf("append on a full disk failed with %q, want ErrStorage", failure)
	}
	if acked == 0 {
		t.Fatalf("nothing was acknowledged before the disk filled; stderr: %s", stderr.String())
	}
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", syscall.MS_REMOUNT, "size=256m"); err != nil {
		t.Fatalf("growing the tmpfs: %v", err)
	}
	l, err := openBadgerLog(t, dir, badgerstore.Options{BadgerOptions: smallBadger}, testOptions())
	if err != nil {
		t.Fatalf("reopening after disk full: %v", err)
	}
	defer l.Close()
	if size := l.Latest().Size; size < uint64(acked) {
		t.Fatalf("tree size after restart = %d, want at least the %d acknowledged events", size, acked)
	}
	for i := 0; i < acked; i += 500 {
		res := mustAppend(t, l, testEvents(i, min(500, acked-i)))
		for j, r := range res {
			if !r.Duplicate || r.Index != uint64(i+j) {
				t.Fatalf("acknowledged event %d after restart: %+v, want a duplicate at %d", i+j, r, i+j)
			}
		}
	}
	if err := l.Fsck(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
}

func diskFullChild(dir string) {
	bs, err := badgerstore.Open(dir, badgerstore.Options{BadgerOptions: smallBadger, MinFreeBytes: 3 << 20})
	if err != nil {
		fmt.Printf("failed %v\n", err)
		os.Exit(0)
	}
	l, err := Open(context.Background(), bs, testOptions())
	if err != nil {
		fmt.Printf("failed %v\n", err)
		os.Exit(0)
	}
	for i := 0; i < 1_000_000; i += 100 {
		if _, _, err := l.Append(context.Background(), testEvents(i, 100)); err != nil {
			fmt.Printf("failed %v\n", err)
			if !errors.Is(err, ErrStorage) {
				os.Exit(3)
			}
			// Later appends fail fast too.
			if _, _, err := l.Append(context.Background(), testEvents(i, 1)); !errors.Is(err, ErrStorage) {
				fmt.Printf("failed again with %v\n", err)
				os.Exit(4)
			}
			os.Exit(0) // like a crash: no Close
		}
		fmt.Printf("acked %d\n", i+100)
	}
	os.Exit(5)
}

func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	return strings.Join(lines[:min(n, len(lines))], "\n")
}
