package ledger

import "errors"

// Sentinel errors, checked with errors.Is. Errors returned by Log wrap them
// with a message saying what was wrong and where.
var (
	// ErrNotFound: no such checkpoint, leaf hash, tile or bundle.
	ErrNotFound = errors.New("not found")
	// ErrOutOfRange: an index or size beyond the current tree.
	ErrOutOfRange = errors.New("out of range")
	// ErrPushback: the append queue is full; retry after a short delay.
	ErrPushback = errors.New("append queue full, retry later")
	// ErrClosed: the log is closed.
	ErrClosed = errors.New("ledger closed")
	// ErrCorrupt: the store does not match its signed checkpoints.
	ErrCorrupt = errors.New("ledger store corrupt")
	// ErrStorage: the store failed (disk full, fsync or I/O error). Appends
	// that fail with it were not acknowledged; retrying them is safe
	// (duplicates are detected).
	ErrStorage = errors.New("ledger storage failure")
	// ErrTooLarge: an event whose leaf would exceed MaxLeafSize.
	ErrTooLarge = errors.New("event too large")
)
