// Package ingest is Grantline's network face: the Connect services
// (grantline.v1.IngestService, LogService and EvidenceService), event and
// request validation, bearer-token authorisation, the mapping of domain errors
// to Connect codes, the C2SP tlog-tiles HTTP read path
// (https://c2sp.org/tlog-tiles), gRPC reflection and health, structured logs and
// Prometheus metrics. It knows nothing about storage: it talks to the ledger,
// the authenticator, the rules engine and the evidence exporter through the
// small interfaces declared in this file, which cmd/grantline adapts to the
// real packages.
package ingest

import (
	"context"
	"errors"
	"io"
	"time"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// Sentinel errors the ledger adapter must wrap (errors.Is) so that ingest can
// turn them into Connect codes. See connectError for the mapping.
var (
	ErrNotFound   = errors.New("not found")         // no such checkpoint, leaf or tile
	ErrOutOfRange = errors.New("out of range")      // an index or size past the tree
	ErrPushback   = errors.New("ledger is busy")    // the append queue is full; retry later
	ErrClosed     = errors.New("ledger is closed")  // shutting down
	ErrStorage    = errors.New("storage failure")   // disk full, failed fsync, I/O error
	ErrCorrupt    = errors.New("ledger is corrupt") // stored data fails verification
	ErrTooLarge   = errors.New("entry too large")   // a leaf over the size limit
)

// AppendResult is the outcome of appending one event.
type AppendResult struct {
	Index     uint64   // position in the log; the original one for a duplicate
	LeafHash  [32]byte // RFC 6962 leaf hash of the stored entry
	Duplicate bool     // (source.system, id) was already in the log
}

// Checkpoint is a published signed checkpoint.
type Checkpoint struct {
	Size uint64
	Root [32]byte
	Note []byte // the C2SP tlog-checkpoint signed note, verbatim
}

// Entry is one stored leaf: the deterministic protobuf encoding of pb.Entry.
type Entry struct {
	Index uint64
	Leaf  []byte
}

// Ledger is what the services need from the log. All methods are safe for
// concurrent use. Errors wrap the sentinels above.
type Ledger interface {
	// Append stores evs (already validated) and returns one result per event
	// in order, and the tree size after integration. It returns only when
	// every entry is durable (fsynced) and integrated. ErrPushback when the
	// queue is full (nothing stored), ErrClosed, ErrStorage, ErrTooLarge.
	Append(ctx context.Context, evs []*pb.Event) ([]AppendResult, uint64, error)
	// Latest returns the latest published checkpoint; it never blocks.
	Latest() Checkpoint
	// CheckpointAt returns the checkpoint published at size; ErrNotFound if
	// none was.
	CheckpointAt(ctx context.Context, size uint64) (Checkpoint, error)
	// Entries returns up to count entries from start, clipped to the tree;
	// ErrOutOfRange when start is at or past the tree size.
	Entries(ctx context.Context, start, count uint64) ([]Entry, error)
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
	SubjectEntries(ctx context.Context, subject string, size, start uint64, limit int) ([]Entry, error)
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
// queue-depth metric. Safe for concurrent use.
type LedgerStats interface {
	QueueDepth() int // events accepted but not yet durable
}

// Role is a principal's role.
type Role string

// The roles of DESIGN.md.
const (
	RoleSource  Role = "source"  // may append events whose source.system is its name
	RoleAuditor Role = "auditor" // reads, evaluates, exports
	RoleAdmin   Role = "admin"   // everything
)

// Principal is an authenticated caller.
type Principal struct {
	Name string
	Role Role
}

// Authenticator turns a bearer token into a principal. Authenticate returns
// an error for an unknown or revoked token (any error means Unauthenticated);
// it must compare in constant time, see revocations at once and be safe for
// concurrent use. The token must never be logged.
type Authenticator interface {
	Authenticate(token string) (Principal, error)
}

// ChainEntry is one entry of a subject's chain: its index and its leaf bytes
// exactly as stored (the protobuf encoding of grantline.v1.Entry). Leaves are
// passed undecoded so the rules engine can decode them straight into its own
// views.
type ChainEntry struct {
	Index uint64
	Leaf  []byte
}

// ChainSource reads subject chains at a fixed tree size. Chain returns the
// subject's entries in index order; empty, not an error, for an unknown
// subject. Safe for concurrent use.
type ChainSource interface {
	Chain(ctx context.Context, subject string) ([]ChainEntry, error)
}

// EvalResult is the outcome of an evaluation.
type EvalResult struct {
	Findings []*pb.Finding
	Errors   []*pb.RuleError
	Subjects int
	Entries  int
	// ExposureBySubject: per subject, seconds in the union of its
	// findings' exposure intervals.
	ExposureBySubject map[string]int64
}

// PeriodEvaluator is an Evaluator that can also evaluate an audit period
// [from, to] (docs/rules.md "Periods").
type PeriodEvaluator interface {
	Evaluator
	EvaluatePeriod(ctx context.Context, subjects []string, src ChainSource, from, to time.Time) (*EvalResult, error)
}

// Evaluator runs the loaded rule set. Safe for concurrent use.
type Evaluator interface {
	// RuleIDs lists the loaded rules.
	RuleIDs() []string
	// Evaluate runs every rule over each subject's chain as of asOf.
	Evaluate(ctx context.Context, subjects []string, src ChainSource, asOf time.Time) (*EvalResult, error)
}

// ExportRequest asks for an evidence package.
type ExportRequest struct {
	Checkpoint Checkpoint // the resolved checkpoint the package is anchored to
	AsOf       time.Time
	From       time.Time   // the start of an audit period ending at AsOf; zero for none
	Framework  string      // the control catalog of the report and OSCAL; "" for the default
	All        bool        // every entry, not only the chains with findings
	SinceSizes []uint64    // older checkpoint sizes to prove consistency from
	Chains     ChainSource // subject chains at Checkpoint.Size
}

// Exporter builds evidence packages. Export creates the package's files one
// after another through create, in package order, with paths relative to the
// package root; it writes each file and closes it (a file is complete when
// Close returns nil) before creating the next, and stops at the first error.
// Safe for concurrent use.
type Exporter interface {
	Export(ctx context.Context, req ExportRequest, create func(path string) (io.WriteCloser, error)) error
}
