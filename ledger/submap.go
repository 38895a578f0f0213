package ledger

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"

	"filippo.io/torchwood/prefix"
	"github.com/transparency-dev/merkle/compact"

	"github.com/grantline/grantline/ledger/event"
)

// The subject map (docs/completeness.md): a Merkle prefix tree
// (filippo.io/torchwood/prefix, SHA-256) from SHA-256(subject) to
// SubjectValue(count, last, chain) of the subject's entries, committed into
// the log by a map leaf as the last leaf of every checkpointed batch, so
// that a package can prove a subject's chain complete at a checkpoint
// without the rest of the log, while checkpoints stay plain C2SP.
//
// Store keys (ledger/store.go):
//
//	p be32(bits) label[32] ^be64(size) -> node: the prefix-tree node as of
//	  the checkpoint of that size (versions are kept, newest first in key
//	  order, so a proof can be made at any checkpoint)
//	v SHA-256(subject) -> be64(count) be64(last) chain[32]: the newest state
//	msubjectmap -> 0x01: the log was created with a subject map
const (
	kMapNode   = 'p'
	kSubjState = 'v'
)

var keySubjectMap = []byte("msubjectmap")

// mapHash is the prefix tree's hash function.
func mapHash(b []byte) [32]byte { return sha256.Sum256(b) }

// SubjectLabel is the subject map's key of a subject: SHA-256(subject).
func SubjectLabel(subject string) [32]byte { return sha256.Sum256([]byte(subject)) }

// SubjectValue is the subject map's value of a subject with count entries,
// the newest at index last, whose leaf hashes chain to chain (ChainNext):
// SHA-256("grantline subject v1" 0x00 be64(count) be64(last) chain).
func SubjectValue(count, last uint64, chain [32]byte) [32]byte {
	b := make([]byte, 0, 21+16+32)
	b = append(b, "grantline subject v1\x00"...)
	b = be64(be64(b, count), last)
	return sha256.Sum256(append(b, chain[:]...))
}

// ChainNext extends a subject's chain hash by the leaf hash of its next
// entry: SHA-256(chain || leafHash). The chain of no entries is 32 zero
// bytes.
func ChainNext(chain, leafHash [32]byte) [32]byte {
	var b [64]byte
	copy(b[:32], chain[:])
	copy(b[32:], leafHash[:])
	return sha256.Sum256(b[:])
}

// MapProofNode is one sibling of a subject-map proof: a prefix-tree node's
// label (its first Bits bits of Label) and hash.
type MapProofNode struct {
	Label [32]byte
	Bits  uint32
	Hash  [32]byte
}

// SubjectProof proves a subject's chain summary in the subject map of the
// checkpoint of size Size: the map leaf at MapIndex = Size-1 holds Root, and
// Proof is a membership proof of SubjectValue(Count, Last, Chain) under
// SubjectLabel(Subject) when Count > 0, or a non-membership proof when the
// subject has no entry below MapIndex. At Size 0 there is no map leaf: the
// map is empty, Count is 0, and Proof is empty (complete vacuously).
type SubjectProof struct {
	Subject  string
	Size     uint64
	MapIndex uint64
	Root     [32]byte
	Count    uint64
	Last     uint64
	Chain    [32]byte
	Proof    []MapProofNode
}

// ErrMapProof is the class of every error of VerifySubjectProof.
var ErrMapProof = errors.New("subject map proof does not verify")

// VerifySubjectProof checks p against root, the subject map root a verified
// map leaf holds: a membership proof of the value of (Count, Last, Chain)
// when Count > 0, else a non-membership proof. It does not check Chain
// against entries: the caller recomputes Chain (ChainNext) from the
// subject's leaves it holds, and Count and Last from their indices.
func VerifySubjectProof(p SubjectProof, root [32]byte) error {
	proof := make([]prefix.ProofNode, len(p.Proof))
	for i, n := range p.Proof {
		l, err := prefix.NewLabel(n.Bits, n.Label[:]) // bits 0: the root's or the empty node's label
		if err != nil {
			return fmt.Errorf("%w: node %d of the proof of subject %q: label: %w", ErrMapProof, i, p.Subject, err)
		}
		proof[i] = prefix.ProofNode{Label: l, Hash: n.Hash}
	}
	label := SubjectLabel(p.Subject)
	var err error
	if p.Count > 0 {
		err = prefix.VerifyMembershipProof(mapHash, label, SubjectValue(p.Count, p.Last, p.Chain), proof, root)
	} else {
		if p.Last != 0 || p.Chain != ([32]byte{}) {
			return fmt.Errorf("%w: subject %q has count 0 but last %d or a chain that is not all zero", ErrMapProof, p.Subject, p.Last)
		}
		err = prefix.VerifyNonMembershipProof(mapHash, label, proof, root)
	}
	if err != nil {
		return fmt.Errorf("%w: subject %q (count %d): %w", ErrMapProof, p.Subject, p.Count, err)
	}
	return nil
}

