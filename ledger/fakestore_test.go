package ledger

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
)

// Named faults of fakeStore, injected at a given operation number.
type fault int

const (
	noFault              fault = iota
	failOp                     // the operation fails; a commit writes nothing
	failCommitButPersist       // a commit is written, then reports failure (crash after write)
)

var errInjected = errors.New("injected fault")

// errTooBig is the fake's refusal of a batch beyond its Limits.
var errTooBig = errors.New("batch beyond the store's limits")

// fakeStore is an in-memory Store that enforces the Store contract and the
// ledger's use of it, and injects faults. Its map is what survives a crash:
// commits are atomic by construction.
type fakeStore struct {
	mu     sync.Mutex
	data   map[string][]byte
	keys   []string // sorted
	closed bool

	ops     int   // operations so far (Get, Scan, Commit)
	faultAt int   // operation number (1-based) that faults; 0 none
	kind    fault // what happens at faultAt
	dead    bool  // after a fault, every later operation fails (a crashed process)
	gate    chan struct{}
	entered chan struct{}

	maxCount int
	maxBytes int64

	// history, when not nil, receives the store's state after each
	// commit: a store that need not be durable (a separate index store)
	// may come back from a crash as any of them.
	history []*fakeStore
	drops   int // DropAll calls
	// rewriteSame lets index entries be written again with the same value:
	// an index store a crash left with part of a commit above its
	// watermark (see partialLast), whose entries Open writes again.
	rewriteSame bool
	// atomicCommit marks a history entry made by CommitAtomic.
	atomicCommit bool

	violations []string
}

// lazy returns a fake for a store that need not be durable: it records its
// state after every commit (see history).
func lazy() *fakeStore {
	s := newFakeStore()
	s.history = []*fakeStore{}
	return s
}

// DropAll empties the store, as badgerstore's does.
func (s *fakeStore) DropAll() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.op(); err != nil {
		return err
	}
	clear(s.data)
	s.keys = nil
	s.drops++
	return nil
}

func newFakeStore() *fakeStore {
	return &fakeStore{data: map[string][]byte{}, maxCount: 1 << 20, maxBytes: 1 << 30}
}

// clone is the durable state of s, as a new store (a restart after a crash).
func (s *fakeStore) clone() *fakeStore {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cloneLocked()
}

func (s *fakeStore) cloneLocked() *fakeStore {
	c := newFakeStore()
	for k, v := range s.data {
		c.data[k] = v
	}
	c.keys = slices.Clone(s.keys)
	c.maxCount, c.maxBytes = s.maxCount, s.maxBytes
	return c
}

func (s *fakeStore) violate(format string, args ...any) {
	s.violations = append(s.violations, fmt.Sprintf(format, args...))
}

// op counts an operation and reports whether it faults.
func (s *fakeStore) op() (fault, error) {
	if s.closed {
		s.violate("operation after Close")
		return noFault, errors.New("store closed")
	}
	if s.dead {
		return noFault, fmt.Errorf("store crashed: %w", errInjected)
	}
	s.ops++
	if s.faultAt != 0 && s.ops == s.faultAt {
		s.dead = true
		return s.kind, nil
	}
	return noFault, nil
}

func (s *fakeStore) Get(keys ...[]byte) ([][]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f, err := s.op()
	if err != nil {
		return nil, err
	}
	if f != noFault {
		return nil, fmt.Errorf("get: %w", errInjected)
	}
	out := make([][]byte, len(keys))
	for i, k := range keys {
		if v, ok := s.data[string(k)]; ok {
			out[i] = append([]byte{}, v...)
		}
	}
	return out, nil
}

func (s *fakeStore) Scan(start, end []byte, fn func(k, v []byte) error) error {
	s.mu.Lock()
	f, err := s.op()
	if err != nil {
		s.mu.Unlock()
		return err
	}
	if f != noFault {
		s.mu.Unlock()
		return fmt.Errorf("scan: %w", errInjected)
	}
	i := sort.SearchStrings(s.keys, string(start))
	var ks []string
	for ; i < len(s.keys) && (end == nil || s.keys[i] < string(end)); i++ {
		ks = append(ks, s.keys[i])
	}
	vs := make([][]byte, len(ks))
	for j, k := range ks {
		vs[j] = s.data[k]
	}
	s.mu.Unlock()
	for j, k := range ks {
		if err := fn([]byte(k), vs[j]); err != nil {
			return err
		}
	}
	return nil
}

