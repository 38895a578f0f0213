// Package server wires a Grantline server together: it opens (or creates)
// a data directory, loads the rule set, opens the ledger on its store and
// serves the ingest package's handler over HTTP (h2c, or TLS). It is what
// `grantline serve`, `grantline demo`, `grantline bench` and the end-to-end
// tests start; integrators use the public packages (ledger, ingest, rules,
// verify) instead.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/grantline/grantline/ingest"
	"github.com/grantline/grantline/ingest/ssf"
	"github.com/grantline/grantline/internal/datadir"
	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/badgerstore"
	"github.com/grantline/grantline/ledger/checkpoint"
	"github.com/grantline/grantline/ledger/witness"
	"github.com/grantline/grantline/rules"
	"github.com/grantline/grantline/verify"
	"github.com/grantline/grantline/verify/format"
)

// DefaultListen is the listen address when Config.Listen is empty; the
// data directory defaults to datadir.Default.
const DefaultListen = "127.0.0.1:7800"

// ErrConfig marks an error in the Config (a usage error, not a failure).
var ErrConfig = errors.New("invalid server configuration")

// Config configures Start; zero fields take the defaults.
type Config struct {
	DataDir, Listen, ParamsFile, RulesDir, Origin, TLSCert, TLSKey string
	Logger                                                         *slog.Logger
	// MetricsPublic serves /metrics without a token.
	MetricsPublic bool
	// Algorithm of a new log key: ed25519 (default) or ecdsa-p256.
	Algorithm string
	// QueueSize is the ledger's append queue (0: its default).
	QueueSize int
	// SubjectMap creates a new log with a subject map, so that evidence
	// export --subject can prove subjects complete (docs/completeness.md).
	// A property of the log fixed at its creation: ignored for an existing
	// log, which keeps its own.
	SubjectMap bool
	// SSFTransmitters is a JSON file of Shared Signals transmitters
	// (docs/sources.md, "Shared Signals"); "" serves no SET receiver.
	SSFTransmitters string
	// StreamIdleTimeout and StreamMaxLifetime bound an AppendStream (0: the
	// ingest package's defaults, 5m and 1h).
	StreamIdleTimeout, StreamMaxLifetime time.Duration
	// Store, when set, is the PostgreSQL URL (postgres://USER@HOST:PORT/DB?...)
	// that keeps the ledger instead of DATA/ledger. The node sequences if
	// it can take the lease, and otherwise follows the log: it serves reads
	// from the database, forwards appends to the sequencer and takes over
	// when the sequencer's lease expires (docs/operations-postgres.md). A
	// sequencer stops with ErrLeaseLost if another node takes it over.
	Store string
	// Advertise is the URL at which other nodes of a PostgreSQL log reach
	// this one (serve --advertise-url), recorded in the lease while it
	// sequences. Empty: the listen address, with the host name for an
	// unspecified listen host.
	Advertise string
	// WitnessPolicy is a witness policy file (docs/witnessing.md); when set,
	// checkpoints are sent to its witnesses, GET /checkpoint serves the
	// newest witnessed one and evidence is anchored to it.
	WitnessPolicy string
	// Witnessing tunes the witnesser (its Policy, Log, Proof, Logger and
	// Registerer are set by Start); zero fields take the defaults.
	Witnessing witness.Config
	// Init starts a new, empty log under keys that already exist when the
	// store holds none (serve --init; see datadir.Options.Init).
	Init bool
	// MemoryBudget, when positive, is the anonymous memory the server is
	// meant to stay within, in bytes (serve --memory-budget): the Go
	// runtime's memory limit is set to GoMemoryLimit of it unless the
	// GOMEMLIMIT environment variable is set, and the badger store's
	// memtables and caches are sized from it. Zero leaves both as the
	// process has them. See docs/operations.md, "Memory".
	MemoryBudget int64
	// MaxMappedBytes, when positive, bounds the file-backed resident memory
	// of the process, which the badger store's mapped files make grow with
	// the log (serve --max-mapped; badgerstore.Options.MaxMappedBytes).
	MaxMappedBytes int64
	// EvaluateScan chooses how a full evaluation reads chains (serve
	// --evaluate-scan): ingest.ScanAuto, the default, reads the log in one
	// sequential pass spilled to DataDir/evaluate-spill when the store's
	// files are larger than half of MaxMappedBytes (docs/design.md "Streamed
	// evaluation"). With Store set, chains are always point reads.
	EvaluateScan ingest.ScanMode
	// EvaluateCacheBytes bounds the evaluation cache in
	// DataDir/evaluate-cache (serve --evaluate-cache): results of full
	// evaluations at a fixed as-of time or period, reused by later
	// evaluations of the grown log (docs/design.md "Incremental
	// evaluation"). 0: no cache, and the directory is removed at start.
	EvaluateCacheBytes int64
}

