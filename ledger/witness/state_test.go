package witness

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/grantline/grantline/internal/witnesstest"
)

// TestStateFileRestart: the newest witnessed checkpoint outlives a restart.
// A Witnesser witnesses through a real litewitness and stores the note; a
// new Witnesser on the same file serves it at once, with the witness down,
// and moves on from it (a proof from the stored size, no 409) once the
// witness is back.
func TestStateFileRestart(t *testing.T) {
	l := newMemLog(t, testOrigin, 0x42)
	lw := witnesstest.Start(t, "witness1.test", l.log())
	p := mustPolicy(t, fmt.Sprintf("witness one %s %s\nquorum 1\n", lw.VKey, lw.URL))
	state := filepath.Join(t.TempDir(), "witnessed")
	withState := func(c *Config) { c.StateFile = state }

	a := startWitnesser(t, l, p, withState)
	a.submit(t, l.append(t, 5))
	wd := a.wait(t, 5)
	witnesstest.WaitFor(t, func() bool { b, _ := os.ReadFile(state); return bytes.Equal(b, wd.Note) },
		"the witnessed checkpoint in "+state, func() string { b, _ := os.ReadFile(state); return string(b) })

	lw.Stop()
	b := startWitnesser(t, l, p, withState)
	got, ok := b.Latest()
	if !ok || got.Size != 5 || !bytes.Equal(got.Note, wd.Note) || fmt.Sprint(got.Cosigners) != "[one]" {
		t.Fatalf("after restart Latest() = %+v, %v; want the stored size 5 by [one]", got, ok)
	}
	text, sigs := noteLines(t, got.Note)
	if _, err := witnesstest.Verify(text, sigs[1], "witness1.test", lw.Pub); err != nil {
		t.Fatalf("restored cosignature, independent verifier: %v", err)
	}
	if !strings.Contains(b.logs.String(), "serving the stored witnessed checkpoint") {
		t.Errorf("no log line about the restored checkpoint:\n%s", b.logs)
	}
	b.submit(t, l.append(t, 3))
	if _, entries := b.Lag(); entries != 3 {
		t.Errorf("Lag() entries = %d with 8 submitted and 5 witnessed, want 3", entries)
	}

	lw.Restart(t)
	if wd := b.wait(t, 8); wd.Size != 8 {
		t.Fatalf("witnessed size %d after the witness returned, want 8", wd.Size)
	}
	if n := b.requests("one", "conflict"); n != 0 {
		t.Errorf("%v conflicts: the restored state should have sent old 5 with a proof", n)
	}
	if n := b.requests("one", "ok"); n < 1 {
		t.Errorf("%v successful requests after the witness returned", n)
	}
	witnesstest.WaitFor(t, func() bool {
		n, _ := os.ReadFile(state)
		v, err := VerifyQuorum(n, l.verifier, p)
		return err == nil && v.Checkpoint.Size == 8
	}, "checkpoint 8 stored", func() string { n, _ := os.ReadFile(state); return string(n) })
	if m, _ := filepath.Glob(filepath.Join(filepath.Dir(state), ".*tmp*")); len(m) != 0 {
		t.Errorf("temporary files left behind: %v", m)
	}
}

// TestStateFileRefused: a stored note that is not a witnessed checkpoint of
// this log under this policy is never served; each refusal is logged.
func TestStateFileRefused(t *testing.T) {
	l := newMemLog(t, testOrigin, 0x42)
	lw := witnesstest.Start(t, "witness1.test", l.log())
	p := mustPolicy(t, fmt.Sprintf("witness one %s %s\nquorum 1\n", lw.VKey, lw.URL))
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	a := startWitnesser(t, l, p, func(c *Config) { c.StateFile = good })
	a.submit(t, l.append(t, 4))
	wd := a.wait(t, 4)
	witnesstest.WaitFor(t, func() bool { b, _ := os.ReadFile(good); return bytes.Equal(b, wd.Note) }, "the stored note", func() string { b, _ := os.ReadFile(good); return string(b) })

	other := mustPolicy(t, fmt.Sprintf("witness two %s %s\nquorum 1\n",
		testVKey("witness1.test", seededKey(0x77).Public().(ed25519.PublicKey)), lw.URL))
	text, sigs := noteLines(t, wd.Note)
	altered := strings.Replace(text, "\n4\n", "\n5\n", 1) + "\n" + strings.Join(sigs, "")
	unsigned := text + "\n" + sigs[0] // the log's signature only

	tests := []struct {
		name    string
		content []byte // nil: no file
		policy  *Policy
		holds   func(uint64, [32]byte) error
		wantLog string
	}{
		{"no file", nil, p, nil, ""},
		{"the checkpoint altered", []byte(altered), p, nil, "ignoring the stored witnessed checkpoint"},
		{"no cosignature", []byte(unsigned), p, nil, "not cosigned by a quorum"},
		{"another policy's witness", wd.Note, other, nil, "not cosigned by a quorum"},
		{"the log does not hold it", wd.Note, p, func(size uint64, _ [32]byte) error {
			return fmt.Errorf("the tree has 2 entries, the checkpoint %d", size)
		}, "the log does not hold it: the tree has 2 entries"},
		{"not a note", []byte("hello\n"), p, nil, "ignoring the stored witnessed checkpoint"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, fmt.Sprintf("case%d", i))
			if tt.content != nil {
				if err := os.WriteFile(path, tt.content, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			var sawHolds bool
			w := startWitnesser(t, l, tt.policy, func(c *Config) {
				c.StateFile = path
				if tt.holds != nil {
					c.Holds = func(size uint64, root [32]byte) error { sawHolds = true; return tt.holds(size, root) }
				}
			})
			if got, ok := w.Latest(); ok {
				t.Errorf("Latest() = size %d from a refused state file, want none", got.Size)
			}
			logs := w.logs.String()
			if tt.wantLog == "" && strings.Contains(logs, "stored witnessed") {
				t.Errorf("log mentions the state file, which does not exist:\n%s", logs)
			}
			if !strings.Contains(logs, tt.wantLog) {
				t.Errorf("log lacks %q:\n%s", tt.wantLog, logs)
			}
			if tt.holds != nil && !sawHolds {
				t.Error("Holds was never asked")
			}
		})
	}

	// Holds accepting, the same note is served.
	w := startWitnesser(t, l, p, func(c *Config) {
		c.StateFile = good
		c.Holds = func(size uint64, root [32]byte) error {
			if size != 4 || root != wd.Root {
				return errors.New("wrong checkpoint")
			}
			return nil
		}
	})
	if got, ok := w.Latest(); !ok || got.Size != 4 {
		t.Errorf("Latest() = %+v, %v with the good state file, want size 4", got, ok)
	}
}
