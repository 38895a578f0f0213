package ingest

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/proto/gen/grantline/v1/grantlinev1connect"
)

// bomb returns a gzip-compressed AppendRequest of about 16 KiB that
// inflates to just under 16 MiB (event.MaxMessageBytes) of valid protobuf: one
// event whose reason is 16 MiB of the same letter.
func bomb(t *testing.T) (compressed []byte, inflated int) {
	t.Helper()
	ev := newEvent("okta", "bomb", "session.started", "alice")
	ev.Reason = strings.Repeat("a", event.MaxMessageBytes-4096)
	raw, err := proto.Marshal(&pb.AppendRequest{Events: []*pb.Event{ev}})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	zw.Write(raw)
	zw.Close()
	if buf.Len() > 20<<10 || len(raw) < 15<<20 {
		t.Fatalf("bomb is %d bytes inflating to %d; want ~16 KiB to ~16 MiB", buf.Len(), len(raw))
	}
	return buf.Bytes(), len(raw)
}

// allocated returns the bytes the process allocated while f ran.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// grpcFrame wraps a message in a gRPC length-prefixed frame.
func grpcFrame(msg []byte, compressed bool) []byte {
	frame := make([]byte, 5, 5+len(msg))
	if compressed {
		frame[0] = 1
	}
	binary.BigEndian.PutUint32(frame[1:], uint32(len(msg)))
	return append(frame, msg...)
}

// post sends a raw request and returns the status, the Connect or gRPC code
// and the response body.
func (e *testEnv) post(t *testing.T, path string, header http.Header, body []byte) (int, string, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, e.url+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = header
	resp, err := e.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	code := resp.Header.Get("Grpc-Status")
	if code == "" {
		code = resp.Trailer.Get("Grpc-Status")
	}
	return resp.StatusCode, code, string(b)
}

// TestPreAuthBombIsNotRead sends a 16 KiB body that inflates to 16 MiB
// without a valid token: it must be refused before the body is read, so it
// costs the server (and this process) well under a few MiB instead of the
// hundreds of MiB that inflating and decoding it costs.
func TestPreAuthBombIsNotRead(t *testing.T) {
	z, inflated := bomb(t)
	e := newEnv(t)
	appendPath := grantlinev1connect.IngestServiceAppendProcedure
	tests := []struct {
		name       string
		token      string
		header     http.Header
		body       []byte
		status     int
		grpcStatus string
		reason     string
	}{
		{"connect, no token", "", http.Header{"Content-Type": {"application/proto"}, "Content-Encoding": {"gzip"}}, z, 401, "", "no_token"},
		{"connect, unknown token", "glt_nope", http.Header{"Content-Type": {"application/proto"}, "Content-Encoding": {"gzip"}}, z, 401, "", "bad_token"},
		{"connect, wrong role", auditorTok, http.Header{"Content-Type": {"application/proto"}, "Content-Encoding": {"gzip"}}, z, 403, "", "permission"},
		{"connect json, no token", "", http.Header{"Content-Type": {"application/json"}, "Content-Encoding": {"gzip"}}, z, 401, "", "no_token"},
		{"grpc, no token", "", http.Header{"Content-Type": {"application/grpc"}, "Grpc-Encoding": {"gzip"}, "Te": {"trailers"}}, grpcFrame(z, true), 200, "16", "no_token"},
	}
	// Warm the connection and the handlers up, so that only the request is
	// measured.
	e.post(t, appendPath, http.Header{"Content-Type": {"application/proto"}}, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := tt.header.Clone()
			if tt.token != "" {
				h.Set("Authorization", "Bearer "+tt.token)
			}
			var status int
			var grpcStatus, body string
			n := allocated(func() { status, grpcStatus, body = e.post(t, appendPath, h, tt.body) })
			if status != tt.status || grpcStatus != tt.grpcStatus {
				t.Errorf("status %d, grpc-status %q (%s); want %d, %q", status, grpcStatus, body, tt.status, tt.grpcStatus)
			}
			const bound = 3 << 20
			if n > bound {
				t.Errorf("the refused %d-byte body (%d inflated) cost %d bytes of allocation; want < %d", len(tt.body), inflated, n, bound)
			}
			t.Logf("refused with %d, %d bytes allocated", status, n)
		})
	}
	if got := e.ledger.size(); got != 0 {
		t.Errorf("ledger holds %d entries, want 0", got)
	}
	_, metrics := e.get(t, "/metrics", adminTok)
	for _, want := range []string{
		`grantline_refused_requests_total{code="unauthenticated",reason="no_token"} 4`,
		`grantline_refused_requests_total{code="unauthenticated",reason="bad_token"} 1`,
		`grantline_refused_requests_total{code="permission_denied",reason="permission"} 1`,
	} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if logs := e.logs.String(); !strings.Contains(logs, `"msg":"rpc refused"`) || !strings.Contains(logs, `"reason":"permission"`) {
		t.Errorf("refusals are not logged with their reason:\n%s", logs)
	}
}

