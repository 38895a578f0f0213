package ledger

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
)

// tile is a tlog-tiles tile with its inner nodes: rows[0] holds the tile's
// hashes (nodes at tree level 8*L), rows[k] the perfect nodes k levels above
// them that its hashes complete, 32 bytes each.
type tile struct {
	rows [TileHeight][]byte
}

func (t *tile) width() int { return len(t.rows[0]) / 32 }

// expandTile computes the inner nodes of a tile from its hashes.
func expandTile(hashes []byte) *tile {
	t := &tile{}
	t.rows[0] = hashes
	for k := 1; k < TileHeight; k++ {
		below := t.rows[k-1]
		n := len(below) / 64
		row := make([]byte, 0, n*32)
		for j := 0; j < n; j++ {
			row = append(row, hasher.HashChildren(below[j*64:j*64+32], below[j*64+32:j*64+64])...)
		}
		t.rows[k] = row
	}
	return t
}

// node returns the hash k levels above the tile's bottom at position j, or
// nil if the tile does not (yet) hold it.
func (t *tile) node(k uint, j uint64) []byte {
	row := t.rows[k]
	if (j+1)*32 > uint64(len(row)) {
		return nil
	}
	return row[j*32 : (j+1)*32]
}

// edgeTiles are the partial tiles on the right edge of a tree, by tile level;
// nil where the level's tile is empty.
type edgeTiles []*tile

// tileWidth reports how many hashes tile (level, index) holds in a tree of
// size n: 256 for full tiles, 0 if the tile does not exist.
func tileWidthAt(n, level, index uint64) int {
	if level*TileHeight >= 64 {
		return 0
	}
	row := n >> (level * TileHeight)
	switch {
	case index < row/tileWidth:
		return tileWidth
	case index == row/tileWidth:
		return int(row % tileWidth)
	}
	return 0
}

// tileAt returns tile (level, index) as of state s, with at least its width
// at s. Full tiles are immutable and cached; edge tiles come from s.
func (l *Log) tileAt(s *state, level, index uint64) (*tile, error) {
	w := tileWidthAt(s.cp.Size, level, index)
	if w == 0 {
		return nil, fmt.Errorf("tile %d/%d is beyond tree size %d: %w", level, index, s.cp.Size, ErrNotFound)
	}
	if w < tileWidth {
		if int(level) < len(s.edge) && s.edge[level] != nil && s.edge[level].width() >= w {
			return s.edge[level], nil
		}
		// Not expected: the edge is always published with the state.
	}
	return l.storedTile(level, index, w)
}

// storedTile reads tile (level, index) from the store; it must hold at
// least w hashes. Full tiles are cached.
func (l *Log) storedTile(level, index uint64, w int) (*tile, error) {
	if w == tileWidth {
		if t := l.cache.get(level, index); t != nil {
			return t, nil
		}
	}
	vals, err := l.st.Get(tileKey(level, index))
	if err != nil {
		return nil, fmt.Errorf("%w: reading tile %d/%d: %w", ErrStorage, level, index, err)
	}
	v := vals[0]
	if v == nil {
		return nil, fmt.Errorf("%w: tile %d/%d is missing (want %d hashes); run grantline fsck", ErrCorrupt, level, index, w)
	}
	if len(v)%32 != 0 || len(v)/32 < w || len(v)/32 > tileWidth {
		return nil, fmt.Errorf("%w: tile %d/%d holds %d bytes, want %d hashes of 32 bytes; run grantline fsck", ErrCorrupt, level, index, len(v), w)
	}
	t := expandTile(v[:w*32])
	if w == tileWidth {
		l.cache.put(level, index, t)
	}
	return t, nil
}

// leafRow returns the leaf hashes of level-0 tile index as of state s: the
// bottom row of the cached or edge tile, else the stored tile's bytes as
// read, kept in l.rows without computing its inner nodes. Checking a leaf
// needs only its hash; expanding a tile costs 255 hashes, which a chain
// whose entries lie in more tiles than a cache holds (a long chain
// interleaved with thousands of others, docs/BENCHMARKS.md "Long chains")
// would otherwise pay for every entry it reads.
func (l *Log) leafRow(s *state, index uint64) ([]byte, error) {
	w := tileWidthAt(s.cp.Size, 0, index)
	if w < tileWidth {
		t, err := l.tileAt(s, 0, index)
		if err != nil {
			return nil, err
		}
		return t.rows[0], nil
	}
	if t := l.cache.get(0, index); t != nil {
		return t.rows[0], nil
	}
	if l.rows != nil {
		if t := l.rows.get(0, index); t != nil {
			return t.rows[0], nil
		}
	}
	vals, err := l.st.Get(tileKey(0, index))
	if err != nil {
		return nil, fmt.Errorf("%w: reading tile 0/%d: %w", ErrStorage, index, err)
	}
	v := vals[0]
	if v == nil {
		return nil, fmt.Errorf("%w: tile 0/%d is missing (want %d hashes); run grantline fsck", ErrCorrupt, index, w)
	}
	if len(v) != tileWidth*32 {
		return nil, fmt.Errorf("%w: tile 0/%d holds %d bytes, want %d hashes of 32 bytes; run grantline fsck", ErrCorrupt, index, len(v), w)
	}
	if l.rows != nil {
		t := &tile{}
		t.rows[0] = v
		l.rows.put(0, index, t)
	}
	return v, nil
}

