//go:build unix

package cputime

import (
	"testing"
	"time"
)

// TestProcessGrowsWithWork: spinning adds CPU time. The loop runs until the
// reading has grown by 20 ms or 10 s of wall time have passed, so a loaded
// machine that gives this process little CPU slows the test down instead of
// failing it; a Process that does not count this thread's work fails it.
func TestProcessGrowsWithWork(t *testing.T) {
	before := Process()
	if before <= 0 {
		t.Fatalf("Process() = %v at the start of a test binary, want > 0", before)
	}
	x := 0
	start := time.Now()
	for Process()-before < 20*time.Millisecond {
		for range 100_000 {
			x++
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("10 s of spinning (%d rounds) added %v of CPU time, want at least 20 ms", x, Process()-before)
		}
	}
}
