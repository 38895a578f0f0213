package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/grantline/grantline/ingest"
	"github.com/grantline/grantline/ingest/auth"
	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/checkpoint"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/rules"
	"github.com/grantline/grantline/verify"
	"github.com/grantline/grantline/verify/format"
)

func init() {
	register(&command{
		name: "serve",
		usage: "[--data DIR] [--listen HOST:PORT] [--params FILE] [--rules DIR] [--origin O] " +
			"[--tls-cert F --tls-key F] [--log-format text|json] [--metrics-public]",
		summary: "run the ledger service (Connect/gRPC APIs, tlog-tiles, /metrics)",
		run:     runServe,
	})
}

const (
	defaultListen = "127.0.0.1:7800"
	// defaultOrigin names a new log whose operator gave no --origin.
	defaultOrigin = "localhost/grantline"
	// shutdownGrace bounds how long a signal waits for in-flight calls.
	shutdownGrace = 30 * time.Second
)

// serveConfig configures startServer; zero fields take the defaults.
type serveConfig struct {
	DataDir, Listen, ParamsFile, RulesDir, Origin, TLSCert, TLSKey string
	Logger                                                         *slog.Logger
	// MetricsPublic serves /metrics without a token.
	MetricsPublic bool
	// Algorithm of a new log key: ed25519 (default) or ecdsa-p256.
	Algorithm string
	// QueueSize is the ledger's append queue (0: its default).
	QueueSize int
}

// runningServer is a started server.
type runningServer struct {
	URL                              string // http(s)://HOST:PORT, an unspecified listen host shown as 127.0.0.1
	AdminToken                       string // contents of DATA/admin.token ("" if that file was removed)
	AdminTokenPath                   string // DATA/admin.token
	NewAdminToken                    bool   // this start created the admin token
	DataDir                          string
	VerifierKey                      string // the log.vkey line
	VerifierKeyPath, EvidenceKeyPath string // DATA/keys/log.vkey, DATA/keys/evidence.pub
	Origin                           string

	log    *ledger.Log
	api    *ingest.Server
	http   *http.Server
	served chan error // the Serve result, once
	logger *slog.Logger
}

func runServe(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, commands["serve"])
	var cfg serveConfig
	fs.StringVar(&cfg.DataDir, "data", defaultDataDir, "data directory: ledger, keys, tokens")
	fs.StringVar(&cfg.Listen, "listen", defaultListen, "HOST:PORT to listen on")
	fs.StringVar(&cfg.ParamsFile, "params", "", "YAML file overriding rule params (e.g. jit_grace: 30m)")
	fs.StringVar(&cfg.RulesDir, "rules", "", "directory of extra rule files; a file with a built-in's id replaces it")
	fs.StringVar(&cfg.Origin, "origin", "", "checkpoint origin of a new log (default "+defaultOrigin+"); later starts use the one in DATA/keys/log.vkey")
	fs.StringVar(&cfg.TLSCert, "tls-cert", "", "PEM certificate chain; serve HTTPS (with --tls-key)")
	fs.StringVar(&cfg.TLSKey, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&cfg.Algorithm, "alg", string(checkpoint.Ed25519), "algorithm of a new log key: ed25519 or ecdsa-p256")
	fs.BoolVar(&cfg.MetricsPublic, "metrics-public", false, "serve /metrics without a token")
	logFormat := fs.String("log-format", "text", "log format on stderr: text or json")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &exitError{code: 2, msg: fmt.Sprintf("unexpected argument %q; all options are flags (see -h)", fs.Arg(0))}
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return &exitError{code: 2, msg: fmt.Sprintf("--log-level %q: want debug, info, warn or error", *logLevel)}
	}
	hopts := &slog.HandlerOptions{Level: level}
	switch *logFormat {
	case "text":
		cfg.Logger = slog.New(slog.NewTextHandler(env.stderr, hopts))
	case "json":
		cfg.Logger = slog.New(slog.NewJSONHandler(env.stderr, hopts))
	default:
		return &exitError{code: 2, msg: fmt.Sprintf("--log-format %q: want text or json", *logFormat)}
	}

	srv, err := startServer(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "grantline: serving %s on %s\n", srv.Origin, srv.URL)
	fmt.Fprintf(env.stdout, "  data:         %s\n", srv.DataDir)
	fmt.Fprintf(env.stdout, "  log key:      %s\n", srv.VerifierKey)
	fmt.Fprintf(env.stdout, "  verifier key: %s\n", srv.VerifierKeyPath)
	fmt.Fprintf(env.stdout, "  evidence key: %s\n", srv.EvidenceKeyPath)
	if srv.NewAdminToken {
		fmt.Fprintf(env.stdout, "  admin token:  written to %s (mode 0600); use it with --token or GRANTLINE_TOKEN\n", srv.AdminTokenPath)
	}

	select {
	case <-ctx.Done():
		cfg.Logger.Info("shutting down: draining in-flight calls and batches")
	case err := <-srv.served:
		srv.served <- err // for Close
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	return srv.Close(sctx)
}

