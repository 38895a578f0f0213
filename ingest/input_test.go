package ingest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/ingest/client"
	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

func TestBadInputRefusedAndNothingStored(t *testing.T) {
	mod := func(f func(ev *pb.Event)) []*pb.Event {
		ev := newEvent("okta", "bad", "access.approved", "alice")
		f(ev)
		// A valid event first: nothing of a refused batch may be stored.
		return []*pb.Event{newEvent("okta", "ok", "access.requested", "alice"), ev}
	}
	big := strings.Repeat("x", 8000)
	tests := []struct {
		name     string
		events   []*pb.Event
		code     connect.Code
		fragment string
	}{
		{"empty batch", nil, connect.CodeInvalidArgument, "events: at least one event"},
		{"unknown type", mod(func(ev *pb.Event) { ev.Type = "grant.teleported" }), connect.CodeInvalidArgument, `events[1].type: unknown event type "grant.teleported"`},
		{"missing type", mod(func(ev *pb.Event) { ev.Type = "" }), connect.CodeInvalidArgument, "events[1].type: required"},
		{"missing id", mod(func(ev *pb.Event) { ev.Id = "" }), connect.CodeInvalidArgument, "events[1].id: required"},
		{"missing time", mod(func(ev *pb.Event) { ev.Time = nil }), connect.CodeInvalidArgument, "events[1].time: required"},
		{"missing subject", mod(func(ev *pb.Event) { ev.Subject = nil }), connect.CodeInvalidArgument, "events[1].subject.id: required"},
		{"missing subject id", mod(func(ev *pb.Event) { ev.Subject.Id = "" }), connect.CodeInvalidArgument, "events[1].subject.id: required"},
		{"bad subject kind", mod(func(ev *pb.Event) { ev.Subject.Kind = "robot" }), connect.CodeInvalidArgument, "events[1].subject.kind"},
		{"bad actor kind", mod(func(ev *pb.Event) { ev.Actor.Kind = "alien" }), connect.CodeInvalidArgument, "events[1].actor.kind"},
		{"missing source", mod(func(ev *pb.Event) { ev.Source = nil }), connect.CodeInvalidArgument, "events[1].source.system: required"},
		{"1969", mod(func(ev *pb.Event) { ev.Time = timestamppb.New(time.Date(1969, 12, 31, 23, 59, 59, 0, time.UTC)) }), connect.CodeInvalidArgument, "events[1].time: 1969-12-31T23:59:59Z is before 1970"},
		{"far future", mod(func(ev *pb.Event) { ev.Time = timestamppb.New(time.Now().Add(72 * time.Hour)) }), connect.CodeInvalidArgument, "events[1].time:"},
		{"invalid timestamp", mod(func(ev *pb.Event) { ev.Time = &timestamppb.Timestamp{Seconds: 1e15} }), connect.CodeInvalidArgument, "events[1].time: not a valid timestamp"},
		{"expires_at before 1970", mod(func(ev *pb.Event) { ev.ExpiresAt = timestamppb.New(time.Unix(-5, 0)) }), connect.CodeInvalidArgument, "events[1].expires_at"},
		{"control char in id", mod(func(ev *pb.Event) { ev.Subject.Id = "al\x00ice" }), connect.CodeInvalidArgument, "events[1].subject.id: contains U+0000 (control character); ids must be visible text"},
		{"zero-width space in id", mod(func(ev *pb.Event) { ev.Subject.Id = "alice\u200b" }), connect.CodeInvalidArgument, "events[1].subject.id: contains U+200B (format character); ids must be visible text"},
		{"bidi override in system", mod(func(ev *pb.Event) { ev.Source.System = "\u202eokta" }), connect.CodeInvalidArgument, "events[1].source.system: contains U+202E (format character)"},
		{"line separator in ref", mod(func(ev *pb.Event) { ev.Refs.Request = "r\u2028" }), connect.CodeInvalidArgument, "events[1].refs.request: contains U+2028 (line separator)"},
		{"NEL in actor", mod(func(ev *pb.Event) { ev.Actor.Id = "bob\u0085" }), connect.CodeInvalidArgument, "events[1].actor.id: contains U+0085 (control character)"},
		{"id too long", mod(func(ev *pb.Event) { ev.Refs.Grant = strings.Repeat("g", event.MaxIDBytes+1) }), connect.CodeInvalidArgument, "events[1].refs.grant"},
		{"too many attributes", mod(func(ev *pb.Event) {
			for i := range event.MaxAttributes + 1 {
				ev.Attributes[fmt.Sprint("k", i)] = "v"
			}
		}), connect.CodeInvalidArgument, "events[1].attributes"},
		{"oversized event", mod(func(ev *pb.Event) {
			for i := range 5 {
				ev.Attributes[fmt.Sprint("k", i)] = big[:4000]
			}
			ev.Reason = big
			ev.Subject.Display = big
			ev.Actor.Display = big
			ev.Entitlement.Resource = big
		}), connect.CodeInvalidArgument, "events[1].event: encoded size"},
		{"too many events", func() []*pb.Event {
			evs := make([]*pb.Event, event.MaxBatchEvents+1)
			for i := range evs {
				evs[i] = newEvent("okta", fmt.Sprint("n", i), "session.started", "alice")
			}
			return evs
		}(), connect.CodeInvalidArgument, "events: 10001 events exceed the limit of 10000"},
		{"nil event", []*pb.Event{nil}, connect.CodeInvalidArgument, "events[0]"},
	}
	for _, p := range protocols {
		e := newEnv(t)
		c := e.clients(p, adminTok)
		for _, tt := range tests {
			t.Run(p.name+"/"+tt.name, func(t *testing.T) {
				if p.name == "connect-json" && tt.name == "invalid timestamp" {
					t.Skip("protojson cannot encode it; the binary protocols carry it")
				}
				_, err := c.ingest.Append(t.Context(), connect.NewRequest(&pb.AppendRequest{Events: tt.events}))
				wantCode(t, err, tt.code, tt.fragment)
				if n := e.ledger.size(); n != 0 {
					t.Errorf("ledger holds %d entries after a refused request, want 0", n)
				}
			})
		}
	}
}