// nodeHash returns the hash of the perfect tree node id as of state s.
func (l *Log) nodeHash(s *state, id compact.NodeID) ([]byte, error) {
	level, k := uint64(id.Level/TileHeight), id.Level%TileHeight
	first := id.Index << k // index of its leftmost descendant at the tile's bottom level
	t, err := l.tileAt(s, level, first/tileWidth)
	if err != nil {
		return nil, err
	}
	h := t.node(k, (first%tileWidth)>>k)
	if h == nil {
		return nil, fmt.Errorf("%w: node %d/%d not in tile %d/%d (width %d) at size %d; run grantline fsck",
			ErrCorrupt, id.Level, id.Index, level, first/tileWidth, t.width(), s.cp.Size)
	}
	return h, nil
}

func (l *Log) nodeHashes(s *state, ids []compact.NodeID) ([][]byte, error) {
	hs := make([][]byte, len(ids))
	for i, id := range ids {
		h, err := l.nodeHash(s, id)
		if err != nil {
			return nil, err
		}
		hs[i] = h
	}
	return hs, nil
}

// InclusionProof returns the RFC 6962 audit path of leaf index in the tree of
// the given size (0 < size <= latest size, index < size), as published in a
// checkpoint of that size.
func (l *Log) InclusionProof(ctx context.Context, index, size uint64) ([][]byte, error) {
	s := l.cur.Load()
	if size > s.cp.Size {
		return nil, fmt.Errorf("inclusion proof at size %d: the tree has %d entries: %w", size, s.cp.Size, ErrOutOfRange)
	}
	if index >= size {
		return nil, fmt.Errorf("inclusion proof of index %d at size %d: the index must be below the size: %w", index, size, ErrOutOfRange)
	}
	nodes, err := proof.Inclusion(index, size)
	if err != nil {
		return nil, fmt.Errorf("inclusion proof of %d at %d: %w", index, size, err)
	}
	hs, err := l.nodeHashes(s, nodes.IDs)
	if err != nil {
		return nil, err
	}
	return nodes.Rehash(hs, hasher.HashChildren)
}

// ConsistencyProof returns the RFC 6962 consistency proof between the trees
// of sizes from and to (from <= to <= latest size).
func (l *Log) ConsistencyProof(ctx context.Context, from, to uint64) ([][]byte, error) {
	s := l.cur.Load()
	if to > s.cp.Size {
		return nil, fmt.Errorf("consistency proof to size %d: the tree has %d entries: %w", to, s.cp.Size, ErrOutOfRange)
	}
	if from > to {
		return nil, fmt.Errorf("consistency proof from %d to %d: the first size must not exceed the second: %w", from, to, ErrOutOfRange)
	}
	nodes, err := proof.Consistency(from, to)
	if err != nil {
		return nil, fmt.Errorf("consistency proof %d..%d: %w", from, to, err)
	}
	hs, err := l.nodeHashes(s, nodes.IDs)
	if err != nil {
		return nil, err
	}
	return nodes.Rehash(hs, hasher.HashChildren)
}

// ReadTile returns the first width hashes (width*32 bytes) of tlog-tiles tile
// (level, index), width 1..256, as served at /tile/<level>/<index>[.p/<width>].
// ErrNotFound if the published tree does not have that many hashes in it.
func (l *Log) ReadTile(ctx context.Context, level, index uint64, width int) ([]byte, error) {
	if width < 1 || width > tileWidth {
		return nil, fmt.Errorf("tile %d/%d: width %d must be 1..256: %w", level, index, width, ErrOutOfRange)
	}
	s := l.cur.Load()
	if w := tileWidthAt(s.cp.Size, level, index); w < width {
		return nil, fmt.Errorf("tile %d/%d with width %d: the tree of size %d has %d hashes there: %w", level, index, width, s.cp.Size, w, ErrNotFound)
	}
	t, err := l.tileAt(s, level, index)
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), t.rows[0][:width*32]...), nil
}

// parseTile splits tile data into its 32-byte hashes.
func parseTile(data []byte) ([][32]byte, error) {
	if len(data) == 0 || len(data)%32 != 0 || len(data) > tileWidth*32 {
		return nil, fmt.Errorf("tile data of %d bytes: want a multiple of 32 bytes, 32..8192", len(data))
	}
	hs := make([][32]byte, len(data)/32)
	for i := range hs {
		hs[i] = [32]byte(data[i*32:])
	}
	return hs, nil
}

// tileCache is a small LRU of immutable full tiles.
type tileCache struct {
	mu  sync.Mutex
	max int
	ll  *list.List
	m   map[[2]uint64]*list.Element
}

type cacheEntry struct {
	key [2]uint64
	t   *tile
}

func newTileCache(n int) *tileCache {
	return &tileCache{max: n, ll: list.New(), m: make(map[[2]uint64]*list.Element)}
}

func (c *tileCache) get(level, index uint64) *tile {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[[2]uint64{level, index}]; ok {
		c.ll.MoveToFront(e)
		return e.Value.(*cacheEntry).t
	}
	return nil
}

func (c *tileCache) put(level, index uint64, t *tile) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := [2]uint64{level, index}
	if _, ok := c.m[k]; ok {
		return
	}
	c.m[k] = c.ll.PushFront(&cacheEntry{k, t})
	for c.ll.Len() > c.max {
		e := c.ll.Back()
		c.ll.Remove(e)
		delete(c.m, e.Value.(*cacheEntry).key)
	}
}

var errStop = errors.New("stop")
