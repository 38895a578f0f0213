//go:build !unix

package main

import "time"

// processCPU is not measured here: bench reports no CPU per event.
func processCPU() time.Duration { return 0 }
