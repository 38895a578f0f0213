package ingest

import (
	"context"
	"encoding/base64"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"

	"connectrpc.com/connect"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/proto/gen/grantline/v1/grantlinev1connect"
)

// Paging limits of LogService, as the proto comments say.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

type logService struct {
	grantlinev1connect.UnimplementedLogServiceHandler
	s *Server
}

// checkpoint resolves a tree size: 0 is the latest checkpoint, anything else
// must be a published one.
func (s *Server) checkpoint(ctx context.Context, field string, size uint64) (ledger.Checkpoint, error) {
	latest := s.cfg.Ledger.Latest()
	if size == 0 || size == latest.Size {
		return latest, nil
	}
	if size > latest.Size {
		return ledger.Checkpoint{}, fmt.Errorf("%w: %s %d is past the latest checkpoint (size %d)", ledger.ErrOutOfRange, field, size, latest.Size)
	}
	cp, err := s.cfg.Ledger.CheckpointAt(ctx, size)
	if err != nil {
		return ledger.Checkpoint{}, fmt.Errorf("%s %d: no checkpoint was published at that size (latest is %d): %w", field, size, latest.Size, err)
	}
	return cp, nil
}

func (h *logService) GetCheckpoint(ctx context.Context, req *connect.Request[pb.GetCheckpointRequest]) (*connect.Response[pb.GetCheckpointResponse], error) {
	var cp ledger.Checkpoint
	var err error
	if req.Msg.GetWitnessed() {
		cp, err = h.s.witnessed(req.Msg.GetTreeSize())
	} else {
		cp, err = h.s.checkpoint(ctx, "tree_size", req.Msg.GetTreeSize())
	}
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.GetCheckpointResponse{Checkpoint: string(cp.Note), TreeSize: cp.Size, RootHash: cp.Root[:]}), nil
}

func (h *logService) GetEntries(ctx context.Context, req *connect.Request[pb.GetEntriesRequest]) (*connect.Response[pb.GetEntriesResponse], error) {
	start := req.Msg.GetStart()
	count := pageSize(req.Msg.GetCount())
	size := h.s.cfg.Ledger.Latest().Size
	if start >= size {
		return nil, fmt.Errorf("%w: start %d is at or past the tree size %d", ledger.ErrOutOfRange, start, size)
	}
	count = min(count, int(size-start))
	ents, err := h.s.cfg.Ledger.Entries(ctx, start, uint64(count))
	if err != nil {
		return nil, err
	}
	out, err := logEntries(ents)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.GetEntriesResponse{Entries: out}), nil
}

func (h *logService) GetInclusionProof(ctx context.Context, req *connect.Request[pb.GetInclusionProofRequest]) (*connect.Response[pb.GetInclusionProofResponse], error) {
	cp, err := h.s.checkpoint(ctx, "tree_size", req.Msg.GetTreeSize())
	if err != nil {
		return nil, err
	}
	l := h.s.cfg.Ledger
	var index uint64
	var leafHash []byte
	switch leaf := req.Msg.GetLeaf().(type) {
	case *pb.GetInclusionProofRequest_Index:
		index = leaf.Index
		if index >= cp.Size {
			return nil, fmt.Errorf("%w: index %d is not in the tree of size %d", ledger.ErrOutOfRange, index, cp.Size)
		}
		// The leaf hash is in the level-0 tile (cached once full), which
		// is far cheaper than reading the leaf to hash it again.
		tile, err := l.ReadTile(ctx, 0, index/256, int(index%256)+1)
		if err != nil {
			return nil, err
		}
		if len(tile) != int(index%256+1)*32 {
			return nil, fmt.Errorf("ledger returned a level-0 tile of %d bytes for index %d", len(tile), index)
		}
		leafHash = tile[len(tile)-32:]
	case *pb.GetInclusionProofRequest_LeafHash:
		if len(leaf.LeafHash) != 32 {
			return nil, &event.FieldError{Path: "leaf_hash", Msg: fmt.Sprintf("%d bytes; want a 32-byte SHA-256 RFC 6962 leaf hash", len(leaf.LeafHash))}
		}
		leafHash = leaf.LeafHash
		index, err = l.LookupLeafHash(ctx, leafHash)
		if err != nil {
			return nil, fmt.Errorf("leaf_hash %x: %w", leafHash, err)
		}
		if index >= cp.Size {
			return nil, fmt.Errorf("%w: leaf_hash %x is at index %d, not in the tree of size %d", ledger.ErrOutOfRange, leafHash, index, cp.Size)
		}
	default:
		return nil, &event.FieldError{Path: "leaf", Msg: "set index or leaf_hash"}
	}
	hashes, err := l.InclusionProof(ctx, index, cp.Size)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.GetInclusionProofResponse{
		Index: index, TreeSize: cp.Size, LeafHash: leafHash, Hashes: hashes, Checkpoint: string(cp.Note),
	}), nil
}

