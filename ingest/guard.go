package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/authn"
	"connectrpc.com/connect"

	"github.com/grantline/grantline/ingest/auth"
	"github.com/grantline/grantline/proto/gen/grantline/v1/grantlinev1connect"
)

// Time limits of a call; docs/operations.md lists them with the others.
const (
	// DefaultBodyReadTimeout bounds reading the request body of a unary or
	// server-streaming call (a 16 MiB message at 2 Mbit/s takes about 70 s).
	DefaultBodyReadTimeout = 2 * time.Minute
	// DefaultStreamIdleTimeout closes an AppendStream (or reflection stream)
	// on which no message arrived for this long.
	DefaultStreamIdleTimeout = 5 * time.Minute
	// DefaultStreamMaxLifetime closes a stream this long after it opened;
	// clients reconnect (the batches acknowledged before are durable, the
	// others are resent and deduplicated).
	DefaultStreamMaxLifetime = time.Hour
	// ReadHeaderTimeout is what a server should set as
	// http.Server.ReadHeaderTimeout: the time a client has to send its
	// request headers, before any authentication can happen.
	ReadHeaderTimeout = 10 * time.Second
	// publicReadMaxBytes bounds a message to the unauthenticated health and
	// reflection services.
	publicReadMaxBytes = 64 << 10
)

// Sentinels of stream limits and revocation, checked with errors.Is. They
// reach the client as Unavailable (the first two: reconnect) and
// Unauthenticated.
var (
	ErrStreamIdle     = errors.New("stream idle")
	ErrStreamLifetime = errors.New("stream reached its maximum lifetime")
	ErrRevoked        = errors.New("token revoked during the stream")
)

// caller is the authentication information the middleware attaches to a
// call's context (authn.GetInfo). token is kept for re-checking a stream's
// messages; it is never logged or put in an error.
type caller struct {
	auth.Principal
	token string
}

func callerFrom(ctx context.Context) *caller {
	c, _ := authn.GetInfo(ctx).(*caller)
	return c
}

// PrincipalFrom returns the authenticated caller of a request context.
func PrincipalFrom(ctx context.Context) (auth.Principal, bool) {
	if c := callerFrom(ctx); c != nil {
		return c.Principal, true
	}
	return auth.Principal{}, false
}

type callRecordKey struct{}

// callRecord follows one call through the middleware and the interceptors,
// so that a call refused before the interceptors saw it (authentication,
// protocol, size, decompression or decoding) is still logged and counted.
type callRecord struct {
	rc        *http.ResponseController
	procedure string
	start     time.Time
	caller    *caller
	observed  bool // the observe interceptor logged and counted the call
	accounted bool // the middleware already logged and counted a refusal
}

func recordFrom(ctx context.Context) *callRecord {
	r, _ := ctx.Value(callRecordKey{}).(*callRecord)
	return r
}

// clientStreaming are the procedures whose request is a stream of messages:
// their body is read under the stream idle timeout and lifetime instead of
// the body read timeout.
var clientStreaming = map[string]bool{
	grantlinev1connect.IngestServiceAppendStreamProcedure:            true,
	"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo":      true,
	"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": true,
}

// guard is the HTTP middleware in front of every Connect handler. It runs
// before any of the body is read: it sets the read deadline, authenticates
// and checks the role (when mw is not nil), and afterwards logs and counts
// a call that was refused before the interceptors saw it.
func (s *Server) guard(h http.Handler, mw *authn.Middleware) http.Handler {
	inner := h
	if mw != nil {
		inner = mw.Wrap(h)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		procedure, _ := authn.InferProcedure(r.URL)
		rec := &callRecord{rc: http.NewResponseController(w), procedure: procedure, start: time.Now()}
		if clientStreaming[procedure] {
			_ = rec.rc.SetReadDeadline(rec.start.Add(min(s.idleTimeout, s.maxLifetime)))
		} else {
			_ = rec.rc.SetReadDeadline(rec.start.Add(s.bodyTimeout))
			r.Body = &deadlineBody{ReadCloser: r.Body, rc: rec.rc}
		}
		r = r.WithContext(context.WithValue(r.Context(), callRecordKey{}, rec))
		if mw == nil {
			inner.ServeHTTP(w, r)
			return
		}
		rw := &recordingWriter{ResponseWriter: w}
		inner.ServeHTTP(rw, r)
		if !rec.observed && !rec.accounted {
			code, msg := rw.outcome()
			s.refusedCall(r, rec, code, reasonOf(code, msg), msg)
		}
	})
}