// startServer opens (or creates) the data directory and serves it until
// Close. The rule set is compiled first, so that a broken rule refuses the
// start before anything is created.
func startServer(ctx context.Context, cfg serveConfig) (_ *runningServer, err error) {
	if cfg.DataDir == "" {
		cfg.DataDir = defaultDataDir
	}
	if cfg.Listen == "" {
		cfg.Listen = defaultListen
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if (cfg.TLSCert == "") != (cfg.TLSKey == "") {
		return nil, &exitError{code: 2, msg: "--tls-cert and --tls-key go together: give both, or neither for cleartext (h2c)"}
	}
	alg := checkpoint.Ed25519
	if cfg.Algorithm != "" {
		if alg, err = checkpoint.ParseAlgorithm(cfg.Algorithm); err != nil {
			return nil, &exitError{code: 2, msg: fmt.Sprintf("--alg: %v", err)}
		}
	}

	set, paramsYAML, err := loadRuleSet(cfg.RulesDir, cfg.ParamsFile)
	if err != nil {
		return nil, err
	}
	var tlsCfg *tls.Config
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("--tls-cert %s / --tls-key %s: %w", cfg.TLSCert, cfg.TLSKey, err)
		}
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}

	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("--data %s: %w", cfg.DataDir, err)
	}
	origin := cfg.Origin
	if existing, _, verr := dataDirVerifier(cfg.DataDir); verr == nil {
		if origin != "" && origin != existing {
			return nil, fmt.Errorf("--origin %q: this data directory's log is %q (DATA/keys/log.vkey); an origin cannot change", origin, existing)
		}
		origin = existing
	} else if origin == "" {
		origin = defaultOrigin
	}
	keys, err := checkpoint.LoadOrCreateKeys(cfg.DataDir, origin, alg)
	if err != nil {
		return nil, fmt.Errorf("keys in %s: %w", filepath.Join(cfg.DataDir, "keys"), err)
	}
	evSigner, err := verify.NewEvidenceSigner(keys.Evidence)
	if err != nil {
		return nil, fmt.Errorf("evidence key: %w", err)
	}
	newTokenPath, err := auth.Bootstrap(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("creating the admin token: %w", err)
	}
	store, err := auth.Open(cfg.DataDir)
	if err != nil {
		return nil, err
	}

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("--listen %s: %w", cfg.Listen, err)
	}
	defer func() {
		if err != nil {
			ln.Close()
		}
	}()
	l, err := ledger.Open(ctx, ledger.Options{
		Dir: filepath.Join(cfg.DataDir, "ledger"), Origin: keys.Origin,
		Signer: keys.LogSigner, Verifier: keys.LogVerifier,
		QueueSize: cfg.QueueSize, Logger: cfg.Logger.With("component", "ledger"),
	})
	if err != nil {
		return nil, fmt.Errorf("opening the ledger in %s: %w", filepath.Join(cfg.DataDir, "ledger"), err)
	}
	la := ledgerAdapter{l}
	api, err := ingest.New(ingest.Config{
		Ledger: la, Auth: authAdapter{store},
		Evaluator: &rulesAdapter{set: set},
		Exporter:  &exportAdapter{l: l, set: set, params: paramsYAML, signer: evSigner, origin: keys.Origin},
		Logger:    cfg.Logger, MetricsPublic: cfg.MetricsPublic,
	})
	if err != nil {
		l.Close()
		return nil, err
	}

	rs := &runningServer{
		DataDir: cfg.DataDir, VerifierKey: keys.VerifierKey, Origin: keys.Origin,
		VerifierKeyPath: keys.VerifierKeyPath, EvidenceKeyPath: keys.EvidencePubKeyPath,
		AdminTokenPath: filepath.Join(cfg.DataDir, auth.AdminTokenFile), NewAdminToken: newTokenPath != "",
		log: l, api: api, served: make(chan error, 1), logger: cfg.Logger,
	}
	if b, err := os.ReadFile(rs.AdminTokenPath); err == nil {
		rs.AdminToken = strings.TrimSpace(string(b))
	}
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true) // h2c: gRPC and bidi streams without TLS
	protocols.SetHTTP2(true)
	rs.http = &http.Server{
		Handler:           api.Handler(),
		Protocols:         protocols,
		HTTP2:             ingest.HTTP2Config(),
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn),
	}
	scheme := "http"
	if tlsCfg != nil {
		scheme = "https"
	}
	rs.URL = scheme + "://" + displayAddr(ln.Addr())
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
		rs.served <- err
	}()
	cfg.Logger.Info("serving", "url", rs.URL, "origin", keys.Origin, "tree_size", l.Latest().Size, "data", cfg.DataDir)
	return rs, nil
}

