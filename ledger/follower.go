package ledger

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"golang.org/x/mod/sumdb/note"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// ErrNotSequencer is returned by Follower.Append: a follower never writes;
// send appends to the node that sequences the log.
var ErrNotSequencer = errors.New("this node does not sequence the log")

// DefaultFollowInterval is how often a Follower reads the store's latest
// tree size when FollowerOptions.Interval is zero.
const DefaultFollowInterval = 100 * time.Millisecond

// FollowerOptions configures OpenFollower.
type FollowerOptions struct {
	// Verifier verifies the checkpoints the follower reads. Required.
	Verifier note.Verifier
	// Interval is how often the store's latest tree size is read
	// (DefaultFollowInterval when zero). Refresh reads it at once.
	Interval time.Duration
	// TileCacheSize is DefaultTileCacheSize when zero.
	TileCacheSize int
	// OnError, when set, is called with each failed refresh (the follower
	// goes on serving its last good state and retries).
	OnError func(error)
}

// Follower is a read-only view of a log that another Log (the sequencer,
// usually on another node) writes into a store they share, such as
// ledger/pgstore. It serves the same reads as Log, as of the latest signed
// checkpoint it has seen, and never writes to the store. It refreshes on
// its own every FollowerOptions.Interval; each refresh reads the latest
// checkpoint and the right-edge tiles of its tree, checks that the tiles
// give the checkpoint's root and that the new tree is consistent with the
// one served before (a consistency proof from the stored tiles), and only
// then publishes it. A store whose log went backwards or forked is refused
// with ErrCorrupt and the follower keeps serving its last good state.
//
// One consistent snapshot: what the follower reads is append-only (leaves,
// index entries and checkpoints are written once, a partial tile only
// grows, the tree sizes only increase), so reading the checkpoint first and
// the tiles after it, possibly at a later state, still gives the tiles of
// the checkpoint's tree as prefixes; the root check confirms it.
//
// All methods are safe for concurrent use. See docs/operations-postgres.md.
type Follower struct {
	l        *Log
	o        FollowerOptions
	refresh  sync.Mutex // one refresh at a time
	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
	closed   atomic.Bool
	lastErr  atomic.Pointer[error]
}

