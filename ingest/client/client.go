// Package client is the Go client of a Grantline server, for integrators and
// for the grantline command: Dial connects (HTTP/2 in cleartext (h2c) for an
// http:// URL, TLS for https://, with a bearer token on every call);
// Client.AppendStream sends batches of events over concurrent AppendStream
// streams with a window of unacknowledged batches, retrying refused or broken
// streams (appends are idempotent, so a batch sent twice is stored once);
// ReadEvents reads JSON-lines input with errors of the form
// "FILE:LINE: field x.y: problem"; and VerifyTiles recomputes the whole log
// from the server's tlog-tiles endpoints with Tessera's client. The package
// imports neither the server (ingest) nor anything internal; event
// validation and limits come from ledger/event.
package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/proto/gen/grantline/v1/grantlinev1connect"
)

// Options configure Dial.
type Options struct {
	// Token is the bearer token sent with every call.
	Token string
	// CAFile is a PEM bundle of CAs to trust for an https:// server; empty
	// means the system roots.
	CAFile string
	// GRPC speaks gRPC instead of the Connect protocol.
	GRPC bool
	// NoGzip sends requests uncompressed and asks for uncompressed
	// responses: on loopback gzip costs more CPU than it saves (an
	// AppendStream acknowledgement of 1000 results is ~45 KB, which the
	// server would otherwise gzip and the client inflate).
	NoGzip bool
}

// ErrBadURL is returned by Dial for a server URL that is not http:// or
// https://.
var ErrBadURL = errors.New("want a URL such as http://127.0.0.1:7800")

// Client is a connection to one server; safe for concurrent use.
type Client struct {
	http     *http.Client
	baseURL  string
	token    string
	ingest   grantlinev1connect.IngestServiceClient
	log      grantlinev1connect.LogServiceClient
	evidence grantlinev1connect.EvidenceServiceClient
}

// Dial builds a client for the server at serverURL; it does not contact the
// server.
func Dial(serverURL string, o Options) (*Client, error) {
	base := strings.TrimRight(serverURL, "/")
	if !strings.HasPrefix(base, "http://") && !strings.HasPrefix(base, "https://") {
		return nil, fmt.Errorf("server %q: %w", serverURL, ErrBadURL)
	}
	hc, err := newHTTPClient(strings.HasPrefix(base, "https://"), o.CAFile)
	if err != nil {
		return nil, err
	}
	opts := []connect.ClientOption{
		connect.WithInterceptors(Bearer(o.Token)),
		connect.WithReadMaxBytes(64 << 20),
		connect.WithCodec(protoCodec{}),
	}
	if o.NoGzip {
		opts = append(opts, connect.WithAcceptCompression("gzip", nil, nil))
	} else {
		opts = append(opts, connect.WithSendGzip())
	}
	if o.GRPC {
		opts = append(opts, connect.WithGRPC())
	}
	c := &Client{
		http:     hc,
		baseURL:  base,
		token:    o.Token,
		log:      grantlinev1connect.NewLogServiceClient(hc, base, opts...),
		evidence: grantlinev1connect.NewEvidenceServiceClient(hc, base, opts...),
	}
	var hopts []connect.ClientOption
	if o.GRPC {
		hopts = append(hopts, connect.WithGRPC())
	}
	c.ingest = &settledIngest{IngestServiceClient: grantlinev1connect.NewIngestServiceClient(hc, base, opts...),
		health: grpchealth.NewClient(hc, base, hopts...)}
	return c, nil
}

// settledIngest is the IngestService client of a Client: its AppendStream
// first makes sure the HTTP/2 connection has the server's SETTINGS.
//
// Go's HTTP/2 transport sizes the buffer a request body is sent from by
// the largest frame the server accepts as known when the request starts,
// and keeps it for the request's life. A stream opened on a new
// connection, before the server's SETTINGS arrive, therefore sends its
// whole life in 16 KiB DATA frames, which the server reads with two
// system calls each; an AppendStream batch of 1000 events (~500 KiB) took
// ~35 frames instead of one (docs/BENCHMARKS.md, "End to end", round 5).
// A health check answered on the connection means its SETTINGS were read
// (they come first), so streams opened after it send large frames.
type settledIngest struct {
	grantlinev1connect.IngestServiceClient
	health *grpchealth.Client

	mu      sync.Mutex
	settled bool
}