// authenticateCall is the authn.AuthFunc: it authenticates the bearer token
// and checks the role may call the procedure. It never reads the body.
func (s *Server) authenticateCall(ctx context.Context, r *http.Request) (any, error) {
	rec := recordFrom(ctx)
	procedure := r.URL.Path
	if rec != nil {
		procedure = rec.procedure
	}
	p, tok, reason, err := s.authenticate(r.Header.Get("Authorization"))
	if err == nil && !allowed(p.Role, procedure) {
		err = fmt.Errorf("%w: %s %q may not call %s", ErrPermission, p.Role, p.Name, procedure)
		reason = "permission"
	}
	if err != nil {
		// The code says "unauthenticated" or "permission denied" already.
		msg := strings.TrimPrefix(strings.TrimPrefix(err.Error(), ErrUnauthenticated.Error()+": "), ErrPermission.Error()+": ")
		ce := connect.NewError(connect.CodeUnauthenticated, errors.New(msg))
		if errors.Is(err, ErrPermission) {
			ce = connect.NewError(connect.CodePermissionDenied, errors.New(msg))
		} else if proto, _ := authn.InferProtocol(r); proto == connect.ProtocolConnect {
			// Only the Connect protocol sends error metadata as headers.
			ce.Meta().Set("WWW-Authenticate", `Bearer realm="grantline"`)
		}
		if rec != nil {
			rec.accounted = true
			rec.caller = &caller{Principal: p}
		}
		s.refusedCall(r, rec, ce.Code(), reason, ce.Message())
		return nil, ce
	}
	c := &caller{Principal: p, token: tok}
	if rec != nil {
		rec.caller = c
	}
	return c, nil
}

// refusedCall logs and counts a call refused before the interceptors.
func (s *Server) refusedCall(r *http.Request, rec *callRecord, code connect.Code, reason, msg string) {
	s.m.refused.WithLabelValues(code.String(), reason).Inc()
	procedure, principal := r.URL.Path, ""
	if rec != nil {
		procedure = rec.procedure
		if rec.caller != nil {
			principal = rec.caller.Name
		}
		s.m.requests.WithLabelValues(procedure, code.String()).Inc()
	}
	s.log.LogAttrs(r.Context(), slog.LevelWarn, "rpc refused",
		slog.String("procedure", procedure), slog.String("code", code.String()),
		slog.String("reason", reason), slog.String("principal", principal),
		slog.String("peer", r.RemoteAddr), slog.String("err", clipMsg(msg)))
}

// reasonOf is the reason label of a refusal: what went wrong, finer than
// the code (a compression bomb, an unknown field, a revoked token, ...).
func reasonOf(code connect.Code, msg string) string {
	switch {
	case strings.Contains(msg, ErrCompressionBomb.Error()), strings.Contains(msg, "decompress"):
		return "compression"
	case strings.Contains(msg, ErrUnknownField.Error()):
		return "unknown_field"
	case strings.Contains(msg, ErrRevoked.Error()):
		return "revoked"
	case strings.Contains(msg, ErrStreamIdle.Error()):
		return "stream_idle"
	case strings.Contains(msg, ErrStreamLifetime.Error()):
		return "stream_lifetime"
	case strings.Contains(msg, "unmarshal"):
		return "decode"
	case code == connect.CodeResourceExhausted && strings.Contains(msg, "larger than configured max"):
		return "too_large"
	case code == connect.CodeUnauthenticated && strings.Contains(msg, "no bearer token"):
		return "no_token"
	case code == connect.CodeUnauthenticated:
		return "bad_token"
	case code == connect.CodePermissionDenied:
		return "permission"
	case code == connect.CodeInvalidArgument:
		return "invalid"
	case code == connect.CodeDeadlineExceeded, strings.Contains(msg, "deadline exceeded"), strings.Contains(msg, "i/o timeout"):
		return "timeout"
	}
	return code.String()
}

