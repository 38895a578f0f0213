package ingest

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"connectrpc.com/authn"
	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/grantline/grantline/ingest/auth"
	"github.com/grantline/grantline/ingest/ssf"
	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/event"
	"github.com/grantline/grantline/proto/gen/grantline/v1/grantlinev1connect"
)

// Config wires a Server. Ledger and Auth are required.
type Config struct {
	Ledger    Ledger
	Auth      Authenticator
	Evaluator Evaluator // nil: Evaluate answers Unimplemented
	Exporter  Exporter  // nil: ExportEvidence answers Unimplemented
	Logger    *slog.Logger
	// Registry receives the metrics; nil makes a new one.
	Registry *prometheus.Registry
	// MetricsPublic serves /metrics without a token.
	MetricsPublic bool
	// Now is the clock for validation and as-of defaults; nil is time.Now.
	Now func() time.Time
	// SSF, when set, serves POST /v1/ssf/events: Shared Signals SETs from
	// its configured transmitters.
	SSF *ssf.Receiver
	// BodyReadTimeout bounds reading the body of a unary or server-streaming
	// call; 0 is DefaultBodyReadTimeout.
	BodyReadTimeout time.Duration
	// StreamIdleTimeout closes a client stream (AppendStream) on which no
	// message arrived for that long; 0 is DefaultStreamIdleTimeout.
	StreamIdleTimeout time.Duration
	// StreamMaxLifetime closes a client stream that long after it opened;
	// 0 is DefaultStreamMaxLifetime.
	StreamMaxLifetime time.Duration
	// Witnessed, when set (a witness policy is configured), returns the
	// newest checkpoint that reached the witnesses' quorum, its Note carrying
	// their cosignatures, and false while there is none. GET /checkpoint then
	// serves it (503 while there is none) and evidence is anchored to it
	// (docs/witnessing.md). It must not block.
	Witnessed func() (ledger.Checkpoint, bool)
	// EvaluateChunkBytes bounds each message of an EvaluateStream (a chunk
	// of findings); 0 is DefaultEvaluateChunkBytes.
	EvaluateChunkBytes int
	// UnaryEvaluateMaxBytes bounds an Evaluate response: a larger result is
	// refused with ErrEvaluateTooLarge, pointing at EvaluateStream; 0 is
	// DefaultUnaryEvaluateMaxBytes.
	UnaryEvaluateMaxBytes int
	// EvaluateScan chooses how a full evaluation reads chains: by point
	// reads, or partitioned, by one sequential read of the log spilled to
	// disk (docs/design.md "Streamed evaluation"). The zero value reads by
	// point reads (it has no Dir).
	EvaluateScan EvaluateScan
	// EvaluateCache keeps the results of full evaluations at a fixed as-of
	// time or period on disk, so that a later evaluation of the grown log
	// re-evaluates only the subjects that may have changed (docs/design.md
	// "Incremental evaluation"). The zero value keeps none.
	EvaluateCache EvaluateCache
}

// Defaults for Config.
const (
	DefaultEvaluateChunkBytes    = 1 << 20
	DefaultUnaryEvaluateMaxBytes = 32 << 20
)

// Server holds the services and their HTTP routes.
type Server struct {
	cfg     Config
	log     *slog.Logger
	m       *metrics
	reg     *prometheus.Registry
	health  *grpchealth.StaticChecker
	handler http.Handler
	// The time limits of calls, defaults applied.
	bodyTimeout, idleTimeout, maxLifetime time.Duration
	// The size limits of evaluation results, defaults applied.
	evalChunk, unaryEvalMax int
	// cache is the evaluation cache; nil when off.
	cache *evalCache
	// ruleHash digests the rule set (ruleSetHash), computed once.
	ruleHash func() string
}

// serviceNames are the services reflection and health report.
var serviceNames = []string{
	grantlinev1connect.IngestServiceName,
	grantlinev1connect.LogServiceName,
	grantlinev1connect.EvidenceServiceName,
}

