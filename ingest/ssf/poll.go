package ssf

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Poll delivery defaults and limits.
const (
	DefaultPollInterval  = 10 * time.Second
	MinPollInterval      = time.Second
	DefaultPollMaxEvents = 100
	MaxPollMaxEvents     = 1000
	// PollTimeout bounds one poll request.
	PollTimeout = 30 * time.Second
	// MaxPolledSETBytes bounds one SET in a poll response, as a push.
	MaxPolledSETBytes = 64 << 10
)

func (p *Poll) check() error {
	if _, err := checkFetchURL(p.URL); err != nil {
		return fmt.Errorf("url %w", err)
	}
	switch iv := time.Duration(p.Interval); {
	case iv == 0:
		p.Interval = Duration(DefaultPollInterval)
	case iv < MinPollInterval:
		return fmt.Errorf("interval %v is shorter than %v", iv, MinPollInterval)
	}
	switch {
	case p.MaxEvents == 0:
		p.MaxEvents = DefaultPollMaxEvents
	case p.MaxEvents < 0 || p.MaxEvents > MaxPollMaxEvents:
		return fmt.Errorf("max_events %d: want 1 to %d", p.MaxEvents, MaxPollMaxEvents)
	}
	return nil
}

// StoreFunc stores the events of a verified SET. It returns nil once they
// are durable (the SET is then acknowledged to the transmitter, also when
// it was stored before: a redelivery), an *Error to refuse the SET (sent to
// the transmitter in setErrs), or any other error to leave it
// unacknowledged, so that the transmitter delivers it again.
type StoreFunc func(ctx context.Context, set *SET) error

// Polls reports whether any transmitter is configured for poll delivery.
func (r *Receiver) Polls() bool {
	for _, t := range r.ts {
		if t.Poll != nil {
			return true
		}
	}
	return false
}

// RunPolls polls every transmitter configured for poll delivery (RFC 8936)
// until ctx is done, handing each verified SET to store, and returns when
// all pollers have stopped. A SET is acknowledged only after store
// returned nil for it; acknowledgements go out with the next poll (or, at
// shutdown, with a last acknowledgement-only request).
func (r *Receiver) RunPolls(ctx context.Context, store StoreFunc) {
	var wg sync.WaitGroup
	for _, t := range r.ts {
		if t.Poll != nil {
			wg.Go(func() { r.pollLoop(ctx, t, store) })
		}
	}
	wg.Wait()
}

// pollRequest is the RFC 8936 section 2.4 request body.
type pollRequest struct {
	MaxEvents         int               `json:"maxEvents"`
	ReturnImmediately bool              `json:"returnImmediately"`
	Ack               []string          `json:"ack,omitempty"`
	SetErrs           map[string]*Error `json:"setErrs,omitempty"`
}

// pollResponse is the RFC 8936 section 2.5 response body.
type pollResponse struct {
	Sets          map[string]string `json:"sets"`
	MoreAvailable bool              `json:"moreAvailable"`
}

// MarshalJSON writes an Error as RFC 8936 setErrs value {"err", "description"}.
func (e *Error) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]string{"err": e.Code, "description": e.Description})
}

func (r *Receiver) pollLoop(ctx context.Context, t *Transmitter, store StoreFunc) {
	log := r.opts.Logger.With("component", "ssf-poll", "issuer", t.Issuer, "url", t.Poll.URL)
	var acks []string
	errs := map[string]*Error{}
	failures := 0
	for ctx.Err() == nil {
		res, err := r.poll(ctx, t, pollRequest{MaxEvents: t.Poll.MaxEvents, ReturnImmediately: true, Ack: acks, SetErrs: errs})
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			failures++
			log.Warn("SSF poll failed; acknowledgements kept for the next poll", "failures", failures, "pending_acks", len(acks), "err", err)
			sleep(ctx, time.Duration(t.Poll.Interval))
			continue
		}
		if failures > 0 {
			log.Info("SSF poll recovered", "after_failures", failures)
			failures = 0
		}
		acks, errs = nil, map[string]*Error{}
		var stored, refused, retry int
		for _, d := range sortedSETs(res.Sets) {
			err := r.deliver(ctx, t, d, store)
			var se *Error
			switch {
			case err == nil:
				acks = append(acks, d.jti)
				stored++
			case errors.As(err, &se):
				errs[d.jti] = se
				refused++
				log.Info("polled SET refused", "jti", d.jti, "err", se.Code, "description", se.Description)
			default:
				retry++
				log.Warn("polled SET not stored; left unacknowledged for redelivery", "jti", d.jti, "err", err)
			}
		}
		if len(res.Sets) > 0 {
			log.Info("SSF poll", "sets", len(res.Sets), "stored", stored, "refused", refused, "left", retry, "more", res.MoreAvailable)
		}
		if !res.MoreAvailable && len(acks) == 0 && len(errs) == 0 || retry > 0 {
			sleep(ctx, time.Duration(t.Poll.Interval))
		}
	}
	if len(acks) > 0 || len(errs) > 0 {
		// Acknowledge what is durable before stopping; if this fails the
		// transmitter delivers those SETs again and they are acknowledged
		// as already stored.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := r.poll(actx, t, pollRequest{MaxEvents: 0, ReturnImmediately: true, Ack: acks, SetErrs: errs}); err != nil {
			log.Warn("SSF poll: last acknowledgement failed; the transmitter will deliver those SETs again", "acks", len(acks), "err", err)
		}
	}
}