// TestCompressionLimits: with a valid token, a message whose compression
// ratio is that of a bomb is refused while inflating (InvalidArgument), not
// inflated to the end; an ordinary compressed batch is accepted.
func TestCompressionLimits(t *testing.T) {
	z, _ := bomb(t)
	e := newEnv(t)
	h := http.Header{"Content-Type": {"application/proto"}, "Content-Encoding": {"gzip"}, "Authorization": {"Bearer " + adminTok}}
	e.post(t, grantlinev1connect.IngestServiceAppendProcedure, h, nil) // warm up
	var status int
	var body string
	n := allocated(func() { status, _, body = e.post(t, grantlinev1connect.IngestServiceAppendProcedure, h, z) })
	if status != 400 || !strings.Contains(body, "ratio limit") {
		t.Errorf("bomb with a token: %d %s; want 400 naming the ratio limit", status, body)
	}
	if bound := uint64(12 << 20); n > bound {
		t.Errorf("the refused bomb cost %d bytes of allocation; want < %d", n, bound)
	}
	if e.ledger.size() != 0 {
		t.Fatalf("the bomb stored %d entries", e.ledger.size())
	}
	_, metrics := e.get(t, "/metrics", adminTok)
	if want := `grantline_refused_requests_total{code="invalid_argument",reason="compression"} 1`; !strings.Contains(string(metrics), want) {
		t.Errorf("/metrics lacks %s", want)
	}

	for _, p := range protocols {
		c := grantlinev1connect.NewIngestServiceClient(e.hc, e.url, append([]connect.ClientOption{connect.WithInterceptors(bearerAuth(oktaTok)), connect.WithSendGzip()}, p.opts...)...)
		var evs []*pb.Event
		for i := range 1000 {
			evs = append(evs, newEvent("okta", fmt.Sprint(p.name, i), "session.started", "alice"))
		}
		if _, err := c.Append(t.Context(), connect.NewRequest(&pb.AppendRequest{Events: evs})); err != nil {
			t.Errorf("%s: a gzip-compressed batch of 1000 events: %v", p.name, err)
		}
	}
}

func TestCappedGzip(t *testing.T) {
	compress := func(b []byte) []byte {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		zw.Write(b)
		zw.Close()
		return buf.Bytes()
	}
	random := make([]byte, 3<<20)
	for i := range random {
		random[i] = byte(i*7919 + i>>8*31 + i>>16)
	}
	tests := []struct {
		name string
		in   []byte
		ok   bool
	}{
		{"small and repetitive", compress(bytes.Repeat([]byte("a"), ratioFreeBytes)), true},
		{"large, ordinary ratio", compress(random), true},
		{"bomb", compress(make([]byte, 4<<20)), false},
		{"over the size limit", compress(bytes.Repeat(random, 6)), false},
	}
	for _, tt := range tests {
		d := newCappedGzip()
		if err := d.Reset(bytes.NewBuffer(tt.in)); err != nil {
			t.Fatal(err)
		}
		_, err := io.Copy(io.Discard, d)
		if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrCompressionBomb)) {
			t.Errorf("%s: err = %v, want ok %v", tt.name, err, tt.ok)
		}
	}
}