// DefaultEvaluateCacheBytes is serve --evaluate-cache's default.
const DefaultEvaluateCacheBytes = ingest.DefaultEvaluateCacheBytes

// partitionBytes is the size of a partitioned evaluation's subject ranges
// for a memory budget: 1/32 of it (16 MiB by default), 4-64 MiB.
func partitionBytes(budget int64) int64 {
	if budget <= 0 {
		return ingest.DefaultPartitionBytes
	}
	return min(max(budget/32, 4<<20), 64<<20)
}

// The memory defaults of `grantline serve` (docs/operations.md, "Memory").
const (
	DefaultMemoryBudget   = 512 << 20
	DefaultMaxMappedBytes = 1 << 30
)

// GoMemoryLimit is the Go runtime memory limit a budget sets: 15/16 of it,
// leaving room for memory the Go runtime does not count (thread stacks
// and the like) and for the collector to react.
func GoMemoryLimit(budget int64) int64 { return budget / 16 * 15 }

// applyMemoryBudget sets the Go runtime's memory limit from cfg unless
// GOMEMLIMIT is set, and says what it did.
func applyMemoryBudget(cfg Config) {
	if cfg.MemoryBudget <= 0 {
		return
	}
	if env := os.Getenv("GOMEMLIMIT"); env != "" {
		cfg.Logger.Info("memory budget", "budget_bytes", cfg.MemoryBudget, "go_memory_limit", "GOMEMLIMIT="+env, "max_mapped_bytes", cfg.MaxMappedBytes)
		return
	}
	limit := GoMemoryLimit(cfg.MemoryBudget)
	debug.SetMemoryLimit(limit)
	cfg.Logger.Info("memory budget", "budget_bytes", cfg.MemoryBudget, "go_memory_limit_bytes", limit, "max_mapped_bytes", cfg.MaxMappedBytes)
}

// ErrLeaseLost is returned by Close when the server stopped because another
// node took the PostgreSQL sequencing lease over (this node was paused or cut
// off for longer than the lease lasts). Restarting rejoins as a standby.
var ErrLeaseLost = errors.New("another node took over sequencing the log")

// The stream limits a server applies unless Config sets others.
const (
	DefaultStreamIdleTimeout = ingest.DefaultStreamIdleTimeout
	DefaultStreamMaxLifetime = ingest.DefaultStreamMaxLifetime
)

// Server is a started server.
type Server struct {
	URL                              string // http(s)://HOST:PORT, an unspecified listen host shown as 127.0.0.1
	AdminToken                       string // contents of DATA/admin.token ("" if that file was removed)
	AdminTokenPath                   string // DATA/admin.token
	NewAdminToken                    bool   // this start created the admin token
	DataDir                          string
	VerifierKey                      string // the log.vkey line
	VerifierKeyPath, EvidenceKeyPath string // DATA/keys/log.vkey, DATA/keys/evidence.pub
	Origin                           string

	log      *ledger.Log // badger; nil with PostgreSQL
	cl       *cluster    // PostgreSQL; nil with badger
	closing  atomic.Bool
	lost     atomic.Bool
	failed   atomic.Pointer[error] // taking over sequencing failed
	wit      *witness.Witnesser    // nil without a witness policy
	witStop  func()                // stops the witnesser and waits for it
	pollStop func()                // stops the SSF pollers and waits for them
	api      *ingest.Server
	http     *http.Server
	stopped  chan struct{} // closed when the HTTP server stopped serving
	serveErr error         // why it stopped; set before stopped is closed
	logger   *slog.Logger
}