// Close stops accepting calls, waits for in-flight ones until ctx ends (then
// cuts them off), and closes the ledger, which drains queued batches.
func (r *runningServer) Close(ctx context.Context) error {
	r.api.SetServing(false)
	herr := r.http.Shutdown(ctx)
	if herr != nil {
		r.logger.Warn("in-flight calls cut off at the shutdown deadline", "err", herr)
		r.http.Close()
		herr = nil
	}
	serveErr := <-r.served
	r.served <- serveErr
	lerr := r.log.Close()
	if lerr != nil && !errors.Is(lerr, ledger.ErrClosed) {
		return fmt.Errorf("closing the ledger: %w", lerr)
	}
	r.logger.Info("stopped")
	return serveErr
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

// ---- adapters from the real packages to ingest's interfaces ----

// classified is a ledger error that also matches an ingest sentinel.
type classified struct{ kind, err error }

func (c classified) Error() string   { return c.err.Error() }
func (c classified) Unwrap() []error { return []error{c.kind, c.err} }

var ledgerKinds = []struct{ from, to error }{
	{ledger.ErrNotFound, ingest.ErrNotFound},
	{ledger.ErrOutOfRange, ingest.ErrOutOfRange},
	{ledger.ErrPushback, ingest.ErrPushback},
	{ledger.ErrClosed, ingest.ErrClosed},
	{ledger.ErrStorage, ingest.ErrStorage},
	{ledger.ErrCorrupt, ingest.ErrCorrupt},
	{ledger.ErrTooLarge, ingest.ErrTooLarge},
}

// ledgerErr tags a ledger error with the ingest sentinel of its class.
func ledgerErr(err error) error {
	if err == nil {
		return nil
	}
	for _, k := range ledgerKinds {
		if errors.Is(err, k.from) {
			return classified{k.to, err}
		}
	}
	return err
}

type ledgerAdapter struct{ l *ledger.Log }

func (a ledgerAdapter) Append(ctx context.Context, evs []*pb.Event) ([]ingest.AppendResult, uint64, error) {
	res, size, err := a.l.Append(ctx, evs)
	if err != nil {
		return nil, 0, ledgerErr(err)
	}
	out := make([]ingest.AppendResult, len(res))
	for i, r := range res {
		out[i] = ingest.AppendResult{Index: r.Index, LeafHash: r.LeafHash, Duplicate: r.Duplicate}
	}
	return out, size, nil
}

func cpOf(c ledger.Checkpoint) ingest.Checkpoint {
	return ingest.Checkpoint{Size: c.Size, Root: c.Root, Note: c.Note}
}

func entriesOf(es []ledger.Entry) []ingest.Entry {
	out := make([]ingest.Entry, len(es))
	for i, e := range es {
		out[i] = ingest.Entry{Index: e.Index, Leaf: e.Leaf}
	}
	return out
}

func (a ledgerAdapter) Latest() ingest.Checkpoint { return cpOf(a.l.Latest()) }

func (a ledgerAdapter) CheckpointAt(ctx context.Context, size uint64) (ingest.Checkpoint, error) {
	c, err := a.l.CheckpointAt(ctx, size)
	return cpOf(c), ledgerErr(err)
}

func (a ledgerAdapter) Entries(ctx context.Context, start, count uint64) ([]ingest.Entry, error) {
	es, err := a.l.Entries(ctx, start, count)
	return entriesOf(es), ledgerErr(err)
}

func (a ledgerAdapter) InclusionProof(ctx context.Context, index, size uint64) ([][]byte, error) {
	p, err := a.l.InclusionProof(ctx, index, size)
	return p, ledgerErr(err)
}

func (a ledgerAdapter) LookupLeafHash(ctx context.Context, hash []byte) (uint64, error) {
	i, err := a.l.LookupLeafHash(ctx, hash)
	return i, ledgerErr(err)
}

func (a ledgerAdapter) ConsistencyProof(ctx context.Context, from, to uint64) ([][]byte, error) {
	p, err := a.l.ConsistencyProof(ctx, from, to)
	return p, ledgerErr(err)
}

func (a ledgerAdapter) SubjectEntries(ctx context.Context, subject string, size, start uint64, limit int) ([]ingest.Entry, error) {
	es, err := a.l.SubjectEntries(ctx, subject, size, start, limit)
	return entriesOf(es), ledgerErr(err)
}

func (a ledgerAdapter) ForEachSubject(ctx context.Context, size uint64, fn func(string) error) error {
	return ledgerErr(a.l.ForEachSubject(ctx, size, fn))
}

func (a ledgerAdapter) ReadTile(ctx context.Context, level, index uint64, width int) ([]byte, error) {
	b, err := a.l.ReadTile(ctx, level, index, width)
	return b, ledgerErr(err)
}

func (a ledgerAdapter) ReadEntryBundle(ctx context.Context, index uint64, width int) ([]byte, error) {
	b, err := a.l.ReadEntryBundle(ctx, index, width)
	return b, ledgerErr(err)
}

func (a ledgerAdapter) QueueDepth() int { return int(a.l.Stats().QueuedEvents) }

// Backup writes an online backup (ingest.Backuper).
func (a ledgerAdapter) Backup(ctx context.Context, w io.Writer) error { return a.l.Backup(ctx, w) }

type authAdapter struct{ s *auth.Store }

func (a authAdapter) Authenticate(token string) (ingest.Principal, error) {
	p, err := a.s.Authenticate(token)
	if err != nil {
		return ingest.Principal{}, err
	}
	return ingest.Principal{Name: p.Name, Role: ingest.Role(p.Role)}, nil
}

// rulesAdapter runs the compiled rule set for EvidenceService.Evaluate.
type rulesAdapter struct{ set *rules.Set }

func (r *rulesAdapter) RuleIDs() []string {
	var ids []string
	for _, ri := range r.set.Rules() {
		ids = append(ids, ri.ID)
	}
	return ids
}

type chainAdapter struct{ src ingest.ChainSource }

// listingAdapter is a chainAdapter over a source that can list every
// subject of the tree (rules.SubjectLister), which rules comparing entries
// across subjects (backdated-closure) need when only some are evaluated.
type listingAdapter struct {
	chainAdapter
	rules.SubjectLister
}

func (c chainAdapter) Chain(ctx context.Context, subject string) ([]rules.Entry, error) {
	ch, err := c.src.Chain(ctx, subject)
	if err != nil {
		return nil, err
	}
	out := make([]rules.Entry, len(ch))
	for i, e := range ch {
		out[i] = rules.Entry{Index: e.Index, Leaf: e.Leaf}
	}
	return out, nil
}

func (r *rulesAdapter) Evaluate(ctx context.Context, subjects []string, src ingest.ChainSource, asOf time.Time) (*ingest.EvalResult, error) {
	var cs rules.ChainSource = chainAdapter{src}
	if l, ok := src.(rules.SubjectLister); ok {
		cs = listingAdapter{chainAdapter{src}, l}
	}
	res, err := r.set.Evaluate(ctx, subjects, cs, asOf)
	if err != nil {
		return nil, err
	}
	out := &ingest.EvalResult{Subjects: res.Subjects, Entries: res.Entries}
	for _, f := range res.Findings {
		pf := &pb.Finding{Rule: f.Rule, Subject: f.Subject, Severity: f.Severity, Message: f.Message,
			ExposureSeconds: f.ExposureSeconds, Title: f.Title, Controls: f.Controls}
		for _, e := range f.Entries {
			pf.Entries = append(pf.Entries, &pb.EntryRef{Index: e.Index, EventId: e.EventID})
		}
		out.Findings = append(out.Findings, pf)
	}
	for _, e := range res.Errors {
		out.Errors = append(out.Errors, &pb.RuleError{Rule: e.Rule, Subject: e.Subject, Message: e.Message})
	}
	return out, nil
}

// exportAdapter builds evidence packages with verify.Export.
type exportAdapter struct {
	l      *ledger.Log
	set    *rules.Set
	params []byte
	signer *verify.EvidenceSigner
	origin string
}

func (x *exportAdapter) Export(ctx context.Context, req ingest.ExportRequest, create func(string) (io.WriteCloser, error)) error {
	src := &exportSource{x: x, req: req}
	err := verify.Export(ctx, src, verify.ExportOptions{AsOf: req.AsOf, All: req.All, SinceSizes: req.SinceSizes, Signer: x.signer}, sinkFunc(create))
	return ledgerErr(err)
}

type sinkFunc func(string) (io.WriteCloser, error)

func (f sinkFunc) Create(name string) (io.WriteCloser, error) { return f(name) }

// exportSource is verify.Source over the ledger at one checkpoint.
type exportSource struct {
	x   *exportAdapter
	req ingest.ExportRequest
}

func (s *exportSource) Checkpoint(context.Context) (verify.Checkpoint, error) {
	cp := s.req.Checkpoint
	return verify.Checkpoint{Note: cp.Note, Origin: s.x.origin, Size: cp.Size, Root: cp.Root}, nil
}

func (s *exportSource) Evaluate(ctx context.Context, size uint64, asOf time.Time) (*format.Findings, error) {
	var subjects []string
	if err := s.x.l.ForEachSubject(ctx, size, func(sub string) error {
		subjects = append(subjects, sub)
		return nil
	}); err != nil {
		return nil, err
	}
	res, err := s.x.set.Evaluate(ctx, subjects, chainAdapter{s.req.Chains}, asOf)
	if err != nil {
		return nil, err
	}
	return verify.FindingsDocument(s.x.set, res, s.x.params)
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
	// The chains of the named subjects, merged in index order.
	var all []ledger.Entry
	seen := map[string]bool{}
	for _, sub := range subjects {
		if seen[sub] {
			continue
		}
		seen[sub] = true
		for start := uint64(0); ; {
			es, err := s.x.l.SubjectEntries(ctx, sub, size, start, 1000)
			if err != nil {
				return err
			}
			all = append(all, es...)
			if len(es) < 1000 {
				break
			}
			start = es[len(es)-1].Index + 1
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Index < all[j].Index })
	for _, e := range all {
		if err := fn(e.Index, e.Leaf); err != nil {
			return err
		}
	}
	return nil
}

func (s *exportSource) InclusionProof(ctx context.Context, index, size uint64) ([][]byte, error) {
	return s.x.l.InclusionProof(ctx, index, size)
}

func (s *exportSource) ConsistencyProof(ctx context.Context, from, to uint64) ([][]byte, error) {
	return s.x.l.ConsistencyProof(ctx, from, to)
}
