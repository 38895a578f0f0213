//go:build unix

package diskfree

import "golang.org/x/sys/unix"

// Bytes reports the bytes available to unprivileged users on the
// filesystem holding dir, or -1 if unknown.
func Bytes(dir string) int64 {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return -1
	}
	return int64(st.Bavail) * int64(st.Bsize)
}