// Ledger is the server's open log, for in-process callers (bench, tests);
// nil while a node of a PostgreSQL log follows another node.
func (r *Server) Ledger() *ledger.Log {
	if r.cl != nil {
		return r.cl.sequencer()
	}
	return r.log
}

// Sequencing reports whether this server writes its log: always with
// badger; with PostgreSQL while it holds the sequencing lease.
func (r *Server) Sequencing() bool { return r.Ledger() != nil }

// Witnesser is the server's witnesser, nil without a witness policy.
func (r *Server) Witnesser() *witness.Witnesser { return r.wit }

// Done is closed when the HTTP server stops serving: after Close, or on its
// own (a listener failure), which Close then returns.
func (r *Server) Done() <-chan struct{} { return r.stopped }

// Start opens (or creates) the data directory and serves it until Close.
// The rule set is compiled first, so that a broken rule refuses the start
// before anything is created. Errors in cfg wrap ErrConfig.
func Start(ctx context.Context, cfg Config) (_ *Server, err error) {
	if cfg.DataDir == "" {
		cfg.DataDir = datadir.Default
	}
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if (cfg.TLSCert == "") != (cfg.TLSKey == "") {
		return nil, fmt.Errorf("%w: --tls-cert and --tls-key go together: give both, or neither for cleartext (h2c)", ErrConfig)
	}
	alg := checkpoint.Ed25519
	if cfg.Algorithm != "" {
		if alg, err = checkpoint.ParseAlgorithm(cfg.Algorithm); err != nil {
			return nil, fmt.Errorf("%w: --alg: %w", ErrConfig, err)
		}
	}

	set, paramsYAML, err := loadRuleSet(cfg.RulesDir, cfg.ParamsFile)
	if err != nil {
		return nil, err
	}
	var rcv *ssf.Receiver
	if cfg.SSFTransmitters != "" {
		ts, err := ssf.LoadTransmitters(cfg.SSFTransmitters)
		if err == nil {
			rcv, err = ssf.NewReceiverWith(ts, ssf.Options{Logger: cfg.Logger})
		}
		if err != nil {
			return nil, fmt.Errorf("%w: --ssf-transmitters: %w", ErrConfig, err)
		}
	}
	var policy *witness.Policy
	if cfg.WitnessPolicy != "" {
		if policy, err = witness.LoadPolicy(cfg.WitnessPolicy); err != nil {
			return nil, fmt.Errorf("%w: --witness-policy: %w", ErrConfig, err)
		}
	}
	var tlsCfg *tls.Config
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("--tls-cert %s / --tls-key %s: %w", cfg.TLSCert, cfg.TLSKey, err)
		}
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}

	// Listen before anything is written: a taken port must not leave a
	// half-made data directory behind. With PostgreSQL the address is
	// also what the node advertises to the others.
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("--listen %s: %w", cfg.Listen, err)
	}
	scheme := "http"
	if tlsCfg != nil {
		scheme = "https"
	}
	defer func() {
		if err != nil && ln != nil {
			ln.Close()
		}
	}()

	if cfg.MemoryBudget < 0 || cfg.MaxMappedBytes < 0 {
		return nil, fmt.Errorf("%w: --memory-budget and --max-mapped must not be negative", ErrConfig)
	}
	applyMemoryBudget(cfg)
	dd, err := datadir.OpenWith(cfg.DataDir, datadir.Options{Origin: cfg.Origin, Algorithm: alg, Init: cfg.Init,
		Store: badgerstore.Options{MemoryBudget: cfg.MemoryBudget, MaxMappedBytes: cfg.MaxMappedBytes}})
	if err != nil {
		return nil, fmt.Errorf("--data %s: %w", cfg.DataDir, err)
	}
	keys := dd.Keys
	evSigner, err := verify.NewEvidenceSigner(keys.Evidence)
	if err != nil {
		return nil, fmt.Errorf("evidence key: %w", err)
	}
	lo := ledger.Options{QueueSize: cfg.QueueSize, Logger: cfg.Logger.With("component", "ledger"), SubjectMap: cfg.SubjectMap}
	var l *ledger.Log
	var cl *cluster
	var led interface {
		ingest.Ledger
		Close() error
	}
	reg := prometheus.NewRegistry()
	if cfg.Store == "" {
		l, err = dd.OpenLedger(ctx, lo)
		led = l
	} else {
		adv := cfg.Advertise
		if adv == "" {
			adv = advertiseURL(scheme, ln.Addr())
		} else if err := checkAdvertise(adv); err != nil {
			return nil, fmt.Errorf("%w: --advertise-url: %w", ErrConfig, err)
		}
		cl, err = openCluster(ctx, cfg.Store, adv, dd, lo, reg, cfg.Logger)
		led = clusterCloser{cl}
	}
	if err != nil {
		return nil, err
	}
	icfg := ingest.Config{
		Ledger: led, Auth: dd.Tokens, Evaluator: set,
		Exporter: &exporter{l: led, set: set, params: paramsYAML, signer: evSigner, logKey: keys.VerifierKey},
		Logger:   cfg.Logger, MetricsPublic: cfg.MetricsPublic, Registry: reg, SSF: rcv,
		StreamIdleTimeout: cfg.StreamIdleTimeout, StreamMaxLifetime: cfg.StreamMaxLifetime,
		EvaluateCache: ingest.EvaluateCache{Dir: cfg.DataDir, MaxBytes: cfg.EvaluateCacheBytes},
	}
	if cfg.Store == "" {
		icfg.EvaluateScan = ingest.EvaluateScan{Mode: cfg.EvaluateScan, Dir: cfg.DataDir,
			StoreDir: filepath.Join(cfg.DataDir, datadir.LedgerDir), MappedBound: cfg.MaxMappedBytes,
			PartitionBytes: partitionBytes(cfg.MemoryBudget)}
	}
	var wit *witness.Witnesser
	witStop := func() {}
	if policy != nil {
		if keys.Algorithm != checkpoint.Ed25519 {
			led.Close()
			return nil, fmt.Errorf("%w: --witness-policy: the log key is %s; witnesses verify only Ed25519 log signatures (start a new data directory with --alg ed25519)", ErrConfig, keys.Algorithm)
		}
		wc := cfg.Witnessing
		wc.Policy, wc.Log, wc.Proof, wc.Logger, wc.Registerer = policy, keys.LogVerifier, led.ConsistencyProof, cfg.Logger, reg
		wc.StateFile, wc.Holds = filepath.Join(cfg.DataDir, WitnessedFile), holds(ctx, led)
		if wit, err = witness.New(wc); err != nil {
			led.Close()
			return nil, err
		}
		witStop = runWitnesser(wit, led, cfg.Logger, wc.MinInterval)
		icfg.Witnessed = func() (ledger.Checkpoint, bool) {
			wd, ok := wit.Latest()
			if !ok {
				return ledger.Checkpoint{}, false
			}
			return ledger.Checkpoint{Origin: keys.Origin, Size: wd.Size, Root: wd.Root, Note: wd.Note}, true
		}
		cfg.Logger.Info("witnessing", "policy", cfg.WitnessPolicy, "witnesses", len(policy.Witnesses), "quorum", policy.Quorum)
	}
	api, err := ingest.New(icfg)
	if err != nil {
		witStop()
		led.Close()
		return nil, err
	}

	rs := &Server{
		DataDir: cfg.DataDir, VerifierKey: keys.VerifierKey, Origin: keys.Origin,
		VerifierKeyPath: keys.VerifierKeyPath, EvidenceKeyPath: keys.EvidencePubKeyPath,
		AdminTokenPath: dd.AdminTokenPath, NewAdminToken: dd.NewAdminToken,
		log: l, cl: cl, wit: wit, witStop: witStop, api: api, stopped: make(chan struct{}), logger: cfg.Logger,
	}
	pctx, pcancel := context.WithCancel(context.Background())
	var pwg sync.WaitGroup
	pwg.Go(func() { api.PollSSF(pctx) })
	rs.pollStop = func() { pcancel(); pwg.Wait() }
	if b, err := os.ReadFile(rs.AdminTokenPath); err == nil {
		rs.AdminToken = strings.TrimSpace(string(b))
	}
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true) // h2c: gRPC and bidi streams without TLS
	protocols.SetHTTP2(true)
	handler := api.Handler()
	if cl != nil {
		handler = cl.handler(handler)
	}
	rs.http = &http.Server{
		Handler:           withPprof(api, handler),
		Protocols:         protocols,
		HTTP2:             ingest.HTTP2Config(),
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: ingest.ReadHeaderTimeout, // before any authentication; bodies: see ingest.DefaultBodyReadTimeout
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn),
	}
	rs.URL = scheme + "://" + displayAddr(ln.Addr())
	if cl != nil {
		cl.start(rs.leaseLost, rs.takeOverFailed)
	}
	go func() {
		var err error
		if tlsCfg != nil {
			err = rs.http.ServeTLS(ln, "", "")
		} else {
			err = rs.http.Serve(ln)
		}
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		rs.serveErr = err
		close(rs.stopped)
	}()
	cfg.Logger.Info("serving", "url", rs.URL, "origin", keys.Origin, "tree_size", led.Latest().Size, "data", cfg.DataDir)
	return rs, nil
}

