package ingest

import (
	"bytes"
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
