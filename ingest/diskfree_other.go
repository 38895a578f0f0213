//go:build !unix

package ingest

// freeBytes is unknown (-1) on this platform: the free-space guard is off.
func freeBytes(dir string) int64 { return -1 }
