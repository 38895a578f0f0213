package ingest

import (
	"bytes"
	"context"
	"net/http"
	"sync"
	"testing"

	"connectrpc.com/connect"

	"github.com/grantline/grantline/ledger"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// TestWitnessed checks the two things a witness policy changes in ingest:
// GET /checkpoint serves the newest witnessed checkpoint (503 while there is
// none), and evidence is anchored to it.
func TestWitnessed(t *testing.T) {
	var (
		mu        sync.Mutex
		witnessed *ledger.Checkpoint
	)
	e := newEnv(t, func(c *Config) {
		c.Exporter = fakeExporter{}
		c.Witnessed = func() (ledger.Checkpoint, bool) {
			mu.Lock()
			defer mu.Unlock()
			if witnessed == nil {
				return ledger.Checkpoint{}, false
			}
			return *witnessed, true
		}
	})
	e.fill(t, 3)
	export := func(size uint64) ([]byte, error) {
		stream, err := e.clients(protocols[0], auditorTok).evidence.ExportEvidence(t.Context(), connect.NewRequest(&pb.ExportEvidenceRequest{TreeSize: size}))
		if err != nil {
			return nil, err
		}
		var cp []byte
		for stream.Receive() {
			if stream.Msg().GetPath() == "checkpoint" {
				cp = append(cp, stream.Msg().GetData()...)
			}
		}
		return cp, stream.Err()
	}

	// Nothing witnessed yet.
	resp, body := e.get(t, "/checkpoint", auditorTok)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("GET /checkpoint with nothing witnessed = %d (Retry-After %q) %q, want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	_, err := export(0)
	wantCode(t, err, connect.CodeUnavailable, "no checkpoint has reached the witnesses' quorum yet")
	getCP := func(size uint64, witnessed bool) (*pb.GetCheckpointResponse, error) {
		r, err := e.clients(protocols[0], auditorTok).log.GetCheckpoint(t.Context(),
			connect.NewRequest(&pb.GetCheckpointRequest{TreeSize: size, Witnessed: witnessed}))
		if err != nil {
			return nil, err
		}
		return r.Msg, nil
	}
	_, err = getCP(0, true)
	wantCode(t, err, connect.CodeUnavailable, "no checkpoint has reached the witnesses' quorum yet")

	// Size 3 witnessed; the log grows past it.
	cp := e.ledger.Latest()
	cp.Note = append(bytes.Clone(cp.Note), "— witness.test AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"...)
	mu.Lock()
	witnessed = &cp
	mu.Unlock()
	e.fill(t, 5)

	resp, body = e.get(t, "/checkpoint", auditorTok)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, cp.Note) {
		t.Errorf("GET /checkpoint = %d %q, want the witnessed note %q", resp.StatusCode, body, cp.Note)
	}
	tests := []struct {
		name string
		size uint64
		code connect.Code // 0: success
		msg  string
	}{
		{name: "latest", size: 0},
		{name: "the witnessed size", size: 3},
		{name: "an unwitnessed size", size: 5, code: connect.CodeInvalidArgument, msg: "evidence is anchored to the newest witnessed checkpoint (size 3)"},
	}
	cpTests := []struct {
		name      string
		size      uint64
		witnessed bool
		want      ledger.Checkpoint
		code      connect.Code // 0: success
		msg       string
	}{
		{name: "witnessed", witnessed: true, want: cp},
		{name: "witnessed at its size", size: 3, witnessed: true, want: cp},
		{name: "witnessed at another size", size: 5, witnessed: true, code: connect.CodeInvalidArgument, msg: "the newest witnessed checkpoint has size 3"},
		{name: "the log's latest", want: e.ledger.Latest()},
		{name: "the log's own at 3", size: 3, want: mustCheckpointAt(t, e.ledger, 3)},
	}
	for _, tt := range cpTests {
		t.Run("GetCheckpoint "+tt.name, func(t *testing.T) {
			got, err := getCP(tt.size, tt.witnessed)
			if tt.code != 0 {
				wantCode(t, err, tt.code, tt.msg)
				return
			}
			if err != nil || got.GetCheckpoint() != string(tt.want.Note) || got.GetTreeSize() != tt.want.Size || !bytes.Equal(got.GetRootHash(), tt.want.Root[:]) {
				t.Errorf("GetCheckpoint(%d, witnessed %v) = %v, %v; want size %d, note %q", tt.size, tt.witnessed, got, err, tt.want.Size, tt.want.Note)
			}
		})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := export(tt.size)
			if tt.code != 0 {
				wantCode(t, err, tt.code, tt.msg)
				return
			}
			if err != nil || !bytes.Equal(got, cp.Note) {
				t.Errorf("export(tree_size %d) = checkpoint %q, %v; want the witnessed note", tt.size, got, err)
			}
		})
	}
}

// mustCheckpointAt is the ledger's own checkpoint at size.
func mustCheckpointAt(t *testing.T, l interface {
	CheckpointAt(context.Context, uint64) (ledger.Checkpoint, error)
}, size uint64) ledger.Checkpoint {
	t.Helper()
	cp, err := l.CheckpointAt(t.Context(), size)
	if err != nil {
		t.Fatal(err)
	}
	return cp
}

// TestWitnessedWithoutPolicy: asking for the witnessed checkpoint of a
// server without a witness policy is a precondition failure, not an empty
// answer.
func TestWitnessedWithoutPolicy(t *testing.T) {
	e := newEnv(t)
	e.fill(t, 2)
	_, err := e.clients(protocols[0], auditorTok).log.GetCheckpoint(t.Context(), connect.NewRequest(&pb.GetCheckpointRequest{Witnessed: true}))
	wantCode(t, err, connect.CodeFailedPrecondition, "no witness policy")
}