// OpenFollower reads the latest checkpoint in st (verifying it, and the
// right edge of its tree) and starts following the store. On an empty store
// it fails with an error wrapping ErrNotFound: the sequencer has not created
// the log yet. On success the Follower owns st until Close (which closes it)
// or Stop (which hands it back); on error the caller still owns st.
func OpenFollower(ctx context.Context, st Store, o FollowerOptions) (*Follower, error) {
	if st == nil {
		return nil, errors.New("ledger: no store given to follow")
	}
	if o.Verifier == nil {
		return nil, errors.New("ledger: FollowerOptions.Verifier is required: load the log's verifier key with ledger/checkpoint")
	}
	if o.Interval <= 0 {
		o.Interval = DefaultFollowInterval
	}
	lo := Options{Verifier: o.Verifier, TileCacheSize: o.TileCacheSize}.withDefaults()
	f := &Follower{
		l: &Log{
			o: lo, st: st, ix: st, logger: lo.Logger, // a follower reads the indexes from the shared store
			rf:    &compact.RangeFactory{Hash: hasher.HashChildren},
			cache: newTileCache(lo.TileCacheSize),
		},
		o:    o,
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	if _, err := f.Refresh(ctx); err != nil {
		return nil, err
	}
	go f.follow()
	return f, nil
}

func (f *Follower) follow() {
	defer close(f.done)
	t := time.NewTicker(f.o.Interval)
	defer t.Stop()
	for {
		select {
		case <-f.stop:
			return
		case <-t.C:
		}
		if _, err := f.Refresh(context.Background()); err != nil {
			f.lastErr.Store(&err)
			if f.o.OnError != nil {
				f.o.OnError(err)
			}
		} else {
			f.lastErr.Store(nil)
		}
	}
}

// Err is the error of the last refresh, nil if it succeeded.
func (f *Follower) Err() error {
	if p := f.lastErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Refresh reads the store's latest checkpoint now and publishes it if it is
// newer; it reports whether it did. Errors wrap ErrStorage (the store
// failed), ErrCorrupt (the store's log does not verify, went backwards or
// forked) or ErrNotFound (no log in the store yet); the state served before
// stays.
func (f *Follower) Refresh(ctx context.Context) (bool, error) {
	f.refresh.Lock()
	defer f.refresh.Unlock()
	l := f.l
	cur := l.cur.Load()
	vals, err := l.st.Get(keyLatest)
	if err != nil {
		return false, storageErr(err, "reading the latest tree size")
	}
	if vals[0] == nil {
		if cur != nil {
			return false, fmt.Errorf("%w: the latest tree size record vanished from the store (the log was at %d); run grantline fsck", ErrCorrupt, cur.cp.Size)
		}
		return false, fmt.Errorf("the store holds no log yet: %w", ErrNotFound)
	}
	if len(vals[0]) != 8 {
		return false, fmt.Errorf("%w: the latest tree size record has %d bytes, want 8; run grantline fsck", ErrCorrupt, len(vals[0]))
	}
	size := binary.BigEndian.Uint64(vals[0])
	if cur != nil {
		if size == cur.cp.Size {
			return false, nil
		}
		if size < cur.cp.Size {
			return false, fmt.Errorf("%w: the log in the store went back from size %d to %d (restored from an older copy, or a database failover lost committed transactions); the follower keeps serving size %d", ErrCorrupt, cur.cp.Size, size, cur.cp.Size)
		}
	}
	vals, err = l.st.Get(checkpointKey(size))
	if err != nil {
		return false, storageErr(err, fmt.Sprintf("reading checkpoint %d", size))
	}
	if vals[0] == nil {
		return false, fmt.Errorf("%w: the checkpoint of the latest tree size %d is missing; run grantline fsck", ErrCorrupt, size)
	}
	cp, err := l.parseCheckpoint(vals[0], size)
	if err != nil {
		return false, err
	}
	s := &state{cp: cp}
	for level := uint64(0); level*TileHeight < 64 && size>>(level*TileHeight) > 0; level++ {
		row := size >> (level * TileHeight)
		w := int(row % tileWidth)
		if w == 0 {
			s.edge = append(s.edge, nil)
			continue
		}
		t, err := l.storedTile(level, row/tileWidth, w)
		if err != nil {
			return false, err
		}
		s.edge = append(s.edge, t)
	}
	rng, err := l.rangeAt(s)
	if err != nil {
		return false, err
	}
	if root := rootOf(rng); root != cp.Root {
		return false, fmt.Errorf("%w: the stored tiles give root %x at size %d but the signed checkpoint says %x; run grantline fsck", ErrCorrupt, root, size, cp.Root)
	}
	if cur != nil && cur.cp.Size > 0 {
		nodes, err := proof.Consistency(cur.cp.Size, size)
		if err != nil {
			return false, fmt.Errorf("consistency proof %d..%d: %w", cur.cp.Size, size, err)
		}
		hs, err := l.nodeHashes(s, nodes.IDs)
		if err != nil {
			return false, err
		}
		p, err := nodes.Rehash(hs, hasher.HashChildren)
		if err != nil {
			return false, fmt.Errorf("consistency proof %d..%d: %w", cur.cp.Size, size, err)
		}
		if err := proof.VerifyConsistency(hasher, cur.cp.Size, size, p, cur.cp.Root[:], cp.Root[:]); err != nil {
			return false, fmt.Errorf("%w: the store's tree of size %d is not consistent with the checkpoint of size %d served before (a fork): %w", ErrCorrupt, size, cur.cp.Size, err)
		}
	}
	l.cur.Store(s)
	return true, nil
}

// Stop stops following and hands the store back to the caller without
// closing it (a node taking over sequencing opens a Log on it). The
// follower serves its last state until it is no longer used.
func (f *Follower) Stop() {
	f.stopOnce.Do(func() { close(f.stop) })
	<-f.done
}

// Close stops following and closes the store. Later calls return ErrClosed.
func (f *Follower) Close() error {
	if !f.closed.CompareAndSwap(false, true) {
		return ErrClosed
	}
	f.Stop()
	if err := f.l.st.Close(); err != nil {
		return fmt.Errorf("%w: %w", ErrStorage, err)
	}
	return nil
}

// Append always fails with ErrNotSequencer: a follower never writes.
func (f *Follower) Append(ctx context.Context, evs []*pb.Event) ([]AppendResult, uint64, error) {
	return nil, 0, fmt.Errorf("%w: it follows the log read-only; send appends to the sequencing node", ErrNotSequencer)
}

// Latest returns the latest checkpoint the follower has verified.
func (f *Follower) Latest() Checkpoint { return f.l.Latest() }

// CheckpointAt is Log.CheckpointAt as of Latest.
func (f *Follower) CheckpointAt(ctx context.Context, size uint64) (Checkpoint, error) {
	return f.l.CheckpointAt(ctx, size)
}

// Entries is Log.Entries as of Latest.
func (f *Follower) Entries(ctx context.Context, start, count uint64) ([]Entry, error) {
	return f.l.Entries(ctx, start, count)
}

// InclusionProof is Log.InclusionProof as of Latest.
func (f *Follower) InclusionProof(ctx context.Context, index, size uint64) ([][]byte, error) {
	return f.l.InclusionProof(ctx, index, size)
}

// ConsistencyProof is Log.ConsistencyProof as of Latest.
func (f *Follower) ConsistencyProof(ctx context.Context, from, to uint64) ([][]byte, error) {
	return f.l.ConsistencyProof(ctx, from, to)
}

// LookupLeafHash is Log.LookupLeafHash as of Latest.
func (f *Follower) LookupLeafHash(ctx context.Context, hash []byte) (uint64, error) {
	return f.l.LookupLeafHash(ctx, hash)
}

// SubjectProof is Log.SubjectProof, read from the shared store: the
// sequencer commits the subject map's records with each batch in the same
// store transaction (a follower's store keeps its indexes with the leaves),
// so a follower proves subjects complete at any checkpoint it serves.
// ErrNoSubjectMap for a log created without a subject map.
func (f *Follower) SubjectProof(ctx context.Context, subject string, size uint64) (SubjectProof, error) {
	format, err := readMapFormat(f.l.st)
	if err != nil {
		return SubjectProof{}, err
	}
	if format == mapNone {
		return SubjectProof{}, ErrNoSubjectMap
	}
	if size > f.l.Latest().Size {
		return SubjectProof{}, fmt.Errorf("subject proof at size %d, beyond the follower's latest checkpoint %d: %w", size, f.l.Latest().Size, ErrNotFound)
	}
	return f.l.subjectProof(ctx, subject, size, format)
}

// SubjectEntries is Log.SubjectEntries as of Latest.
func (f *Follower) SubjectEntries(ctx context.Context, subject string, size, start uint64, limit int) ([]Entry, error) {
	return f.l.SubjectEntries(ctx, subject, size, start, limit)
}

// ForEachSubject is Log.ForEachSubject.
func (f *Follower) ForEachSubject(ctx context.Context, size uint64, fn func(subject string) error) error {
	return f.l.ForEachSubject(ctx, size, fn)
}

// ReadTile is Log.ReadTile as of Latest.
func (f *Follower) ReadTile(ctx context.Context, level, index uint64, width int) ([]byte, error) {
	return f.l.ReadTile(ctx, level, index, width)
}

// ReadEntryBundle is Log.ReadEntryBundle as of Latest.
func (f *Follower) ReadEntryBundle(ctx context.Context, index uint64, width int) ([]byte, error) {
	return f.l.ReadEntryBundle(ctx, index, width)
}

// Stats returns the follower's counters: only Size is set.
func (f *Follower) Stats() Stats { return Stats{Size: f.l.Latest().Size} }
