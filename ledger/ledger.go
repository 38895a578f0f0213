// Package ledger is Grantline's verifiable append-only log: every event becomes
// a leaf of an RFC 6962 Merkle tree (github.com/transparency-dev/merkle), the
// tree is stored as C2SP tlog-tiles (https://c2sp.org/tlog-tiles, height 8),
// and every append is committed, together with a newly signed C2SP checkpoint
// (https://c2sp.org/tlog-checkpoint), in one atomic durable write by a single
// sequencer goroutine that batches concurrent appends (group commit).
// Duplicates by (source.system, id) return the original index. Log serves
// entries, entry bundles, tiles, inclusion and consistency proofs, a
// per-subject index, and a full store check (Fsck). Storage is a small
// key-value interface (Store); ledger/badgerstore is the default driver.
//
// Batching: Append encodes and checks events in the caller's goroutine and
// queues them (a bounded queue: ErrPushback when full). The sequencer takes
// whatever is queued (up to MaxBatch and the store's transaction limits),
// builds the batch while the committer goroutine makes the previous one
// durable, and the committer then publishes the batch's checkpoint and
// answers its callers. So batches grow with load on their own and an idle
// log answers a lone append after one commit.
//
// Failures: a failed store commit leaves the store's state unknown (the
// write may have landed), so the log then refuses appends with ErrStorage
// until it is reopened, which re-checks the store; reads go on. Nothing
// acknowledged is lost, and retried events are answered as duplicates if
// they did land.
package ledger

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"

	"github.com/grantline/grantline/ledger/badgerstore"
	"github.com/grantline/grantline/ledger/event"
)

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

// Defaults for Options fields left zero.
const (
	// DefaultMaxBatch is the most events integrated by one durable commit.
	DefaultMaxBatch = 4096
	// DefaultMaxBatchAge is how long the sequencer waits for more events
	// after the first one of a batch arrived, when the batch is not full.
	// Zero: the sequencer does not wait, because batches already form while
	// the previous one commits (group commit); waiting would only add
	// latency to a lone appender.
	DefaultMaxBatchAge = 0
	// DefaultQueueSize is the most events waiting for the sequencer; beyond
	// it Append fails with ErrPushback.
	DefaultQueueSize = 64 * 1024
	// DefaultTileCacheSize is the number of tiles (with their inner nodes,
	// about 16 KiB each) kept in memory for proofs.
	DefaultTileCacheSize = 1024
)

// MaxLeafSize is the largest leaf (encoded entry) the log accepts: the
// tlog-tiles entry bundle prefixes each entry with a uint16 length.
const MaxLeafSize = event.MaxLeafBytes

// TileHeight is the tlog-tiles tile height: a tile holds 256 hashes.
const TileHeight = 8

const tileWidth = 1 << TileHeight

// Options configures Open.
type Options struct {
	Dir         string           // badger directory (DATA/ledger); unused when Store is set
	Origin      string           // checkpoint origin line
	Signer      note.Signer      // signs checkpoints; from ledger/checkpoint
	Verifier    note.Verifier    // verifies stored checkpoints at Open and in Fsck
	MaxBatch    int              // DefaultMaxBatch
	MaxBatchAge time.Duration    // DefaultMaxBatchAge
	QueueSize   int              // events waiting; beyond it Append fails with ErrPushback
	Logger      *slog.Logger     // nil discards
	Now         func() time.Time // observed_time source; nil = time.Now

	// Store, when set, is used instead of a badger store in Dir. Open does
	// not take ownership of its lifetime beyond calling Close from Log.Close.
	Store Store
	// Badger tunes the badger store opened in Dir.
	Badger badgerstore.Options
	// TileCacheSize is DefaultTileCacheSize when zero.
	TileCacheSize int
}

// AppendResult is the outcome of appending one event.
type AppendResult struct {
	Index     uint64
	LeafHash  [32]byte
	Duplicate bool // the event was already in the log at Index; nothing was stored
}