// deadlineBody clears the read deadline once the body has been read to its
// end, so that a handler that runs long afterwards is not cut off (on
// HTTP/1.1 a connection read past the deadline cancels the call).
type deadlineBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	done bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF && !b.done {
		b.done = true
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

// recordingWriter remembers the status and the start of an error body, to
// tell the code and message of a call refused before the interceptors.
type recordingWriter struct {
	http.ResponseWriter
	status int
	body   []byte
}

const recordBytes = 2 << 10

func (w *recordingWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *recordingWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if len(w.body) < recordBytes {
		w.body = append(w.body, p[:min(len(p), recordBytes-len(w.body))]...)
	}
	return w.ResponseWriter.Write(p)
}

func (w *recordingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *recordingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// outcome reads the Connect code and message of the response: gRPC and
// gRPC-Web carry them in Grpc-Status and Grpc-Message (headers or
// trailers), the Connect protocol in a JSON error body (unary) or end-of-
// stream message (streams).
func (w *recordingWriter) outcome() (connect.Code, string) {
	h := w.Header()
	for _, prefix := range []string{"", http.TrailerPrefix} {
		if st := h.Get(prefix + "Grpc-Status"); st != "" {
			n, err := strconv.Atoi(st)
			if err != nil || n <= 0 || n > 16 {
				return connect.CodeUnknown, st
			}
			msg, _ := url.PathUnescape(h.Get(prefix + "Grpc-Message"))
			return connect.Code(n), msg
		}
	}
	body := w.body
	if strings.HasPrefix(h.Get("Content-Type"), "application/connect+") && len(body) > 5 {
		var end struct {
			Error json.RawMessage `json:"error"`
		}
		if json.Unmarshal(body[5:], &end) == nil {
			body = end.Error
		}
	}
	var wire struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	if json.Unmarshal(bytes.TrimSpace(body), &wire) == nil && wire.Code != "" {
		var c connect.Code
		if c.UnmarshalText([]byte(wire.Code)) == nil {
			return c, wire.Message
		}
	}
	switch {
	case w.status == http.StatusNotFound:
		return connect.CodeNotFound, "no such procedure"
	case w.status == http.StatusUnsupportedMediaType:
		return connect.CodeUnimplemented, "unsupported content type"
	case w.status == http.StatusMethodNotAllowed:
		return connect.CodeUnimplemented, "method not allowed"
	}
	return connect.CodeUnknown, fmt.Sprintf("HTTP status %d", w.status)
}

// streamGuard wraps the request side of client streams: each Receive is
// bounded by the idle timeout and the stream's lifetime, and each message
// of an authenticated stream is accepted only if its token is still valid,
// so that a revoked token stops at its next message and nothing of that
// message is stored.
func (s *Server) streamGuard() connect.Interceptor {
	return interceptor{
		unary: func(next connect.UnaryFunc) connect.UnaryFunc { return next },
		stream: func(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
			return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
				rec := recordFrom(ctx)
				if rec == nil || conn.Spec().StreamType&connect.StreamTypeClient == 0 {
					return next(ctx, conn)
				}
				return next(ctx, &guardedConn{
					StreamingHandlerConn: conn, s: s, rc: rec.rc, caller: callerFrom(ctx),
					end: rec.start.Add(s.maxLifetime),
				})
			}
		},
	}
}

type guardedConn struct {
	connect.StreamingHandlerConn
	s      *Server
	rc     *http.ResponseController
	caller *caller // nil on the public services
	end    time.Time
}

func (g *guardedConn) Receive(m any) error {
	deadline := time.Now().Add(g.s.idleTimeout)
	lifetime := !deadline.Before(g.end)
	if lifetime {
		deadline = g.end
	}
	_ = g.rc.SetReadDeadline(deadline)
	err := g.StreamingHandlerConn.Receive(m)
	if err != nil {
		if errors.Is(err, io.EOF) || (time.Now().Before(deadline) && !errors.Is(err, os.ErrDeadlineExceeded)) {
			return err
		}
		if lifetime {
			return connect.NewError(connect.CodeUnavailable, fmt.Errorf("%w of %s; the server closed it: the batches acknowledged are durable, reconnect to send the rest", ErrStreamLifetime, g.s.maxLifetime))
		}
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("%w: no message for %s, so the server closed it; reconnect to send more", ErrStreamIdle, g.s.idleTimeout))
	}
	_ = g.rc.SetReadDeadline(g.end)
	if g.caller == nil {
		return nil
	}
	p, aerr := g.s.cfg.Auth.Authenticate(g.caller.token)
	if aerr != nil || p.Name != g.caller.Name || p.Role != g.caller.Role {
		what := "this message"
		if sm, ok := m.(interface{ GetSeq() uint64 }); ok {
			what = fmt.Sprintf("batch seq %d", sm.GetSeq())
		}
		return connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("%w: the token of %q is no longer valid; %s was not stored (the batches acknowledged before it are durable)", ErrRevoked, g.caller.Name, what))
	}
	return nil
}

// clipMsg shortens an error message for a log line.
func clipMsg(s string) string {
	const max = 512
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}
