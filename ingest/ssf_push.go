package ingest

import (
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
		set, err := rcv.Receive(body)
		if err == nil {
			err = s.storeSET(r, set)
		}
		var se *ssf.Error
		switch {
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

func (s *Server) storeSET(r *http.Request, set *ssf.SET) error {
	evs, err := ssf.Map(set)
	if err != nil || len(evs) == 0 {
		return err
	}
	if err := event.ValidateBatch("events", evs, s.now()); err != nil {
		return &ssf.Error{Code: ssf.InvalidRequest, Description: err.Error()}
	}
	res, _, err := s.append(r.Context(), evs)
	if err != nil {
		return err
	}
	for _, x := range res {
		if x.Duplicate {
			return &ssf.Error{Code: ssf.InvalidRequest, Description: fmt.Sprintf("jti %q was already received; nothing was stored", set.JTI)}
		}
	}
	return nil
}

func writeSETError(w http.ResponseWriter, e *ssf.Error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	_ = json.NewEncoder(w).Encode(map[string]string{"err": e.Code, "description": e.Description})
}