// New builds a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Ledger == nil || cfg.Auth == nil {
		return nil, errors.New("ingest: Config needs a Ledger and an Authenticator")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.BodyReadTimeout < 0 || cfg.StreamIdleTimeout < 0 || cfg.StreamMaxLifetime < 0 {
		return nil, errors.New("ingest: Config timeouts must not be negative")
	}
	if cfg.EvaluateChunkBytes < 0 || cfg.UnaryEvaluateMaxBytes < 0 || cfg.EvaluateScan.PartitionBytes < 0 {
		return nil, errors.New("ingest: Config evaluation limits must not be negative")
	}
	if err := removeSpillLeftovers(cfg.EvaluateScan, cfg.Logger); err != nil {
		return nil, err
	}
	if err := prepareEvalCache(cfg.EvaluateCache, cfg.Logger); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, reg: cfg.Registry,
		bodyTimeout:  orDefault(cfg.BodyReadTimeout, DefaultBodyReadTimeout),
		idleTimeout:  orDefault(cfg.StreamIdleTimeout, DefaultStreamIdleTimeout),
		maxLifetime:  orDefault(cfg.StreamMaxLifetime, DefaultStreamMaxLifetime),
		evalChunk:    orDefault(cfg.EvaluateChunkBytes, DefaultEvaluateChunkBytes),
		unaryEvalMax: orDefault(cfg.UnaryEvaluateMaxBytes, DefaultUnaryEvaluateMaxBytes),
	}
	s.m = newMetrics(cfg.Registry, cfg.Ledger, cfg.Now)
	if cfg.EvaluateCache.enabled() && cfg.Evaluator != nil {
		s.cache = &evalCache{cfg: cfg.EvaluateCache, log: cfg.Logger}
		s.ruleHash = sync.OnceValue(func() string { return ruleSetHash(cfg.Evaluator.Rules()) })
	}
	s.health = grpchealth.NewStaticChecker(serviceNames...)

	// Authentication and the role check run in HTTP middleware (guard),
	// before any of the body is read, decompressed or decoded; the decoders
	// are strict (codec.go) and the decompressor capped (compress.go).
	decoding := []connect.HandlerOption{
		connect.WithCompression("gzip", newCappedGzip, newGzipCompressor),
		connect.WithCodec(strictProtoCodec{}),
		connect.WithCodec(strictJSONCodec{name: "json"}),
		connect.WithCodec(strictJSONCodec{name: "json; charset=utf-8"}),
	}
	opts := append([]connect.HandlerOption{
		connect.WithInterceptors(s.observe(), errorMapper{}, s.streamGuard()),
		connect.WithRecover(s.recovered),
		connect.WithReadMaxBytes(event.MaxMessageBytes),
		connect.WithCompressMinBytes(1024),
	}, decoding...)
	mw := authn.NewMiddleware(s.authenticateCall, opts...)
	mux := http.NewServeMux()
	for _, route := range []func() (string, http.Handler){
		func() (string, http.Handler) {
			return grantlinev1connect.NewIngestServiceHandler(&ingestService{s: s}, opts...)
		},
		func() (string, http.Handler) {
			return grantlinev1connect.NewLogServiceHandler(&logService{s: s}, opts...)
		},
		func() (string, http.Handler) {
			return grantlinev1connect.NewEvidenceServiceHandler(&evidenceService{s: s}, opts...)
		},
	} {
		path, h := route()
		mux.Handle(path, s.guard(h, mw))
	}
	// Health and reflection answer without a token, within small limits.
	public := append([]connect.HandlerOption{
		connect.WithInterceptors(s.streamGuard()),
		connect.WithReadMaxBytes(publicReadMaxBytes),
	}, decoding...)
	reflector := grpcreflect.NewStaticReflector(serviceNames...)
	for _, route := range []func() (string, http.Handler){
		func() (string, http.Handler) { return grpcreflect.NewHandlerV1(reflector, public...) },
		func() (string, http.Handler) { return grpcreflect.NewHandlerV1Alpha(reflector, public...) },
		func() (string, http.Handler) { return grpchealth.NewHandler(s.health, public...) },
	} {
		path, h := route()
		mux.Handle(path, s.guard(h, nil))
	}

	tiles := s.requireHTTP(http.HandlerFunc(s.serveTiles))
	mux.Handle("/checkpoint", tiles)
	mux.Handle("/tile/", tiles)
	var metricsH http.Handler = promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{})
	if !cfg.MetricsPublic {
		metricsH = s.requireHTTP(metricsH)
	}
	mux.Handle("/metrics", metricsH)
	if b, ok := cfg.Ledger.(Backuper); ok {
		mux.Handle("GET /admin/backup", s.requireHTTPRole(backupHandler(b, s.log), auth.RoleAdmin))
	}
	mux.Handle(PushPath, s.pushHandler())
	if cfg.SSF != nil {
		mux.Handle("POST "+SSFPath, s.ssfHandler(cfg.SSF))
	}
	s.handler = mux
	return s, nil
}

