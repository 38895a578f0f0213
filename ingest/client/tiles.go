package client

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"time"

	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera/api"
	"github.com/transparency-dev/tessera/api/layout"
	tclient "github.com/transparency-dev/tessera/client"
	"golang.org/x/mod/sumdb/note"

	"github.com/grantline/grantline/ledger"
)

// TilesReport is what VerifyTiles checked.
type TilesReport struct {
	Size    uint64   // entries fetched and hashed: the checkpoint's tree size
	Tiles   int      // hash tiles fetched and compared
	Root    [32]byte // the checkpoint's root, recomputed
	Origin  string   // the checkpoint's origin line
	Signed  bool     // whether the checkpoint's signature was verified
	Elapsed time.Duration
}

// VerifyTiles fetches the latest checkpoint and the whole log over the C2SP
// tlog-tiles endpoints (with Tessera's client: paths, fetching, parallel
// entry bundle reads), recomputes every leaf hash, every tile at every level
// and the root, and compares them with what the server serves and signed. v
// may be nil: then the checkpoint is only parsed, and the report says its
// signature was not checked. The checkpoint must cover at least minSize
// entries (what the caller saw acknowledged).
func (c *Client) VerifyTiles(ctx context.Context, v note.Verifier, minSize uint64) (TilesReport, error) {
	root, err := url.Parse(c.baseURL + "/")
	if err != nil {
		return TilesReport{}, err
	}
	f, err := tclient.NewHTTPFetcher(root, c.http)
	if err != nil {
		return TilesReport{}, err
	}
	f.SetAuthorizationHeader("Bearer " + c.token)
	start := time.Now()
	text, err := f.ReadCheckpoint(ctx)
	if err != nil {
		return TilesReport{}, err
	}
	r := TilesReport{Signed: v != nil}
	if v != nil {
		cp, err := ledger.OpenCheckpoint(text, v)
		if err != nil {
			return TilesReport{}, fmt.Errorf("GET /checkpoint: %w", err)
		}
		r.Size, r.Root, r.Origin = cp.Size, cp.Root, cp.Origin
	} else {
		var cp log.Checkpoint
		if _, err := cp.Unmarshal(text); err != nil {
			return TilesReport{}, fmt.Errorf("GET /checkpoint: %w", err)
		}
		if len(cp.Hash) != 32 {
			return TilesReport{}, fmt.Errorf("GET /checkpoint: want a SHA-256 root, got %d bytes", len(cp.Hash))
		}
		r.Size, r.Root, r.Origin = cp.Size, [32]byte(cp.Hash), cp.Origin
	}
	if r.Size < minSize {
		return TilesReport{}, fmt.Errorf("the checkpoint covers %d entries, but appends were acknowledged up to tree size %d", r.Size, minSize)
	}

	rng := (&compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}).NewEmptyRange(0)
	lv := &tileLevels{read: f.ReadTile, size: r.Size}
	size := func(context.Context) (uint64, error) { return r.Size, nil }
	for b, err := range tclient.EntryBundles(ctx, 4, size, f.ReadEntryBundle, 0, r.Size) {
		if err != nil {
			return TilesReport{}, err
		}
		var eb api.EntryBundle
		if err := eb.UnmarshalText(b.Data); err != nil {
			return TilesReport{}, fmt.Errorf("entry bundle %d: %w", b.RangeInfo.Index, err)
		}
		if want := int(b.RangeInfo.First + b.RangeInfo.N); len(eb.Entries) != want {
			return TilesReport{}, fmt.Errorf("entry bundle %d: %d entries, want %d", b.RangeInfo.Index, len(eb.Entries), want)
		}
		for _, leaf := range eb.Entries[b.RangeInfo.First:] {
			h := rfc6962.DefaultHasher.HashLeaf(leaf)
			if err := rng.Append(h, nil); err != nil {
				return TilesReport{}, err
			}
			if err := lv.push(ctx, 0, h); err != nil {
				return TilesReport{}, err
			}
		}
	}
	if err := lv.finish(ctx); err != nil {
		return TilesReport{}, err
	}
	got := rfc6962.DefaultHasher.EmptyRoot()
	if r.Size > 0 {
		if got, err = rng.GetRootHash(nil); err != nil {
			return TilesReport{}, err
		}
	}
	if !bytes.Equal(got, r.Root[:]) {
		return TilesReport{}, fmt.Errorf("the root recomputed from %d entries is %x, the checkpoint says %x", r.Size, got, r.Root)
	}
	r.Tiles, r.Elapsed = lv.tiles, time.Since(start)
	return r, nil
}

// tileLevels checks tiles level by level as leaf hashes stream in: each
// level keeps the hashes of its current tile; a full tile is fetched and
// compared, and its subtree root becomes the next level's hash.
type tileLevels struct {
	read  tclient.TileFetcherFunc
	size  uint64
	cur   [][][]byte // per level: hashes of the tile being filled
	index []uint64   // per level: index of that tile
	tiles int
}

func (t *tileLevels) push(ctx context.Context, level int, h []byte) error {
	for len(t.cur) <= level {
		t.cur = append(t.cur, nil)
		t.index = append(t.index, 0)
	}
	t.cur[level] = append(t.cur[level], h)
	if len(t.cur[level]) < layout.TileWidth {
		return nil
	}
	if err := t.check(ctx, level); err != nil {
		return err
	}
	root, err := subtreeRoot(t.cur[level])
	if err != nil {
		return err
	}
	t.cur[level] = t.cur[level][:0]
	t.index[level]++
	return t.push(ctx, level+1, root)
}

func (t *tileLevels) finish(ctx context.Context) error {
	for level := range t.cur {
		if len(t.cur[level]) > 0 {
			if err := t.check(ctx, level); err != nil {
				return err
			}
		}
	}
	return nil
}

func (t *tileLevels) check(ctx context.Context, level int) error {
	want := t.cur[level]
	partial := uint8(len(want) % layout.TileWidth)
	p := "/" + layout.TilePath(uint64(level), t.index[level], partial) // as the server serves it
	data, err := t.read(ctx, uint64(level), t.index[level], partial)
	if err != nil {
		return err
	}
	t.tiles++
	var tile api.HashTile
	if err := tile.UnmarshalText(data); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	if len(tile.Nodes) != len(want) {
		return fmt.Errorf("%s: %d hashes, want %d", p, len(tile.Nodes), len(want))
	}
	for i, h := range want {
		if !bytes.Equal(tile.Nodes[i], h) {
			return fmt.Errorf("%s: hash %d is %x, recomputed %x", p, i, tile.Nodes[i], h)
		}
	}
	return nil
}

// subtreeRoot is the root of a full tile of node hashes.
func subtreeRoot(hs [][]byte) ([]byte, error) {
	rng := (&compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}).NewEmptyRange(0)
	for _, h := range hs {
		if err := rng.Append(h, nil); err != nil {
			return nil, err
		}
	}
	return rng.GetRootHash(nil)
}
