// Package badgerstore is the badger (github.com/dgraph-io/badger/v4) storage
// driver of the ledger: a small key-value store with atomic, durable batch
// commits, point reads and ordered range scans. It is the only package of
// Grantline that imports badger; badger's errors are translated here (a missing
// key is a plain miss, a too-large transaction is ErrTooBig) so that callers
// never see badger types.
package badgerstore

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"

	"github.com/grantline/grantline/internal/diskfree"
)

// ErrTooBig is returned by Commit when a batch does not fit into one badger
// transaction. Nothing of the batch is written. Callers should keep batches
// within Limits.
var ErrTooBig = errors.New("batch too big for one transaction")

// ErrDamaged is returned by Open, and wrapped by the errors of Get and Scan,
// when the files of the database are damaged: a MANIFEST missing or empty
// beside data files, a table (.sst) whose footer or index does not check
// out, a value-log record that fails its checksum. Such an error also has a
// method Corrupt() bool that returns true, which is how ledger (which this
// package does not import) recognises it and answers ledger.ErrCorrupt.
// Restore the store from a backup.
var ErrDamaged = errors.New("store damaged")

// damagedError is an error wrapping ErrDamaged with what was found.
type damagedError struct {
	msg string
	key []byte // the key whose value is damaged; nil for damaged files
}

// Key returns the key whose value is damaged (nil if the damage is not to
// one value).
func (e *damagedError) Key() []byte { return e.key }

func (e *damagedError) Error() string  { return ErrDamaged.Error() + ": " + e.msg }
func (e *damagedError) Unwrap() error  { return ErrDamaged }
func (e *damagedError) Corrupt() bool  { return true }
func damaged(f string, a ...any) error { return &damagedError{msg: fmt.Sprintf(f, a...)} }

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
	// NoSync makes Commit return without waiting for fsync: after a crash
	// the database holds a prefix of its commits and may have lost the
	// rest. Only for data that can be rebuilt from elsewhere, such as the
	// ledger's separate index store (ledger Options.Index); never for the
	// ledger's main store. Such a store also commits a batch as several
	// badger transactions in key order, the batch's last entry alone and
	// last (see Commit): badger inserts a transaction's entries into its
	// memtable in random order, and random inserts into a large skiplist
	// miss the CPU cache at almost every level, while neighbouring keys
	// reuse the path of the one before. Its LSM tree is shaped for random
	// keys: small memtables, many level-0 tables (noSyncOptions).
	NoSync bool
	// MinFreeBytes is the free disk space below which Commit refuses to
	// write (ErrDiskFull). Zero means twice the memtable size plus twice
	// the largest batch plus 16 MiB; negative disables the check.
	MinFreeBytes int64
	// MemoryBudget is the Go heap the store's memtables and caches are
	// sized from (see scaleMemory): zero means the Go runtime's memory
	// limit (GOMEMLIMIT, or what debug.SetMemoryLimit set), and badger's
	// defaults (about 600 MiB) when there is none.
	MemoryBudget int64
	// MaxMappedBytes bounds the file-backed resident memory of the process
	// (RssFile in /proc/self/status), which badger's memory-mapped tables
	// and value-log files make grow with every value read: from 80% of it
	// on, the store asks the kernel to reclaim pages of its mapped files
	// (madvise MADV_PAGEOUT, Linux 5.4 and later), and of any store opened
	// in a subdirectory of its own (the ledger's index store), the files
	// holding the most first, down to 60%; reads wait for a reclaim that
	// starts above 90%. Checked at most MappedCheckInterval apart and more
	// often as RssFile nears 80%. Zero: no bound. See docs/operations.md,
	// "Memory".
	MaxMappedBytes int64
	// MappedCheckInterval is the longest interval between two checks of
	// MaxMappedBytes; zero means DefaultMappedCheckInterval.
	MappedCheckInterval time.Duration
}

// DefaultMappedCheckInterval is the longest interval between two checks
// of the bound on the store's mapped files unless Options says otherwise.
// A check reads /proc/self/status (about 0.1 ms on a loaded machine); a
// read-heavy scan maps 100-400 MiB/s, which a 2-second interval let
// overshoot the bound by hundreds of MiB before the first reclaim, and a
// 250 ms one by up to 150 MiB (evaluate of 10,000,000 events).
const DefaultMappedCheckInterval = 100 * time.Millisecond

