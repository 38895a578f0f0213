// Package ledger is Grantline's verifiable append-only log: every event becomes
// a leaf of an RFC 6962 Merkle tree (github.com/transparency-dev/merkle), the
// tree is stored as C2SP tlog-tiles (https://c2sp.org/tlog-tiles, height 8),
// and every batch of appends is committed, together with a newly signed C2SP
// checkpoint (https://c2sp.org/tlog-checkpoint; at most one per
// Options.CheckpointInterval when that is set), in one atomic durable write
// by a single sequencer goroutine that batches concurrent appends (group
// commit). Every stored checkpoint is kept forever.
// Duplicates by (source.system, id) return the original index. Log serves
// entries, entry bundles, tiles, inclusion and consistency proofs, a
// per-subject index, and a full store check (Fsck). Storage is a small
// key-value interface (Store) that the caller opens and passes to Open;
// ledger/badgerstore is the default driver. The package also owns the log's
// vocabulary that other packages share: Checkpoint, Entry, AppendResult and
// the error sentinels (errors.go, checkpoint.go).
//
// Batching: Append encodes and checks events in the caller's goroutine and
// queues them (a bounded queue: ErrPushback when full). The sequencer takes
// whatever is queued (up to MaxBatch and the store's transaction limits),
// builds the batch in four stages (dedupe, encode, edge-tile writer, seal;
// see build) while the committer goroutine makes the previous one durable,
// then publishes its checkpoint and answers its callers; the indexer
// goroutine then commits that batch's index entries to a separate index
// store (Options.Index; with the indexes in the main store they were part
// of the durable commit), at most a few batches behind (maxUnindexed),
// and reads that consult the index wait until it has reached the tree
// size they read. So batches grow with load on their own and an idle log
// answers a lone append after one commit.
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

	"github.com/grantline/grantline/ledger/event"
	"github.com/grantline/grantline/ledger/runindex"
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
	// about 16 KiB each) kept in memory for proofs, and of level-0 tiles
	// as stored (8 KiB each) kept for checking the leaves reads return.
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
	// Signer signs checkpoints (see ledger/checkpoint for sigstore-backed
	// signers). Its key name is the log's origin. Required.
	Signer note.Signer
	// Verifier verifies stored checkpoints at Open and in Fsck. It must be
	// the verifier of Signer's key (same name, same key); Open refuses
	// another. Required.
	Verifier    note.Verifier
	MaxBatch    int              // DefaultMaxBatch
	MaxBatchAge time.Duration    // DefaultMaxBatchAge
	QueueSize   int              // events waiting; beyond it Append fails with ErrPushback
	Logger      *slog.Logger     // nil discards
	Now         func() time.Time // observed_time source; nil = time.Now
	// TileCacheSize is DefaultTileCacheSize when zero.
	TileCacheSize int
	// CheckpointInterval, when positive, makes the log sign at most one
	// checkpoint per interval (plus one when it opens on leaves a crash left
	// unsigned, and one when it closes). Zero, the default, signs one per
	// batch. Either way Append answers only once its events are durable and
	// integrated (their index, leaf hash and tree position are final and
	// survive a crash); with an interval, the events may not yet be covered
	// by the published checkpoint when Append returns: Latest().Size may be
	// below the returned tree size, and proofs for them are served once a
	// checkpoint covers them, at most CheckpointInterval later. Every stored
	// checkpoint is kept forever (so consistency can be proven between any
	// two); an interval bounds how many accumulate.
	CheckpointInterval time.Duration
	// Index, when set, is a store of its own for the log's indexes (the
	// leaf-hash, dedupe and subject entries of every leaf; see RunsDir for
	// the first two), which then stay
	// out of the main store's durable commits: each batch commits its
	// leaves, tiles and checkpoint durably to the main store, then its
	// index entries to Index, while the next batch commits to the main
	// store. Appends are answered, and the checkpoint covering them
	// published, once the durable commit is done; the index commit follows,
	// at most a few batches behind, and every read that consults the
	// indexes (SubjectEntries, LookupLeafHash, ForEachSubject*,
	// SubjectProof, Fsck) first waits, within its context, until they
	// cover the tree size it reads, so a read issued after an append
	// returned sees its events. Index need not be
	// durable when Commit returns, nor atomic: after a crash it may hold a
	// prefix of its commits and any part of the next one, provided a
	// commit's last entry (the log puts its watermark there) is kept only
	// with all of that commit (badgerstore with NoSync applies a commit in
	// key-ordered transactions, the last entry alone and last). For a log
	// with a subject map, such an Index must also have a
	// CommitAtomic(keys, values [][]byte) error method whose writes a
	// crash keeps all or none of (badgerstore has one): the log commits
	// the subject map's records through it, because their states are
	// overwritten in place and a torn commit of them could not be redone
	// from the leaves. Open refuses an Index without it (ErrIndexNotAtomic)
	// unless the store has a TearableCommits() bool method reporting false
	// (its Commit is atomic; badgerstore's reports NoSync). Open
	// rebuilds the entries of the leaves it lacks from the leaves, before
	// serving (see docs/design.md, "Indexes off the durable commit"). An Index holding
	// entries beyond the main store's tree (the main store was restored
	// from an older backup) is emptied through its DropAll() error method
	// and rebuilt; without one Open fails with ErrCorrupt. A main store once
	// used with an Index is refused without one. The Log closes Index in
	// Close; on an error from Open the caller still owns it.
	Index Store
	// RunsDir, with Index, is a directory of the log's own where it keeps
	// its leaf-hash index (LookupLeafHash) and its dedupe index as sorted
	// run files (ledger/runindex; in RunsDir/leafhash and RunsDir/dedupe)
	// instead of one Index entry per leaf for each: a batch's leaf-hash
	// and dedupe key prefixes are appended to buffers in memory, written
	// out as sorted runs every 65,536 leaves and merged in the background,
	// which costs a fraction of a random insert into Index. Like Index
	// they need not survive a crash: Open re-appends what they lack (leaf
	// hashes from the level-0 tiles, dedupe keys from the leaves), and a
	// log restored from an older backup drops the runs beyond its tree. An
	// Index that held those entries (a log indexed before without RunsDir)
	// is emptied and rebuilt once, and so is one indexed with a RunsDir
	// when opened without it. Empty: the entries go to Index (or the main
	// store). Requires Index. See docs/design.md, "The leaf-hash runs".
	RunsDir string
	// MustExist makes Open fail, with an error wrapping ErrNotFound,
	// instead of creating a new log when the store is empty. Callers that
	// know a log was created (its keys signed checkpoints) set it, so that a
	// lost or emptied store is never silently started over at size 0.
	MustExist bool
	// SubjectMap creates a new log with a subject map (docs/completeness.md):
	// the seal stage appends a map leaf as the last leaf of every
	// checkpointed batch, committing a Merkle prefix tree from each subject
	// to its chain summary, so that SubjectProof can prove a subject's chain
	// complete. A batch of k new events then grows the tree by k+1 when it
	// is sealed. It is a property of the log fixed at its creation and
	// recorded in the store: for an existing log it is ignored (a mismatch
	// is logged), so a log's mode never changes between runs.
	SubjectMap bool
	// DedupeFilterBytes bounds the memory of the dedupe filter, which lets
	// the sequencer skip the index lookup of dedupe keys the log certainly
	// does not hold (nearly every new event's): about 1.25 MB per million
	// events, filled from the index at Open (in the background beyond
	// 1,048,576 leaves; lookups go to the store until it is full). Beyond
	// the bound it lets more keys through to the store, never fewer. Zero:
	// DefaultDedupeFilterBytes; negative: no filter. See
	// docs/design.md, "The dedupe filter".
	DedupeFilterBytes int64
}

