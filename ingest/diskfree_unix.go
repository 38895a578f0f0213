//go:build unix

package ingest

import "golang.org/x/sys/unix"

// freeBytes reports the bytes available to unprivileged users on the
// filesystem holding dir, or -1 if unknown.
func freeBytes(dir string) int64 {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return -1
	}
	return int64(st.Bavail) * int64(st.Bsize)
}