func TestOversizedRequest(t *testing.T) {
	e := newEnv(t)
	// 700 events of ~27 KiB: each event valid, the message over 16 MiB.
	var evs []*pb.Event
	for i := range 700 {
		ev := newEvent("okta", fmt.Sprint("big", i), "session.started", "alice")
		ev.Reason = strings.Repeat("r", 7000)
		for k := range 5 {
			ev.Attributes[fmt.Sprint("k", k)] = strings.Repeat("v", 4000)
		}
		evs = append(evs, ev)
	}
	for _, p := range streamProtocols {
		t.Run(p.name, func(t *testing.T) {
			c := e.clients(p, adminTok)
			_, err := c.ingest.Append(t.Context(), connect.NewRequest(&pb.AppendRequest{Events: evs}))
			wantCode(t, err, connect.CodeResourceExhausted, "message size")
			stream := c.ingest.AppendStream(t.Context())
			stream.Send(&pb.AppendStreamRequest{Seq: 1, Events: evs})
			_, err = stream.Receive()
			wantCode(t, err, connect.CodeResourceExhausted, "message size")
			stream.CloseRequest()
			stream.CloseResponse()
			if n := e.ledger.size(); n != 0 {
				t.Errorf("ledger holds %d entries, want 0", n)
			}
		})
	}
}

// connectJSONError is the Connect protocol's JSON error body.
type connectJSONError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func TestMalformedJSONOverPlainHTTP(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name, body, code, fragment string
	}{
		{"not json", `{"events": [`, "invalid_argument", "unmarshal"},
		{"wrong field type", `{"events": [{"id": 5}]}`, "invalid_argument", "id"},
		{"unknown type", `{"events": [{"id": "x", "type": "nope", "time": "2026-01-01T00:00:00Z", "source": {"system": "okta"}, "subject": {"id": "a"}}]}`, "invalid_argument", "events[0].type"},
		{"snake_case accepted, missing subject", `{"events": [{"id": "x", "type": "access.approved", "time": "2026-01-01T00:00:00Z", "source": {"system": "okta", "raw_type": "x"}}]}`, "invalid_argument", "events[0].subject.id: required"},
		{"1969", `{"events": [{"id": "x", "type": "access.approved", "time": "1969-07-20T20:17:40Z", "source": {"system": "okta"}, "subject": {"id": "a"}}]}`, "invalid_argument", "events[0].time"},
		{"invalid utf-8", "{\"events\": [{\"id\": \"\xff\xfe\", \"type\": \"access.approved\"}]}", "invalid_argument", "UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, e.url+"/grantline.v1.IngestService/Append", strings.NewReader(tt.body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer "+oktaTok)
			resp, err := e.hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			var ce connectJSONError
			if err := json.Unmarshal(body, &ce); err != nil {
				t.Fatalf("status %d, body %q is not a Connect error", resp.StatusCode, body)
			}
			if resp.StatusCode != http.StatusBadRequest || ce.Code != tt.code || !strings.Contains(ce.Message, tt.fragment) {
				t.Errorf("POST %s = %d %s %q, want 400 %s naming %q", tt.body, resp.StatusCode, ce.Code, ce.Message, tt.code, tt.fragment)
			}
			if e.ledger.size() != 0 {
				t.Errorf("ledger holds %d entries, want 0", e.ledger.size())
			}
		})
	}
	// And a good one over the same path, to show the test can pass.
	body := `{"events": [{"id": "x", "type": "access.approved", "time": "2026-01-01T00:00:00Z", "source": {"system": "okta"}, "subject": {"id": "a", "owner_id": "b"}}]}`
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, e.url+"/grantline.v1.IngestService/Append", bytes.NewReader([]byte(body)))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+oktaTok)
	resp, err := e.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || e.ledger.size() != 1 {
		t.Fatalf("good JSON append: status %d, %d stored; want 200, 1", resp.StatusCode, e.ledger.size())
	}
}