// Checkpoint is a published signed checkpoint.
type Checkpoint struct {
	Size uint64
	Root [32]byte
	Note []byte // signed note text
}

// Entry is one leaf of the log.
type Entry struct {
	Index uint64
	Leaf  []byte
}

// Log is an open ledger. All methods are safe for concurrent use.
type Log struct {
	o      Options
	st     Store
	logger *slog.Logger
	rf     *compact.RangeFactory
	cache  *tileCache

	maxCount int   // store limit: entries per commit
	maxBytes int64 // store limit: estimated bytes per commit

	cur atomic.Pointer[state] // the published state

	mu      sync.RWMutex // guards closed against sends on queue
	closed  bool
	queue   chan *request
	pending atomic.Int64 // events accepted but not yet integrated
	broken  atomic.Pointer[error]
	done    chan struct{} // closed when the committer has finished
	commits chan *built   // sequencer -> committer

	inflightMu sync.Mutex
	inflight   map[[32]byte]AppendResult // dedupe keys of built, uncommitted batches

	seq sequencerState // owned by the sequencer goroutine

	stats stats
}

var hasher = rfc6962.DefaultHasher

// Open opens the log in o.Dir (or o.Store), creating it if empty (a new log
// publishes a checkpoint of size 0). It verifies the latest checkpoint's
// signature, rebuilds the tree's right edge from the stored tiles and refuses
// to open, with ErrCorrupt, if the recomputed root differs. Open starts the
// sequencer; Close stops it.
func Open(ctx context.Context, o Options) (*Log, error) {
	if o.Origin == "" {
		return nil, errors.New("ledger: Options.Origin is empty: set the checkpoint origin line")
	}
	if o.Signer == nil || o.Verifier == nil {
		return nil, errors.New("ledger: Options.Signer and Options.Verifier are required: load them with ledger/checkpoint")
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = DefaultMaxBatch
	}
	if o.MaxBatchAge < 0 {
		o.MaxBatchAge = 0
	}
	if o.QueueSize <= 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.TileCacheSize <= 0 {
		o.TileCacheSize = DefaultTileCacheSize
	}
	st := o.Store
	if st == nil {
		if o.Dir == "" {
			return nil, errors.New("ledger: Options.Dir is empty: set the ledger data directory")
		}
		if o.Badger.Logger == nil {
			o.Badger.Logger = o.Logger
		}
		bs, err := badgerstore.Open(o.Dir, o.Badger)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrStorage, err)
		}
		st = bs
	}
	l, err := newLog(ctx, o, st)
	if err != nil {
		st.Close()
		return nil, err
	}
	go l.sequence()
	go l.commit()
	return l, nil
}

// newLog loads (or initialises) the state from st without starting the
// sequencer.
func newLog(ctx context.Context, o Options, st Store) (*Log, error) {
	l := &Log{
		o:      o,
		st:     st,
		logger: o.Logger,
		rf:     &compact.RangeFactory{Hash: hasher.HashChildren},
		cache:  newTileCache(o.TileCacheSize),
		queue:  make(chan *request, o.QueueSize),
		done:   make(chan struct{}),
		// Unbuffered: one batch commits while the next is built, and the
		// sequencer keeps collecting until the committer is free.
		commits:  make(chan *built),
		inflight: make(map[[32]byte]AppendResult),
	}
	l.maxCount, l.maxBytes = st.Limits()
	s, err := l.load(ctx)
	if err != nil {
		return nil, err
	}
	l.cur.Store(s)
	l.seq.last = s
	return l, nil
}

// Latest returns the latest published checkpoint. It never blocks.
func (l *Log) Latest() Checkpoint { return l.cur.Load().cp }

// Close stops accepting appends, integrates everything already queued,
// stops the sequencer and closes the store. Later calls return ErrClosed.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	l.closed = true
	close(l.queue)
	l.mu.Unlock()
	<-l.done
	if err := l.st.Close(); err != nil {
		return fmt.Errorf("%w: %w", ErrStorage, err)
	}
	return nil
}

var _ Store = (*badgerstore.Store)(nil)