// AppendResult is the outcome of appending one event.
type AppendResult struct {
	Index     uint64   // position in the log; the original's for a duplicate
	LeafHash  [32]byte // RFC 6962 leaf hash of the stored leaf
	Duplicate bool     // (source.system, id) was already in the log at Index with the same event; nothing was stored
	// Conflict: (source.system, id) was already in the log at Index with a
	// different event (the observed time, set by the log, does not count);
	// nothing was stored, and Index and LeafHash are the stored entry's.
	// Never set together with Duplicate. See docs/design.md, "Conflicts".
	Conflict bool
}

// inflightEntry is a new event of a built batch, kept until the store the
// dedupe stage reads holds its dedupe record (after the batch's durable
// commit; with a separate index store, after its index commit, which
// follows the answer) or the batch failed (settle): its result and its
// event bytes (the leaf's first field with its tag and length), against
// which a later event with its dedupe key is compared.
type inflightEntry struct {
	res   AppendResult
	event []byte
}

// Entry is one leaf of the log: its index and its bytes exactly as stored
// (the deterministic protobuf encoding of grantline.v1.Entry, see
// event.EncodeLeaf). Hash the bytes as they are; never re-encode them.
type Entry struct {
	Index uint64
	Leaf  []byte
}

// Log is an open ledger. All methods are safe for concurrent use.
type Log struct {
	o     Options
	st    Store
	ix    Store // where the indexes are: Options.Index, else st
	split bool  // the indexes are in a store of their own
	// lh and dd, when Options.RunsDir is set, are the leaf-hash and the
	// dedupe index: the indexer appends each batch's leaf-hash and dedupe
	// key prefixes to them with its index commit, instead of entries in
	// ix.
	lh, dd *runindex.Index
	// ixMark is the index store's watermark key: keyIndexed, or
	// keyIndexedRuns with Options.RunsDir.
	ixMark []byte
	logger *slog.Logger
	rf     *compact.RangeFactory
	cache  *tileCache
	// rows caches level-0 tiles as stored, without their inner nodes, for
	// leaf checks (leafRow).
	rows *tileCache

	maxCount int   // store limit: entries per commit
	maxBytes int64 // store limit: estimated bytes per commit
	ixCount  int   // the same for the index store (the main store's without one)
	ixBytes  int64

	cur atomic.Pointer[state] // the published state

	mu      sync.RWMutex // guards closed against sends on queue
	closed  bool
	queue   chan *request
	pending atomic.Int64 // events accepted but not yet integrated
	broken  atomic.Pointer[error]
	done    chan struct{} // closed when the indexer has finished
	commits chan *built   // sequencer -> committer
	indexes chan *built   // committer -> indexer (indexQueue batches)

	// ixw is the tree size the separate index store has reached; reads
	// that consult it wait for the size they read (waitIndexed). Unused
	// without a separate index store.
	ixw indexWatch
	// answeredTo is the tree size up to which events were answered
	// (durable and integrated; advanced in order by the committer).
	answeredTo atomic.Uint64

	inflightMu sync.Mutex
	inflight   map[[32]byte]inflightEntry // dedupe keys of built batches not yet settled (settle)

	filter     *dedupeFilter // nil: none (Options.DedupeFilterBytes < 0)
	filterDone chan struct{} // closed when a background fill ends; nil without one
	filterStop atomic.Bool   // Close asks a background fill to stop

	seq sequencerState // owned by the sequencer goroutine

	smapOn bool // the log has a subject map (fixed at creation)

	stats stats
}