// Store is a badger database. All methods are safe for concurrent use.
type Store struct {
	db      *badger.DB
	dir     string
	minFree int64
	reads   *readErrors
	mapped  *mappedBound // nil without Options.MaxMappedBytes
	ordered bool         // Commit in sorted chunks (Options.NoSync)

	// bundles: the store keeps the ledger's leaves in bundles (bundles.go),
	// decided at Open and again by Restore and DropAll (which run alone,
	// so reads need no lock for it). commitMu serialises the commits that rewrite
	// bundles, and guards tail, the last bundle committed.
	bundles  bool
	commitMu sync.Mutex
	tail     tailBundle
}

// orderedChunk is how many entries, neighbours in key order, one badger
// transaction of an ordered commit holds. Measured with random 17-byte keys
// into a 300k-entry memtable: one transaction per 32 sorted keys inserts
// about twice as fast as one transaction of the whole batch. With the
// ledger's index batches (BenchmarkCommitIndex: ~6,000 keys of three kinds
// per commit, docs/BENCHMARKS.md "Round 5"), 128 keys per transaction cost
// 5-15% less CPU than 32 (fewer transactions to make, time-stamp, commit
// and mark), while 256 and 512 cost more again: badger inserts a
// transaction's keys in map order, so a larger chunk loses the locality
// the sort gave it.
const orderedChunk = 128

// Open opens (creating if needed) the badger database in dir. Writes are
// synchronous (fsync before Commit returns) and values are checked against
// their checksums when read. Memory use follows the Go
// runtime's memory limit (GOMEMLIMIT): when one is set, memtables and caches
// are scaled down so that badger stays well inside it.
//
// A damaged database fails with an error wrapping ErrDamaged, before badger
// touches it: data files without a MANIFEST (badger would start an empty
// database and delete the tables it does not know), or a table whose footer
// or index fails its checksum (badger would panic in a goroutine of its own,
// killing the process). A panic of badger while opening is also returned as
// ErrDamaged.
func Open(dir string, o Options) (s *Store, err error) {
	if err := checkFiles(dir); err != nil {
		return nil, err
	}
	defer func() {
		if r := recover(); r != nil {
			s, err = nil, damaged("badger failed opening %s: %v", dir, r)
		}
	}()
	reads := &readErrors{m: make(map[string]string)}
	bo := badger.DefaultOptions(dir).
		WithSyncWrites(!o.NoSync).
		WithValueThreshold(DefaultValueThreshold).
		WithDetectConflicts(false).
		WithCompression(options.None).
		WithVerifyValueChecksum(true).
		// Badger's expvar counters (several map updates per read and write)
		// are read by nothing in Grantline.
		WithMetricsEnabled(false).
		WithLogger(logger{l: o.Logger, reads: reads})
	budget := o.MemoryBudget
	if budget <= 0 {
		budget = debug.SetMemoryLimit(-1)
	}
	bo = scaleMemory(bo, budget)
	if o.NoSync {
		bo = noSyncOptions(bo)
	}
	if o.BadgerOptions != nil {
		bo = o.BadgerOptions(bo)
	}
	// Badger's goroutines (its writer, memtable flushes, compactions)
	// inherit these labels, so that a CPU profile of a process with both
	// of the ledger's stores splits their work by store
	// (go tool pprof -tags; docs/BENCHMARKS.md, "Round 6").
	var db *badger.DB
	pprof.Do(context.Background(), pprof.Labels("badgerstore", storeLabel(o.NoSync)), func(context.Context) {
		db, err = badger.Open(bo)
	})
	if err != nil {
		return nil, fmt.Errorf("opening badger database in %s: %w", dir, err)
	}
	minFree := o.MinFreeBytes
	if minFree == 0 {
		minFree = 2*bo.MemTableSize + 2*db.MaxBatchSize() + 16<<20
	}
	s = &Store{db: db, dir: dir, minFree: minFree, reads: reads, ordered: o.NoSync}
	if !o.NoSync {
		if err := s.detectLayout(); err != nil {
			db.Close()
			return nil, fmt.Errorf("opening badger database in %s: %w", dir, err)
		}
	}
	if o.MaxMappedBytes > 0 {
		s.mapped = startMappedBound(dir, o.MaxMappedBytes, cmp.Or(o.MappedCheckInterval, DefaultMappedCheckInterval), o.Logger)
	}
	return s, nil
}

