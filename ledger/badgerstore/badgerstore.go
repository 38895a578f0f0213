// Package badgerstore is the badger (github.com/dgraph-io/badger/v4) storage
// driver of the ledger: a small key-value store with atomic, durable batch
// commits, point reads and ordered range scans. It is the only package of
// Grantline that imports badger; badger's errors are translated here (a missing
// key is a plain miss, a too-large transaction is ErrTooBig) so that callers
// never see badger types.
package badgerstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"runtime/debug"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

// ErrTooBig is returned by Commit when a batch does not fit into one badger
// transaction. Nothing of the batch is written. Callers should keep batches
// within Limits.
var ErrTooBig = errors.New("batch too big for one transaction")

// ErrDiskFull is returned by Commit, without writing, when the filesystem
// has less free space than Options.MinFreeBytes. Badger writes through
// memory-mapped files, and a write into one on a full disk kills the process
// (SIGBUS) instead of returning an error, so the store stops short of that.
var ErrDiskFull = errors.New("disk nearly full")

// DefaultValueThreshold is the value size from which badger keeps values in
// its value log instead of the LSM tree. Measured on the development machine,
// about 256 bytes doubles the durable append rate compared to badger's default.
const DefaultValueThreshold = 256

// Options configures Open.
type Options struct {
	// Logger receives badger's warnings and errors; nil discards them.
	Logger *slog.Logger
	// BadgerOptions, when set, is applied last to the options Open computed
	// and may change any of them (an escape hatch for tuning and tests).
	// SyncWrites must stay true for the durability contract to hold.
	BadgerOptions func(badger.Options) badger.Options
	// MinFreeBytes is the free disk space below which Commit refuses to
	// write (ErrDiskFull). Zero means twice the memtable size plus twice
	// the largest batch plus 16 MiB; negative disables the check.
	MinFreeBytes int64
}

// Store is a badger database. All methods are safe for concurrent use.
type Store struct {
	db      *badger.DB
	dir     string
	minFree int64
}

// Open opens (creating if needed) the badger database in dir. Writes are
// synchronous (fsync before Commit returns) and values are checked against
// their checksums when read. Memory use follows the Go
// runtime's memory limit (GOMEMLIMIT): when one is set, memtables and caches
// are scaled down so that badger stays well inside it.
func Open(dir string, o Options) (*Store, error) {
	bo := badger.DefaultOptions(dir).
		WithSyncWrites(true).
		WithValueThreshold(DefaultValueThreshold).
		WithDetectConflicts(false).
		WithCompression(options.None).
		WithVerifyValueChecksum(true).
		WithLogger(logger{o.Logger})
	bo = scaleMemory(bo, debug.SetMemoryLimit(-1))
	if o.BadgerOptions != nil {
		bo = o.BadgerOptions(bo)
	}
	db, err := badger.Open(bo)
	if err != nil {
		return nil, fmt.Errorf("opening badger database in %s: %w", dir, err)
	}
	minFree := o.MinFreeBytes
	if minFree == 0 {
		minFree = 2*bo.MemTableSize + 2*db.MaxBatchSize() + 16<<20
	}
	return &Store{db: db, dir: dir, minFree: minFree}, nil
}

// scaleMemory sizes badger's memory from the Go memory limit (math.MaxInt64
// means none). Badger's defaults (64 MiB memtables x5, 256 MiB block cache)
// apply when there is no limit or it is large.
func scaleMemory(bo badger.Options, limit int64) badger.Options {
	if limit <= 0 || limit == math.MaxInt64 {
		return bo
	}
	clamp := func(v, lo, hi int64) int64 { return max(lo, min(v, hi)) }
	mem := clamp(limit/32, 8<<20, 64<<20)
	bo = bo.WithMemTableSize(mem).
		WithNumMemtables(3).
		WithBlockCacheSize(clamp(limit/16, 8<<20, 256<<20)).
		WithIndexCacheSize(clamp(limit/32, 4<<20, 64<<20)).
		WithBaseTableSize(min(mem/4, 2<<20))
	return bo
}

// Limits reports the largest batch Commit accepts, in the terms of
// ledger.Store: its number of entries and the sum over them of len(key) +
// len(value) + 16. Badger counts an entry as its key, 12 bytes of overhead and
// either its value (below the value threshold) or a 12-byte pointer, never
// more than that sum, so badger's own batch size limit is returned as is.
func (s *Store) Limits() (count int, bytes int64) {
	return int(s.db.MaxBatchCount()), s.db.MaxBatchSize()
}