// withUnknown returns ev with an unknown varint field 99 on msg (ev itself
// when msg is nil).
func withUnknown(ev *pb.Event, msg proto.Message) *pb.Event {
	if msg == nil {
		msg = ev
	}
	r := msg.ProtoReflect()
	r.SetUnknown(protowire.AppendVarint(protowire.AppendTag(r.GetUnknown(), 99, protowire.VarintType), 1))
	return ev
}

func TestUnknownFieldsRefused(t *testing.T) {
	okEv := func(id string) *pb.Event { return newEvent("okta", id, "grant.activated", "alice") }
	nested := okEv("u2")
	withUnknown(nested, nested.GetSubject())
	tests := []struct {
		name     string
		events   []*pb.Event
		fragment string
	}{
		{"on the event", []*pb.Event{withUnknown(okEv("u1"), nil)}, "events[0]: unknown field number 99"},
		{"on a nested message", []*pb.Event{okEv("u0"), nested}, "events[1].subject: unknown field number 99"},
	}
	for _, p := range []protocol{protocols[0], protocols[2]} {
		for _, tt := range tests {
			t.Run(p.name+"/"+tt.name, func(t *testing.T) {
				e := newEnv(t)
				c := e.clients(p, oktaTok)
				_, err := c.ingest.Append(t.Context(), connect.NewRequest(&pb.AppendRequest{Events: tt.events}))
				wantCode(t, err, connect.CodeInvalidArgument, tt.fragment)
				stream := c.ingest.AppendStream(t.Context())
				stream.Send(&pb.AppendStreamRequest{Seq: 1, Events: tt.events})
				stream.CloseRequest()
				_, err = stream.Receive()
				wantCode(t, err, connect.CodeInvalidArgument, tt.fragment)
				if got := e.ledger.size(); got != 0 {
					t.Errorf("ledger holds %d entries, want 0", got)
				}
			})
		}
	}

	// JSON: a misspelt field is refused by name, not dropped.
	e := newEnv(t)
	ev, _ := protojsonEvent(t, okEv("j1"))
	misspelt := strings.Replace(ev, `"reason":`, `"expire_at":"2026-01-01T00:00:00Z","reason":`, 1)
	body := `{"events":[` + misspelt + `]}`
	h := http.Header{"Content-Type": {"application/json"}, "Authorization": {"Bearer " + oktaTok}}
	status, _, resp := e.post(t, grantlinev1connect.IngestServiceAppendProcedure, h, []byte(body))
	if status != 400 || !strings.Contains(resp, `events[0]: unknown field \"expire_at\"`) || !strings.Contains(resp, `did you mean \"expires_at\"`) {
		t.Errorf("JSON with expire_at: %d %s; want 400 naming events[0] and expire_at", status, resp)
	}
	nestedJSON := strings.Replace(ev, `"actor":{`, `"actor":{"nick":"al",`, 1)
	status, _, resp = e.post(t, grantlinev1connect.IngestServiceAppendProcedure, h, []byte(`{"events":[`+nestedJSON+`]}`))
	if status != 400 || !strings.Contains(resp, `events[0].actor: unknown field \"nick\"`) {
		t.Errorf("JSON with actor.nick: %d %s; want 400 naming events[0].actor", status, resp)
	}
	status, _, resp = e.post(t, grantlinev1connect.IngestServiceAppendProcedure, h, []byte(`{"events":[`+ev+`]}`))
	if status != 200 {
		t.Errorf("the same event spelt right: %d %s", status, resp)
	}
	if got := e.ledger.size(); got != 1 {
		t.Errorf("ledger holds %d entries, want 1", got)
	}
	_, metrics := e.get(t, "/metrics", adminTok)
	if want := `grantline_refused_requests_total{code="invalid_argument",reason="unknown_field"} 2`; !strings.Contains(string(metrics), want) {
		t.Errorf("/metrics lacks %s", want)
	}
}

