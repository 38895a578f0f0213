// Package ingest is Grantline's network face: the Connect services
// (grantline.v1.IngestService, LogService and EvidenceService), event and
// request validation, bearer-token authorisation, the mapping of domain errors
// to Connect codes, the C2SP tlog-tiles HTTP read path
// (https://c2sp.org/tlog-tiles), gRPC reflection and health, structured logs and
// Prometheus metrics. It knows nothing about storage: it talks to the ledger,
// the authenticator, the rules engine and the evidence exporter through the
// small interfaces declared in this file, in terms of those packages' own
// types (ledger.Checkpoint, ledger.Entry, auth.Principal, rules.Result), so
// *ledger.Log, *auth.Store and *rules.Set plug in as they are.
package ingest

import (
	"context"
	"io"
	"iter"
	"time"

	"github.com/grantline/grantline/ingest/auth"
	"github.com/grantline/grantline/ledger"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/rules"
)

// Ledger is what the services need from the log; *ledger.Log implements it.
// All methods are safe for concurrent use. Errors wrap the ledger package's
// sentinels (ledger.ErrNotFound, ...), which connectError maps to codes.
type Ledger interface {
	// Append stores evs (already validated) and returns one result per event
	// in order, and the tree size after integration. It returns only when
	// every entry is durable (fsynced) and integrated. ErrPushback when the
	// queue is full (nothing stored), ErrClosed, ErrStorage, ErrTooLarge.
	Append(ctx context.Context, evs []*pb.Event) ([]ledger.AppendResult, uint64, error)
	// Latest returns the latest published checkpoint; it never blocks.
	Latest() ledger.Checkpoint
	// CheckpointAt returns the checkpoint published at size; ErrNotFound if
	// none was.
	CheckpointAt(ctx context.Context, size uint64) (ledger.Checkpoint, error)
	// Entries returns up to count entries from start, clipped to the tree;
	// ErrOutOfRange when start is at or past the tree size.
	Entries(ctx context.Context, start, count uint64) ([]ledger.Entry, error)
	// InclusionProof returns the RFC 6962 audit path of index in the tree of
	// size; ErrOutOfRange when index >= size or size is past the tree.
	InclusionProof(ctx context.Context, index, size uint64) ([][]byte, error)
	// LookupLeafHash returns the index of the leaf with that hash;
	// ErrNotFound when there is none.
	LookupLeafHash(ctx context.Context, hash []byte) (uint64, error)
	// ConsistencyProof proves the tree of size to extends the tree of size
	// from; ErrOutOfRange for sizes past the tree or from > to.
	ConsistencyProof(ctx context.Context, from, to uint64) ([][]byte, error)
	// SubjectEntries returns up to limit entries of subject with start <=
	// index < size, in index order; empty (not an error) for an unknown subject.
	SubjectEntries(ctx context.Context, subject string, size, start uint64, limit int) ([]ledger.Entry, error)
	// ForEachSubject calls fn for every subject with an entry below size, in
	// sorted order, stopping at fn's first error.
	ForEachSubject(ctx context.Context, size uint64, fn func(subject string) error) error
	// ReadTile returns a tlog-tiles hash tile (width 1..256 hashes);
	// ErrNotFound or ErrOutOfRange if the tree does not cover it.
	ReadTile(ctx context.Context, level, index uint64, width int) ([]byte, error)
	// ReadEntryBundle returns a tlog-tiles entry bundle; misses as ReadTile.
	ReadEntryBundle(ctx context.Context, index uint64, width int) ([]byte, error)
}

// LedgerStats is an optional upgrade a Ledger may implement to feed the
// queue-depth metric; *ledger.Log implements it. Safe for concurrent use.
type LedgerStats interface {
	Stats() ledger.Stats
}

// Authenticator turns a bearer token into a principal; *auth.Store
// implements it. Authenticate returns an error for an unknown or revoked
// token (any error means Unauthenticated); its timing must tell nothing
// about valid tokens (compare hashes, or in constant time), it must see
// revocations at once, be cheap (it runs again for every message of an
// AppendStream) and be safe for concurrent use. The token must never be
// logged.
type Authenticator interface {
	Authenticate(token string) (auth.Principal, error)
}

// Evaluator runs the loaded rule set; *rules.Set implements it. Safe for
// concurrent use.
type Evaluator interface {
	// Rules lists the loaded rules.
	Rules() []rules.RuleInfo
	// Stream evaluates every rule over the chain of each subject yielded,
	// as of asOf or over the period [from, asOf] when period is set
	// (docs/rules.md "Periods"), and hands each subject's results to emit
	// in the order the subjects were yielded (rules.Set.Stream). It stops
	// at the first error, emit's included, and returns it.
	Stream(ctx context.Context, subjects iter.Seq2[string, error], src rules.ChainSource, from, asOf time.Time, period bool, emit func(*rules.SubjectResult) error) (rules.Summary, error)
}

// ExportRequest asks for an evidence package.
type ExportRequest struct {
	Checkpoint ledger.Checkpoint // the resolved checkpoint the package is anchored to
	AsOf       time.Time
	From       time.Time         // the start of an audit period ending at AsOf; zero for none
	Framework  string            // the control catalog of the report and OSCAL; "" for the default
	All        bool              // every entry, not only the chains with findings
	SinceSizes []uint64          // older checkpoint sizes to prove consistency from
	Chains     rules.ChainSource // subject chains at Checkpoint.Size, as leaves
}

// Exporter builds evidence packages. Export creates the package's files one
// after another through create, in package order, with paths relative to the
// package root; it writes each file and closes it (a file is complete when
// Close returns nil) before creating the next, and stops at the first error.
// Safe for concurrent use.
type Exporter interface {
	Export(ctx context.Context, req ExportRequest, create func(path string) (io.WriteCloser, error)) error
}