// subjectState is a subject's chain summary.
type subjectState struct {
	count, last uint64
	chain       [32]byte
}

func (s subjectState) value() [32]byte { return SubjectValue(s.count, s.last, s.chain) }

func (s subjectState) encode() []byte {
	b := make([]byte, 0, 48)
	b = be64(be64(b, s.count), s.last)
	return append(b, s.chain[:]...)
}

func decodeSubjectState(v []byte) (subjectState, error) {
	if len(v) != 48 {
		return subjectState{}, fmt.Errorf("%w: subject state record has %d bytes, want 48; run grantline fsck", ErrCorrupt, len(v))
	}
	return subjectState{binary.BigEndian.Uint64(v), binary.BigEndian.Uint64(v[8:]), [32]byte(v[16:])}, nil
}

func subjStateKey(label [32]byte) []byte { return append([]byte{kSubjState}, label[:]...) }

// mapNodePrefix is the key prefix of every version of the node labelled l.
func mapNodePrefix(l prefix.Label) []byte {
	b := make([]byte, 0, 1+4+32+8)
	b = append(b, kMapNode)
	b = binary.BigEndian.AppendUint32(b, l.BitLen())
	return append(b, l.Bytes()...)
}

// mapNodeKey is the key of the version of node l as of checkpoint size.
func mapNodeKey(l prefix.Label, size uint64) []byte { return be64(mapNodePrefix(l), ^size) }

func encodeLabel(b []byte, l prefix.Label) []byte {
	b = binary.BigEndian.AppendUint32(b, l.BitLen())
	return append(b, l.Bytes()...)
}

func decodeLabel(b []byte) (prefix.Label, error) {
	return prefix.NewLabel(binary.BigEndian.Uint32(b), b[4:36]) // bits 0: the root, or the empty node
}

// encodeNode is a node's stored value: label, left, right (36 bytes each)
// and hash.
func encodeNode(n *prefix.Node) []byte {
	b := make([]byte, 0, 3*36+32)
	b = encodeLabel(encodeLabel(encodeLabel(b, n.Label), n.Left), n.Right)
	return append(b, n.Hash[:]...)
}

func decodeNode(v []byte) (*prefix.Node, error) {
	if len(v) != 3*36+32 {
		return nil, fmt.Errorf("%w: subject map node has %d bytes, want %d; run grantline fsck", ErrCorrupt, len(v), 3*36+32)
	}
	var n prefix.Node
	var err error
	for i, l := range []*prefix.Label{&n.Label, &n.Left, &n.Right} {
		if *l, err = decodeLabel(v[i*36:]); err != nil {
			return nil, fmt.Errorf("%w: subject map node label: %w; run grantline fsck", ErrCorrupt, err)
		}
	}
	n.Hash = [32]byte(v[108:])
	return &n, nil
}

// initialNodes are the root and empty node of an empty prefix tree, which
// are never stored: a tree without a stored root is empty.
var initialNodes = func() map[prefix.Label]*prefix.Node {
	s := prefix.NewMemoryStorage()
	if err := prefix.InitStorage(context.Background(), mapHash, s); err != nil {
		panic(err)
	}
	out := make(map[prefix.Label]*prefix.Node, 2)
	for _, l := range []prefix.Label{prefix.RootLabel, prefix.EmptyNodeLabel} {
		n, err := s.Load(context.Background(), l)
		if err != nil {
			panic(err)
		}
		out[l] = n
	}
	return out
}()

// versionedNodes reads the prefix tree as of the checkpoint of size from
// the store: a prefix.Storage for Lookup. Store fails.
type versionedNodes struct {
	st   Store
	size uint64
}

func (s versionedNodes) Load(ctx context.Context, l prefix.Label) (*prefix.Node, error) {
	if l == prefix.EmptyNodeLabel {
		return initialNodes[l], nil
	}
	p := mapNodePrefix(l)
	var n *prefix.Node
	err := s.st.Scan(be64(p, ^s.size), prefixEnd(p), func(k, v []byte) error {
		var err error
		n, err = decodeNode(v)
		if err == nil && n.Label != l {
			err = fmt.Errorf("%w: subject map node stored under %s holds %s; run grantline fsck", ErrCorrupt, l, n.Label)
		}
		if err != nil {
			return err
		}
		return errStop
	})
	if err != nil && err != errStop {
		if isLedgerErr(err) {
			return nil, err
		}
		return nil, storageErr(err, "reading the subject map")
	}
	if n == nil {
		if l == prefix.RootLabel {
			return initialNodes[l], nil
		}
		return nil, prefix.ErrNodeNotFound
	}
	return n, nil
}

