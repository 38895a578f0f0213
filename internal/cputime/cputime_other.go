//go:build !unix

package cputime

import "time"

// Process is zero where getrusage is not available.
func Process() time.Duration { return 0 }
