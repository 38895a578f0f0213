package ingest

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/merkle/testonly"
	"golang.org/x/mod/sumdb/note"
	"google.golang.org/protobuf/proto"

	"github.com/grantline/grantline/ingest/auth"
	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// fakeLedger is an in-memory Ledger that really computes RFC 6962 trees and
// proofs (merkle/testonly), signs checkpoints with a note key, dedupes by
// (source.system, id), and enforces the contract: it fails the test if it is
// handed an event that event.Validate refuses.
type fakeLedger struct {
	t        testing.TB
	signer   note.Signer
	verifier note.Verifier

	mu       sync.Mutex
	tree     *testonly.Tree
	leaves   [][]byte
	keys     map[string]uint64
	byHash   map[[32]byte]uint64
	subjects map[string][]uint64
	cps      map[uint64]ledger.Checkpoint
	latest   ledger.Checkpoint
	clock    time.Time

	// Faults.
	failAppend error         // returned by every Append while set
	onAppend   func(n int)   // called before an Append is integrated
	gate       chan struct{} // when set, Append waits on it
	appends    int           // Append calls that stored
}

func newFakeLedger(t testing.TB) *fakeLedger {
	t.Helper()
	signer, verifier := testNoteKeys(t, "grantline.test/log")
	l := &fakeLedger{
		t: t, signer: signer, verifier: verifier,
		tree: testonly.New(rfc6962.DefaultHasher), keys: map[string]uint64{},
		byHash: map[[32]byte]uint64{}, subjects: map[string][]uint64{}, cps: map[uint64]ledger.Checkpoint{},
		clock: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC),
	}
	l.publishLocked()
	return l
}

func (l *fakeLedger) publishLocked() {
	var root [32]byte
	copy(root[:], l.tree.Hash())
	size := l.tree.Size()
	text := fmt.Sprintf("grantline.test/log\n%d\n%s\n", size, base64.StdEncoding.EncodeToString(root[:]))
	signed, err := note.Sign(&note.Note{Text: text}, l.signer)
	if err != nil {
		l.t.Errorf("signing checkpoint: %v", err)
	}
	cp := ledger.Checkpoint{Size: size, Root: root, Note: signed}
	l.cps[size] = cp
	l.latest = cp
}

