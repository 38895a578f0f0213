package client

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

func TestRetryDelay(t *testing.T) {
	withInfo := connect.NewError(connect.CodeResourceExhausted, errors.New("full"))
	d, err := connect.NewErrorDetail(&errdetails.RetryInfo{RetryDelay: durationpb.New(250 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	withInfo.AddDetail(d)
	withMs := connect.NewError(connect.CodeResourceExhausted, errors.New("full"))
	withMs.Meta().Set(RetryAfterKey, "70")
	huge := connect.NewError(connect.CodeResourceExhausted, errors.New("full"))
	huge.Meta().Set("Retry-After", "3600")
	plain := connect.NewError(connect.CodeUnavailable, errors.New("down"))
	tests := []struct {
		err     error
		attempt int
		want    time.Duration
	}{
		{withInfo, 1, 250 * time.Millisecond},
		{withMs, 3, 70 * time.Millisecond},
		{huge, 1, 30 * time.Second}, // capped
		{plain, 1, 100 * time.Millisecond},
		{plain, 3, 400 * time.Millisecond},
		{plain, 20, 5 * time.Second},
	}
	for _, tt := range tests {
		if got := retryDelay(tt.err, tt.attempt); got != tt.want {
			t.Errorf("retryDelay(%v, %d) = %v, want %v", tt.err, tt.attempt, got, tt.want)
		}
	}
	for code, want := range map[connect.Code]bool{connect.CodeResourceExhausted: true, connect.CodeUnavailable: true,
		connect.CodeCanceled: true, connect.CodeInvalidArgument: false, connect.CodePermissionDenied: false,
		connect.CodeInternal: false, connect.CodeUnauthenticated: false} {
		if got := retryable(connect.NewError(code, errors.New("x"))); got != want {
			t.Errorf("retryable(%v) = %v, want %v", code, got, want)
		}
	}
	if cut := connect.NewError(connect.CodeInternal, fmt.Errorf("protocol error: %w", io.ErrUnexpectedEOF)); !retryable(cut) {
		t.Errorf("retryable(%v) = false, want true", cut)
	}
	// What net/http's HTTP/2 client returns when the server closes the
	// connection while a message is being read (a server restart).
	if closed := connect.NewError(connect.CodeInternal, fmt.Errorf("protocol error: incomplete envelope: %w", errors.New("http2: client conn is closed"))); !retryable(closed) {
		t.Errorf("retryable(%v) = false, want true", closed)
	}
}

func TestStatsAndConflicts(t *testing.T) {
	ev := func(id string) *pb.Event { return &pb.Event{Id: id, Source: &pb.Source{System: "okta"}} }
	tests := []struct {
		name string
		b    *Batch
		res  []*pb.AppendResult
		want []Conflict
		dup  uint64
	}{
		{"none", &Batch{Events: []*pb.Event{ev("a")}, Origins: []string{"f:1"}},
			[]*pb.AppendResult{{Index: 0}}, nil, 0},
		{"with origins", &Batch{Events: []*pb.Event{ev("a"), ev("b"), ev("c")}, Origins: []string{"f:1", "f:3", "f:4"}},
			[]*pb.AppendResult{{Index: 9, Duplicate: true}, {Index: 2, LeafHash: []byte{1}, Conflict: true}, {Index: 10}},
			[]Conflict{{Where: "f:3", SourceID: "okta/b", Index: 2, LeafHash: []byte{1}}}, 1},
		{"without origins", &Batch{Where: "event 5", Events: []*pb.Event{ev("a"), ev("b")}},
			[]*pb.AppendResult{{Index: 1}, {Index: 0, Conflict: true}},
			[]Conflict{{Where: "event 5 event 2", SourceID: "okta/b", Index: 0}}, 0},
	}
	for _, tt := range tests {
		resp := &pb.AppendStreamResponse{Results: tt.res, TreeSize: 11}
		got := Conflicts(tt.b, resp)
		if len(got) != len(tt.want) {
			t.Fatalf("%s: Conflicts = %+v, want %+v", tt.name, got, tt.want)
		}
		for i := range got {
			if got[i].Where != tt.want[i].Where || got[i].SourceID != tt.want[i].SourceID || got[i].Index != tt.want[i].Index || string(got[i].LeafHash) != string(tt.want[i].LeafHash) {
				t.Errorf("%s: Conflicts[%d] = %+v, want %+v", tt.name, i, got[i], tt.want[i])
			}
		}
		var st Stats
		st.Add(resp)
		c := uint64(len(tt.want))
		if st.Acked.Load() != uint64(len(tt.res)) || st.Conflict.Load() != c || st.Dup.Load() != tt.dup || st.Fresh.Load() != uint64(len(tt.res))-c-tt.dup {
			t.Errorf("%s: Stats = acked %d fresh %d dup %d conflict %d", tt.name, st.Acked.Load(), st.Fresh.Load(), st.Dup.Load(), st.Conflict.Load())
		}
	}
}

// TestAppendStreamRetryFor: with nothing listening, AppendStream retries
// Unavailable, says when it will give up, and gives up after RetryFor even
// though Retries would allow many more attempts.
func TestAppendStreamRetryFor(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens here now: connection refused
	cl, err := Dial("http://"+addr, Options{Token: "t"})
	if err != nil {
		t.Fatal(err)
	}
	in := make(chan *Batch, 1)
	in <- &Batch{Seq: 0, Events: []*pb.Event{{Id: "e"}}, Where: "x:1"}
	close(in)
	var mu sync.Mutex
	var notes []string
	const retryFor = 400 * time.Millisecond
	start := time.Now()
	err = AppendStream(t.Context(), cl.Ingest(), StreamOptions{Retries: 1000, RetryFor: retryFor, Notify: func(m string) {
		mu.Lock()
		notes = append(notes, m)
		mu.Unlock()
	}}, in, func(*Batch, *pb.AppendStreamResponse, time.Duration) { t.Error("acknowledged by nobody") })
	took := time.Since(start)
	if connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("AppendStream = %v, want Unavailable", err)
	}
	// The backoff reaches 100+200 ms within 400 ms; then 400 ms more would
	// pass the bound, so it stops well before Retries' many seconds.
	if took > 5*time.Second {
		t.Errorf("AppendStream gave up after %s, want about %s", took, retryFor)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(notes) == 0 || !strings.Contains(notes[0], "giving up 400ms after the first failure") {
		t.Errorf("retry notes %q: want the bound named", notes)
	}
}
