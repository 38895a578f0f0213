package verify

import "crypto/rand"

// cryptoRand reads crypto/rand (key generation in tests).
type cryptoRand struct{}

func (cryptoRand) Read(p []byte) (int, error) { return rand.Read(p) }