// settleTimeout bounds the health check before the first stream; the
// stream is opened whatever its outcome.
const settleTimeout = 5 * time.Second

func (s *settledIngest) AppendStream(ctx context.Context) *connect.BidiStreamForClient[pb.AppendStreamRequest, pb.AppendStreamResponse] {
	s.settle(ctx)
	return s.IngestServiceClient.AppendStream(ctx)
}

// settle makes one health check on the connection, once per Client: any
// answer, an error status included (a server or proxy without the health
// service), means the connection is up and its SETTINGS were read. A
// failure to reach the server is left to the stream to report; the next
// stream tries again.
func (s *settledIngest) settle(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.settled {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, settleTimeout)
	defer cancel()
	if _, err := s.health.Check(ctx, &grpchealth.CheckRequest{}); err != nil {
		switch connect.CodeOf(err) {
		case connect.CodeUnavailable, connect.CodeDeadlineExceeded, connect.CodeCanceled:
			return // not reached, or not answered
		}
	}
	s.settled = true
}

// newHTTPClient returns a client that speaks only HTTP/2, which
// bidirectional streams need: over TLS for https, cleartext (h2c) for http.
func newHTTPClient(useTLS bool, caFile string) (*http.Client, error) {
	var protos http.Protocols
	tr := &http.Transport{
		Protocols: &protos,
		HTTP2: &http.HTTP2Config{
			// Ping an idle connection so a dead peer is noticed mid-stream.
			SendPingTimeout: 30 * time.Second,
			// Let the server send an acknowledgement of 1000 results
			// (~45 KB) in one DATA frame rather than three of 16 KiB.
			MaxReadFrameSize: 1 << 20,
		},
	}
	if !useTLS {
		protos.SetUnencryptedHTTP2(true)
		return &http.Client{Transport: tr}, nil
	}
	protos.SetHTTP2(true)
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("reading CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: no PEM certificates found", caFile)
		}
		cfg.RootCAs = pool
	}
	tr.TLSClientConfig = cfg
	return &http.Client{Transport: tr}, nil
}

// URL is the server's base URL, without a trailing slash.
func (c *Client) URL() string { return c.baseURL }

// Ingest is the IngestService client (Append, AppendStream).
func (c *Client) Ingest() grantlinev1connect.IngestServiceClient { return c.ingest }

// Log is the LogService client (checkpoints, proofs, entries).
func (c *Client) Log() grantlinev1connect.LogServiceClient { return c.log }

// Evidence is the EvidenceService client (evaluation, evidence packages).
func (c *Client) Evidence() grantlinev1connect.EvidenceServiceClient { return c.evidence }

// Bearer is an interceptor that adds "Authorization: Bearer token" to every
// call, unary and streaming, for Connect clients built by hand.
func Bearer(token string) connect.Interceptor { return bearerInterceptor("Bearer " + token) }

type bearerInterceptor string

func (b bearerInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("Authorization", string(b))
		return next(ctx, req)
	}
}

func (b bearerInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		conn.RequestHeader().Set("Authorization", string(b))
		return conn
	}
}

func (b bearerInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// Open performs an authenticated plain HTTP GET of path (the tlog-tiles read
// path, /admin/backup) and returns the response, whatever its status; the
// caller closes its body.
func (c *Client) Open(ctx context.Context, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.baseURL+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	return c.http.Do(req)
}

// Get is Open reading the body (at most 64 MiB); a status other than 200
// is an error quoting the server's message.
func (c *Client) Get(ctx context.Context, path string) ([]byte, error) {
	resp, err := c.Open(ctx, path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("GET %s: reading response: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", path, resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}
