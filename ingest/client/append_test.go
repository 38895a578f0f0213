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