// storeLabel is the profiler label of a store's badger goroutines:
// "durable" for a store that syncs its commits (the ledger's main store),
// "nosync" for one that does not (its separate index store).
func storeLabel(noSync bool) string {
	if noSync {
		return "nosync"
	}
	return "durable"
}

// scaleMemory sizes badger's memory from a budget, the Go heap the store
// may take (math.MaxInt64 means none). Badger's defaults (64 MiB memtables
// x5, 256 MiB block cache, 1 GiB value-log files) apply when there is no
// budget. With one, the store takes about a fifth of it: three memtables
// of budget/32 (8-64 MiB), a block cache of budget/16 (8-256 MiB) and a
// table-index cache of budget/32 (4-64 MiB); value-log files are
// budget/2 (64 MiB-1 GiB; badger maps the file it writes at twice that).
// Badger v4 always memory-maps its tables and value-log files (it has no
// table loading mode any more): their pages count as file-backed memory,
// bounded by Options.MaxMappedBytes, not by this budget.
func scaleMemory(bo badger.Options, budget int64) badger.Options {
	if budget <= 0 || budget == math.MaxInt64 {
		return bo
	}
	clamp := func(v, lo, hi int64) int64 { return max(lo, min(v, hi)) }
	mem := clamp(budget/32, 8<<20, 64<<20)
	bo = bo.WithMemTableSize(mem).
		WithNumMemtables(3).
		WithBlockCacheSize(clamp(budget/16, 8<<20, 256<<20)).
		WithIndexCacheSize(clamp(budget/32, 4<<20, 64<<20)).
		WithBaseTableSize(min(mem/4, 2<<20)).
		WithValueLogFileSize(clamp(budget/2, 64<<20, 1<<30-1))
	return bo
}

// The LSM shape of a NoSync store (the ledger's separate index store), set
// by noSyncOptions. Its keys are random (leaf hashes, dedupe keys), so its
// cost is the memtable's skiplist inserts, whose path misses the CPU cache at
// almost every level of a large skiplist, and the compactions of level 0
// into the level below, each of which rewrites all of that level. Small
// memtables make the inserts cheap; many of them gathered in level 0 before
// a compaction keep the compactions as rare and as large as with badger's
// default memtables (level 0 compacts at the same number of bytes: 40 x 8
// MiB against 5 x 64 MiB). Measured in docs/BENCHMARKS.md, "Round 7: the
// index store".
const (
	noSyncMemTableSize    = 8 << 20
	noSyncLevelZeroTables = 40
	noSyncLevelZeroStall  = 2 * noSyncLevelZeroTables
)

// noSyncOptions gives the options of a NoSync store its LSM shape (see
// noSyncMemTableSize): memtables of at most noSyncMemTableSize (never larger
// than the budget made them, so the store takes no more memory), and
// noSyncLevelZeroTables of them in level 0 before it compacts. Reads probe
// every level-0 table; each has a bloom filter, which a point read checks
// before the table.
func noSyncOptions(bo badger.Options) badger.Options {
	return bo.WithMemTableSize(min(bo.MemTableSize, noSyncMemTableSize)).
		WithNumLevelZeroTables(noSyncLevelZeroTables).
		WithNumLevelZeroTablesStall(noSyncLevelZeroStall)
}

// Limits reports the largest batch Commit accepts, in the terms of
// ledger.Store: its number of entries and the sum over them of len(key) +
// len(value) + 16. Badger counts an entry as its key, 12 bytes of overhead and
// either its value (below the value threshold) or a 12-byte pointer, never
// more than that sum, so badger's own batch size limit is returned as is.
func (s *Store) Limits() (count int, bytes int64) {
	// Badger refuses a transaction that reaches either of its maxima, and
	// counts one extra entry (its commit marker, "!badger!txn" + 10 bytes)
	// into every transaction.
	return int(s.db.MaxBatchCount()) - 2, s.db.MaxBatchSize() - 1 - int64(len("!badger!txn")+10)
}

