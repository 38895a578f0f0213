package client

import (
	"errors"
	"fmt"
	"io"
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
