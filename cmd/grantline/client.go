package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/net/http2"

	"github.com/grantline/grantline/proto/gen/grantline/v1/grantlinev1connect"
)

const defaultServer = "http://127.0.0.1:7800"

// clientFlags are the flags every client command shares. Flags not given
// are taken from GRANTLINE_SERVER, GRANTLINE_TOKEN and GRANTLINE_CA, read
// only after parsing (resolve), so that help, usage lines and flag errors
// never print their values: a token must never reach a terminal or a log.
type clientFlags struct {
	server string
	token  string
	caFile string
	grpc   bool
	getenv func(string) string // nil: no environment
}

func (c *clientFlags) register(fs *flag.FlagSet, env *cmdEnv) {
	c.getenv = env.getenv
	fs.StringVar(&c.server, "server", "", "server URL (default $GRANTLINE_SERVER, else "+defaultServer+")")
	fs.StringVar(&c.token, "token", "", "bearer token (default $GRANTLINE_TOKEN)")
	fs.StringVar(&c.caFile, "ca", "", "PEM CA bundle to trust for an https server (default $GRANTLINE_CA)")
	fs.BoolVar(&c.grpc, "grpc", false, "speak gRPC instead of the Connect protocol")
}

// resolve fills the flags that were not given from the environment and the
// defaults. Call it after parsing; dial does.
func (c *clientFlags) resolve() {
	if c.getenv != nil {
		if c.server == "" {
			c.server = c.getenv("GRANTLINE_SERVER")
		}
		if c.token == "" {
			c.token = c.getenv("GRANTLINE_TOKEN")
		}
		if c.caFile == "" {
			c.caFile = c.getenv("GRANTLINE_CA")
		}
	}
	if c.server == "" {
		c.server = defaultServer
	}
}

// clients is the set of Connect clients for one server.
type clients struct {
	http     *http.Client
	baseURL  string
	token    string
	ingest   grantlinev1connect.IngestServiceClient
	log      grantlinev1connect.LogServiceClient
	evidence grantlinev1connect.EvidenceServiceClient
}

// dial builds clients; it does not contact the server.
func (c *clientFlags) dial() (*clients, error) {
	c.resolve()
	base := strings.TrimRight(c.server, "/")
	if !strings.HasPrefix(base, "http://") && !strings.HasPrefix(base, "https://") {
		return nil, fmt.Errorf("--server %q: want a URL such as %s", c.server, defaultServer)
	}
	if c.token == "" {
		return nil, fmt.Errorf("no token: pass --token or set GRANTLINE_TOKEN (a new server writes one to DATA/admin.token)")
	}
	hc, err := newHTTPClient(base, c.caFile)
	if err != nil {
		return nil, err
	}
	opts := []connect.ClientOption{
		connect.WithInterceptors(bearer(c.token)),
		connect.WithSendGzip(),
		connect.WithReadMaxBytes(64 << 20),
	}
	if c.grpc {
		opts = append(opts, connect.WithGRPC())
	}
	return &clients{
		http:     hc,
		baseURL:  base,
		token:    c.token,
		ingest:   grantlinev1connect.NewIngestServiceClient(hc, base, opts...),
		log:      grantlinev1connect.NewLogServiceClient(hc, base, opts...),
		evidence: grantlinev1connect.NewEvidenceServiceClient(hc, base, opts...),
	}, nil
}

// newHTTPClient returns a client that speaks HTTP/2: over TLS for https, and
// cleartext (h2c) for http, which bidirectional streams need.
func newHTTPClient(base, caFile string) (*http.Client, error) {
	if strings.HasPrefix(base, "https://") {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if caFile != "" {
			pem, err := os.ReadFile(caFile)
			if err != nil {
				return nil, fmt.Errorf("reading --ca: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("--ca %s: no PEM certificates found", caFile)
			}
			cfg.RootCAs = pool
		}
		return &http.Client{Transport: &http2.Transport{TLSClientConfig: cfg}}, nil
	}
	return &http.Client{Transport: &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
		ReadIdleTimeout: 30 * time.Second,
	}}, nil
}

// bearer adds the Authorization header to every call, unary and streaming.
func bearer(token string) connect.Interceptor { return bearerInterceptor("Bearer " + token) }

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

// get performs an authenticated plain HTTP GET (the tlog-tiles read path).
func (c *clients) get(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.baseURL+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.http.Do(req)
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