// Get reads the values of keys from one consistent snapshot. A missing key is
// a nil entry in the result (an empty present value is a non-nil empty
// slice), never an error. The returned slices are copies owned by the caller.
func (s *Store) Get(keys ...[]byte) ([][]byte, error) {
	out := make([][]byte, len(keys))
	err := s.db.View(func(txn *badger.Txn) error {
		for i, k := range keys {
			item, err := txn.Get(k)
			if errors.Is(err, badger.ErrKeyNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			if out[i], err = item.ValueCopy(nil); err != nil {
				return err
			}
			if out[i] == nil {
				out[i] = []byte{}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("badger read: %w", err)
	}
	return out, nil
}

// Scan calls fn for each key in [start, end) in ascending order (end nil means
// no upper bound), from one consistent snapshot. key and value are only valid
// during the call. An error from fn stops the scan and is returned as is.
func (s *Store) Scan(start, end []byte, fn func(key, value []byte) error) error {
	var fnErr error
	err := s.db.View(func(txn *badger.Txn) error {
		opt := badger.DefaultIteratorOptions
		opt.PrefetchSize = 64
		it := txn.NewIterator(opt)
		defer it.Close()
		for it.Seek(start); it.Valid(); it.Next() {
			item := it.Item()
			k := item.Key()
			if end != nil && string(k) >= string(end) {
				return nil
			}
			err := item.Value(func(v []byte) error {
				fnErr = fn(k, v)
				return fnErr
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if fnErr != nil {
		return fnErr
	}
	if err != nil {
		return fmt.Errorf("badger scan: %w", err)
	}
	return nil
}

// Commit writes keys[i] = values[i] for all i in one transaction: all of it
// is durable (fsynced) when Commit returns nil, and none of it is visible, now
// or after a crash, when it returns an error other than one from a failed
// fsync (after which the database should be reopened). A batch beyond Limits
// fails with ErrTooBig; one when the disk is nearly full, with ErrDiskFull.
func (s *Store) Commit(keys, values [][]byte) error {
	if len(keys) != len(values) {
		return fmt.Errorf("commit: %d keys but %d values", len(keys), len(values))
	}
	if s.minFree > 0 {
		if free := freeBytes(s.dir); free >= 0 && free < s.minFree {
			return fmt.Errorf("%w: %d bytes free in %s, below the %d-byte reserve; free disk space, then restart", ErrDiskFull, free, s.dir, s.minFree)
		}
	}
	txn := s.db.NewTransaction(true)
	defer txn.Discard()
	for i, k := range keys {
		if err := txn.Set(k, values[i]); err != nil {
			if errors.Is(err, badger.ErrTxnTooBig) {
				return fmt.Errorf("commit of %d entries: %w", len(keys), ErrTooBig)
			}
			return fmt.Errorf("badger set: %w", err)
		}
	}
	if err := txn.Commit(); err != nil {
		return fmt.Errorf("badger commit: %w", err)
	}
	return nil
}

// Backup writes a full backup of the database (badger's backup format) to w.
// It reads from one snapshot and may run while the store is in use; ctx is
// only checked before it starts.
func (s *Store) Backup(ctx context.Context, w io.Writer) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if _, err := s.db.Backup(w, 0); err != nil {
		return fmt.Errorf("badger backup: %w", err)
	}
	return nil
}

// Restore loads a backup written by Backup into the store, which should be
// empty, and syncs it to disk.
func (s *Store) Restore(r io.Reader) error {
	if err := s.db.Load(r, 256); err != nil {
		return fmt.Errorf("badger restore: %w", err)
	}
	if err := s.db.Sync(); err != nil {
		return fmt.Errorf("badger sync after restore: %w", err)
	}
	return nil
}

// Close flushes and closes the database. The store is unusable afterwards.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("closing badger: %w", err)
	}
	return nil
}

// logger adapts slog to badger's Logger; badger's chatty Info/Debug lines
// are dropped.
type logger struct{ l *slog.Logger }

func (l logger) Errorf(f string, a ...any) {
	if l.l != nil {
		l.l.Error("badger: " + fmt.Sprintf(f, a...))
	}
}

func (l logger) Warningf(f string, a ...any) {
	if l.l != nil {
		l.l.Warn("badger: " + fmt.Sprintf(f, a...))
	}
}
func (l logger) Infof(string, ...any)  {}
func (l logger) Debugf(string, ...any) {}