func (h *logService) GetConsistencyProof(ctx context.Context, req *connect.Request[pb.GetConsistencyProofRequest]) (*connect.Response[pb.GetConsistencyProofResponse], error) {
	to, err := h.s.checkpoint(ctx, "to_size", req.Msg.GetToSize())
	if err != nil {
		return nil, err
	}
	if req.Msg.GetFromSize() > to.Size {
		return nil, &event.FieldError{Path: "from_size", Msg: fmt.Sprintf("%d is greater than to_size %d", req.Msg.GetFromSize(), to.Size)}
	}
	var from ledger.Checkpoint
	if req.Msg.GetFromSize() == 0 {
		from, err = h.s.cfg.Ledger.CheckpointAt(ctx, 0) // the empty tree, published at first start
	} else {
		from, err = h.s.checkpoint(ctx, "from_size", req.Msg.GetFromSize())
	}
	if err != nil {
		return nil, err
	}
	hashes, err := h.s.cfg.Ledger.ConsistencyProof(ctx, from.Size, to.Size)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.GetConsistencyProofResponse{
		FromSize: from.Size, ToSize: to.Size, Hashes: hashes,
		FromCheckpoint: string(from.Note), ToCheckpoint: string(to.Note),
	}), nil
}

func (h *logService) ListSubjectEvents(ctx context.Context, req *connect.Request[pb.ListSubjectEventsRequest]) (*connect.Response[pb.ListSubjectEventsResponse], error) {
	subject := req.Msg.GetSubjectId()
	if err := event.ValidateID("subject_id", subject); err != nil {
		return nil, err
	}
	limit := pageSize(req.Msg.GetPageSize())
	size, start := req.Msg.GetTreeSize(), uint64(0)
	if tok := req.Msg.GetPageToken(); tok != "" {
		var err error
		if size, start, err = parsePageToken(tok, subject, size); err != nil {
			return nil, err
		}
	}
	if size == 0 {
		size = h.s.cfg.Ledger.Latest().Size
	} else if latest := h.s.cfg.Ledger.Latest().Size; size > latest {
		return nil, fmt.Errorf("%w: tree_size %d is past the latest checkpoint (size %d)", ledger.ErrOutOfRange, size, latest)
	}
	ents, err := h.s.cfg.Ledger.SubjectEntries(ctx, subject, size, start, limit+1)
	if err != nil {
		return nil, err
	}
	resp := &pb.ListSubjectEventsResponse{}
	if len(ents) > limit {
		resp.NextPageToken = pageToken(subject, size, ents[limit].Index)
		ents = ents[:limit]
	}
	if resp.Entries, err = logEntries(ents); err != nil {
		return nil, err
	}
	return connect.NewResponse(resp), nil
}

func pageSize(n uint32) int {
	switch {
	case n == 0:
		return DefaultPageSize
	case n > MaxPageSize:
		return MaxPageSize
	}
	return int(n)
}

// A page token pins the tree size (so pages are consistent), the next index
// and a checksum of the subject; it is opaque to clients.
func pageToken(subject string, size, next uint64) string {
	return base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf("v1.%d.%d.%d", size, next, subjectSum(subject))))
}

func parsePageToken(tok, subject string, wantSize uint64) (size, next uint64, err error) {
	bad := &event.FieldError{Path: "page_token", Msg: "malformed or not from this subject; pass the next_page_token of a previous response unchanged"}
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return 0, 0, bad
	}
	f := strings.Split(string(raw), ".")
	if len(f) != 4 || f[0] != "v1" {
		return 0, 0, bad
	}
	size, err1 := strconv.ParseUint(f[1], 10, 64)
	next, err2 := strconv.ParseUint(f[2], 10, 64)
	sum, err3 := strconv.ParseUint(f[3], 10, 32)
	if err1 != nil || err2 != nil || err3 != nil || uint32(sum) != subjectSum(subject) || next >= size {
		return 0, 0, bad
	}
	if wantSize != 0 && wantSize != size {
		return 0, 0, &event.FieldError{Path: "page_token", Msg: fmt.Sprintf("was issued for tree_size %d, not %d; keep tree_size unchanged while paging", size, wantSize)}
	}
	return size, next, nil
}

func subjectSum(s string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(s))
	return h.Sum32()
}

// logEntries decodes stored leaves for a response; the leaf bytes are passed
// through verbatim.
func logEntries(ents []ledger.Entry) ([]*pb.LogEntry, error) {
	out := make([]*pb.LogEntry, len(ents))
	for i, e := range ents {
		ent, err := event.DecodeLeaf(e.Leaf)
		if err != nil {
			return nil, fmt.Errorf("%w: leaf %d does not decode: %w", ledger.ErrCorrupt, e.Index, err)
		}
		out[i] = &pb.LogEntry{
			Index: e.Index, Leaf: e.Leaf, LeafHash: rfc6962.DefaultHasher.HashLeaf(e.Leaf),
			Event: ent.GetEvent(), ObservedTime: ent.GetObservedTime(),
		}
	}
	return out, nil
}