func (s *fakeStore) Commit(keys, values [][]byte) error { return s.commit(keys, values, false) }

// CommitAtomic is Commit, recorded in history as a commit a crash cannot
// tear (see partialLast), as badgerstore's CommitAtomic on a NoSync store.
func (s *fakeStore) CommitAtomic(keys, values [][]byte) error { return s.commit(keys, values, true) }

// TearableCommits reports what the fake stands for: a store that need not
// be durable (lazy), whose commits a crash may tear, as badgerstore's with
// NoSync.
func (s *fakeStore) TearableCommits() bool { return s.history != nil }

func (s *fakeStore) commit(keys, values [][]byte, atomic bool) error {
	if s.gate != nil {
		s.entered <- struct{}{}
		<-s.gate
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	f, err := s.op()
	if err != nil {
		return err
	}
	if len(keys) != len(values) {
		s.violate("commit with %d keys and %d values", len(keys), len(values))
	}
	var bytesEst int64
	for i, k := range keys {
		bytesEst += entrySize(len(k), len(values[i]))
	}
	if len(keys) >= s.maxCount || bytesEst >= s.maxBytes {
		s.violate("commit of %d entries, %d bytes exceeds limits %d, %d", len(keys), bytesEst, s.maxCount, s.maxBytes)
		return fmt.Errorf("commit: %w", errTooBig)
	}
	if f == failOp {
		return fmt.Errorf("commit: %w", errInjected)
	}
	seen := make(map[string]bool, len(keys))
	var added []string
	for i, k := range keys {
		ks, v := string(k), values[i]
		if seen[ks] {
			s.violate("key %q written twice in one commit", ks)
		}
		seen[ks] = true
		old, exists := s.data[ks]
		switch ks[0] {
		case kHash, kDedupe, kSubject:
			if exists && !(s.rewriteSame && bytes.Equal(old, v)) {
				s.violate("immutable key %q was modified", ks)
			}
		case kLeaf, kCheckpoint:
			if exists {
				s.violate("immutable key %q was modified", ks)
			}
		case kTile:
			if exists && !bytes.HasPrefix(v, old) || len(v) == 0 || len(v)%32 != 0 || len(v) > 8192 {
				s.violate("tile key %q: %d bytes replace %d bytes; tiles only grow, in 32-byte hashes, up to 256", ks, len(v), len(old))
			}
		case kMapNode, kMapNodeC: // versions: rewritten only with the same node
			if exists && !bytes.Equal(v, old) {
				s.violate("subject map node version %q was modified", ks)
			}
		case kMeta, kSubjState:
		default:
			s.violate("unknown key kind %q", ks)
		}
		s.data[ks] = append([]byte{}, v...)
		if !exists {
			added = append(added, ks)
		}
	}
	sort.Strings(added)
	merged := make([]string, 0, len(s.keys)+len(added))
	i, j := 0, 0
	for i < len(s.keys) || j < len(added) {
		if j == len(added) || i < len(s.keys) && s.keys[i] < added[j] {
			merged = append(merged, s.keys[i])
			i++
		} else {
			merged = append(merged, added[j])
			j++
		}
	}
	s.keys = merged
	if s.history != nil {
		snap := s.cloneLocked()
		snap.atomicCommit = atomic
		s.history = append(s.history, snap)
	}
	if f == failCommitButPersist {
		return fmt.Errorf("commit (written): %w", errInjected)
	}
	return nil
}

func (s *fakeStore) Limits() (int, int64) { return s.maxCount, s.maxBytes }

func (s *fakeStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		s.violate("closed twice")
	}
	s.closed = true
	return nil
}

// corrupt replaces (or with nil deletes) a key behind the ledger's back.
func (s *fakeStore) corrupt(key []byte, v []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := string(key)
	if v == nil {
		delete(s.data, k)
		s.keys = slices.DeleteFunc(s.keys, func(x string) bool { return x == k })
		return
	}
	if _, ok := s.data[k]; !ok {
		i, _ := slices.BinarySearch(s.keys, k)
		s.keys = slices.Insert(s.keys, i, k) // a planted key: scans see it too
	}
	s.data[k] = v
}
