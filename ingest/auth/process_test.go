package auth

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// When GRANTLINE_AUTH_HELPER is set, the test binary acts as a separate
// writer process (like `grantline token add` beside a running server): it
// adds principals named PREFIX-0..N-1 to DIR and prints their tokens.
func TestMain(m *testing.M) {
	if spec := os.Getenv("GRANTLINE_AUTH_HELPER"); spec != "" {
		var dir, prefix string
		var n int
		parts := strings.SplitN(spec, "|", 3)
		fmt.Sscan(parts[1], &n)
		dir, prefix = parts[0], parts[2]
		s, err := Open(filepath.Join(dir, tokensFile))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		for i := range n {
			tok, err := s.Add(fmt.Sprintf("%s-%d", prefix, i), RoleSource)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			fmt.Println(tok)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// Two writer processes and this (reading) process share one directory: the
// lock file keeps every write, and the reader sees every token.
func TestWriterProcesses(t *testing.T) {
	dir := t.TempDir()
	reader := openStore(t, dir)
	const n = 10
	var cmds []*exec.Cmd
	var outs []*strings.Builder
	for _, prefix := range []string{"a", "b"} {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), fmt.Sprintf("GRANTLINE_AUTH_HELPER=%s|%d|%s", dir, n, prefix))
		out := new(strings.Builder)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds, outs = append(cmds, cmd), append(outs, out)
	}
	for range 50 { // read while they write
		_ = reader.List()
	}
	var tokens []string
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("writer process %d: %v\n%s", i, err, outs[i])
		}
		tokens = append(tokens, strings.Fields(outs[i].String())...)
	}
	if len(tokens) != 2*n {
		t.Fatalf("writers printed %d tokens, want %d", len(tokens), 2*n)
	}
	for _, tok := range tokens {
		if _, err := reader.Authenticate(tok); err != nil {
			t.Errorf("reader.Authenticate(token from writer process) = %v", err)
		}
	}
	if got := len(reader.List()); got != 2*n {
		t.Errorf("List() = %d principals, want %d", got, 2*n)
	}
}
