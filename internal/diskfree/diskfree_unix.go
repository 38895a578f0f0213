//go:build unix

package diskfree

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Bytes reports the bytes available to unprivileged users on the
// filesystem holding dir, or -1 if unknown.
func Bytes(dir string) int64 {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return -1
	}
	return int64(st.Bavail) * int64(st.Bsize)
}

// fsKey names the filesystem holding dir: its device number, or dir
// itself if it cannot be read.
func fsKey(dir string) string {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return pathKey(dir)
	}
	return fmt.Sprintf("dev:%d", st.Dev)
}