func (s versionedNodes) Store(context.Context, ...*prefix.Node) error {
	return errors.New("internal error: the subject map is read-only here")
}

// subjectMap is the sequencer's side of the subject map: the events
// integrated since the last seal and the newest nodes and subject states
// (in memory once read or written, so that batches still being committed
// are seen, and each seal reads the store only for what it never saw).
type subjectMap struct {
	st      Store
	tree    *prefix.Tree
	nodes   map[prefix.Label]*prefix.Node
	states  map[[32]byte]subjectState
	dirty   map[prefix.Label]*prefix.Node // nodes changed by the seal being built
	pending []mapItem                     // fresh events since the last seal, in index order
}

// mapItem is one event waiting for the next map leaf.
type mapItem struct {
	label [32]byte
	index uint64
	hash  [32]byte
}

func newSubjectMap(st Store) *subjectMap {
	m := &subjectMap{
		st:     st,
		nodes:  make(map[prefix.Label]*prefix.Node),
		states: make(map[[32]byte]subjectState),
		dirty:  make(map[prefix.Label]*prefix.Node),
	}
	m.tree = prefix.NewTree(mapHash, m)
	return m
}

// Load is prefix.Storage's: the newest version of a node.
func (m *subjectMap) Load(ctx context.Context, l prefix.Label) (*prefix.Node, error) {
	if n, ok := m.nodes[l]; ok {
		return n, nil
	}
	n, err := versionedNodes{m.st, math.MaxUint64}.Load(ctx, l)
	if err != nil {
		return nil, err
	}
	m.nodes[l] = n
	return n, nil
}

// Store is prefix.Storage's: nodes changed by the seal being built.
func (m *subjectMap) Store(ctx context.Context, ns ...*prefix.Node) error {
	for _, n := range ns {
		m.nodes[n.Label] = n
		m.dirty[n.Label] = n
	}
	return nil
}

// add notes a fresh event for the next map leaf.
func (m *subjectMap) add(subject string, index uint64, hash [32]byte) {
	if subject != "" {
		m.pending = append(m.pending, mapItem{SubjectLabel(subject), index, hash})
	}
}

// appendMapLeaf is the subject map's part of the seal stage: it folds the
// events integrated since the last seal into their subjects' states and
// the prefix tree, writes the changed states and node versions (as of the
// checkpoint about to be signed) to w, and appends the map leaf holding the
// new root as the tree's next leaf, with its leaf-hash index entry in ix
// (w itself, unless the indexes live in a separate store). It returns the
// tree size after it. An error leaves the tree in an unknown state: the log
// must stop appending.
func (l *Log) appendMapLeaf(w, ix *writes) (uint64, error) {
	m := l.seq.smap
	idx := l.seq.rng.End()
	cpSize := idx + 1
	// The states of the subjects changed, read once for those never seen.
	var miss [][]byte
	var missLabels [][32]byte
	seen := make(map[[32]byte]bool)
	for _, it := range m.pending {
		if _, ok := m.states[it.label]; !ok && !seen[it.label] {
			seen[it.label] = true
			miss, missLabels = append(miss, subjStateKey(it.label)), append(missLabels, it.label)
		}
	}
	if len(miss) > 0 {
		vals, err := l.st.Get(miss...)
		if err != nil {
			return 0, fmt.Errorf("reading subject states: %w", err)
		}
		for j, v := range vals {
			s := subjectState{}
			if v != nil {
				if s, err = decodeSubjectState(v); err != nil {
					return 0, err
				}
			}
			m.states[missLabels[j]] = s
		}
	}
	changed := make([][32]byte, 0, len(m.pending))
	inChanged := make(map[[32]byte]bool, len(m.pending))
	for _, it := range m.pending {
		s := m.states[it.label]
		if s.count > 0 && s.last >= it.index {
			return 0, fmt.Errorf("internal error: subject map: event %d comes after the subject's last entry %d", it.index, s.last)
		}
		if !inChanged[it.label] {
			inChanged[it.label] = true
			changed = append(changed, it.label)
		}
		s.count++
		s.last = it.index
		s.chain = ChainNext(s.chain, it.hash)
		m.states[it.label] = s
	}
	ctx := context.Background()
	for _, lb := range changed {
		s := m.states[lb]
		w.put(subjStateKey(lb), s.encode())
		if err := m.tree.Insert(ctx, lb, s.value()); err != nil {
			return 0, fmt.Errorf("updating the subject map: %w", err)
		}
	}
	for lb, n := range m.dirty {
		w.put(mapNodeKey(lb, cpSize), encodeNode(n))
	}
	clear(m.dirty)
	m.pending = m.pending[:0]
	root, err := m.tree.RootHash(ctx)
	if err != nil {
		return 0, fmt.Errorf("reading the subject map root: %w", err)
	}
	leaf := event.EncodeMapLeaf(root, idx)
	h := LeafHash(leaf)
	tw := &l.seq.tiles
	if err := l.seq.rng.Append(h[:], func(id compact.NodeID, hh []byte) { tw.visit(id, hh, w) }); err != nil {
		return 0, fmt.Errorf("extending the tree with the map leaf at %d: %w", idx, err)
	}
	if tw.err != nil {
		return 0, tw.err
	}
	w.put(leafKey(idx), leaf)
	ix.put(hashKey(h[:]), be64(nil, idx))
	return cpSize, nil
}

