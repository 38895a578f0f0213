package ledger

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"testing"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"

	"golang.org/x/mod/sumdb/tlog"
)

// tlogTiles serves the log's tiles to golang.org/x/mod/sumdb/tlog, a second,
// independent implementation of RFC 6962 trees over 8-bit tiles.
type tlogTiles struct {
	t *testing.T
	l *Log
}

func (r tlogTiles) Height() int { return TileHeight }

func (r tlogTiles) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		b, err := r.l.ReadTile(context.Background(), uint64(t.L), uint64(t.N), t.W)
		if err != nil {
			return nil, fmt.Errorf("ReadTile(%d, %d, %d): %w", t.L, t.N, t.W, err)
		}
		out[i] = b
	}
	return out, nil
}

func (r tlogTiles) SaveTiles([]tlog.Tile, [][]byte) {}

// TestProofsAgainstTlog builds a log past two tile levels and checks its
// roots, tiles, inclusion and consistency proofs with x/mod/sumdb/tlog at
// sizes around tile boundaries, against hashes tlog computes from the leaves.
func TestProofsAgainstTlog(t *testing.T) {
	ctx := context.Background()
	n := 65536 + 300
	if testing.Short() || raceEnabled {
		n = 3*256 + 1 // the sizes around 65536 need the full run
	}
	st := newFakeStore()
	l := openFake(t, st)
	defer l.Close()
	// Small appends first, so that checkpoints exist at the small sizes.
	for i := 0; i < 300; i++ {
		mustAppend(t, l, testEvents(i, 1))
	}
	for i := 300; i < n; i += 4096 {
		evs := make([]*pb.Event, min(4096, n-i))
		for j := range evs { // small events keep the test fast
			evs[j] = &pb.Event{Id: strconv.Itoa(i + j), Source: &pb.Source{System: "s"}}
		}
		mustAppend(t, l, evs)
	}
	if got := l.Latest().Size; got != uint64(n) {
		t.Fatalf("size = %d, want %d", got, n)
	}

	// Reference: tlog's stored hashes computed from the leaves.
	var ref []tlog.Hash
	refReader := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for i, x := range idx {
			out[i] = ref[x]
		}
		return out, nil
	})
	es, err := l.Entries(ctx, 0, uint64(n))
	if err != nil {
		t.Fatal(err)
	}
	leafHashes := make([]tlog.Hash, n)
	for i, e := range es {
		leafHashes[i] = tlog.RecordHash(e.Leaf)
		hs, err := tlog.StoredHashes(int64(i), e.Leaf, refReader)
		if err != nil {
			t.Fatal(err)
		}
		ref = append(ref, hs...)
	}
	tiles := tlogTiles{t, l}
	var sizes []int64
	for _, s := range []int64{1, 2, 3, 7, 255, 256, 257, 300, 511, 512, 513, 65535, 65536, 65537, int64(n)} {
		if s <= int64(n) && !slices.Contains(sizes, s) {
			sizes = append(sizes, s)
		}
	}
	roots := map[int64]tlog.Hash{}
	for _, size := range sizes {
		root, err := tlog.TreeHash(size, refReader)
		if err != nil {
			t.Fatal(err)
		}
		roots[size] = root
	}
	for _, size := range sizes {
		root := roots[size]
		if cp, err := l.CheckpointAt(ctx, uint64(size)); err == nil {
			if tlog.Hash(cp.Root) != root {
				t.Fatalf("checkpoint %d root = %x, tlog computes %x", size, cp.Root, root)
			}
		} else if size <= 300 || size == int64(n) {
			t.Fatalf("CheckpointAt(%d): %v", size, err)
		}
		// tlog reads our tiles, checking each against the root as it goes.
		thr := tlog.TileHashReader(tlog.Tree{N: size, Hash: root}, tiles)
		if got, err := tlog.TreeHash(size, thr); err != nil || got != root {
			t.Fatalf("tlog.TreeHash(%d) over our tiles = %x, %v; want %x", size, got, err, root)
		}
		for _, idx := range slices.Compact([]int64{0, 1, size / 2, 255, 256, 65535, size - 2, size - 1}) {
			if idx < 0 || idx >= size {
				continue
			}
			p, err := l.InclusionProof(ctx, uint64(idx), uint64(size))
			if err != nil {
				t.Fatalf("InclusionProof(%d, %d): %v", idx, size, err)
			}
			rp := make(tlog.RecordProof, len(p))
			for i, h := range p {
				rp[i] = tlog.Hash(h)
			}
			if err := tlog.CheckRecord(rp, size, root, idx, leafHashes[idx]); err != nil {
				t.Fatalf("tlog.CheckRecord(InclusionProof(%d, %d)): %v", idx, size, err)
			}
			want, err := tlog.ProveRecord(size, idx, thr)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(rp, want) {
				t.Fatalf("InclusionProof(%d, %d) differs from tlog.ProveRecord", idx, size)
			}
		}
		for _, old := range sizes {
			if old > size {
				break
			}
			p, err := l.ConsistencyProof(ctx, uint64(old), uint64(size))
			if err != nil {
				t.Fatalf("ConsistencyProof(%d, %d): %v", old, size, err)
			}
			tp := make(tlog.TreeProof, len(p))
			for i, h := range p {
				tp[i] = tlog.Hash(h)
			}
			if err := tlog.CheckTree(tp, size, root, old, roots[old]); err != nil {
				t.Fatalf("tlog.CheckTree(ConsistencyProof(%d, %d)): %v", old, size, err)
			}
			want, err := tlog.ProveTree(size, old, thr)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(tp, want) {
				t.Fatalf("ConsistencyProof(%d, %d) differs from tlog.ProveTree", old, size)
			}
		}
	}
	// Proofs by leaf hash resolve to the right index.
	for _, idx := range []int64{0, int64(n) / 2, int64(n) - 1} {
		got, err := l.LookupLeafHash(ctx, leafHashes[idx][:])
		if err != nil || got != uint64(idx) {
			t.Fatalf("LookupLeafHash(leaf %d) = %d, %v", idx, got, err)
		}
	}
	// And the log survives a reopen with its tree intact.
	l.Close()
	l2 := openFake(t, st.clone())
	defer l2.Close()
	if l2.Latest().Root != [32]byte(roots[int64(n)]) {
		t.Fatalf("reopened root = %x, want %x", l2.Latest().Root, roots[int64(n)])
	}
	if err := l2.Fsck(ctx, nil); err != nil {
		t.Fatal(err)
	}
	checkViolations(t, st)
}
