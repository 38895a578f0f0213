package pgstore

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// childEnv makes the test binary run childMain: a sequencer in its own
// process, which the test can freeze with SIGSTOP.
const childEnv = "GRANTLINE_PGSTORE_CHILD"

// childMain acquires the lease on url and commits tree sizes 1, 2, ... one
// at a time, printing "committed N" after each, until it is fenced.
func childMain(url string) int {
	ctx := context.Background()
	s, err := Open(ctx, url, Options{Node: "child", LeaseTTL: 2 * time.Second})
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	defer s.Close()
	if err := s.Acquire(ctx); err != nil {
		fmt.Println("error", err)
		return 1
	}
	if _, err := s.Get([]byte(TreeSizeKey), []byte(IntegratedSizeKey)); err != nil {
		fmt.Println("error", err)
		return 1
	}
	for n := uint64(1); ; n++ {
		err := s.Commit([][]byte{fmt.Appendf(nil, "xchild-%08d", n), []byte(TreeSizeKey)}, [][]byte{[]byte("c"), be64(n)})
		if errors.Is(err, ErrFenced) {
			fmt.Println("fenced", err)
			return 3
		}
		if err != nil {
			fmt.Println("error", err)
			return 1
		}
		fmt.Println("committed", n)
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPausedSequencer freezes a sequencing process with SIGSTOP, lets
// another node take over and append, then thaws it: the old sequencer must
// not write anything, and everything it had committed is in the new
// sequencer's view.
func TestPausedSequencer(t *testing.T) {
	url := newURL(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+url)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := make(chan string, 1<<16)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	committed := func(l string) uint64 {
		n, _ := strconv.ParseUint(strings.TrimPrefix(l, "committed "), 10, 64)
		return n
	}
	var last uint64
	var log []string
	for last < 20 {
		select {
		case l, ok := <-lines:
			if !ok || !strings.HasPrefix(l, "committed ") {
				t.Fatalf("child: %q", l)
			}
			log, last = append(log, l), committed(l)
		case <-time.After(30 * time.Second):
			t.Fatal("the child did not commit")
		}
	}
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Logf("child frozen after committing %d", last)

	b := openStore(t, url, Options{Node: "b", LeaseTTL: 2 * time.Second})
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := b.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("B took over after %v", time.Since(t0))
	got, err := b.Get([]byte(TreeSizeKey), []byte(IntegratedSizeKey))
	if err != nil {
		t.Fatal(err)
	}
	seen := binary.BigEndian.Uint64(got[0])
	if seen < last {
		t.Fatalf("B reads tree size %d, but the child had acknowledged %d", seen, last)
	}
	if err := b.Commit([][]byte{[]byte("xb"), []byte(TreeSizeKey)}, [][]byte{[]byte("b"), be64(seen + 1000)}); err != nil {
		t.Fatal(err)
	}

	if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	for l := range lines {
		log = append(log, l)
		if strings.HasPrefix(l, "committed ") && committed(l) > seen {
			t.Errorf("after the takeover at size %d the thawed child committed %q", seen, l)
		}
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("child exited with %v, want code 3 (fenced); its last lines: %q", err, log[max(0, len(log)-5):])
	}
	t.Logf("child: %s", log[len(log)-1])
	got, err = b.Get([]byte(TreeSizeKey), fmt.Appendf(nil, "xchild-%08d", seen+1))
	if err != nil || binary.BigEndian.Uint64(got[0]) != seen+1000 || got[1] != nil {
		t.Fatalf("after the child was fenced: size %x, next child key %q, %v; want B's size and nothing of the child's", got[0], got[1], err)
	}
}
