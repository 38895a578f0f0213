package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/grantline/grantline/ingest"
	"github.com/grantline/grantline/internal/datadir"
	"github.com/grantline/grantline/internal/server"
	"github.com/grantline/grantline/ledger/checkpoint"
)

func init() {
	register(&command{
		name: "serve",
		usage: "[--data DIR] [--store postgres://... [--advertise-url URL]] [--listen HOST:PORT] [--params FILE] [--rules DIR] [--origin O] " +
			"[--tls-cert F --tls-key F] [--log-format text|json] [--metrics-public] [--witness-policy FILE] " +
			"[--stream-idle-timeout D] [--stream-max-lifetime D] [--memory-budget SIZE] [--max-mapped SIZE] [--evaluate-scan auto|on|off] [--evaluate-cache SIZE|off] [--init]",
		summary: "run the ledger service (Connect/gRPC APIs, tlog-tiles, /metrics)",
		run:     runServe,
	})
}

// shutdownGrace bounds how long a signal waits for in-flight calls.
const shutdownGrace = 30 * time.Second

func runServe(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, commands["serve"])
	var cfg server.Config
	fs.StringVar(&cfg.DataDir, "data", defaultDataDir, "data directory: ledger, keys, tokens")
	fs.StringVar(&cfg.Store, "store", "", "keep the ledger in PostgreSQL (postgres://USER@HOST:PORT/DB?...) instead of DATA/ledger; see docs/operations-postgres.md")
	fs.StringVar(&cfg.Advertise, "advertise-url", "", "with --store: the URL other nodes reach this one at, to forward appends while it sequences (default: the --listen address; the host name if it listens on all addresses)")
	fs.StringVar(&cfg.Listen, "listen", server.DefaultListen, "HOST:PORT to listen on")
	fs.StringVar(&cfg.ParamsFile, "params", "", "YAML file overriding rule params (e.g. jit_grace: 30m)")
	fs.StringVar(&cfg.RulesDir, "rules", "", "directory of extra rule files; a file with a built-in's id replaces it")
	fs.StringVar(&cfg.SSFTransmitters, "ssf-transmitters", "", "JSON file of Shared Signals transmitters (issuer, audience, system, jwks, jwks_file or jwks_uri, poll); serves POST /v1/ssf/events and polls those with poll (docs/sources.md)")
	fs.StringVar(&cfg.Origin, "origin", "", "checkpoint origin of a new log (default "+datadir.DefaultOrigin+"); later starts use the one in DATA/keys/log.vkey")
	fs.StringVar(&cfg.TLSCert, "tls-cert", "", "PEM certificate chain; serve HTTPS (with --tls-key)")
	fs.StringVar(&cfg.TLSKey, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&cfg.Algorithm, "alg", string(checkpoint.Ed25519), "algorithm of a new log key: ed25519 or ecdsa-p256")
	fs.BoolVar(&cfg.MetricsPublic, "metrics-public", false, "serve /metrics without a token")
	fs.StringVar(&cfg.WitnessPolicy, "witness-policy", "", "witness policy file: send checkpoints to its witnesses, serve the newest witnessed one (docs/witnessing.md)")
	fs.DurationVar(&cfg.StreamIdleTimeout, "stream-idle-timeout", server.DefaultStreamIdleTimeout, "close an AppendStream on which no message arrived for this long (clients reconnect)")
	fs.DurationVar(&cfg.StreamMaxLifetime, "stream-max-lifetime", server.DefaultStreamMaxLifetime, "close an AppendStream this long after it opened (clients reconnect; a revoked token stops at once regardless)")
	fs.BoolVar(&cfg.SubjectMap, "subject-map", false, "create a new log with a subject map (recommended), so that evidence export --subject can prove subjects complete (docs/completeness.md); fixed when the log is created, ignored afterwards")
	fs.BoolVar(&cfg.Init, "init", false, "start a new, empty log under the existing keys in DATA/keys when DATA/ledger holds none (never overwrites a log; see docs/operations.md)")
	memBudget := fs.String("memory-budget", sizeString(server.DefaultMemoryBudget), "anonymous memory to stay within (e.g. 512MiB, 2GiB; 0: none): sets the Go memory limit unless GOMEMLIMIT is set, and sizes the store's caches; see docs/operations.md")
	maxMapped := fs.String("max-mapped", sizeString(server.DefaultMaxMappedBytes), "bound on the file-backed resident memory of the store's mapped files (e.g. 1GiB; 0: none): pages are reclaimed from 80% of it, down to 60%; see docs/operations.md")
	evalScan := fs.String("evaluate-scan", "auto", "how evaluating all subjects reads the chains: auto (one sequential read of the log, spilled to DATA/evaluate-spill, when the store is larger than half of --max-mapped), on, or off (a point read per entry); see docs/operations.md")
	evalCache := fs.String("evaluate-cache", sizeString(server.DefaultEvaluateCacheBytes), "disk for the results of evaluations at a fixed as-of time or period, in DATA/evaluate-cache, so that evaluating the grown log again re-evaluates only the subjects that may have changed (e.g. 1GiB; 0 or off: no cache); see docs/operations.md")
	logFormat := fs.String("log-format", "text", "log format on stderr: text or json")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &exitError{code: 2, msg: fmt.Sprintf("unexpected argument %q; all options are flags (see -h)", fs.Arg(0))}
	}
	for name, d := range map[string]time.Duration{"stream-idle-timeout": cfg.StreamIdleTimeout, "stream-max-lifetime": cfg.StreamMaxLifetime} {
		if d <= 0 {
			return &exitError{code: 2, msg: fmt.Sprintf("--%s %s: want a positive duration such as 5m or 1h", name, d)}
		}
	}
	for name, p := range map[string]struct {
		v   string
		dst *int64
	}{"memory-budget": {*memBudget, &cfg.MemoryBudget}, "max-mapped": {*maxMapped, &cfg.MaxMappedBytes}} {
		n, err := parseSize(p.v)
		if err != nil {
			return &exitError{code: 2, msg: fmt.Sprintf("--%s %q: %v", name, p.v, err)}
		}
		*p.dst = n
	}
	if *evalCache != "off" {
		n, err := parseSize(*evalCache)
		if err != nil {
			return &exitError{code: 2, msg: fmt.Sprintf("--evaluate-cache %q: %v, or off", *evalCache, err)}
		}
		cfg.EvaluateCacheBytes = n
	}
	mode, err := ingest.ParseScanMode(*evalScan)
	if err != nil {
		return &exitError{code: 2, msg: fmt.Sprintf("--evaluate-scan: %v", err)}
	}
	cfg.EvaluateScan = mode
	if cfg.MemoryBudget > 0 && cfg.MemoryBudget < minMemoryBudget {
		return &exitError{code: 2, msg: fmt.Sprintf("--memory-budget %s: want at least %s (or 0 for none)", *memBudget, sizeString(minMemoryBudget))}
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

	srv, err := server.Start(ctx, cfg)
	if errors.Is(err, server.ErrConfig) {
		return &exitError{code: 2, msg: err.Error()}
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "grantline: serving %s on %s\n", srv.Origin, srv.URL)
	fmt.Fprintf(env.stdout, "  data:         %s\n", srv.DataDir)
	fmt.Fprintf(env.stdout, "  log key:      %s\n", srv.VerifierKey)
	fmt.Fprintf(env.stdout, "  verifier key: %s\n", srv.VerifierKeyPath)
	fmt.Fprintf(env.stdout, "  evidence key: %s\n", srv.EvidenceKeyPath)
	if cfg.WitnessPolicy != "" {
		fmt.Fprintf(env.stdout, "  witnesses:    %s (GET /checkpoint serves the newest witnessed checkpoint)\n", cfg.WitnessPolicy)
	}
	if srv.NewAdminToken {
		fmt.Fprintf(env.stdout, "  admin token:  written to %s (mode 0600); use it with --token or GRANTLINE_TOKEN\n", srv.AdminTokenPath)
	}

	select {
	case <-ctx.Done():
		cfg.Logger.Info("shutting down: draining in-flight calls and batches")
	case <-srv.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	return srv.Close(sctx)
}

// minMemoryBudget is the smallest --memory-budget serve accepts: below it
// the store's smallest caches and a few batches in flight do not fit.
const minMemoryBudget = 128 << 20

// sizeUnits are the suffixes parseSize accepts, largest first.
var sizeUnits = []struct {
	suffix string
	n      int64
}{
	{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10},
	{"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3},
	{"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1},
}

// parseSize parses a byte size: a whole number with an optional unit
// (512MiB, 2GiB, 1G = 1GiB, 300MB = 300e6 bytes, plain bytes).
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range sizeUnits {
		if rest, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = strings.TrimSpace(rest), u.n
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("want a size such as 512MiB or 2GiB (units KiB, MiB, GiB, TiB, or KB, MB, GB, TB), or 0")
	}
	if n > 0 && mult > 1<<62/n {
		return 0, fmt.Errorf("size too large")
	}
	return n * mult, nil
}

// sizeString formats a byte size for flag defaults: in the largest
// binary unit that divides it.
func sizeString(n int64) string {
	for _, u := range []struct {
		suffix string
		n      int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.n && n%u.n == 0 {
			return strconv.FormatInt(n/u.n, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}