var hasher = rfc6962.DefaultHasher

// Open opens the log held in st, creating it if st is empty (a new log
// publishes a checkpoint of size 0) unless Options.MustExist is set. The origin is the signer's key name.
// Open refuses a verifier that is not the signer's (another name or key). It
// verifies the latest checkpoint's signature, rebuilds the tree's right edge
// from the stored tiles and refuses to open, with ErrCorrupt, if the
// recomputed root differs. Open starts the sequencer; Close stops it. On
// success the Log owns st and closes it in Close; on error the caller still
// owns st and closes it.
func Open(ctx context.Context, st Store, o Options) (*Log, error) {
	if st == nil {
		return nil, errors.New("ledger: no store given: open one (e.g. ledger/badgerstore) and pass it to Open")
	}
	if err := checkKeyPair(o.Signer, o.Verifier); err != nil {
		return nil, err
	}
	if o.RunsDir != "" && o.Index == nil {
		return nil, errors.New("ledger: Options.RunsDir needs a separate index store (Options.Index): the runs follow the index commits")
	}
	l, err := newLog(ctx, o.withDefaults(), st) // on an error it has closed the runs it opened
	if err != nil {
		return nil, err
	}
	if err := l.startDedupeFilter(); err != nil {
		l.closeRuns()
		return nil, err
	}
	go l.sequence()
	go l.commit()
	go l.index()
	return l, nil
}

