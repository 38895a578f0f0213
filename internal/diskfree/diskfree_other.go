//go:build !unix

package diskfree

// Bytes is unknown (-1) on this platform: the free-space guards are off.
func Bytes(dir string) int64 { return -1 }

// fsKey names the filesystem holding dir: dir itself on this platform.
func fsKey(dir string) string { return pathKey(dir) }