func protojsonEvent(t *testing.T, ev *pb.Event) (string, error) {
	t.Helper()
	b, err := strictJSONCodec{}.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	// protojson output has random spaces; normalise through the decoder
	// to compact JSON with stable separators.
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		t.Fatal(err)
	}
	return buf.String(), nil
}

// TestRevokedTokenStopsStream: a token revoked while its stream is open is
// refused at the stream's next message, and nothing of that message is
// stored; the batches acknowledged before stay.
func TestRevokedTokenStopsStream(t *testing.T) {
	for _, p := range streamProtocols {
		t.Run(p.name, func(t *testing.T) {
			e := newEnv(t)
			stream := e.clients(p, oktaTok).ingest.AppendStream(t.Context())
			if err := stream.Send(&pb.AppendStreamRequest{Seq: 1, Events: []*pb.Event{newEvent("okta", "r1", "grant.activated", "alice")}}); err != nil {
				t.Fatal(err)
			}
			if ack, err := stream.Receive(); err != nil || ack.GetSeq() != 1 {
				t.Fatalf("first ack = %v, %v", ack, err)
			}
			e.auth.revoke(oktaTok)
			stream.Send(&pb.AppendStreamRequest{Seq: 2, Events: []*pb.Event{newEvent("okta", "r2", "grant.activated", "alice")}})
			_, err := stream.Receive()
			wantCode(t, err, connect.CodeUnauthenticated, "batch seq 2 was not stored")
			stream.CloseRequest()
			if got := e.ledger.size(); got != 1 {
				t.Errorf("ledger holds %d entries, want 1 (only the batch acknowledged before the revocation)", got)
			}
		})
	}
}

// TestStreamLimits: a stream on which nothing arrives is closed after the
// idle timeout, and a busy one at its maximum lifetime, both with
// Unavailable (the client reconnects) after acknowledging what was stored.
func TestStreamLimits(t *testing.T) {
	t.Run("idle", func(t *testing.T) {
		e := newEnv(t, func(c *Config) { c.StreamIdleTimeout = time.Second })
		stream := e.clients(protocols[0], oktaTok).ingest.AppendStream(t.Context())
		if err := stream.Send(&pb.AppendStreamRequest{Seq: 1, Events: []*pb.Event{newEvent("okta", "i1", "grant.activated", "alice")}}); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Receive(); err != nil {
			t.Fatal(err)
		}
		// Nothing more is sent: the server must end the stream on its own.
		_, err := stream.Receive()
		wantCode(t, err, connect.CodeUnavailable, "stream idle")
		if e.ledger.size() != 1 {
			t.Errorf("ledger holds %d entries, want 1", e.ledger.size())
		}
	})
	t.Run("lifetime", func(t *testing.T) {
		e := newEnv(t, func(c *Config) { c.StreamMaxLifetime = 500 * time.Millisecond })
		stream := e.clients(protocols[0], oktaTok).ingest.AppendStream(t.Context())
		var err error
		acked := 0
		for i := 0; i < 1000 && err == nil; i++ {
			if serr := stream.Send(&pb.AppendStreamRequest{Seq: uint64(i), Events: []*pb.Event{newEvent("okta", fmt.Sprint("l", i), "grant.activated", "alice")}}); serr != nil && !errors.Is(serr, io.EOF) {
				t.Fatal(serr)
			}
			if _, err = stream.Receive(); err == nil {
				acked++
			}
			time.Sleep(20 * time.Millisecond)
		}
		wantCode(t, err, connect.CodeUnavailable, "maximum lifetime")
		if e.ledger.size() != acked {
			t.Errorf("ledger holds %d entries, %d were acknowledged", e.ledger.size(), acked)
		}
	})
}