// withDefaults fills in the zero fields of o.
func (o Options) withDefaults() Options {
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
	if o.DedupeFilterBytes == 0 {
		o.DedupeFilterBytes = DefaultDedupeFilterBytes
	}
	return o
}

// newLog loads (or initialises) the state from st without starting the
// sequencer.
func newLog(ctx context.Context, o Options, st Store) (_ *Log, err error) {
	l := &Log{
		o:      o,
		st:     st,
		logger: o.Logger,
		rf:     &compact.RangeFactory{Hash: hasher.HashChildren},
		cache:  newTileCache(o.TileCacheSize),
		rows:   newTileCache(o.TileCacheSize),
		queue:  make(chan *request, o.QueueSize),
		done:   make(chan struct{}),
		// Unbuffered: one batch commits while the next is built, and the
		// sequencer keeps collecting until the committer is free.
		commits: make(chan *built),
		// Answered batches wait here for their index commit: a bounded
		// queue, so the committer stays at most maxUnindexed batches
		// ahead of the indexer.
		indexes:  make(chan *built, indexQueue),
		inflight: make(map[[32]byte]inflightEntry),
	}
	l.ix, l.ixMark = st, keyIndexed
	if o.RunsDir != "" {
		l.ixMark = keyIndexedRuns
	}
	if o.Index != nil {
		l.ix, l.split = o.Index, true
	}
	l.maxCount, l.maxBytes = st.Limits()
	l.ixCount, l.ixBytes = l.maxCount, l.maxBytes
	if l.split {
		// Index entries go to the index store: a batch's main commit holds
		// the leaves, its index commit the index entries, each within its
		// own store's limits (see fit).
		l.ixCount, l.ixBytes = o.Index.Limits()
	}
	defer func() {
		if err != nil {
			l.closeRuns() // the caller owns the stores, not the runs opened here
		}
	}()
	s, err := l.load(ctx)
	if err != nil {
		return nil, err
	}
	if err := l.openIndex(ctx); err != nil {
		return nil, err
	}
	if s, err = l.openMap(ctx, s); err != nil {
		return nil, err
	}
	l.cur.Store(s)
	l.seq.last = s
	// Open indexed every leaf (openIndex, openMap) before serving.
	l.ixw.init(l.seq.rng.End())
	return l, nil
}

// Latest returns the latest published checkpoint. It never blocks.
func (l *Log) Latest() Checkpoint { return l.cur.Load().cp }

// Close stops accepting appends, integrates everything already queued,
// waits for the index commits of the answered batches, stops the
// sequencer and closes the stores. Later calls return ErrClosed.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	l.closed = true
	close(l.queue)
	l.mu.Unlock()
	<-l.done // the indexer has committed every answered batch's index entries (unless the index store failed)
	// Nothing advances the index any more, so a read waiting, now or
	// later, for a size the index lacks (one beyond the tree; after an
	// index failure the watch already holds that error) is answered with
	// ErrClosed, not left waiting.
	l.ixw.fail(fmt.Errorf("reading the index: %w", ErrClosed))
	l.stopDedupeFilter()
	err := l.st.Close()
	// The indexer is done: nothing appends to the runs any more. Closing
	// them writes their buffered keys as runs, so the next Open has none
	// to redo.
	if rerr := l.closeRuns(); err == nil {
		err = rerr
	}
	if l.split {
		if ierr := l.ix.Close(); err == nil {
			err = ierr
		}
	}
	if err != nil {
		return fmt.Errorf("%w: %w", ErrStorage, err)
	}
	return nil
}

