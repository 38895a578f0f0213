package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"connectrpc.com/authn"
	"connectrpc.com/connect"

	"github.com/grantline/grantline/ingest/auth"
	"github.com/grantline/grantline/ingest/source"
	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// PushPath is the route of webhook deliveries: POST /v1/sources/FORMAT.
const PushPath = "/v1/sources/{format}"

// PushResult is the JSON answer to a delivery, sent only once every event
// made of it is durable.
type PushResult struct {
	Records   int    `json:"records"`
	Events    int    `json:"events"`
	New       int    `json:"new"`
	Duplicate int    `json:"duplicate"`
	TreeSize  uint64 `json:"tree_size"`
}

// pushHandler serves vendor webhooks (docs/sources.md, "Push"): the body is
// anything source.Format.Read accepts, or the vendor's push wrapper; the
// source token's name is the source.system of every event. A delivery is
// all or nothing: any refused record or event stores nothing. Okta's
// one-time verification GET is answered for the okta format.
func (s *Server) pushHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := source.Lookup(r.PathValue("format"))
		if err != nil {
			writePushError(w, http.StatusNotFound, err)
			return
		}
		// As for the Connect routes (guard), the body is read under the
		// body read timeout.
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(s.bodyTimeout))
		p, tok, _, err := s.authenticate(r.Header.Get("Authorization"))
		if err == nil && p.Role != auth.RoleSource {
			err = fmt.Errorf("%w: %s %q may not push events; webhooks take a source token, whose name is the source.system of the events", ErrPermission, p.Role, p.Name)
		}
		if err != nil {
			s.log.InfoContext(r.Context(), "push refused", "format", f.Name, "peer", r.RemoteAddr, "principal", p.Name, "err", err)
			writePushError(w, pushStatus(err), err)
			return
		}
		if ch := r.Header.Get("X-Okta-Verification-Challenge"); r.Method == http.MethodGet && f.Name == "okta" && ch != "" {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]string{"verification": ch})
			return
		}
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", "POST")
			writePushError(w, http.StatusMethodNotAllowed, errors.New("deliver records with POST"))
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, event.MaxMessageBytes))
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				writePushError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("the body exceeds %d bytes; deliver fewer records at a time", event.MaxMessageBytes))
				return
			}
			writePushError(w, http.StatusBadRequest, fmt.Errorf("reading the body: %w", err))
			return
		}
		res, err := s.push(authn.SetInfo(r.Context(), &caller{Principal: p, token: tok}), f, p.Name, body)
		if err != nil {
			s.log.InfoContext(r.Context(), "push refused", "format", f.Name, "principal", p.Name, "err", err)
			if errors.Is(err, errPushTooMany) {
				writePushError(w, http.StatusRequestEntityTooLarge, err)
				return
			}
			status := pushStatus(err)
			if status == http.StatusTooManyRequests {
				w.Header().Set("Retry-After", strconv.Itoa(int(PushbackRetryAfter.Seconds()+0.999)))
			}
			var ce *connect.Error
			if errors.As(connectError(err), &ce) && ce.Message() != "" {
				err = errors.New(ce.Message()) // the text Connect clients see, hints included
			}
			writePushError(w, status, err)
			return
		}
		s.log.InfoContext(r.Context(), "push", "format", f.Name, "principal", p.Name, "peer", r.RemoteAddr,
			"records", res.Records, "events", res.Events, "new", res.New, "duplicate", res.Duplicate)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(res)
	})
}

var errPushTooMany = errors.New("too many events in one delivery")

// push maps, validates and appends one delivery.
func (s *Server) push(ctx context.Context, f source.Format, system string, body []byte) (PushResult, error) {
	var res PushResult
	var evs []*pb.Event
	err := f.Read("body", bytes.NewReader(source.Unwrap(f.Name, body)), system, func(_ source.Record, got []*pb.Event) error {
		res.Records++
		evs = append(evs, got...)
		if len(evs) > event.MaxBatchEvents {
			return fmt.Errorf("%w: more than %d; deliver fewer records at a time", errPushTooMany, event.MaxBatchEvents)
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, source.ErrRecord) {
			return res, fmt.Errorf("%w: %w", event.ErrInvalid, err)
		}
		return res, err
	}
	res.Events = len(evs)
	if len(evs) == 0 {
		res.TreeSize = s.cfg.Ledger.Latest().Size
		return res, nil
	}
	b := event.NewBatch(evs)
	if err := s.checkBatch(ctx, b); err != nil {
		return res, err
	}
	results, size, err := s.append(ctx, b)
	if err != nil {
		return res, err
	}
	for _, r := range results {
		if r.Duplicate {
			res.Duplicate++
		}
	}
	res.New, res.TreeSize = len(results)-res.Duplicate, size
	return res, nil
}

// pushStatus is the HTTP status of an error, through the one mapping of
// domain errors to codes (connectError).
func pushStatus(err error) int {
	switch connect.CodeOf(connectError(err)) {
	case connect.CodeInvalidArgument:
		return http.StatusBadRequest
	case connect.CodeUnauthenticated:
		return http.StatusUnauthorized
	case connect.CodePermissionDenied:
		return http.StatusForbidden
	case connect.CodeResourceExhausted:
		return http.StatusTooManyRequests
	case connect.CodeUnavailable:
		return http.StatusServiceUnavailable
	case connect.CodeCanceled, connect.CodeDeadlineExceeded:
		return http.StatusGatewayTimeout
	}
	return http.StatusInternalServerError
}

func writePushError(w http.ResponseWriter, status int, err error) {
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="grantline"`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
}