// Get reads the values of keys from one consistent snapshot. A missing key is
// a nil entry in the result (an empty present value is a non-nil empty
// slice), never an error; so is a key in the store's reserved range (see
// ErrReservedKey). The returned slices are copies owned by the caller.
func (s *Store) Get(keys ...[]byte) ([][]byte, error) {
	out := make([][]byte, len(keys))
	err := s.db.View(func(txn *badger.Txn) error {
		if s.bundles {
			return s.getBundled(txn, keys, out)
		}
		for i, k := range keys {
			if isReserved(k) {
				continue
			}
			v, err := s.getOne(txn, k)
			if err != nil {
				return err
			}
			out[i] = v
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("badger read: %w", err)
	}
	return out, nil
}

// getOne reads the value of k as stored: nil if missing, a non-nil copy
// otherwise.
func (s *Store) getOne(txn *badger.Txn, k []byte) ([]byte, error) {
	readGate.wait()
	item, err := txn.Get(k)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	v, err := item.ValueCopy(nil)
	if err != nil {
		return nil, err
	}
	if err := s.checkValue(item, v); err != nil {
		return nil, err
	}
	if v == nil {
		v = []byte{}
	}
	return v, nil
}

// checkValue reports a value badger could not read. Badger answers a
// value-log record that fails its checksum (or lies beyond the file) with
// no value and no error, only a log line; the value pointer still says how
// long the value should be, so an empty value where a long one is recorded
// is such a failure. Its cause is taken from the log line.
func (s *Store) checkValue(item *badger.Item, v []byte) error {
	if len(v) > 0 {
		return nil
	}
	want := item.ValueSize() // exact for inline values, within a few bytes for value-log ones
	if want <= 0 {
		return nil
	}
	err := damaged("the value of key %x (about %d bytes) cannot be read: %s", item.Key(), want, s.unreadableCause(item.Key()))
	err.(*damagedError).key = item.KeyCopy(nil)
	return err
}

// unreadableCause is why badger could not read the value of key: the
// cause its log line gave, else a generic one.
func (s *Store) unreadableCause(key []byte) string {
	if cause := s.reads.take(key); cause != "" {
		return cause
	}
	return "unreadable value-log record"
}

// Scan calls fn for each key in [start, end) in ascending order (end nil means
// no upper bound), from one consistent snapshot. key and value are only valid
// during the call. An error from fn stops the scan and is returned as is. Keys
// in the store's reserved range (see ErrReservedKey) are skipped.
func (s *Store) Scan(start, end []byte, fn func(key, value []byte) error) error {
	// fnErr tells fn's errors (returned as they are) from badger's (wrapped).
	var fnErr error
	each := func(k, v []byte) error { fnErr = fn(k, v); return fnErr }
	err := s.db.View(func(txn *badger.Txn) error {
		if s.bundles {
			return s.scanBundled(txn, start, end, each)
		}
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
			if isReserved(k) {
				continue
			}
			readGate.wait()
			err := item.Value(func(v []byte) error {
				if err := s.checkValue(item, v); err != nil {
					return err
				}
				return each(k, v)
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
// fails with ErrTooBig; one when the disk is nearly full, with ErrDiskFull;
// one with a key in the store's reserved range, with ErrReservedKey.
//
// A store opened with NoSync commits differently: the entries but the last,
// in key order (a repeated key keeps its last value), in transactions of
// orderedChunk neighbouring keys, then the last entry in a transaction of
// its own once all the others are applied. Readers may see part of a batch
// while it commits, and after a crash the store holds a prefix of those
// transactions: so if the batch's last entry is present, all of it is (the
// ledger puts its index watermark last). After an error, any part of the
// batch may be present.
func (s *Store) Commit(keys, values [][]byte) error {
	if err := s.checkCommit(keys, values); err != nil {
		return err
	}
	if s.ordered && len(keys) > 1 {
		return s.commitOrdered(keys, values)
	}
	if s.bundles {
		s.commitMu.Lock()
		defer s.commitMu.Unlock()
		k2, v2, last, err := s.bundleBatch(keys, values)
		if err != nil {
			return err
		}
		s.tail = tailBundle{} // unknown until the commit succeeds
		if err := s.commitTxn(k2, v2); err != nil {
			return err
		}
		s.tail = last
		return nil
	}
	return s.commitTxn(keys, values)
}

// checkCommit refuses a commit whose keys and values do not pair up, when
// the disk is nearly full, or with a reserved key.
func (s *Store) checkCommit(keys, values [][]byte) error {
	if len(keys) != len(values) {
		return fmt.Errorf("commit: %d keys but %d values", len(keys), len(values))
	}
	if s.minFree > 0 {
		if free := diskfree.Bytes(s.dir); free >= 0 && free < s.minFree {
			return fmt.Errorf("%w: %d bytes free in %s, below the %d-byte reserve; free disk space, then restart", ErrDiskFull, free, s.dir, s.minFree)
		}
	}
	for _, k := range keys {
		if isReserved(k) {
			return fmt.Errorf("commit of key %x: %w", k, ErrReservedKey)
		}
	}
	return nil
}

// TearableCommits reports whether a crash can keep part of a Commit: true
// on a store opened with NoSync, whose Commit applies its entries in
// key-ordered transactions (CommitAtomic is then the all-or-nothing form).
// The ledger checks it of its index store (ledger.Options.Index).
func (s *Store) TearableCommits() bool { return s.ordered }

// CommitAtomic writes keys[i] = values[i] for all i in one transaction, of
// which a crash keeps all or nothing, within Limits (beyond them:
// ErrTooBig). On a store opened without NoSync it is Commit. On a NoSync
// store it is Commit's all-or-nothing form, for what a torn commit would
// damage (the ledger's subject map records): like Commit there, it is not
// fsynced when it returns.
func (s *Store) CommitAtomic(keys, values [][]byte) error {
	if !s.ordered {
		return s.Commit(keys, values)
	}
	if err := s.checkCommit(keys, values); err != nil {
		return err
	}
	return s.commitTxn(keys, values)
}

// commitTxn commits keys and values as they are in one transaction.
func (s *Store) commitTxn(keys, values [][]byte) error {
	txn := s.db.NewTransaction(true)
	defer txn.Discard()
	ents := make([]badger.Entry, len(keys)) // one allocation, not one per entry
	for i, k := range keys {
		ents[i].Key, ents[i].Value = k, values[i]
		if err := txn.SetEntry(&ents[i]); err != nil {
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

// commitOrdered is Commit for a NoSync store (see Commit).
func (s *Store) commitOrdered(keys, values [][]byte) error {
	count, size := s.Limits()
	total := int64(0)
	for i, k := range keys {
		total += int64(len(k) + len(values[i]) + 16)
	}
	if len(keys) > count || total > size {
		return fmt.Errorf("commit of %d entries, %d bytes: %w", len(keys), total, ErrTooBig)
	}
	last := len(keys) - 1
	order := sortedOrder(keys[:last])
	var (
		wg    sync.WaitGroup
		errMu sync.Mutex
		first error
	)
	fail := func(err error) {
		errMu.Lock()
		defer errMu.Unlock()
		if first == nil {
			first = err
		}
	}
	// All transactions are made before any commits: a new transaction
	// waits until every committed one is applied, which would make each
	// chunk wait for the one before. Nothing reads in them, and badger
	// applies transactions in the order they commit, so they are committed
	// without waiting and the writer applies them in a few writes.
	txns := make([]*badger.Txn, 0, (len(order)+orderedChunk-1)/orderedChunk)
	defer func() {
		for _, txn := range txns {
			txn.Discard()
		}
	}()
	ents := make([]badger.Entry, len(order)) // one allocation, not one per entry
	for from := 0; from < len(order); from += orderedChunk {
		txn := s.db.NewTransaction(true)
		txns = append(txns, txn)
		for n, i := range order[from:min(from+orderedChunk, len(order))] {
			e := &ents[from+n]
			e.Key, e.Value = keys[i], values[i]
			if err := txn.SetEntry(e); err != nil {
				return fmt.Errorf("badger set: %w", err)
			}
		}
	}
	for _, txn := range txns {
		wg.Add(1)
		txn.CommitWith(func(err error) {
			if err != nil {
				fail(fmt.Errorf("badger commit: %w", err))
			}
			wg.Done()
		})
	}
	wg.Wait()
	if first != nil {
		return first
	}
	txn := s.db.NewTransaction(true)
	defer txn.Discard()
	if err := txn.Set(keys[last], values[last]); err != nil {
		return fmt.Errorf("badger set: %w", err)
	}
	if err := txn.Commit(); err != nil {
		return fmt.Errorf("badger commit: %w", err)
	}
	return nil
}

// sortedOrder returns the positions of keys in ascending key order; of
// equal keys, the earlier position comes first (as a stable sort would
// give). It sorts by each key's first 8 bytes as one integer and compares
// whole keys only where those are equal: most index keys differ in their
// first 8 bytes (the leaf-hash and dedupe keys are a kind byte and a hash),
// and comparing integers in place costs far less than comparing slices
// through the positions.
func sortedOrder(keys [][]byte) []int {
	type ranked struct {
		head uint64 // the key's first 8 bytes, big-endian, zero-padded
		pos  int
	}
	rs := make([]ranked, len(keys))
	for i, k := range keys {
		var h [8]byte
		copy(h[:], k)
		rs[i] = ranked{binary.BigEndian.Uint64(h[:]), i}
	}
	slices.SortFunc(rs, func(a, b ranked) int {
		if c := cmp.Compare(a.head, b.head); c != 0 {
			return c
		}
		if c := bytes.Compare(keys[a.pos], keys[b.pos]); c != 0 {
			return c
		}
		return cmp.Compare(a.pos, b.pos)
	})
	order := make([]int, len(rs))
	for i, r := range rs {
		order[i] = r.pos
	}
	return order
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
// empty, and syncs it to disk. Like DropAll it replaces what the store
// holds and its layout, so it must not run alongside other calls (no
// ledger is open on the store); every other method is safe for concurrent
// use.
func (s *Store) Restore(r io.Reader) error {
	if err := s.db.Load(r, 256); err != nil {
		return fmt.Errorf("badger restore: %w", err)
	}
	if err := s.db.Sync(); err != nil {
		return fmt.Errorf("badger sync after restore: %w", err)
	}
	// The backup's layout wins over the one Open chose for the empty store.
	return s.redetectLayout()
}

// DropAll deletes every key of the database (badger's DropAll). The
// ledger empties a separate index store with it before rebuilding it, at
// Open, before anything else reads it; like Restore it must not run
// alongside other calls.
func (s *Store) DropAll() error {
	if err := s.db.DropAll(); err != nil {
		return fmt.Errorf("badger drop all: %w", err)
	}
	return s.redetectLayout()
}

// redetectLayout decides the layout again (detectLayout) after Restore or
// DropAll replaced the store's contents; a NoSync store never bundles.
func (s *Store) redetectLayout() error {
	if s.ordered {
		return nil
	}
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	return s.detectLayout()
}

// Close flushes and closes the database. The store is unusable afterwards.
func (s *Store) Close() error {
	s.mapped.stop()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("closing badger: %w", err)
	}
	return nil
}

// logger adapts slog to badger's Logger; badger's chatty Info/Debug lines
// are dropped. It also keeps the cause of failed value reads for checkValue.
type logger struct {
	l     *slog.Logger
	reads *readErrors
}

// readErrorPrefix starts the line badger logs, in the reading goroutine,
// when it fails to read a value and answers "no value" instead.
const readErrorPrefix = "Unable to read: Key:"

func (l logger) Errorf(f string, a ...any) {
	if l.reads != nil && strings.HasPrefix(f, readErrorPrefix) && len(a) >= 5 {
		if k, ok := a[0].([]byte); ok {
			l.reads.put(k, fmt.Sprint(a[4]))
		}
	}
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

// readErrors holds, by key, the causes badger logged for values it failed
// to read, until checkValue takes them. Bounded: a cause nobody takes (a
// read outside Get and Scan) is dropped when the map is full.
type readErrors struct {
	mu sync.Mutex
	m  map[string]string
}

const maxReadErrors = 256

func (r *readErrors) put(key []byte, cause string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.m) >= maxReadErrors {
		clear(r.m)
	}
	r.m[string(key)] = cause
}

func (r *readErrors) take(key []byte) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.m[string(key)]
	delete(r.m, string(key))
	return c
}