// Handler returns the HTTP handler of every route: the three Connect services,
// reflection, health, the tlog-tiles read path and /metrics. Serve it over
// HTTP/2 (h2c or TLS) for gRPC and bidirectional streams.
func (s *Server) Handler() http.Handler { return s.handler }

// Registry returns the registry holding the server's metrics.
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// SetServing sets the gRPC health status of every service; call it with false
// when shutdown begins so load balancers stop sending new calls.
func (s *Server) SetServing(ok bool) {
	st := grpchealth.StatusServing
	if !ok {
		st = grpchealth.StatusNotServing
	}
	s.health.SetStatus("", st)
	for _, n := range serviceNames {
		s.health.SetStatus(n, st)
	}
}

// HTTP2Config is the HTTP/2 tuning the services need: receive windows large
// enough that a stream can have several multi-megabyte batches on the wire
// while earlier ones are being made durable (the default 1 MiB window would
// hold one ~500 KiB batch of 1000 events at a time). Use it as
// http.Server.HTTP2.
func HTTP2Config() *http.HTTP2Config {
	return &http.HTTP2Config{
		MaxReceiveBufferPerStream:     8 << 20,
		MaxReceiveBufferPerConnection: 32 << 20,
		MaxConcurrentStreams:          250,
	}
}

func (s *Server) now() time.Time { return s.cfg.Now() }