type delivered struct {
	jti, token string
	iat        int64
}

// sortedSETs orders a poll response by iat, then jti, so that a source's
// events are stored in time order (docs/rules.md, backdated closures).
func sortedSETs(sets map[string]string) []delivered {
	out := make([]delivered, 0, len(sets))
	for jti, tok := range sets {
		d := delivered{jti: jti, token: tok}
		if _, payload, ok := strings.Cut(tok, "."); ok {
			d.iat = peekIAT(payload)
		}
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b delivered) int { return cmp.Or(cmp.Compare(a.iat, b.iat), strings.Compare(a.jti, b.jti)) })
	return out
}

// deliver verifies one polled SET and stores it.
func (r *Receiver) deliver(ctx context.Context, t *Transmitter, d delivered, store StoreFunc) error {
	if len(d.token) > MaxPolledSETBytes {
		return refuse(InvalidRequest, "the SET is larger than %d bytes", MaxPolledSETBytes)
	}
	set, err := r.Receive(ctx, []byte(d.token))
	if err != nil {
		return err
	}
	switch {
	case set.Issuer != t.Issuer:
		return refuse(InvalidIssuer, "issuer %q delivered by the poll endpoint of %s", set.Issuer, t.Issuer)
	case set.JTI != d.jti:
		return refuse(InvalidRequest, "the SET's jti %q is not its key %q in sets", set.JTI, d.jti)
	}
	return store(ctx, set)
}

// poll sends one RFC 8936 poll request.
func (r *Receiver) poll(ctx context.Context, t *Transmitter, body pollRequest) (*pollResponse, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, PollTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.Poll.URL, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	if t.Poll.Token != "" {
		req.Header.Set("Authorization", "Bearer "+t.Poll.Token)
	}
	resp, err := r.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("polling: %w", err)
	}
	defer resp.Body.Close()
	limit := int64(max(body.MaxEvents, 1))*(MaxPolledSETBytes+1024) + 64<<10
	rb, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("polling: reading the answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Err, Description string }
		if json.Unmarshal(rb, &e) == nil && e.Err != "" {
			return nil, fmt.Errorf("polling: %s: %s: %s", resp.Status, e.Err, e.Description)
		}
		return nil, fmt.Errorf("polling: %s", resp.Status)
	}
	if int64(len(rb)) > limit {
		return nil, fmt.Errorf("polling: the answer is larger than %d bytes for maxEvents %d", limit, body.MaxEvents)
	}
	var pr pollResponse
	if err := json.Unmarshal(rb, &pr); err != nil {
		return nil, fmt.Errorf("polling: the answer is not {\"sets\": {...}, \"moreAvailable\": ...}: %w", err)
	}
	if body.MaxEvents > 0 && len(pr.Sets) > body.MaxEvents {
		return nil, fmt.Errorf("polling: %d SETs for maxEvents %d", len(pr.Sets), body.MaxEvents)
	}
	return &pr, nil
}

// peekIAT reads iat from an unverified JWS payload, for ordering only; 0
// when it cannot.
func peekIAT(payload string) int64 {
	payload, _, _ = strings.Cut(payload, ".")
	b, err := base64.RawURLEncoding.DecodeString(payload)
	if err != nil {
		return 0
	}
	var c struct {
		Iat float64 `json:"iat"`
	}
	_ = json.Unmarshal(b, &c)
	return int64(c.Iat)
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
