//go:build !unix

package badgerstore

// freeBytes is unknown (-1) on this platform: the free-space guard is off.
func freeBytes(dir string) int64 { return -1 }
