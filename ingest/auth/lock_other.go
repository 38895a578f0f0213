//go:build !unix

package auth

import "sync"

var lockMu sync.Mutex

// lockFile serialises writers within this process only: advisory file
// locking is implemented for unix systems, where Grantline runs.
func lockFile(string) (func(), error) {
	lockMu.Lock()
	return lockMu.Unlock, nil
}