// recovered is the last resort for a panic in a handler: it is logged with its
// stack and the caller gets Internal. Validation, not this, keeps input from
// causing panics.
func (s *Server) recovered(ctx context.Context, spec connect.Spec, _ http.Header, p any) error {
	s.log.ErrorContext(ctx, "panic in handler", "procedure", spec.Procedure, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
	return connect.NewError(connect.CodeInternal, errors.New("internal error; the server logged the details"))
}

// ---- authorisation ----

// allowed reports whether role may call procedure (a Connect procedure path).
func allowed(role auth.Role, procedure string) bool {
	switch role {
	case auth.RoleAdmin:
		return true
	case auth.RoleSource:
		return procedure == grantlinev1connect.IngestServiceAppendProcedure ||
			procedure == grantlinev1connect.IngestServiceAppendStreamProcedure
	case auth.RoleAuditor:
		return strings.HasPrefix(procedure, "/"+grantlinev1connect.LogServiceName+"/") ||
			strings.HasPrefix(procedure, "/"+grantlinev1connect.EvidenceServiceName+"/")
	}
	return false
}

// authenticate checks an Authorization header value and returns the
// principal, the token, and on failure the reason label of the refusal. The
// token never appears in an error or a log.
func (s *Server) authenticate(header string) (auth.Principal, string, string, error) {
	if header == "" {
		return auth.Principal{}, "", "no_token", fmt.Errorf("%w: no bearer token; send the header 'Authorization: Bearer <token>' (a new server writes one to DATA/admin.token)", ErrUnauthenticated)
	}
	scheme, tok, ok := strings.Cut(header, " ")
	tok = strings.TrimSpace(tok)
	if !ok || subtle.ConstantTimeCompare([]byte(strings.ToLower(scheme)), []byte("bearer")) != 1 || tok == "" {
		return auth.Principal{}, "", "bad_header", fmt.Errorf("%w: the Authorization header is not of the form 'Bearer <token>'", ErrUnauthenticated)
	}
	p, err := s.cfg.Auth.Authenticate(tok)
	if err != nil {
		return auth.Principal{}, "", "bad_token", fmt.Errorf("%w: unknown or revoked token", ErrUnauthenticated)
	}
	return p, tok, "", nil
}

func orDefault[T time.Duration | int](d, def T) T {
	if d == 0 {
		return def
	}
	return d
}

// RequireAdmin guards an HTTP handler meant for the server's operator only
// (the server's profiling endpoint): a request without an admin token is
// refused with 401 or 403, logged and counted like every refusal.
func (s *Server) RequireAdmin(h http.Handler) http.Handler {
	return s.requireHTTPRole(h, auth.RoleAdmin)
}

// requireHTTP guards a plain HTTP route: auditor or admin.
func (s *Server) requireHTTP(h http.Handler) http.Handler {
	return s.requireHTTPRole(h, auth.RoleAuditor, auth.RoleAdmin)
}

// requireHTTPRole is requireHTTP for the given roles only.
func (s *Server) requireHTTPRole(h http.Handler, roles ...auth.Role) http.Handler {
	need := string(roles[0])
	for _, r := range roles[1:] {
		need += " or " + string(r)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, _, reason, err := s.authenticate(r.Header.Get("Authorization"))
		status := http.StatusUnauthorized
		if err == nil && !slices.Contains(roles, p.Role) {
			err = fmt.Errorf("%w: %s %q may not read %s; it needs an %s token", ErrPermission, p.Role, p.Name, r.URL.Path, need)
			status = http.StatusForbidden
			reason = "permission"
		}
		if err != nil {
			code := connect.CodeUnauthenticated
			if status == http.StatusForbidden {
				code = connect.CodePermissionDenied
			}
			s.m.refused.WithLabelValues(code.String(), reason).Inc()
			s.log.InfoContext(r.Context(), "http refused", "path", r.URL.Path, "status", status, "reason", reason, "peer", r.RemoteAddr, "principal", p.Name)
			if status == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Bearer realm="grantline"`)
			}
			http.Error(w, err.Error(), status)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// ---- errors, logs and metrics ----

// errorMapper turns every handler error into a Connect error (connectError).
type errorMapper struct{}

func (errorMapper) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		resp, err := next(ctx, req)
		return resp, connectError(err)
	}
}

func (errorMapper) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (errorMapper) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		return connectError(next(ctx, conn))
	}
}

// observe logs each call (procedure, principal, peer, code, duration; never a
// token) and counts it, with the reason of a refusal.
func (s *Server) observe() connect.Interceptor {
	done := func(ctx context.Context, spec connect.Spec, peer connect.Peer, start time.Time, err error) {
		d := time.Since(start)
		code := "ok"
		level := slog.LevelInfo
		principal := ""
		if c := callerFrom(ctx); c != nil {
			principal = c.Name
		}
		var reason string
		if err != nil {
			c := connect.CodeOf(err)
			code = c.String()
			reason = reasonOf(c, err.Error())
			s.m.refused.WithLabelValues(code, reason).Inc()
			switch c {
			case connect.CodeInternal, connect.CodeUnknown, connect.CodeDataLoss, connect.CodeUnavailable:
				level = slog.LevelError
			default:
				level = slog.LevelWarn
			}
			if errors.Is(err, ErrStreamIdle) || errors.Is(err, ErrStreamLifetime) {
				level = slog.LevelInfo // a limit doing its job, not a failure
			}
		}
		s.m.requests.WithLabelValues(spec.Procedure, code).Inc()
		s.m.duration.WithLabelValues(spec.Procedure).Observe(d.Seconds())
		attrs := []slog.Attr{
			slog.String("procedure", spec.Procedure), slog.String("code", code),
			slog.Duration("duration", d), slog.String("principal", principal),
			slog.String("peer", peer.Addr), slog.String("protocol", peer.Protocol),
		}
		if err != nil {
			attrs = append(attrs, slog.String("reason", reason), slog.String("err", err.Error()))
		}
		s.log.LogAttrs(ctx, level, "rpc", attrs...)
	}
	mark := func(ctx context.Context) {
		if rec := recordFrom(ctx); rec != nil {
			rec.observed = true
		}
	}
	return interceptor{
		unary: func(next connect.UnaryFunc) connect.UnaryFunc {
			return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
				mark(ctx)
				start := time.Now()
				resp, err := next(ctx, req)
				done(ctx, req.Spec(), req.Peer(), start, err)
				return resp, err
			}
		},
		stream: func(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
			return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
				mark(ctx)
				start := time.Now()
				err := next(ctx, conn)
				done(ctx, conn.Spec(), conn.Peer(), start, err)
				return err
			}
		},
	}
}

// interceptor is a handler-side connect.Interceptor from two decorators.
type interceptor struct {
	unary  func(connect.UnaryFunc) connect.UnaryFunc
	stream func(connect.StreamingHandlerFunc) connect.StreamingHandlerFunc
}

func (i interceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc { return i.unary(next) }

func (i interceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i interceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return i.stream(next)
}
