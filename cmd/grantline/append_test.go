package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
)

// writeEvents writes n events as JSON lines (lower_snake_case field names)
// for subjects user-0 .. user-9 and returns the file name.
func writeEvents(t *testing.T, n int) string {
	t.Helper()
	var sb strings.Builder
	for i := range n {
		b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(testEvent(i, fmt.Sprintf("user-%d", i%10)))
		if err != nil {
			t.Fatal(err)
		}
		sb.Write(b)
		sb.WriteByte('\n')
	}
	p := filepath.Join(t.TempDir(), "events.jsonl")
	if err := os.WriteFile(p, []byte(sb.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// checkStoredOnce fails unless the fake holds exactly events 0..n-1, once each.
func checkStoredOnce(t *testing.T, f *fakeLog, n int) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.events) != n {
		t.Fatalf("fake stored %d events, want %d", len(f.events), n)
	}
	seen := map[string]bool{}
	for _, ev := range f.events {
		if seen[ev.GetId()] {
			t.Fatalf("event %s stored twice", ev.GetId())
		}
		seen[ev.GetId()] = true
	}
	for i := range n {
		if id := fmt.Sprintf("ev-%06d", i); !seen[id] {
			t.Fatalf("event %s missing", id)
		}
	}
}

func TestAppendCommand(t *testing.T) {
	f := newFakeLog(t)
	url := f.serve(t)
	file := writeEvents(t, 2500)

	code, out, errs := runCmd(t, "", "append", "--server", url, "--token", "test-token", "--batch", "100", "--streams", "3", "--window", "4", file)
	if code != 0 {
		t.Fatalf("append exit %d, stderr:\n%s", code, errs)
	}
	if want := "appended 2500 events: 2500 new, 0 duplicate (tree size 2500)\n"; out != want {
		t.Errorf("append stdout = %q, want %q", out, want)
	}
	checkStoredOnce(t, f, 2500)

	// The same file again: all duplicates, still exit 0; through stdin this time.
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	code, out, errs = runCmd(t, string(data), "append", "--server", url, "--token", "test-token", "-")
	if code != 0 {
		t.Fatalf("second append exit %d, stderr:\n%s", code, errs)
	}
	if want := "appended 2500 events: 0 new, 2500 duplicate (tree size 2500)\n"; out != want {
		t.Errorf("second append stdout = %q, want %q", out, want)
	}
	checkStoredOnce(t, f, 2500)
}

func TestAppendBadLinesSendNothing(t *testing.T) {
	f := newFakeLog(t)
	url := f.serve(t)
	good := writeEvents(t, 3)
	data, _ := os.ReadFile(good)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	bad := filepath.Join(t.TempDir(), "bad.jsonl")
	content := lines[0] + "\n\n" + // a blank line still counts for numbering
		`{"id":"x","type":"access.approved","time":"2026-01-02T03:04:05Z","source":{"system":"okta"},"subject":{"id":"a","kind":7}}` + "\n" +
		lines[1] + "\n" + `not json` + "\n"
	if err := os.WriteFile(bad, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runCmd(t, "", "append", "--server", url, "--token", "test-token", good, bad)
	if code == 0 {
		t.Fatalf("append of a file with bad lines exited 0; stdout %q", out)
	}
	for _, want := range []string{bad + ":3: field subject.kind: ", bad + ":5: byte 1: ", "2 bad line(s)"} {
		if !strings.Contains(errs, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errs)
		}
	}
	if n := len(f.events); n != 0 {
		t.Errorf("fake stored %d events; want nothing sent", n)
	}
}

func TestAppendRetriesResourceExhausted(t *testing.T) {
	f := newFakeLog(t)
	f.refuseNext = 3
	url := f.serve(t)
	file := writeEvents(t, 1000)
	code, out, errs := runCmd(t, "", "append", "--server", url, "--token", "test-token", "--batch", "50", file)
	if code != 0 {
		t.Fatalf("append exit %d, stderr:\n%s", code, errs)
	}
	if want := "appended 1000 events: 1000 new, 0 duplicate (tree size 1000)\n"; out != want {
		t.Errorf("stdout = %q, want %q", out, want)
	}
	if f.refuseNext != 0 {
		t.Errorf("fake still has %d refusals; the client did not retry through them", f.refuseNext)
	}
	checkStoredOnce(t, f, 1000)
}

func TestAppendResendsUnacknowledged(t *testing.T) {
	f := newFakeLog(t)
	f.dropAcksAfter = 2 // batch 3 is stored but its ack is lost
	url := f.serve(t)
	file := writeEvents(t, 1000)
	code, out, errs := runCmd(t, "", "append", "--server", url, "--token", "test-token", "--batch", "100", file)
	if code != 0 {
		t.Fatalf("append exit %d, stderr:\n%s", code, errs)
	}
	var acked, fresh, dup, size int
	if _, err := fmt.Sscanf(out, "appended %d events: %d new, %d duplicate (tree size %d)", &acked, &fresh, &dup, &size); err != nil {
		t.Fatalf("summary %q: %v", out, err)
	}
	if acked != 1000 || fresh+dup != 1000 || dup < 100 || size != 1000 {
		t.Errorf("summary %q: want 1000 acknowledged, at least the lost batch (100) duplicate, tree size 1000", out)
	}
	checkStoredOnce(t, f, 1000)
}

func TestAppendFailures(t *testing.T) {
	file := writeEvents(t, 500)
	t.Run("non-retryable", func(t *testing.T) {
		f := newFakeLog(t)
		f.failAfter = 2
		url := f.serve(t)
		code, out, errs := runCmd(t, "", "append", "--server", url, "--token", "test-token", "--batch", "100", file)
		if code != 1 || !strings.Contains(errs, "not acknowledged") || !strings.Contains(out, "appended 200 events") {
			t.Errorf("append = exit %d, stdout %q, stderr %q; want exit 1, 200 appended, 'not acknowledged'", code, out, errs)
		}
	})
	t.Run("bad token", func(t *testing.T) {
		f := newFakeLog(t)
		url := f.serve(t)
		code, _, errs := runCmd(t, "", "append", "--server", url, "--token", "wrong", file)
		if code != 1 || !strings.Contains(errs, "check --token") {
			t.Errorf("append = exit %d, stderr %q; want exit 1 naming --token", code, errs)
		}
	})
	t.Run("retries exhausted", func(t *testing.T) {
		f := newFakeLog(t)
		f.refuseNext = 100
		url := f.serve(t)
		code, _, errs := runCmd(t, "", "append", "--server", url, "--token", "test-token", "--retries", "2", file)
		if code != 1 || !strings.Contains(errs, "resource_exhausted") {
			t.Errorf("append = exit %d, stderr %q; want exit 1 with resource_exhausted", code, errs)
		}
	})
	t.Run("no files", func(t *testing.T) {
		code, _, errs := runCmd(t, "", "append", "--token", "x")
		if code != 2 || !strings.Contains(errs, "no input") {
			t.Errorf("append = exit %d, stderr %q; want exit 2, 'no input'", code, errs)
		}
	})
}
