package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/merkle/testonly"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/proto/gen/grantline/v1/grantlinev1connect"
)

// grantlineBin is the real binary, built once by TestMain for the
// end-to-end tests; "" when the build failed (buildErr says why).
var (
	grantlineBin string
	buildErr     error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "grantline-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin := filepath.Join(dir, "grantline")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		buildErr = fmt.Errorf("go build: %v\n%s", err, out)
	} else {
		grantlineBin = bin
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// runCmd runs the grantline command line in-process and returns its exit
// status, stdout and stderr.
func runCmd(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	env := &cmdEnv{stdin: bytes.NewBufferString(stdin), stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}
	code := runMain(t.Context(), env, args)
	return code, out.String(), errb.String()
}

// fakeLog is an in-memory stand-in for a Grantline server: the ingest and
// log services over a testonly Merkle tree, with a signed checkpoint
// published after every batch. Named faults let tests exercise the client's
// retry and failure paths. It enforces the contract the client relies on:
// one result per event, duplicates by (source.system, id) get the original
// index.
type fakeLog struct {
	grantlinev1connect.UnimplementedIngestServiceHandler
	grantlinev1connect.UnimplementedLogServiceHandler

	origin string
	signer note.Signer
	vkey   string

	mu       sync.Mutex
	tree     *testonly.Tree
	leaves   [][]byte
	hashes   []tlog.Hash // tlog stored hashes, for serving tiles
	events   []*pb.Event
	byKey    map[string]uint64
	ckpts    map[uint64]string // published checkpoints by size
	batches  int
	appended int // events stored, duplicates excluded

	// Faults.
	refuseNext    int           // refuse this many stream messages with ResourceExhausted
	retryHint     time.Duration // the RetryInfo delay sent with a refusal
	failAfter     int           // after storing this many batches (if > 0), end streams with Internal
	dropAcksAfter int           // after this many batches (if > 0), store but close the stream without acking
	tamperProofs  bool          // flip a bit in every proof hash
	tamperTile    string        // flip a bit in the tile served at this path
	token         string
}

func newFakeLog(t *testing.T) *fakeLog {
	t.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, "fake.grantline.test/log")
	if err != nil {
		t.Fatal(err)
	}
	s, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeLog{origin: "fake.grantline.test/log", signer: s, vkey: vkey,
		tree: testonly.New(rfc6962.DefaultHasher), byKey: map[string]uint64{}, ckpts: map[uint64]string{}, token: "test-token"}
	f.publishLocked()
	return f
}

// serve starts the fake on a loopback h2c server and returns its URL.
func (f *fakeLog) serve(t *testing.T) string {
	t.Helper()
	mux := http.NewServeMux()
	auth := connect.WithInterceptors(connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			if req.Header().Get("Authorization") != "Bearer "+f.token {
				return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("bad token"))
			}
			return next(ctx, req)
		}
	}))
	mux.HandleFunc("GET /checkpoint", f.serveTiles)
	mux.HandleFunc("GET /tile/", f.serveTiles)
	mux.Handle(grantlinev1connect.NewIngestServiceHandler(f, auth))
	mux.Handle(grantlinev1connect.NewLogServiceHandler(f, auth))
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL
}

// serveTiles serves the C2SP tlog-tiles read path, built with x/mod's tlog.
func (f *fakeLog) serveTiles(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+f.token {
		http.Error(w, "bad token", http.StatusUnauthorized)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.URL.Path == "/checkpoint" {
		io.WriteString(w, f.ckpts[f.tree.Size()])
		return
	}
	p := strings.TrimPrefix(r.URL.Path, "/")
	p = strings.Replace(p, "tile/entries/", "tile/8/data/", 1)
	p = strings.Replace(p, "tile/", "tile/8/", 1)
	p = strings.Replace(p, "tile/8/8/data/", "tile/8/data/", 1)
	tile, err := tlog.ParseTilePath(p)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	size := int64(f.tree.Size())
	if tile.L == -1 {
		end := tile.N*256 + int64(tile.W)
		if end > size {
			http.NotFound(w, r)
			return
		}
		var buf []byte
		for i := tile.N * 256; i < end; i++ {
			buf = binary.BigEndian.AppendUint16(buf, uint16(len(f.leaves[i])))
			buf = append(buf, f.leaves[i]...)
		}
		w.Write(buf)
		return
	}
	data, err := tlog.ReadTileData(tile, tlog.HashReaderFunc(func(ix []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(ix))
		for i, x := range ix {
			if x >= int64(len(f.hashes)) {
				return nil, errors.New("beyond the tree")
			}
			out[i] = f.hashes[x]
		}
		return out, nil
	}))
	if err != nil || (int64(tile.N)*256+int64(tile.W))<<(8*tile.L) > size {
		http.NotFound(w, r)
		return
	}
	if f.tamperTile == r.URL.Path {
		data[5] ^= 1
	}
	w.Write(data)
}

