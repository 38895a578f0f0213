package ingest

import (
	"bytes"
	"compress/gzip"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/grantline/grantline/ingest/auth"
	"github.com/grantline/grantline/proto/gen/grantline/v1/grantlinev1connect"
)

// Procedures and headers the pre-auth fuzzer picks from (by index, so the
// fuzzer can reach every one); the last entries of each list are left to
// the fuzzer's own strings.
var (
	fuzzPaths = []string{
		grantlinev1connect.IngestServiceAppendProcedure,
		grantlinev1connect.IngestServiceAppendStreamProcedure,
		grantlinev1connect.LogServiceGetCheckpointProcedure,
		grantlinev1connect.LogServiceGetEntriesProcedure,
		grantlinev1connect.EvidenceServiceEvaluateProcedure,
		grantlinev1connect.EvidenceServiceExportEvidenceProcedure,
	}
	fuzzTypes = []string{
		"application/proto", "application/json", "application/json; charset=utf-8",
		"application/connect+proto", "application/connect+json",
		"application/grpc", "application/grpc+proto", "application/grpc-web+proto",
		"text/plain", "",
	}
	fuzzEncodings = []string{"", "gzip", "identity", "br", "gzip, gzip"}
)

// FuzzPreAuth sends random bodies, content types, compression headers and
// Authorization values (never a valid token) to the services' handler: the
// answer is always Unauthenticated (HTTP 401 for the Connect protocol,
// grpc-status 16 for gRPC) before the body is read, never a panic, and a call allocates a bounded amount whatever the body
// claims to inflate to.
func FuzzPreAuth(f *testing.F) {
	bombBody := func() []byte {
		var buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		zw.Write(make([]byte, 4<<20))
		zw.Close()
		return buf.Bytes()
	}()
	f.Add(uint8(0), uint8(0), uint8(1), "", bombBody)
	f.Add(uint8(0), uint8(5), uint8(1), "Bearer nope", append([]byte{1, 0, 0, 0x40, 0}, bombBody...))
	f.Add(uint8(1), uint8(3), uint8(0), "Bearer ", []byte{0, 0, 0, 0, 2, 10, 0})
	f.Add(uint8(2), uint8(1), uint8(0), "Basic YWRtaW46YWRtaW4=", []byte(`{"tree_size":1}`))
	f.Add(uint8(4), uint8(9), uint8(4), "bearer glt_x", []byte("\x00\x01\x02"))
	f.Add(uint8(5), uint8(7), uint8(2), "Bearer glt_"+strings.Repeat("A", 43), []byte{})

	ledger := newFakeLedger(f)
	srv, err := New(Config{
		Ledger: ledger, Logger: slog.New(slog.DiscardHandler),
		Auth: &fakeAuth{tokens: map[string]auth.Principal{adminTok: {Name: "root", Role: auth.RoleAdmin}}},
	})
	if err != nil {
		f.Fatal(err)
	}
	h := srv.Handler()
	f.Fuzz(func(t *testing.T, path, ctype, enc uint8, authz string, body []byte) {
		if strings.Contains(authz, adminTok) {
			t.Skip("a valid token is not pre-auth")
		}
		req := httptest.NewRequest(http.MethodPost, fuzzPaths[int(path)%len(fuzzPaths)], bytes.NewReader(body))
		if ct := fuzzTypes[int(ctype)%len(fuzzTypes)]; ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		if e := fuzzEncodings[int(enc)%len(fuzzEncodings)]; e != "" {
			req.Header.Set("Content-Encoding", e)
			req.Header.Set("Grpc-Encoding", e)
			req.Header.Set("Connect-Content-Encoding", e)
		}
		if authz != "" {
			req.Header.Set("Authorization", authz)
		}
		rec := httptest.NewRecorder()
		n := allocated(func() { h.ServeHTTP(rec, req) })
		// Every protocol's refusal, read as the middleware reads it: HTTP
		// status (Connect unary), Grpc-Status (gRPC), end-of-stream message
		// (Connect streams).
		code, msg := (&recordingWriter{ResponseWriter: rec, status: rec.Code, body: rec.Body.Bytes()}).outcome()
		if rec.Code >= 500 || code != connect.CodeUnauthenticated {
			t.Fatalf("status %d, code %v (%s); want unauthenticated", rec.Code, code, msg)
		}
		if bound := uint64(256<<10 + 2*len(body)); n > bound {
			t.Fatalf("a refused %d-byte body allocated %d bytes; want < %d", len(body), n, bound)
		}
		if ledger.size() != 0 {
			t.Fatal("an unauthenticated call stored something")
		}
	})
}
