package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"time"

	"github.com/grantline/grantline/ingest/ssf"
	"github.com/grantline/grantline/ledger/event"
)

// SSFPath is where transmitters push Security Event Tokens (RFC 8935).
const SSFPath = "/v1/ssf/events"

// maxSETBytes bounds one pushed SET.
const maxSETBytes = 64 << 10

// ssfHandler receives pushed SETs: the signature against the transmitter's
// configured keys authenticates the delivery (no bearer token). A SET is
// answered 202 only once its events are durable; a refusal is 400 with the
// RFC 8935 {"err", "description"} body, and a replayed jti (its events are
// already stored) is refused as invalid_request with nothing stored.
func (s *Server) ssfHandler(rcv *ssf.Receiver) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(s.bodyTimeout))
		if ct := r.Header.Get("Content-Type"); ct != "" {
			if mt, _, _ := mime.ParseMediaType(ct); mt != "application/secevent+jwt" {
				writeSETError(w, &ssf.Error{Code: ssf.InvalidRequest, Description: fmt.Sprintf("Content-Type %q: want application/secevent+jwt", ct)})
				return
			}
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxSETBytes))
		if err != nil {
			writeSETError(w, &ssf.Error{Code: ssf.InvalidRequest, Description: fmt.Sprintf("reading the SET (at most %d bytes): %v", maxSETBytes, err)})
			return
		}
		set, err := rcv.Receive(r.Context(), body)
		if err == nil {
			var dup bool
			if dup, err = s.storeSET(r.Context(), set); err == nil && dup {
				err = &ssf.Error{Code: ssf.InvalidRequest, Description: fmt.Sprintf("jti %q was already received; nothing was stored", set.JTI)}
			}
		}
		var se *ssf.Error
		switch {
		case errors.Is(err, ssf.ErrKeysUnavailable):
			// Neither accepted nor refused: a 5xx makes the transmitter
			// deliver it again (RFC 8935 section 2.3).
			s.log.WarnContext(r.Context(), "SET not checked: the transmitter's keys are unavailable", "peer", r.RemoteAddr, "err", err)
			w.Header().Set("Retry-After", "30")
			http.Error(w, "the transmitter's keys could not be fetched; retry", http.StatusServiceUnavailable)
		case err == nil:
			s.log.InfoContext(r.Context(), "SET accepted", "peer", r.RemoteAddr, "issuer", set.Issuer, "jti", set.JTI)
			w.WriteHeader(http.StatusAccepted)
		case errors.As(err, &se):
			s.log.InfoContext(r.Context(), "SET refused", "peer", r.RemoteAddr, "err", se.Code, "description", se.Description)
			writeSETError(w, se)
		default:
			status := pushStatus(err)
			if status == http.StatusTooManyRequests {
				status = http.StatusServiceUnavailable // RFC 8935 transmitters retry on 5xx
				w.Header().Set("Retry-After", strconv.Itoa(int(PushbackRetryAfter.Seconds()+0.999)))
			}
			s.log.WarnContext(r.Context(), "SET not stored", "peer", r.RemoteAddr, "err", err)
			http.Error(w, "the SET was not stored; retry", status)
		}
	})
}

// storeSET maps and appends the events of a verified SET; dup reports that
// they were stored before (a redelivered jti). The events of a jti received
// before with other content are a conflict: refused, nothing stored.
func (s *Server) storeSET(ctx context.Context, set *ssf.SET) (dup bool, err error) {
	evs, err := ssf.Map(set)
	if err != nil || len(evs) == 0 {
		return false, err
	}
	b := event.NewBatch(evs)
	if err := b.Validate("events", s.now()); err != nil {
		return false, &ssf.Error{Code: ssf.InvalidRequest, Description: err.Error()}
	}
	res, _, err := s.append(ctx, b)
	if err != nil {
		return false, err
	}
	for _, x := range res {
		switch {
		case x.Conflict:
			return false, &ssf.Error{Code: ssf.InvalidRequest, Description: fmt.Sprintf("jti %q was received before with other content; nothing was stored", set.JTI)}
		case x.Duplicate:
			dup = true
		}
	}
	return dup, nil
}

// PollSSF polls the Shared Signals transmitters configured for poll
// delivery (RFC 8936) until ctx is done, storing their SETs as pushed ones
// are stored; a SET is acknowledged once its events are durable, and a
// redelivered one (already stored) is acknowledged again. It returns at
// once when no transmitter is polled.
func (s *Server) PollSSF(ctx context.Context) {
	if s.cfg.SSF == nil || !s.cfg.SSF.Polls() {
		return
	}
	s.cfg.SSF.RunPolls(ctx, func(ctx context.Context, set *ssf.SET) error {
		_, err := s.storeSET(ctx, set)
		return err
	})
}

func writeSETError(w http.ResponseWriter, e *ssf.Error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	_ = json.NewEncoder(w).Encode(map[string]string{"err": e.Code, "description": e.Description})
}