// writeVkey writes the fake's verifier key and returns the file name.
func (f *fakeLog) writeVkey(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "log.vkey")
	if err := os.WriteFile(p, []byte(f.vkey+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func (f *fakeLog) publishLocked() {
	text := fmt.Sprintf("%s\n%d\n%s\n", f.origin, f.tree.Size(), base64.StdEncoding.EncodeToString(f.tree.Hash()))
	msg, err := note.Sign(&note.Note{Text: text}, f.signer)
	if err != nil {
		panic(err)
	}
	f.ckpts[f.tree.Size()] = string(msg)
}

func (f *fakeLog) appendLocked(evs []*pb.Event) []*pb.AppendResult {
	res := make([]*pb.AppendResult, len(evs))
	for i, ev := range evs {
		key := ev.GetSource().GetSystem() + "\x00" + ev.GetId()
		if idx, ok := f.byKey[key]; ok {
			res[i] = &pb.AppendResult{Index: idx, LeafHash: f.tree.LeafHash(idx), Duplicate: true}
			continue
		}
		leaf, err := event.EncodeLeaf(ev, time.Unix(1700000000, 0))
		if err != nil {
			panic(err)
		}
		idx := f.tree.Size()
		hs, err := tlog.StoredHashes(int64(idx), leaf, tlog.HashReaderFunc(func(ix []int64) ([]tlog.Hash, error) {
			out := make([]tlog.Hash, len(ix))
			for i, x := range ix {
				out[i] = f.hashes[x]
			}
			return out, nil
		}))
		if err != nil {
			panic(err)
		}
		f.hashes = append(f.hashes, hs...)
		f.tree.AppendData(leaf)
		f.leaves = append(f.leaves, leaf)
		f.events = append(f.events, ev)
		f.byKey[key] = idx
		f.appended++
		res[i] = &pb.AppendResult{Index: idx, LeafHash: f.tree.LeafHash(idx)}
	}
	f.batches++
	f.publishLocked()
	return res
}

func (f *fakeLog) AppendStream(ctx context.Context, st *connect.BidiStream[pb.AppendStreamRequest, pb.AppendStreamResponse]) error {
	if st.RequestHeader().Get("Authorization") != "Bearer "+f.token {
		return connect.NewError(connect.CodeUnauthenticated, errors.New("bad token"))
	}
	for {
		req, err := st.Receive()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		f.mu.Lock()
		if f.refuseNext > 0 {
			f.refuseNext--
			f.mu.Unlock()
			ce := connect.NewError(connect.CodeResourceExhausted, errors.New("queue full"))
			if d, err := connect.NewErrorDetail(&errdetails.RetryInfo{RetryDelay: durationpb.New(f.retryHint)}); err == nil {
				ce.AddDetail(d)
			}
			return ce
		}
		if f.failAfter > 0 && f.batches >= f.failAfter {
			f.mu.Unlock()
			return connect.NewError(connect.CodeInternal, errors.New("injected failure"))
		}
		for _, ev := range req.GetEvents() {
			if ev.GetType() == "bogus.type" {
				f.mu.Unlock()
				return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("events[%d].type: unknown event type %q", 0, ev.GetType()))
			}
		}
		res := f.appendLocked(req.GetEvents())
		size := f.tree.Size()
		drop := f.dropAcksAfter > 0 && f.batches > f.dropAcksAfter
		if drop {
			f.dropAcksAfter = 0 // once
		}
		f.mu.Unlock()
		if drop {
			return connect.NewError(connect.CodeUnavailable, errors.New("injected: stored but not acknowledged"))
		}
		if err := st.Send(&pb.AppendStreamResponse{Seq: req.GetSeq(), Results: res, TreeSize: size}); err != nil {
			return err
		}
	}
}

func (f *fakeLog) GetCheckpoint(_ context.Context, req *connect.Request[pb.GetCheckpointRequest]) (*connect.Response[pb.GetCheckpointResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	size := req.Msg.GetTreeSize()
	if size == 0 {
		size = f.tree.Size()
	}
	c, ok := f.ckpts[size]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("no checkpoint published at size %d", size))
	}
	return connect.NewResponse(&pb.GetCheckpointResponse{Checkpoint: c, TreeSize: size, RootHash: f.tree.HashAt(size)}), nil
}

func (f *fakeLog) entryLocked(i uint64) *pb.LogEntry {
	return &pb.LogEntry{Index: i, Leaf: f.leaves[i], LeafHash: f.tree.LeafHash(i), Event: f.events[i], ObservedTime: timestamppb.New(time.Unix(1700000000, 0))}
}

