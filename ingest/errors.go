package ingest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/grantline/grantline/ingest/client"
	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/event"
)

// Errors of authorisation, checked with errors.Is.
var (
	ErrUnauthenticated = errors.New("unauthenticated")
	ErrPermission      = errors.New("permission denied")
)

// With ResourceExhausted the server sends its retry hint twice: as the
// standard google.rpc.RetryInfo error detail and as metadata under
// client.RetryAfterKey, the key the client package reads.

// PushbackRetryAfter is the retry hint given with ledger.ErrPushback.
const PushbackRetryAfter = 200 * time.Millisecond

// connectError is the one place where domain errors become Connect codes.
// Errors that already carry a code pass through unchanged.
func connectError(err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce
	}
	var code connect.Code
	switch {
	case errors.Is(err, event.ErrInvalid), errors.Is(err, ledger.ErrTooLarge):
		code = connect.CodeInvalidArgument
	case errors.Is(err, ErrUnauthenticated):
		code = connect.CodeUnauthenticated
	case errors.Is(err, ErrPermission):
		code = connect.CodePermissionDenied
	case errors.Is(err, ledger.ErrPushback):
		ce := connect.NewError(connect.CodeResourceExhausted,
			fmt.Errorf("%w; nothing of this request was stored: retry after %s", err, PushbackRetryAfter))
		ce.Meta().Set(client.RetryAfterKey, strconv.FormatInt(PushbackRetryAfter.Milliseconds(), 10))
		if d, derr := connect.NewErrorDetail(&errdetails.RetryInfo{RetryDelay: durationpb.New(PushbackRetryAfter)}); derr == nil {
			ce.AddDetail(d)
		}
		return ce
	case errors.Is(err, ledger.ErrNoSubjectMap):
		code = connect.CodeFailedPrecondition
	case errors.Is(err, ledger.ErrNotFound):
		code = connect.CodeNotFound
	case errors.Is(err, ledger.ErrOutOfRange):
		code = connect.CodeOutOfRange
	case errors.Is(err, ledger.ErrClosed):
		code = connect.CodeUnavailable
	case errors.Is(err, ledger.ErrStorage):
		code = connect.CodeUnavailable
		err = fmt.Errorf("%w; nothing of this request was acknowledged: retry later", err)
	case errors.Is(err, ledger.ErrCorrupt):
		code = connect.CodeDataLoss
	case errors.Is(err, context.Canceled):
		code = connect.CodeCanceled
	case errors.Is(err, context.DeadlineExceeded):
		code = connect.CodeDeadlineExceeded
	default:
		code = connect.CodeInternal
	}
	return connect.NewError(code, err)
}
