//go:build unix

package ledger

import (
	"syscall"
	"time"
)

// processCPU is the CPU time (user and system) the process has used so far.
// CPU per event is what bounds appends on a busy machine, and it moves far
// less with the load of other processes than events per second do.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
