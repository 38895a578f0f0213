//go:build !unix

package ledger

import "time"

// processCPU is not measured here: the benchmarks report zero CPU.
func processCPU() time.Duration { return 0 }