func (l *fakeLedger) Append(ctx context.Context, evs []*pb.Event) ([]ledger.AppendResult, uint64, error) {
	for i, ev := range evs {
		if err := event.Validate(ev, time.Now()); err != nil {
			l.t.Errorf("contract: ledger handed an invalid event %d: %v", i, err)
		}
	}
	if l.gate != nil {
		select {
		case <-l.gate:
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failAppend != nil {
		return nil, 0, l.failAppend
	}
	if l.onAppend != nil {
		l.onAppend(len(evs))
	}
	out := make([]ledger.AppendResult, len(evs))
	for i, ev := range evs {
		key := ev.GetSource().GetSystem() + "\x00" + ev.GetId()
		if idx, ok := l.keys[key]; ok {
			stored := new(pb.Entry)
			if err := proto.Unmarshal(l.leaves[idx], stored); err != nil {
				return nil, 0, err
			}
			same := proto.Equal(stored.GetEvent(), ev)
			out[i] = ledger.AppendResult{Index: idx, LeafHash: LeafHashOf(l.leaves[idx]), Duplicate: same, Conflict: !same}
			continue
		}
		l.clock = l.clock.Add(time.Millisecond)
		leaf, err := event.EncodeLeaf(ev, l.clock)
		if err != nil {
			return nil, 0, err
		}
		idx := uint64(len(l.leaves))
		l.leaves = append(l.leaves, leaf)
		l.tree.AppendData(leaf)
		h := LeafHashOf(leaf)
		l.keys[key] = idx
		l.byHash[h] = idx
		sub := ev.GetSubject().GetId()
		l.subjects[sub] = append(l.subjects[sub], idx)
		out[i] = ledger.AppendResult{Index: idx, LeafHash: h}
	}
	l.appends++
	l.publishLocked()
	return out, l.tree.Size(), nil
}

// LeafHashOf is the RFC 6962 leaf hash.
func LeafHashOf(leaf []byte) (h [32]byte) {
	copy(h[:], rfc6962.DefaultHasher.HashLeaf(leaf))
	return h
}

func (l *fakeLedger) Latest() ledger.Checkpoint {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.latest
}

func (l *fakeLedger) CheckpointAt(_ context.Context, size uint64) (ledger.Checkpoint, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	cp, ok := l.cps[size]
	if !ok {
		return ledger.Checkpoint{}, fmt.Errorf("checkpoint %d: %w", size, ledger.ErrNotFound)
	}
	return cp, nil
}

func (l *fakeLedger) Entries(_ context.Context, start, count uint64) ([]ledger.Entry, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := uint64(len(l.leaves))
	if start >= n {
		return nil, fmt.Errorf("entries from %d: %w", start, ledger.ErrOutOfRange)
	}
	end := min(n, start+count)
	var out []ledger.Entry
	for i := start; i < end; i++ {
		out = append(out, ledger.Entry{Index: i, Leaf: l.leaves[i]})
	}
	return out, nil
}

func (l *fakeLedger) InclusionProof(_ context.Context, index, size uint64) ([][]byte, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if index >= size || size > l.tree.Size() {
		return nil, fmt.Errorf("inclusion %d in %d: %w", index, size, ledger.ErrOutOfRange)
	}
	return l.tree.InclusionProof(index, size)
}

func (l *fakeLedger) LookupLeafHash(_ context.Context, hash []byte) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var h [32]byte
	copy(h[:], hash)
	idx, ok := l.byHash[h]
	if !ok {
		return 0, fmt.Errorf("leaf hash %x: %w", hash, ledger.ErrNotFound)
	}
	return idx, nil
}

func (l *fakeLedger) ConsistencyProof(_ context.Context, from, to uint64) ([][]byte, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if from > to || to > l.tree.Size() {
		return nil, fmt.Errorf("consistency %d..%d: %w", from, to, ledger.ErrOutOfRange)
	}
	return l.tree.ConsistencyProof(from, to)
}

func (l *fakeLedger) SubjectEntries(_ context.Context, subject string, size, start uint64, limit int) ([]ledger.Entry, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []ledger.Entry
	for _, idx := range l.subjects[subject] {
		if idx >= start && idx < size && len(out) < limit {
			out = append(out, ledger.Entry{Index: idx, Leaf: l.leaves[idx]})
		}
	}
	return out, nil
}

func (l *fakeLedger) ForEachSubject(ctx context.Context, size uint64, fn func(string) error) error {
	l.mu.Lock()
	var subs []string
	for s, idxs := range l.subjects {
		if idxs[0] < size {
			subs = append(subs, s)
		}
	}
	l.mu.Unlock()
	sort.Strings(subs)
	for _, s := range subs {
		if err := fn(s); err != nil {
			return err
		}
	}
	return nil
}

// subtreeHash is the hash of the perfect subtree over leaves [lo, hi).
func (l *fakeLedger) subtreeHash(lo, hi uint64) []byte {
	if hi-lo == 1 {
		return l.tree.LeafHash(lo)
	}
	mid := lo + (hi-lo)/2
	return rfc6962.DefaultHasher.HashChildren(l.subtreeHash(lo, mid), l.subtreeHash(mid, hi))
}

func (l *fakeLedger) ReadTile(_ context.Context, level, index uint64, width int) ([]byte, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	span := uint64(1) << (8 * level)
	first := index * 256
	if (first+uint64(width))*span > l.tree.Size() {
		return nil, fmt.Errorf("tile %d/%d.p/%d: %w", level, index, width, ledger.ErrNotFound)
	}
	var out []byte
	for i := first; i < first+uint64(width); i++ {
		out = append(out, l.subtreeHash(i*span, (i+1)*span)...)
	}
	return out, nil
}

func (l *fakeLedger) ReadEntryBundle(_ context.Context, index uint64, width int) ([]byte, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	first := index * 256
	if first+uint64(width) > uint64(len(l.leaves)) {
		return nil, fmt.Errorf("bundle %d.p/%d: %w", index, width, ledger.ErrNotFound)
	}
	var out []byte
	for _, leaf := range l.leaves[first : first+uint64(width)] {
		out = binary.BigEndian.AppendUint16(out, uint16(len(leaf)))
		out = append(out, leaf...)
	}
	return out, nil
}

// size returns the number of stored leaves.
func (l *fakeLedger) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.leaves)
}

// checkInvariants re-checks the whole fake: every key stored once, every leaf
// hash indexed, the latest checkpoint's root matching a recomputation.
func (l *fakeLedger) checkInvariants(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	seen := map[string]bool{}
	re := testonly.New(rfc6962.DefaultHasher)
	for i, leaf := range l.leaves {
		var e pb.Entry
		if err := proto.Unmarshal(leaf, &e); err != nil {
			t.Fatalf("leaf %d: %v", i, err)
		}
		key := e.GetEvent().GetSource().GetSystem() + "\x00" + e.GetEvent().GetId()
		if seen[key] {
			t.Errorf("leaf %d: (source.system, id) %q stored twice", i, key)
		}
		seen[key] = true
		re.AppendData(leaf)
	}
	if !slices.Equal(re.Hash(), l.latest.Root[:]) || l.latest.Size != uint64(len(l.leaves)) {
		t.Errorf("latest checkpoint (size %d) does not match the %d stored leaves", l.latest.Size, len(l.leaves))
	}
}

// fakeAuth is an in-memory Authenticator; revoke takes effect at once.
type fakeAuth struct {
	mu     sync.Mutex
	tokens map[string]auth.Principal
}

func (a *fakeAuth) Authenticate(tok string) (auth.Principal, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p, ok := a.tokens[tok]
	if !ok {
		return auth.Principal{}, errors.New("unknown token")
	}
	return p, nil
}

func (a *fakeAuth) revoke(tok string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.tokens, tok)
}
