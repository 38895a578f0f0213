//go:build unix

package cputime

import (
	"testing"
	"time"
)

// TestProcessGrowsWithWork: spinning for 50 ms of wall time adds CPU time.
func TestProcessGrowsWithWork(t *testing.T) {
	before := Process()
	if before <= 0 {
		t.Fatalf("Process() = %v at the start of a test binary, want > 0", before)
	}
	x := 0
	for start := time.Now(); time.Since(start) < 50*time.Millisecond; {
		x++
	}
	if got := Process() - before; got < 10*time.Millisecond {
		t.Errorf("50 ms of spinning (%d rounds) added %v of CPU time, want at least 10 ms", x, got)
	}
}
