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
	"slices"

	"filippo.io/torchwood/prefix"
	"github.com/transparency-dev/merkle/compact"

	"github.com/grantline/grantline/ledger/event"
	"github.com/grantline/grantline/ledger/runindex"
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
//	q be16(bits) label[(bits+7)/8] ^be64(size) -> node: the prefix-tree
//	  node as of the checkpoint of that size (versions are kept, newest
//	  first in key order, so a proof can be made at any checkpoint); see
//	  kMapNodeC (logs made before it: p be32(bits) label[32] ^be64(size),
//	  mapWide)
//	v SHA-256(subject) -> be64(count) be64(last) chain[32]: the newest state
//	msubjectmap -> the log was created with a subject map whose nodes
//	  are stored as mapWide (0x01) or mapCompact (0x02)
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
	var b [21 + 16 + 32]byte
	copy(b[:], "grantline subject v1\x00")
	binary.BigEndian.PutUint64(b[21:], count)
	binary.BigEndian.PutUint64(b[29:], last)
	copy(b[37:], chain[:])
	return sha256.Sum256(b[:])
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

func (s subjectState) encode() []byte { return s.appendTo(make([]byte, 0, 48)) }

// appendTo appends the state's 48-byte record to b.
func (s subjectState) appendTo(b []byte) []byte {
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

// readStates reads the newest stored state of each subject labelled in
// labels: nil for one without. mapWide keeps them in v records; mapCompact
// in the newest version of the subject's leaf.
func readStates(st Store, f mapFormat, labels [][32]byte) ([][]byte, error) {
	if f != mapCompact {
		keys := make([][]byte, len(labels))
		for i, lb := range labels {
			keys[i] = subjStateKey(lb)
		}
		vals, err := st.Get(keys...)
		if err != nil {
			return nil, storageErr(err, "reading subject states")
		}
		return vals, nil
	}
	out := make([][]byte, len(labels))
	for i, lb := range labels {
		p := mapNodePrefix(leafLabel(lb), f)
		err := st.Scan(p, prefixEnd(p), func(k, v []byte) error {
			out[i] = bytes.Clone(v)
			return errStop
		})
		if err != nil && err != errStop {
			return nil, storageErr(err, "reading subject states")
		}
	}
	return out, nil
}

// mapFormat is how a log stores its map's nodes: fixed when the log is
// created and recorded in its msubjectmap record (docs/completeness.md).
type mapFormat byte

const (
	mapNone    mapFormat = 0 // no subject map
	mapWide    mapFormat = 1 // p keys, 140-byte nodes: logs made before mapCompact
	mapCompact mapFormat = 2 // q keys, labels cut to their bits: new logs
)

// kMapNodeC is the key kind of mapCompact nodes:
//
//	q be16(bits) label[(bits+7)/8] ^be64(size) -> for an internal node
//	  (bits < 256) hash[32] and its left and right child labels, each
//	  be16(bits) label[(bits+7)/8], or be16(0xffff) for the root's empty
//	  child; for a leaf, the subject's state as of that checkpoint,
//	  be64(count) be64(last) chain[32], from which its hash follows (so a
//	  mapCompact log has no v records: its newest state is the newest
//	  version of its leaf)
const kMapNodeC = 'q'

// mapNodePrefix is the key prefix of every version of the node labelled l.
func mapNodePrefix(l prefix.Label, f mapFormat) []byte {
	return appendMapNodePrefix(make([]byte, 0, 1+4+32+8), l, f)
}

// appendMapNodePrefix appends mapNodePrefix(l, f) to b.
func appendMapNodePrefix(b []byte, l prefix.Label, f mapFormat) []byte {
	if f == mapCompact {
		b = append(b, kMapNodeC)
		b = binary.BigEndian.AppendUint16(b, uint16(l.BitLen()))
		return append(b, l.Bytes()[:(l.BitLen()+7)/8]...)
	}
	b = append(b, kMapNode)
	b = binary.BigEndian.AppendUint32(b, l.BitLen())
	return append(b, l.Bytes()...)
}

// mapNodeKey is the key of the version of node l as of checkpoint size.
func mapNodeKey(l prefix.Label, size uint64, f mapFormat) []byte {
	return be64(mapNodePrefix(l, f), ^size)
}

func encodeLabel(b []byte, l prefix.Label) []byte {
	b = binary.BigEndian.AppendUint32(b, l.BitLen())
	return append(b, l.Bytes()...)
}

func decodeLabel(b []byte) (prefix.Label, error) {
	return prefix.NewLabel(binary.BigEndian.Uint32(b), b[4:36]) // bits 0: the root, or the empty node
}

// encodeNode is a node's stored value. mapWide: label, left, right (36
// bytes each) and hash; mapCompact: see kMapNodeC.
func encodeNode(n *prefix.Node, f mapFormat) []byte {
	return appendNode(make([]byte, 0, 3*36+32), n, f)
}

// appendNode appends encodeNode(n, f) to b.
func appendNode(b []byte, n *prefix.Node, f mapFormat) []byte {
	if f == mapCompact {
		if n.Label.IsLeaf() {
			panic("internal error: a compact leaf record is its subject's state")
		}
		b = append(b, n.Hash[:]...)
		for _, c := range []prefix.Label{n.Left, n.Right} {
			if c == prefix.EmptyNodeLabel {
				b = binary.BigEndian.AppendUint16(b, 0xffff)
				continue
			}
			b = binary.BigEndian.AppendUint16(b, uint16(c.BitLen()))
			b = append(b, c.Bytes()[:(c.BitLen()+7)/8]...)
		}
		return b
	}
	b = encodeLabel(encodeLabel(encodeLabel(b, n.Label), n.Left), n.Right)
	return append(b, n.Hash[:]...)
}

// decodeNode decodes the stored value v of node l.
func decodeNode(l prefix.Label, v []byte, f mapFormat) (*prefix.Node, error) {
	if f == mapCompact {
		return decodeCompactNode(l, v)
	}
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
	if n.Label != l {
		return nil, fmt.Errorf("%w: subject map node stored under %s holds %s; run grantline fsck", ErrCorrupt, l, n.Label)
	}
	return &n, nil
}

func decodeCompactNode(l prefix.Label, v []byte) (*prefix.Node, error) {
	bad := func(why string) error {
		return fmt.Errorf("%w: subject map node %s: %s; run grantline fsck", ErrCorrupt, l, why)
	}
	if l.IsLeaf() {
		st, err := decodeSubjectState(v)
		if err != nil {
			return nil, err
		}
		return &prefix.Node{Label: l, Hash: mapNodeHash(l, st.value())}, nil
	}
	if len(v) < 32 {
		return nil, bad(fmt.Sprintf("%d bytes, want at least 32", len(v)))
	}
	n := &prefix.Node{Label: l, Hash: [32]byte(v[:32])}
	rest := v[32:]
	for _, c := range []*prefix.Label{&n.Left, &n.Right} {
		if len(rest) < 2 {
			return nil, bad("a child label is cut short")
		}
		bits := binary.BigEndian.Uint16(rest)
		rest = rest[2:]
		if bits == 0xffff {
			if l != prefix.RootLabel {
				return nil, bad("an empty child below the root")
			}
			*c = prefix.EmptyNodeLabel
			continue
		}
		k := (int(bits) + 7) / 8
		if len(rest) < k || bits <= uint16(l.BitLen()) {
			return nil, bad(fmt.Sprintf("child label of %d bits is cut short or not below the node", bits))
		}
		var err error
		if *c, err = prefix.NewLabel(uint32(bits), rest[:k]); err != nil {
			return nil, bad(fmt.Sprintf("child label: %v", err))
		}
		rest = rest[k:]
	}
	if len(rest) != 0 {
		return nil, bad(fmt.Sprintf("%d bytes after the child labels", len(rest)))
	}
	return n, nil
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
	st     Store
	size   uint64
	format mapFormat
}

func (s versionedNodes) Load(ctx context.Context, l prefix.Label) (*prefix.Node, error) {
	if l == prefix.EmptyNodeLabel {
		return initialNodes[l], nil
	}
	p := mapNodePrefix(l, s.format)
	var n *prefix.Node
	err := s.st.Scan(be64(p, ^s.size), prefixEnd(p), func(k, v []byte) error {
		var err error
		if n, err = decodeNode(l, v, s.format); err != nil {
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
// integrated since the last seal, and a bounded cache of the newest nodes
// and subject states, which holds at least everything written by the seals
// whose writes may not be in the store yet (see evict).
//
// The map's records (nodes, states, and with a separate index store its
// watermark keyMapped) go where the indexes go: into the index store when
// the log has one (Options.Index), off the durable commit, since they can
// be re-derived from the leaves (Log.openMap); else into the main commit.
type subjectMap struct {
	st      Store // where the map's records are: the index store, else the main store
	format  mapFormat
	nodes   map[prefix.Label]cachedNode
	states  map[[32]byte]cachedState
	seals   uint64    // seals folded since Open, the one being built included
	pending []mapItem // fresh events since the last seal, in index order
	changed []*prefix.Node
	limit   int // entries of each cache (mapCacheLimit)
}

type cachedNode struct {
	n    *prefix.Node
	seal uint64 // the seal that wrote it; 0: read from the store
}

type cachedState struct {
	s    subjectState
	seal uint64
}

// mapCacheLimit bounds the entries of each of the sequencer's two map
// caches (nodes, subject states): about 200 bytes each with the map's
// overhead, so about 100 MB for both at the limit.
const mapCacheLimit = 1 << 18

// mapSettledSeals is how many seals after its own a seal's writes are
// surely in the store. The sequencer hands batch n to the committer only
// once the committer has put batch n-1 in the indexer's queue, so while
// batch n is built every batch up to n-1-maxUnindexed has its index
// commit done (sequencer.go, maxUnindexed), and a seal (at most one per
// batch) maxUnindexed+1 seals back is there too. One more leaves a margin.
const mapSettledSeals = maxUnindexed + 2

// keyMapped, in a separate index store, is the size of the latest
// checkpoint whose subject map records the index store holds (be64).
var keyMapped = []byte("mmapped")

// mapItem is one event waiting for the next map leaf.
type mapItem struct {
	label [32]byte
	index uint64
	hash  [32]byte
}

func newSubjectMap(st Store, f mapFormat) *subjectMap {
	return &subjectMap{
		st:     st,
		format: f,
		nodes:  make(map[prefix.Label]cachedNode),
		states: make(map[[32]byte]cachedState),
		limit:  mapCacheLimit,
	}
}

// load returns the newest version of a node: from the cache, else from the
// store (ErrCorrupt if a node the tree names is missing).
func (m *subjectMap) load(l prefix.Label) (*prefix.Node, error) {
	if c, ok := m.nodes[l]; ok {
		return c.n, nil
	}
	n, err := versionedNodes{m.st, math.MaxUint64, m.format}.Load(context.Background(), l)
	if errors.Is(err, prefix.ErrNodeNotFound) {
		return nil, fmt.Errorf("%w: subject map node %s is missing; run grantline fsck", ErrCorrupt, l)
	}
	if err != nil {
		return nil, err
	}
	m.nodes[l] = cachedNode{n, 0}
	return n, nil
}

// add notes a fresh event for the next map leaf.
func (m *subjectMap) add(subject string, index uint64, hash [32]byte) {
	if subject != "" {
		m.pending = append(m.pending, mapItem{SubjectLabel(subject), index, hash})
	}
}

// mapKV is a leaf to (re)write: a subject's label and new value.
type mapKV struct{ label, value [32]byte }

// apply folds items (events in index order) into their subjects' states
// and the prefix tree as of the checkpoint of size cpSize, puts the
// changed states and node versions to w, and returns the new root hash.
//
// It updates the tree once per seal, not once per subject as
// prefix.Tree.Insert would: with the changed leaves sorted, it walks the
// tree from the root, descends only into subtrees that hold a changed
// leaf, and hashes every changed node once, so the upper nodes that all
// subjects share are hashed once per seal. The nodes and hashes are
// exactly prefix.Tree.Insert's (TestSubjectMapBatchedUpdate). An error
// leaves the map in an unknown state: the log must stop appending.
func (m *subjectMap) apply(items []mapItem, cpSize uint64, w *writes) ([32]byte, error) {
	m.seals++
	// The states of the subjects changed, read once for those not cached
	// that the tree holds: a subject without a leaf has none to read
	// (inTree reads only the internal nodes on its path, which the update
	// below loads anyway).
	var missLabels [][32]byte
	for _, it := range items {
		if _, ok := m.states[it.label]; ok {
			continue
		}
		in, err := m.inTree(it.label)
		if err != nil {
			return [32]byte{}, err
		}
		if !in {
			m.states[it.label] = cachedState{subjectState{}, 0}
			continue
		}
		m.states[it.label] = cachedState{} // read below; marks it seen
		missLabels = append(missLabels, it.label)
	}
	if len(missLabels) > 0 {
		vals, err := readStates(m.st, m.format, missLabels)
		if err != nil {
			return [32]byte{}, err
		}
		for j, v := range vals {
			if v == nil {
				return [32]byte{}, fmt.Errorf("%w: subject map leaf %x has no stored state; run grantline fsck", ErrCorrupt, missLabels[j])
			}
			s, err := decodeSubjectState(v)
			if err != nil {
				return [32]byte{}, err
			}
			m.states[missLabels[j]] = cachedState{s, 0}
		}
	}
	kvs := make([]mapKV, 0, len(items))
	for _, it := range items {
		c := m.states[it.label]
		if c.s.count > 0 && c.s.last >= it.index {
			return [32]byte{}, fmt.Errorf("internal error: subject map: event %d comes after the subject's last entry %d", it.index, c.s.last)
		}
		if c.seal != m.seals {
			kvs = append(kvs, mapKV{label: it.label})
		}
		c.s.count++
		c.s.last = it.index
		c.s.chain = ChainNext(c.s.chain, it.hash)
		m.states[it.label] = cachedState{c.s, m.seals}
	}
	for i := range kvs {
		s := m.states[kvs[i].label].s
		kvs[i].value = s.value()
		if m.format != mapCompact {
			w.put(subjStateKey(kvs[i].label), s.encode())
		}
	}
	slices.SortFunc(kvs, func(a, b mapKV) int { return bytes.Compare(a.label[:], b.label[:]) })
	root, err := m.load(prefix.RootLabel)
	if err != nil {
		return [32]byte{}, err
	}
	if len(kvs) > 0 {
		m.changed = m.changed[:0]
		if root, err = m.insert(root, kvs); err != nil {
			return [32]byte{}, err
		}
		for _, n := range m.changed {
			m.nodes[n.Label] = cachedNode{n, m.seals}
			k := w.key(1+4+32+8+3*36+32, func(b []byte) []byte { return be64(appendMapNodePrefix(b, n.Label, m.format), ^cpSize) })
			if n.Label.IsLeaf() && m.format == mapCompact {
				s := m.states[[32]byte(n.Label.Bytes())].s
				w.put(k, w.key(0, s.appendTo))
				continue
			}
			w.put(k, w.key(0, func(b []byte) []byte { return appendNode(b, n, m.format) }))
		}
	}
	m.evict()
	return root.Hash, nil
}

// inTree reports whether the subject labelled lb has a leaf in the newest
// tree. It loads only the internal nodes on lb's path.
func (m *subjectMap) inTree(lb [32]byte) (bool, error) {
	leaf := leafLabel(lb)
	n, err := m.load(prefix.RootLabel)
	for {
		if err != nil {
			return false, err
		}
		child := n.Left
		if bit := n.Label.BitLen(); lb[bit/8]>>(7-bit%8)&1 == 1 {
			child = n.Right
		}
		switch {
		case child == leaf:
			return true, nil
		case child.IsLeaf() || !hasPrefix(&lb, child): // also the empty node
			return false, nil
		}
		n, err = m.load(child)
	}
}

// hasPrefix reports whether the label lb (256 bits) starts with the label
// p: prefix.Label.HasPrefix without making a Label of lb.
func hasPrefix(lb *[32]byte, p prefix.Label) bool {
	if p == prefix.EmptyNodeLabel {
		return false
	}
	bits := p.BitLen()
	pb := p.Bytes()
	n := bits / 8
	if !bytes.Equal(lb[:n], pb[:n]) {
		return false
	}
	if r := bits % 8; r != 0 {
		mask := byte(0xff << (8 - r))
		return lb[n]&mask == pb[n]
	}
	return true
}

// insertAt is insert of the node labelled l, which it loads only if its
// hash or children are needed: not for the empty node, nor for a leaf
// that kvs replaces.
func (m *subjectMap) insertAt(l prefix.Label, kvs []mapKV) (*prefix.Node, error) {
	if l == prefix.EmptyNodeLabel {
		return m.build(kvs, nil)
	}
	if l.IsLeaf() {
		if _, found := slices.BinarySearchFunc(kvs, l, func(kv mapKV, l prefix.Label) int {
			return bytes.Compare(kv.label[:], l.Bytes())
		}); found {
			return m.build(kvs, nil) // the leaf's new value replaces it
		}
	}
	n, err := m.load(l)
	if err != nil {
		return nil, err
	}
	return m.insert(n, kvs)
}

// insert returns the subtree n with the leaves kvs (sorted, distinct, all
// below n's parent on n's side; for the root, any) set, noting every new
// node in m.changed.
func (m *subjectMap) insert(n *prefix.Node, kvs []mapKV) (*prefix.Node, error) {
	switch {
	case n.Label == prefix.EmptyNodeLabel:
		return m.build(kvs, nil)
	case n.Label.IsLeaf():
		for _, kv := range kvs {
			if bytes.Equal(kv.label[:], n.Label.Bytes()) {
				return m.build(kvs, nil) // the leaf's new value replaces it
			}
		}
		return m.build(kvs, n)
	}
	// An internal node: the leaves below it are a contiguous run of kvs
	// (all of them when the first and the last are).
	i, j := 0, len(kvs)
	if !hasPrefix(&kvs[0].label, n.Label) || !hasPrefix(&kvs[j-1].label, n.Label) {
		for i < len(kvs) && !hasPrefix(&kvs[i].label, n.Label) {
			i++
		}
		j = i
		for j < len(kvs) && hasPrefix(&kvs[j].label, n.Label) {
			j++
		}
	}
	if i == j {
		return m.build(kvs, n) // none below n
	}
	if i > 0 || j < len(kvs) {
		// Some leaves go beside n: n (updated with those below it) becomes
		// a unit of a new subtree with them.
		sub, err := m.insert(n, kvs[i:j])
		if err != nil {
			return nil, err
		}
		units := make([]*prefix.Node, 0, len(kvs)-(j-i)+1)
		units = m.leaves(units, kvs[:i])
		units = append(units, sub)
		units = m.leaves(units, kvs[j:])
		return m.join(units), nil
	}
	k := splitAt(kvs, n.Label.BitLen())
	var sides [2]*prefix.Node
	for s, part := range [2][]mapKV{kvs[:k], kvs[k:]} {
		child := n.Left
		if s == 1 {
			child = n.Right
		}
		var err error
		if len(part) == 0 {
			sides[s], err = m.load(child)
		} else {
			sides[s], err = m.insertAt(child, part)
		}
		if err != nil {
			return nil, err
		}
	}
	return m.parent(n.Label, sides[0], sides[1]), nil
}

// build returns the subtree of the new leaves kvs and, if not nil, the
// existing subtree extra (whose label no leaf of kvs has as a prefix).
func (m *subjectMap) build(kvs []mapKV, extra *prefix.Node) (*prefix.Node, error) {
	units := make([]*prefix.Node, 0, len(kvs)+1)
	placed := extra == nil
	for _, kv := range kvs {
		if !placed && bytes.Compare(extra.Label.Bytes(), kv.label[:]) < 0 {
			units, placed = append(units, extra), true
		}
		units = m.leaves(units, []mapKV{kv})
	}
	if !placed {
		units = append(units, extra)
	}
	return m.join(units), nil
}

// leaves appends the new leaf nodes of kvs to units.
func (m *subjectMap) leaves(units []*prefix.Node, kvs []mapKV) []*prefix.Node {
	for _, kv := range kvs {
		l := leafLabel(kv.label)
		n := &prefix.Node{Label: l, Hash: mapNodeHash(l, kv.value)}
		m.changed = append(m.changed, n)
		units = append(units, n)
	}
	return units
}

// join returns the compressed subtree over units: subtrees sorted by
// label, none a prefix of another.
func (m *subjectMap) join(units []*prefix.Node) *prefix.Node {
	if len(units) == 1 {
		return units[0]
	}
	lcp := prefix.LongestCommonPrefix(units[0].Label, units[len(units)-1].Label)
	k := 1
	for k < len(units) && units[k].Label.SideOf(lcp) == prefix.Left {
		k++
	}
	return m.parent(lcp, m.join(units[:k]), m.join(units[k:]))
}

// parent returns the new internal node l over left and right.
func (m *subjectMap) parent(l prefix.Label, left, right *prefix.Node) *prefix.Node {
	var b [64]byte
	copy(b[:32], left.Hash[:])
	copy(b[32:], right.Hash[:])
	n := &prefix.Node{Label: l, Left: left.Label, Right: right.Label, Hash: mapNodeHash(l, mapHash(b[:]))}
	m.changed = append(m.changed, n)
	return n
}

// splitAt returns the index of the first of kvs (sorted) whose bit at
// position bit is 1.
func splitAt(kvs []mapKV, bit uint32) int {
	i, _ := slices.BinarySearchFunc(kvs, 1, func(kv mapKV, _ int) int {
		if kv.label[bit/8]>>(7-bit%8)&1 == 0 {
			return -1
		}
		return 1
	})
	return i
}

func leafLabel(label [32]byte) prefix.Label {
	l, err := prefix.NewLabel(256, label[:])
	if err != nil {
		panic(err) // 256 bits of 32 bytes are always a label
	}
	return l
}

// mapNodeHash is the prefix tree's node hash (torchwood's nodeHash):
// H(value || H(be32(bits) || label bytes)).
func mapNodeHash(l prefix.Label, value [32]byte) [32]byte {
	var b [36 + 32]byte
	binary.BigEndian.PutUint32(b[:4], l.BitLen())
	copy(b[4:36], l.Bytes())
	lh := mapHash(b[:36])
	copy(b[:32], value[:])
	copy(b[32:64], lh[:])
	return mapHash(b[:64])
}

// evict bounds the caches: beyond m.limit entries it drops entries
// read from the store and entries written by settled seals (whose writes
// are in the store, mapSettledSeals), down to three quarters of the limit
// or to what is unsettled.
func (m *subjectMap) evict() {
	settled := func(seal uint64) bool { return seal == 0 || seal+mapSettledSeals <= m.seals }
	evictSettled(m.nodes, m.limit, func(c cachedNode) bool { return settled(c.seal) })
	evictSettled(m.states, m.limit, func(c cachedState) bool { return settled(c.seal) })
}

// evictSettled deletes entries of cache for which settled holds, beyond
// limit entries, down to three quarters of limit or to what is unsettled.
func evictSettled[K comparable, V any](cache map[K]V, limit int, settled func(V) bool) {
	if len(cache) <= limit {
		return
	}
	for k, v := range cache {
		if len(cache) <= limit*3/4 {
			return
		}
		if settled(v) {
			delete(cache, k)
		}
	}
}

// appendMapLeaf is the subject map's part of the seal stage: it folds the
// events integrated since the last seal into their subjects' states and
// the prefix tree, puts the changed states and node versions (as of the
// checkpoint about to be signed) to ix, with the map's watermark when ix
// is a separate index store, and appends the map leaf holding the new root
// as the tree's next leaf (to w), with its leaf-hash index entry in ix (w
// itself, unless the indexes live in a separate store). It returns the
// tree size after it. An error leaves the tree in an unknown state: the log
// must stop appending.
func (l *Log) appendMapLeaf(w, ix *writes) (uint64, error) {
	m := l.seq.smap
	idx := l.seq.rng.End()
	cpSize := idx + 1
	root, err := m.apply(m.pending, cpSize, ix)
	if err != nil {
		return 0, fmt.Errorf("updating the subject map: %w", err)
	}
	m.pending = m.pending[:0]
	if l.split {
		ix.put(keyMapped, be64(nil, cpSize))
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
	if l.lh != nil {
		ix.leafHashes = append(ix.leafHashes, runindex.Key(h[:indexKeyLen]))
		ix.dedupeKeys = append(ix.dedupeKeys, runindex.Key{}) // no event, no dedupe key
	} else {
		ix.put(hashKey(h[:]), be64(nil, idx))
	}
	return cpSize, nil
}

// mappedTo reads the separate index store's subject map watermark: the
// size of the latest checkpoint whose map records it holds (0 if none).
func mappedTo(ix Store) (uint64, error) {
	vals, err := ix.Get(keyMapped)
	if err != nil {
		return 0, storageErr(err, "reading the index store's subject map watermark")
	}
	switch v := vals[0]; {
	case v == nil:
		return 0, nil
	case len(v) != 8:
		return 0, fmt.Errorf("%w: the index store's subject map watermark has %d bytes, want 8; move the index store aside (it is rebuilt from the leaves)", ErrCorrupt, len(v))
	default:
		return binary.BigEndian.Uint64(v), nil
	}
}

// openMap completes Open for a log with a subject map and a separate index
// store, after openIndex: the index store's map records may lag the main
// store's checkpoints (they are written without fsync, and after the
// durable commit), or be missing (a new, emptied or moved-aside index
// store, or a log whose map records were kept in the main store before),
// so it re-derives them from the leaves, checkpoint by checkpoint, from
// the map's watermark up to the latest checkpoint (rebuildMap), then signs
// the leaves a crash left after that checkpoint (sealTail), which load
// left for now. published is the latest checkpoint's state; it returns the
// state to serve.
func (l *Log) openMap(ctx context.Context, published *state) (*state, error) {
	m := l.seq.smap
	if m == nil || !l.split {
		return published, nil
	}
	cpSize := published.cp.Size
	from, err := mappedTo(l.ix)
	if err != nil {
		return nil, err
	}
	if from > cpSize {
		return nil, fmt.Errorf("%w: the index store holds the subject map of checkpoint %d but the log's latest is %d (was the main store restored from an older backup?); move the index store aside (it is rebuilt from the leaves)", ErrCorrupt, from, cpSize)
	}
	if from < cpSize {
		if err := l.rebuildMap(ctx, from, cpSize); err != nil {
			return nil, err
		}
		l.logger.Info("ledger rebuilt the subject map records the index store lacked", "from", from, "size", cpSize)
	}
	if l.seq.rng.End() > cpSize {
		return l.sealTail(cpSize, published)
	}
	return published, nil
}

// rebuildMap re-derives the subject map records of the checkpoints in
// (from, to] from their leaves into the separate index store: from is the
// map's watermark and to the latest checkpoint, both sizes of checkpoints,
// so leaf from-1 and leaf to-1 are map leaves. Each map leaf's root must
// be the re-derived one (else ErrCorrupt). One commit per checkpoint, each
// advancing the watermark.
func (l *Log) rebuildMap(ctx context.Context, from, to uint64) error {
	m := l.seq.smap
	var items []mapItem
	for start := from; start < to; start += fsckChunk {
		if err := ctx.Err(); err != nil {
			return err
		}
		es, err := l.entries(start, min(start+fsckChunk, to))
		if err != nil {
			return err
		}
		for _, e := range es {
			h := LeafHash(e.Leaf)
			ev, err := event.DecodeLeaf(e.Leaf)
			if errors.Is(err, event.ErrMapLeaf) {
				want, covers, err := event.DecodeMapLeaf(e.Leaf)
				if err != nil || covers != e.Index {
					return fmt.Errorf("%w: map leaf %d does not decode or covers %d, not its own index (%v); run grantline fsck", ErrCorrupt, e.Index, covers, err)
				}
				w := newWrites(0)
				root, err := m.apply(items, e.Index+1, w)
				if err != nil {
					return fmt.Errorf("%w: rebuilding the subject map at leaf %d: %w", ErrStorage, e.Index, err)
				}
				if root != want {
					return fmt.Errorf("%w: map leaf %d holds subject map root %x, but the leaves before it give %x; run grantline fsck", ErrCorrupt, e.Index, want, root)
				}
				w.put(keyMapped, be64(nil, e.Index+1))
				if err := commitAtomic(l.ix, w.keys, w.vals); err != nil {
					return fmt.Errorf("%w: writing the subject map records of checkpoint %d: %w", ErrStorage, e.Index+1, err)
				}
				items = items[:0]
				continue
			}
			if err != nil {
				return fmt.Errorf("%w: leaf %d does not decode while rebuilding the subject map; run grantline fsck: %w", ErrCorrupt, e.Index, err)
			}
			if s := ev.GetEvent().GetSubject().GetId(); s != "" {
				items = append(items, mapItem{SubjectLabel(s), e.Index, h})
			}
		}
	}
	if len(items) > 0 {
		return fmt.Errorf("%w: checkpoint %d does not end with a map leaf; run grantline fsck", ErrCorrupt, to)
	}
	return nil
}

// readMapFormat reads whether the log in st has a subject map, and how it
// stores its nodes: mapNone, mapWide or mapCompact.
func readMapFormat(st Store) (mapFormat, error) {
	vals, err := st.Get(keySubjectMap)
	if err != nil {
		return mapNone, storageErr(err, "reading the subject map mode")
	}
	switch {
	case vals[0] == nil:
		return mapNone, nil
	case len(vals[0]) == 1 && (vals[0][0] == byte(mapWide) || vals[0][0] == byte(mapCompact)):
		return mapFormat(vals[0][0]), nil
	}
	return mapNone, fmt.Errorf("%w: the subject map mode record holds %x, want 01 or 02; run grantline fsck", ErrCorrupt, vals[0])
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
	return l.subjectProof(ctx, subject, size, l.seq.smap.format)
}

// subjectProof is SubjectProof for a log whose map stores its nodes as f.
func (l *Log) subjectProof(ctx context.Context, subject string, size uint64, f mapFormat) (SubjectProof, error) {
	if _, err := l.CheckpointAt(ctx, size); err != nil {
		return SubjectProof{}, err
	}
	// The map's records of checkpoint size are in the index commit of the
	// batch that sealed it.
	if err := l.waitIndexed(ctx, size); err != nil {
		return SubjectProof{}, fmt.Errorf("subject proof of %q at %d: %w", subject, size, err)
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
	_, nodes, err := prefix.NewTree(mapHash, versionedNodes{l.ix, size, f}).Lookup(ctx, SubjectLabel(subject))
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

// mapBudget bounds what one event adds through the subject map to the
// commit that takes the map's records (the index store's when the log has
// one, Log.fit): its subject's state and the prefix-tree nodes on its
// path, at most about log2(subjects)+2 deep, and subjects never outnumber
// leaves (shared nodes near the root make the real total lower). A node
// record is at most 45+140 bytes in a mapWide log, 43+100 in a mapCompact
// one (whose leaf record is the state: 43+48).
func (l *Log) mapBudget() (count, bytes int64) {
	m := l.seq.smap
	if m == nil {
		return 0, 0
	}
	nodes := int64(bits.Len64(l.seq.rng.End())) + 3
	if m.format == mapCompact {
		return 1 + nodes, entrySize(1+2+32+8, 48) + nodes*entrySize(1+2+32+8, 32+2*(2+32))
	}
	return 1 + nodes, entrySize(33, 48) + nodes*entrySize(1+36+8, 3*36+32)
}