// PprofPath is where the server serves the Go runtime's profiles
// (net/http/pprof) to admin tokens only: GET /debug/pprof/heap for the heap,
// /debug/pprof/profile?seconds=N for the CPU. See docs/operations.md,
// "Memory".
const PprofPath = "/debug/pprof/"

// withPprof serves next and, behind api's admin token, this node's
// profiles (never forwarded to the sequencer).
func withPprof(api *ingest.Server, next http.Handler) http.Handler {
	prof := http.NewServeMux()
	prof.HandleFunc(PprofPath, pprof.Index) // and every named profile: heap, goroutine, allocs, ...
	prof.HandleFunc(PprofPath+"cmdline", pprof.Cmdline)
	prof.HandleFunc(PprofPath+"profile", pprof.Profile)
	prof.HandleFunc(PprofPath+"symbol", pprof.Symbol)
	prof.HandleFunc(PprofPath+"trace", pprof.Trace)
	mux := http.NewServeMux()
	mux.Handle(PprofPath, api.RequireAdmin(prof))
	mux.Handle("/", next)
	return mux
}

// Close stops accepting calls, waits for in-flight ones until ctx ends (then
// cuts them off), and closes the ledger, which drains queued batches.
func (r *Server) Close(ctx context.Context) error {
	r.closing.Store(true)
	r.api.SetServing(false)
	herr := r.http.Shutdown(ctx)
	if herr != nil {
		r.logger.Warn("in-flight calls cut off at the shutdown deadline", "err", herr)
		r.http.Close()
		herr = nil
	}
	<-r.stopped
	r.pollStop() // before the ledger closes: a SET in flight is stored or left unacknowledged
	r.witStop()
	var lerr error
	if r.cl != nil {
		lerr = r.cl.close()
	} else {
		lerr = r.log.Close()
	}
	if lerr != nil && !errors.Is(lerr, ledger.ErrClosed) {
		return fmt.Errorf("closing the ledger: %w", lerr)
	}
	r.logger.Info("stopped")
	if r.lost.Load() {
		return fmt.Errorf("%w: stopped serving; restart to rejoin as a standby", ErrLeaseLost)
	}
	if p := r.failed.Load(); p != nil {
		return *p
	}
	return r.serveErr
}