func (f *fakeLog) GetEntries(_ context.Context, req *connect.Request[pb.GetEntriesRequest]) (*connect.Response[pb.GetEntriesResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := uint64(req.Msg.GetCount())
	if n == 0 {
		n = 100
	}
	if req.Msg.GetStart() >= f.tree.Size() {
		return nil, connect.NewError(connect.CodeOutOfRange, fmt.Errorf("start %d: tree size is %d", req.Msg.GetStart(), f.tree.Size()))
	}
	resp := &pb.GetEntriesResponse{}
	for i := req.Msg.GetStart(); i < f.tree.Size() && i < req.Msg.GetStart()+n; i++ {
		resp.Entries = append(resp.Entries, f.entryLocked(i))
	}
	return connect.NewResponse(resp), nil
}

func (f *fakeLog) GetInclusionProof(_ context.Context, req *connect.Request[pb.GetInclusionProofRequest]) (*connect.Response[pb.GetInclusionProofResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	size := req.Msg.GetTreeSize()
	if size == 0 {
		size = f.tree.Size()
	}
	c, ok := f.ckpts[size]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("no checkpoint at size %d", size))
	}
	var idx uint64
	switch l := req.Msg.GetLeaf().(type) {
	case *pb.GetInclusionProofRequest_Index:
		idx = l.Index
	case *pb.GetInclusionProofRequest_LeafHash:
		found := false
		for i := range f.tree.Size() {
			if bytes.Equal(f.tree.LeafHash(i), l.LeafHash) {
				idx, found = i, true
				break
			}
		}
		if !found {
			return nil, connect.NewError(connect.CodeNotFound, errors.New("no such leaf hash"))
		}
	}
	if idx >= size {
		return nil, connect.NewError(connect.CodeOutOfRange, fmt.Errorf("index %d not below size %d", idx, size))
	}
	p, err := f.tree.InclusionProof(idx, size)
	if err != nil {
		return nil, connect.NewError(connect.CodeInternal, err)
	}
	f.tamper(p)
	return connect.NewResponse(&pb.GetInclusionProofResponse{Index: idx, TreeSize: size, LeafHash: f.tree.LeafHash(idx), Hashes: p, Checkpoint: c}), nil
}

func (f *fakeLog) GetConsistencyProof(_ context.Context, req *connect.Request[pb.GetConsistencyProofRequest]) (*connect.Response[pb.GetConsistencyProofResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	from, to := req.Msg.GetFromSize(), req.Msg.GetToSize()
	if to == 0 {
		to = f.tree.Size()
	}
	c1, ok1 := f.ckpts[from]
	c2, ok2 := f.ckpts[to]
	if !ok1 || !ok2 || from > to {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("no checkpoints at sizes %d and %d", from, to))
	}
	p, err := f.tree.ConsistencyProof(from, to)
	if err != nil {
		return nil, connect.NewError(connect.CodeInternal, err)
	}
	f.tamper(p)
	return connect.NewResponse(&pb.GetConsistencyProofResponse{FromSize: from, ToSize: to, Hashes: p, FromCheckpoint: c1, ToCheckpoint: c2}), nil
}

func (f *fakeLog) tamper(p [][]byte) {
	if f.tamperProofs && len(p) > 0 {
		p[len(p)/2] = bytes.Clone(p[len(p)/2])
		p[len(p)/2][0] ^= 1
	}
}

func (f *fakeLog) ListSubjectEvents(_ context.Context, req *connect.Request[pb.ListSubjectEventsRequest]) (*connect.Response[pb.ListSubjectEventsResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := int(req.Msg.GetPageSize())
	if n == 0 {
		n = 100
	}
	var start uint64
	if tok := req.Msg.GetPageToken(); tok != "" {
		v, err := strconv.ParseUint(tok, 10, 64)
		if err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("bad page token"))
		}
		start = v
	}
	resp := &pb.ListSubjectEventsResponse{}
	for i := start; i < f.tree.Size(); i++ {
		if f.events[i].GetSubject().GetId() != req.Msg.GetSubjectId() {
			continue
		}
		if len(resp.Entries) == n {
			resp.NextPageToken = strconv.FormatUint(i, 10)
			break
		}
		resp.Entries = append(resp.Entries, f.entryLocked(i))
	}
	return connect.NewResponse(resp), nil
}

// testEvent is a small valid event.
func testEvent(i int, subject string) *pb.Event {
	return &pb.Event{
		Id:      fmt.Sprintf("ev-%06d", i),
		Type:    "access.approved",
		Time:    timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)),
		Source:  &pb.Source{System: "okta"},
		Subject: &pb.Identity{Id: subject, Kind: "human"},
		Refs:    &pb.Refs{Request: fmt.Sprintf("req-%d", i)},
	}
}

func TestVersionLine(t *testing.T) {
	tests := []struct {
		bi   debug.BuildInfo
		want string
	}{
		{debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.0"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "0123abcd"}, {Key: "vcs.time", Value: "2026-12-01T10:00:00Z"}, {Key: "vcs.modified", Value: "false"}}},
			"grantline v1.2.0 (revision 0123abcd, 2026-12-01T10:00:00Z) go1.26.8"},
		{debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "beef"}, {Key: "vcs.modified", Value: "true"}}},
			"grantline (devel) (revision beef, modified) go1.26.8"},
		{debug.BuildInfo{GoVersion: "go1.26.8"}, "grantline (devel) (revision unknown) go1.26.8"},
	}
	for _, tt := range tests {
		if got := versionLine(&tt.bi); got != tt.want {
			t.Errorf("versionLine = %q, want %q", got, tt.want)
		}
	}
}