// readMapMode reads whether the log in st has a subject map.
func readMapMode(st Store) (bool, error) {
	vals, err := st.Get(keySubjectMap)
	if err != nil {
		return false, storageErr(err, "reading the subject map mode")
	}
	switch {
	case vals[0] == nil:
		return false, nil
	case bytes.Equal(vals[0], []byte{1}):
		return true, nil
	}
	return false, fmt.Errorf("%w: the subject map mode record holds %x, want 01; run grantline fsck", ErrCorrupt, vals[0])
}

// HasSubjectMap reports whether the log has a subject map: fixed when the
// log was created (Options.SubjectMap) and recorded in its store.
func (l *Log) HasSubjectMap() bool { return l.smapOn }

// ErrNoSubjectMap is returned by SubjectProof for a log created without a
// subject map (Options.SubjectMap).
var ErrNoSubjectMap = errors.New("the log has no subject map: it was created without one (grantline serve --subject-map on a new data directory)")

// SubjectProof returns the proof of subject's chain summary in the subject
// map at the published checkpoint of size: the map leaf at size-1, the
// subject's count, last index and chain below it (recomputed from the
// subject index and its leaves, and checked against the map), and the
// membership or non-membership proof. ErrNoSubjectMap for a log without a
// subject map; ErrNotFound if no checkpoint was published at size;
// ErrCorrupt if the stored map disagrees with the leaves.
func (l *Log) SubjectProof(ctx context.Context, subject string, size uint64) (SubjectProof, error) {
	if !l.smapOn {
		return SubjectProof{}, ErrNoSubjectMap
	}
	if _, err := l.CheckpointAt(ctx, size); err != nil {
		return SubjectProof{}, err
	}
	p := SubjectProof{Subject: subject, Size: size}
	if size == 0 {
		return p, nil
	}
	p.MapIndex = size - 1
	es, err := l.checkedEntries(size-1, size)
	if err != nil {
		return SubjectProof{}, err
	}
	root, covers, err := event.DecodeMapLeaf(es[0].Leaf)
	if err != nil || covers != size-1 {
		return SubjectProof{}, fmt.Errorf("%w: leaf %d, the last of checkpoint %d, is not its map leaf (%v, covers %d); run grantline fsck", ErrCorrupt, size-1, size, err, covers)
	}
	p.Root = root
	var start uint64
	for {
		es, err := l.SubjectEntries(ctx, subject, size-1, start, 4096)
		if err != nil {
			return SubjectProof{}, err
		}
		for _, e := range es {
			p.Count++
			p.Last = e.Index
			p.Chain = ChainNext(p.Chain, LeafHash(e.Leaf))
		}
		if len(es) < 4096 {
			break
		}
		start = es[len(es)-1].Index + 1
	}
	_, nodes, err := prefix.NewTree(mapHash, versionedNodes{l.st, size}).Lookup(ctx, SubjectLabel(subject))
	if err != nil {
		if isLedgerErr(err) {
			return SubjectProof{}, err
		}
		return SubjectProof{}, fmt.Errorf("%w: looking subject %q up in the subject map at %d: %w; run grantline fsck", ErrCorrupt, subject, size, err)
	}
	for _, n := range nodes {
		mp := MapProofNode{Bits: n.Label.BitLen(), Hash: n.Hash}
		copy(mp.Label[:], n.Label.Bytes())
		p.Proof = append(p.Proof, mp)
	}
	if err := VerifySubjectProof(p, root); err != nil {
		return SubjectProof{}, fmt.Errorf("%w: the stored subject map disagrees with subject %q's %d entries at checkpoint %d: %w; run grantline fsck", ErrCorrupt, subject, p.Count, size, err)
	}
	return p, nil
}

// mapBudget bounds what one event adds to a sealing commit through the
// subject map, for Log.fit: its subject's state and the prefix-tree nodes
// on its path, at most about log2(subjects)+2 deep, and subjects never
// outnumber leaves (shared nodes near the root make the real total lower).
func (l *Log) mapBudget() (count, bytes int64) {
	if l.seq.smap == nil {
		return 0, 0
	}
	nodes := int64(bits.Len64(l.seq.rng.End())) + 3
	return 1 + nodes, entrySize(33, 48) + nodes*entrySize(1+36+8, 3*36+32)
}