func TestLedgerFaults(t *testing.T) {
	tests := []struct {
		name     string
		err      error
		code     connect.Code
		fragment string
	}{
		{"pushback", fmt.Errorf("queue full (10000 events): %w", ledger.ErrPushback), connect.CodeResourceExhausted, "retry after"},
		{"disk full", fmt.Errorf("%w: write: no space left on device", ledger.ErrStorage), connect.CodeUnavailable, "no space left"},
		{"closed", ledger.ErrClosed, connect.CodeUnavailable, "closed"},
		{"corrupt", ledger.ErrCorrupt, connect.CodeDataLoss, "corrupt"},
		{"unclassified", fmt.Errorf("surprise"), connect.CodeInternal, "surprise"},
	}
	for _, p := range protocols {
		for _, tt := range tests {
			t.Run(p.name+"/"+tt.name, func(t *testing.T) {
				e := newEnv(t)
				e.ledger.failAppend = tt.err
				_, err := e.clients(p, adminTok).ingest.Append(t.Context(), connect.NewRequest(&pb.AppendRequest{Events: []*pb.Event{newEvent("okta", "f", "grant.removed", "bob")}}))
				wantCode(t, err, tt.code, tt.fragment)
				if tt.code == connect.CodeResourceExhausted {
					var ce *connect.Error
					if !asConnectError(err, &ce) || ce.Meta().Get(client.RetryAfterKey) != "200" {
						t.Errorf("ResourceExhausted without %s: 200 metadata", client.RetryAfterKey)
					}
					var delay time.Duration
					for _, d := range ce.Details() {
						if v, err := d.Value(); err == nil {
							if ri, ok := v.(*errdetails.RetryInfo); ok {
								delay = ri.GetRetryDelay().AsDuration()
							}
						}
					}
					if delay != PushbackRetryAfter {
						t.Errorf("RetryInfo detail delay = %v, want %v", delay, PushbackRetryAfter)
					}
				}
			})
		}
	}
}

func asConnectError(err error, target **connect.Error) bool {
	ce, ok := err.(*connect.Error)
	if ok {
		*target = ce
	}
	return ok
}

// TestBurst runs dozens of concurrent clients, unary and streaming, some
// resending what others sent: nothing may be lost or stored twice.
func TestBurst(t *testing.T) {
	e := newEnv(t)
	const clients, batches, per = 24, 6, 40
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := protocols[c%len(protocols)]
			cs := e.clients(p, adminTok)
			batch := func(b int) []*pb.Event {
				var evs []*pb.Event
				// Client c overlaps with client c-1 in half its ids.
				for i := range per {
					owner := c
					if i%2 == 0 && c > 0 {
						owner = c - 1
					}
					evs = append(evs, newEvent("okta", fmt.Sprintf("c%d-b%d-i%d", owner, b, i), "session.started", fmt.Sprint("u", i)))
				}
				return evs
			}
			if c%2 == 0 || p.name == "connect-json" {
				for b := range batches {
					resp, err := cs.ingest.Append(t.Context(), connect.NewRequest(&pb.AppendRequest{Events: batch(b)}))
					if err != nil {
						errs <- err
						return
					}
					if len(resp.Msg.GetResults()) != per {
						errs <- fmt.Errorf("client %d: %d results", c, len(resp.Msg.GetResults()))
						return
					}
				}
				return
			}
			stream := cs.ingest.AppendStream(t.Context())
			go func() {
				for b := range batches {
					stream.Send(&pb.AppendStreamRequest{Seq: uint64(b), Events: batch(b)})
				}
				stream.CloseRequest()
			}()
			for b := range batches {
				ack, err := stream.Receive()
				if err != nil {
					errs <- fmt.Errorf("client %d ack %d: %w", c, b, err)
					return
				}
				if ack.GetSeq() != uint64(b) || len(ack.GetResults()) != per {
					errs <- fmt.Errorf("client %d: ack seq %d with %d results", c, ack.GetSeq(), len(ack.GetResults()))
					return
				}
			}
			stream.CloseResponse()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Distinct ids: every client's own odd-i ids, plus even-i ids of
	// clients 0..clients-2 (the last client's even ids are written by nobody).
	want := clients*batches*per/2 + (clients-1)*batches*per/2
	if got := e.ledger.size(); got != want {
		t.Errorf("ledger holds %d entries, want %d distinct events", got, want)
	}
	e.ledger.checkInvariants(t)
}