// indexWatch is the tree size a separate index store has reached: every
// leaf below it has its index records there, visible to reads. The indexer
// advances it after each index commit; reads that consult the index wait
// on it for the tree size of the state they read.
type indexWatch struct {
	size atomic.Uint64 // read without mu on the fast path
	mu   sync.Mutex
	next chan struct{} // closed and replaced at each advance; closed for good on failure
	err  error         // set once: the index store failed (or the log closed)
}

func (w *indexWatch) init(size uint64) {
	w.size.Store(size)
	w.next = make(chan struct{})
}

// advance records that the index reached size and wakes the waiters.
func (w *indexWatch) advance(size uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return
	}
	if size > w.size.Load() {
		w.size.Store(size)
	}
	close(w.next)
	w.next = make(chan struct{})
}

// fail records that the index will not advance any more: waiters for a
// size above it, now or later, get err (the first one given).
func (w *indexWatch) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return
	}
	w.err = err
	if w.next != nil {
		close(w.next)
	}
}

// failed returns the error fail recorded, or nil.
func (w *indexWatch) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// wait returns once the index has reached size; the failure's error if it
// will not; ctx's error (wrapped) if ctx ends first.
func (w *indexWatch) wait(ctx context.Context, size uint64) error {
	for {
		if w.size.Load() >= size {
			return nil
		}
		w.mu.Lock()
		reached, err, next := w.size.Load() >= size, w.err, w.next
		w.mu.Unlock()
		switch {
		case reached:
			return nil
		case err != nil:
			return fmt.Errorf("the index covers %d leaves, not the %d of the tree read: %w", w.size.Load(), size, err)
		}
		select {
		case <-next:
		case <-ctx.Done():
			return fmt.Errorf("waiting for the index to cover tree size %d: %w", size, ctx.Err())
		}
	}
}

// WaitIndexed returns once the indexes cover every event answered before
// the call: reads by subject, leaf hash or dedupe key then need not wait for
// them. Reads wait by themselves, so callers need it only to measure: the
// benchmarks (go test -bench ./ledger/, bench/compare) stop their clock
// after it, so that the index commits that follow the last answers count.
// It returns at once without a separate index store, and fails like the
// reads do: ErrStorage when the index store failed, or ctx's error.
func (l *Log) WaitIndexed(ctx context.Context) error {
	return l.waitIndexed(ctx, l.answeredTo.Load())
}

// waitIndexed returns once the index covers the first size leaves (at
// once without a separate index store: the indexes are in the durable
// commit), or an error: the index store failed (ErrStorage), the log
// closed (ErrClosed), or ctx ended. Every read that consults the index
// calls it with the tree size of the state it reads, so it sees every
// event answered in that state.
func (l *Log) waitIndexed(ctx context.Context, size uint64) error {
	if !l.split {
		return nil
	}
	return l.ixw.wait(ctx, size)
}

// checkKeyPair checks that v verifies what s signs: same key name (the
// origin), same key hash, and a signature by s that v accepts.
func checkKeyPair(s note.Signer, v note.Verifier) error {
	if s == nil || v == nil {
		return errors.New("ledger: Options.Signer and Options.Verifier are required: load them with ledger/checkpoint")
	}
	if err := CheckOrigin(s.Name()); err != nil {
		return fmt.Errorf("ledger: the signer's key name is the log origin: %w", err)
	}
	if s.Name() != v.Name() || s.KeyHash() != v.KeyHash() {
		return fmt.Errorf("ledger: the verifier %s+%08x is not the signer's key %s+%08x: give the verifier key of the log's signing key",
			v.Name(), v.KeyHash(), s.Name(), s.KeyHash())
	}
	msg, err := note.Sign(&note.Note{Text: "grantline key check\n"}, s)
	if err != nil {
		return fmt.Errorf("ledger: the signer cannot sign: %w", err)
	}
	if _, err := note.Open(msg, note.VerifierList(v)); err != nil {
		return fmt.Errorf("ledger: the verifier %s+%08x does not accept the signer's signatures (same name and key hash, another key): %w",
			v.Name(), v.KeyHash(), err)
	}
	return nil
}