// clusterCloser gives a cluster the Close of a ledger for Start's error
// paths.
type clusterCloser struct{ *cluster }

func (c clusterCloser) Close() error { return c.close() }

// leaseLost stops the server when another node took the lease over: this
// node's appends would all be fenced from then on.
func (r *Server) leaseLost() {
	if r.closing.Load() {
		return
	}
	r.lost.Store(true)
	r.logger.Error("lost the sequencing lease to another node; stopping", "node", r.cl.st.Node())
	r.api.SetServing(false)
	r.http.Close()
}

// takeOverFailed stops the server when a follower holding the lease could
// not open the ledger for writing; Close releases the lease for another node.
func (r *Server) takeOverFailed(err error) {
	if r.closing.Load() {
		return
	}
	r.failed.Store(&err)
	r.api.SetServing(false)
	r.http.Close()
}

// advertiseURL is the URL other nodes reach a listener at: its address, or
// the host name for an unspecified listen host.
func advertiseURL(scheme string, a net.Addr) string {
	if tcp, ok := a.(*net.TCPAddr); ok && (tcp.IP == nil || tcp.IP.IsUnspecified()) {
		if h, err := os.Hostname(); err == nil && h != "" {
			return scheme + "://" + net.JoinHostPort(h, fmt.Sprint(tcp.Port))
		}
	}
	return scheme + "://" + displayAddr(a)
}