// TestBodyReadTimeout: a unary call whose body stops arriving is ended at
// the body read timeout, and counted.
func TestBodyReadTimeout(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.BodyReadTimeout = 300 * time.Millisecond })
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, e.url+grantlinev1connect.IngestServiceAppendProcedure, pr)
	req.Header.Set("Content-Type", "application/proto")
	req.Header.Set("Authorization", "Bearer "+oktaTok)
	go pw.Write([]byte{0x0a, 0x80, 0x01}) // the start of an event, then nothing
	resp, err := e.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode == 200 {
		t.Fatalf("a stalled body was answered 200: %s", b)
	}
	_, metrics := e.get(t, "/metrics", adminTok)
	if !strings.Contains(string(metrics), `reason="timeout"`) {
		t.Errorf("the stalled body is not counted with reason timeout (%d %s)", resp.StatusCode, b)
	}
}

// TestEarlyRefusalsCounted: calls refused before the interceptors see them
// (undecodable bodies, unsupported content types) are logged and counted
// with a reason, like the calls the interceptors refuse.
func TestEarlyRefusalsCounted(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name   string
		header http.Header
		body   []byte
		status int
		metric string
	}{
		{"garbage protobuf", http.Header{"Content-Type": {"application/proto"}}, []byte{0xff, 0xff, 0xff}, 400,
			`grantline_refused_requests_total{code="invalid_argument",reason="decode"} 1`},
		{"garbage JSON", http.Header{"Content-Type": {"application/json"}}, []byte(`{"events":[{`), 400,
			`grantline_refused_requests_total{code="invalid_argument",reason="decode"} 2`},
		{"bad gzip", http.Header{"Content-Type": {"application/proto"}, "Content-Encoding": {"gzip"}}, []byte("not gzip"), 400,
			`grantline_refused_requests_total{code="invalid_argument",reason="compression"} 1`},
		{"unsupported compression", http.Header{"Content-Type": {"application/proto"}, "Content-Encoding": {"br"}}, []byte("x"), 501,
			`grantline_refused_requests_total{code="unimplemented",reason="unimplemented"} 1`},
	}
	for _, tt := range tests {
		h := tt.header.Clone()
		h.Set("Authorization", "Bearer "+oktaTok)
		if status, _, body := e.post(t, grantlinev1connect.IngestServiceAppendProcedure, h, tt.body); status != tt.status {
			t.Errorf("%s: %d %s; want %d", tt.name, status, body, tt.status)
		}
		_, metrics := e.get(t, "/metrics", adminTok)
		if !strings.Contains(string(metrics), tt.metric) {
			t.Errorf("%s: /metrics lacks %s", tt.name, tt.metric)
		}
	}
	if logs := e.logs.String(); strings.Count(logs, `"msg":"rpc refused"`) != len(tests) || !strings.Contains(logs, `"principal":"okta"`) {
		t.Errorf("want %d rpc refused lines naming the principal:\n%s", len(tests), logs)
	}
}

// BenchmarkStrictDecode is the cost of refusing unknown fields: decoding a
// batch of 1000 events with the strict codec against plain proto.Unmarshal.
func BenchmarkStrictDecode(b *testing.B) {
	var evs []*pb.Event
	for i := range 1000 {
		evs = append(evs, newEvent("okta", fmt.Sprint("b", i), "session.started", fmt.Sprint("u", i%50)))
	}
	raw, err := proto.Marshal(&pb.AppendRequest{Events: evs})
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		decode func([]byte, *pb.AppendRequest) error
	}{
		{"proto.Unmarshal", func(d []byte, m *pb.AppendRequest) error { return proto.Unmarshal(d, m) }},
		{"strict", func(d []byte, m *pb.AppendRequest) error { return strictProtoCodec{}.Unmarshal(d, m) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				var m pb.AppendRequest
				if err := c.decode(raw, &m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