// checkAdvertise checks an --advertise-url.
func checkAdvertise(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return fmt.Errorf("%q: want http://HOST:PORT or https://HOST:PORT, the address other nodes reach this one at", s)
	}
	return nil
}

// displayAddr shows a listener address as a client would dial it.
func displayAddr(a net.Addr) string {
	tcp, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String()
	}
	ip := tcp.IP
	if ip == nil || ip.IsUnspecified() {
		ip = net.IPv4(127, 0, 0, 1)
	}
	return net.JoinHostPort(ip.String(), fmt.Sprint(tcp.Port))
}

// loadRuleSet compiles the built-in rules plus --rules DIR with --params.
// Errors carry file:line:col from the rules package.
func loadRuleSet(dir, paramsFile string) (*rules.Set, []byte, error) {
	rs, err := rules.Builtin()
	if err != nil {
		return nil, nil, fmt.Errorf("built-in rules: %w", err)
	}
	if dir != "" {
		extra, err := rules.LoadDir(dir)
		if err != nil {
			return nil, nil, fmt.Errorf("--rules %s: %w", dir, err)
		}
		rs = append(rs, extra...)
	}
	var params rules.Params
	var paramsYAML []byte
	if paramsFile != "" {
		if paramsYAML, err = os.ReadFile(paramsFile); err != nil {
			return nil, nil, fmt.Errorf("--params: %w", err)
		}
		if params, err = rules.ParseParams(paramsFile, paramsYAML); err != nil {
			return nil, nil, fmt.Errorf("--params: %w", err)
		}
	}
	set, err := rules.NewSet(rs, params)
	if err != nil {
		return nil, nil, fmt.Errorf("rule set: %w", err)
	}
	return set, paramsYAML, nil
}

// exporter builds evidence packages with verify.Export (ingest.Exporter).
type exporter struct {
	l      ingest.Ledger
	set    *rules.Set
	params []byte
	signer *verify.EvidenceSigner
	logKey string // the log's verifier key, for the report
}

func (x *exporter) Export(ctx context.Context, req ingest.ExportRequest, create func(string) (io.WriteCloser, error)) error {
	src := &exportSource{x: x, req: req}
	return verify.Export(ctx, src, verify.ExportOptions{AsOf: req.AsOf, From: req.From, Framework: req.Framework, LogKey: x.logKey, All: req.All, SinceSizes: req.SinceSizes, Subjects: req.Subjects, Signer: x.signer}, sinkFunc(create))
}

type sinkFunc func(string) (io.WriteCloser, error)

func (f sinkFunc) Create(name string) (io.WriteCloser, error) { return f(name) }

// exportSource is verify.Source over the ledger at one checkpoint.
type exportSource struct {
	x   *exporter
	req ingest.ExportRequest
}

func (s *exportSource) Checkpoint(context.Context) (ledger.Checkpoint, error) {
	return s.req.Checkpoint, nil
}

func (s *exportSource) Evaluate(ctx context.Context, size uint64, asOf time.Time) (*format.Findings, error) {
	return s.evaluate(ctx, size, time.Time{}, asOf)
}

// EvaluatePeriod makes exportSource a verify.PeriodSource.
func (s *exportSource) EvaluatePeriod(ctx context.Context, size uint64, from, to time.Time) (*format.Findings, error) {
	return s.evaluate(ctx, size, from, to)
}

func (s *exportSource) evaluate(ctx context.Context, size uint64, from, asOf time.Time) (*format.Findings, error) {
	// The same evaluation as EvaluateStream: subjects pulled from the index
	// as the workers need them, chains read one by one.
	res, err := s.x.set.Collect(ctx, ingest.LedgerSubjects(ctx, s.x.l, size), s.req.Chains, from, asOf, !from.IsZero())
	if err != nil {
		return nil, err
	}
	return verify.FindingsDocument(s.x.set, res, s.x.params)
}

// EvaluateSubjects makes exportSource a verify.SubjectSource: the rules
// over subjects only, recording the other chains they read.
func (s *exportSource) EvaluateSubjects(ctx context.Context, size uint64, subjects []string, from, asOf time.Time) (*format.Findings, []string, error) {
	rec := &readChains{src: s.req.Chains, given: subjects, read: map[string]bool{}}
	var res *rules.Result
	var err error
	if from.IsZero() {
		res, err = s.x.set.Evaluate(ctx, subjects, rec, asOf)
	} else {
		res, err = s.x.set.EvaluatePeriod(ctx, subjects, rec, from, asOf)
	}
	if err != nil {
		return nil, nil, err
	}
	doc, err := verify.FindingsDocument(s.x.set, res, s.x.params)
	if err != nil {
		return nil, nil, err
	}
	return doc, rec.others(), nil
}

// SubjectProof makes exportSource a verify.SubjectSource.
// Sequencers and followers both prove subjects when the log has a subject
// map; a ledger type without SubjectProof answers as a log without a map would.
func (s *exportSource) SubjectProof(ctx context.Context, subject string, size uint64) (ledger.SubjectProof, error) {
	sp, ok := s.x.l.(interface {
		SubjectProof(ctx context.Context, subject string, size uint64) (ledger.SubjectProof, error)
	})
	if !ok {
		return ledger.SubjectProof{}, fmt.Errorf("this node's ledger cannot prove subjects complete: %w", ledger.ErrNoSubjectMap)
	}
	return sp.SubjectProof(ctx, subject, size)
}

// readChains is a rules.ChainSource that records the subjects whose chains
// were read beyond the given ones. Safe for concurrent use.
type readChains struct {
	src   rules.ChainSource
	given []string
	mu    sync.Mutex
	read  map[string]bool
}

func (r *readChains) Chain(ctx context.Context, subject string) ([]rules.Entry, error) {
	r.mu.Lock()
	r.read[subject] = true
	r.mu.Unlock()
	return r.src.Chain(ctx, subject)
}

// others are the subjects read that were not given, sorted.
func (r *readChains) others() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for s := range r.read {
		if !slices.Contains(r.given, s) {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}

func (s *exportSource) Leaf(ctx context.Context, index uint64) ([]byte, error) {
	es, err := s.x.l.Entries(ctx, index, 1)
	if err != nil {
		return nil, err
	}
	if len(es) != 1 {
		return nil, fmt.Errorf("entry %d: the ledger returned %d entries", index, len(es))
	}
	return es[0].Leaf, nil
}

func (s *exportSource) Entries(ctx context.Context, size uint64, subjects []string, fn func(uint64, []byte) error) error {
	if subjects == nil {
		for start := uint64(0); start < size; {
			es, err := s.x.l.Entries(ctx, start, min(1000, size-start))
			if err != nil {
				return err
			}
			if len(es) == 0 {
				return fmt.Errorf("entries from %d: the ledger returned none below size %d", start, size)
			}
			for _, e := range es {
				if err := fn(e.Index, e.Leaf); err != nil {
					return err
				}
			}
			start = es[len(es)-1].Index + 1
		}
		return nil
	}
	// The chains of the named subjects, merged in index order a page of
	// each at a time (not held whole: docs/operations.md, "Memory").
	return mergeSubjects(ctx, subjects, func(ctx context.Context, sub string, start uint64, n int) ([]ledger.Entry, error) {
		return s.x.l.SubjectEntries(ctx, sub, size, start, n)
	}, fn)
}

func (s *exportSource) InclusionProof(ctx context.Context, index, size uint64) ([][]byte, error) {
	return s.x.l.InclusionProof(ctx, index, size)
}

func (s *exportSource) ConsistencyProof(ctx context.Context, from, to uint64) ([][]byte, error) {
	return s.x.l.ConsistencyProof(ctx, from, to)
}

// WitnessedFile, in the data directory, keeps the newest witnessed
// checkpoint across restarts (witness.Config.StateFile).
const WitnessedFile = "witnessed.checkpoint"

// holds tells whether l holds the checkpoint (size, root): a data directory
// restored from an older backup, or a stored note of another log, must not
// be served as this log's witnessed checkpoint.
func holds(ctx context.Context, l ingest.Ledger) func(uint64, [32]byte) error {
	return func(size uint64, root [32]byte) error {
		if n := l.Latest().Size; size > n {
			return fmt.Errorf("the log has %d entries, the stored checkpoint %d (was the data directory restored from an older backup?)", n, size)
		}
		cp, err := l.CheckpointAt(ctx, size)
		if err != nil {
			return err
		}
		if cp.Root != root {
			return fmt.Errorf("the log's checkpoint of size %d has root %x, the stored one %x: it is another history", size, cp.Root, root)
		}
		return nil
	}
}

// feedInterval is how often the witnesser is handed the ledger's latest
// checkpoint; the ledger has no checkpoint notification, and reading
// Latest is an atomic load.
const feedInterval = 100 * time.Millisecond

// runWitnesser runs wit and hands it the ledger's latest checkpoint whenever
// it changes. Appends never wait for it. The returned func stops both and
// waits for them.
func runWitnesser(wit *witness.Witnesser, l interface{ Latest() ledger.Checkpoint }, logger *slog.Logger, minInterval time.Duration) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { wit.Run(ctx) })
	wg.Go(func() {
		every := feedInterval
		if minInterval > 0 && minInterval < every {
			every = minInterval
		}
		t := time.NewTicker(every)
		defer t.Stop()
		var fed uint64
		for first := true; ; first = false {
			if cp := l.Latest(); first || cp.Size != fed {
				if err := wit.Submit(cp.Note); err != nil {
					logger.Error("witnessing: the ledger's checkpoint was refused", "size", cp.Size, "err", err)
				}
				fed = cp.Size
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
	return func() { cancel(); wg.Wait() }
}
