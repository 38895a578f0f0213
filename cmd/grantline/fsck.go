package main

import (
	"context"
	"fmt"
	"io"
	neturl "net/url"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"github.com/grantline/grantline/internal/datadir"
	"github.com/grantline/grantline/internal/server"
	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/badgerstore"
	"github.com/grantline/grantline/ledger/pgstore"
)

func init() {
	register(&command{
		name:    "fsck",
		usage:   "--data DIR [--store postgres://...] [--memory-budget SIZE] [--max-mapped SIZE] [--quiet]",
		summary: "re-verify a stopped server's whole store: every leaf, tile, index and checkpoint (exit 1 on any problem)",
		run:     runFsckCmd,
	})
}

func runFsckCmd(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, commands["fsck"])
	data := fs.String("data", defaultDataDir, "the server's data directory")
	quiet := fs.Bool("quiet", false, "print only the result")
	store := fs.String("store", "", "check the ledger in this PostgreSQL database (as given to serve --store) instead of DIR/ledger")
	memBudget := fs.String("memory-budget", sizeString(server.DefaultMemoryBudget), "anonymous memory to stay within (0: none): sets the Go memory limit unless GOMEMLIMIT is set, and sizes the store's caches; see docs/operations.md")
	maxMapped := fs.String("max-mapped", sizeString(server.DefaultMaxMappedBytes), "bound on the file-backed resident memory of the store's mapped files (0: none)")
	rest, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return &exitError{code: 2, msg: fmt.Sprintf("unexpected argument %q", rest[0])}
	}
	var mem badgerstore.Options
	for name, p := range map[string]struct {
		v   string
		dst *int64
	}{"memory-budget": {*memBudget, &mem.MemoryBudget}, "max-mapped": {*maxMapped, &mem.MaxMappedBytes}} {
		n, err := parseSize(p.v)
		if err != nil {
			return &exitError{code: 2, msg: fmt.Sprintf("--%s %q: %v", name, p.v, err)}
		}
		*p.dst = n
	}
	if mem.MemoryBudget > 0 && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(server.GoMemoryLimit(mem.MemoryBudget))
	}
	if *store != "" {
		return fsckPostgres(ctx, *data, *store, env.stderr, *quiet, env.stdout)
	}
	return fsckDataDir(ctx, *data, mem, env.stderr, *quiet, env.stdout)
}

// fsckPostgres runs ledger.Fsck over the ledger in PostgreSQL. It holds the
// sequencing lease while it checks, so that no node appends meanwhile, and
// refuses while a node sequences.
func fsckPostgres(ctx context.Context, dir, url string, progress io.Writer, quiet bool, out io.Writer) error {
	_, v, err := datadir.ReadVerifier(dir)
	if err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	st, err := pgstore.Open(ctx, url, pgstore.Options{Node: "fsck"})
	if err != nil {
		return &exitError{code: 2, msg: fmt.Sprintf("--store: %v", err)}
	}
	defer st.Close()
	l, err := st.Lease(ctx)
	if err != nil {
		return &exitError{code: 1, msg: err.Error()}
	}
	if l.Valid {
		return &exitError{code: 2, msg: fmt.Sprintf("--store: node %s sequences this log (lease epoch %d, until %s); fsck checks a stopped log: stop the nodes first",
			l.Holder, l.Epoch, l.ExpiresAt.UTC().Format(time.RFC3339))}
	}
	actx, cancel := context.WithTimeout(ctx, 2*pgstore.DefaultLeaseTTL)
	err = st.Acquire(actx)
	cancel()
	if err != nil {
		return &exitError{code: 2, msg: fmt.Sprintf("--store: a node started sequencing: %v", err)}
	}
	report := func(format string, args ...any) {
		if !quiet {
			fmt.Fprintf(progress, "fsck: "+strings.TrimSuffix(format, "\n")+"\n", args...)
		}
	}
	if err := ledger.Fsck(ctx, st, v, report); err != nil {
		return &exitError{code: 1, msg: fmt.Sprintf("%s: FAILED: %v", redactURL(url), err)}
	}
	fmt.Fprintf(out, "fsck %s: ok\n", redactURL(url))
	return nil
}

// redactURL drops the password from a connection URL for printing.
func redactURL(s string) string {
	u, err := neturl.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	if _, ok := u.User.Password(); ok {
		u.User = neturl.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}

// fsckDataDir runs ledger.Fsck over DIR/ledger with the verifier key in
// DIR/keys/log.vkey, the store opened with mem's budget and bound on mapped
// files, printing progress to progress unless quiet, and the verdict to out.
func fsckDataDir(ctx context.Context, dir string, mem badgerstore.Options, progress io.Writer, quiet bool, out io.Writer) error {
	_, v, err := datadir.ReadVerifier(dir)
	if err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	ldir := filepath.Join(dir, datadir.LedgerDir)
	if _, err := os.Stat(ldir); err != nil {
		return &exitError{code: 2, msg: fmt.Sprintf("--data %s: no ledger here (%v)", dir, err)}
	}
	report := func(format string, args ...any) {
		if !quiet {
			// ledger.Fsck may start its lines with "fsck: " itself.
			fmt.Fprintf(progress, "fsck: "+strings.TrimPrefix(strings.TrimSuffix(format, "\n"), "fsck: ")+"\n", args...)
		}
	}
	st, err := datadir.OpenStoreWith(dir, mem)
	if err == nil {
		ix := openIndexForFsck(filepath.Join(ldir, datadir.IndexDir), mem, report)
		if ix != nil {
			err = ledger.FsckWithRuns(ctx, st, ix, filepath.Join(ldir, datadir.RunsDir), v, report)
			if cerr := ix.Close(); err == nil && cerr != nil {
				err = fmt.Errorf("%w: closing the index store: %w", ledger.ErrStorage, cerr)
			}
		} else {
			err = ledger.Fsck(ctx, st, v, report)
		}
		if cerr := st.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("%w: closing the store: %w", ledger.ErrStorage, cerr)
		}
	}
	if err != nil {
		return &exitError{code: 1, msg: fmt.Sprintf("%s: FAILED: %v", dir, err)}
	}
	fmt.Fprintf(out, "fsck %s: ok\n", dir)
	return nil
}

// openIndexForFsck opens the ledger's separate index store at dir, if there
// is one, so that fsck checks it too; nil if there is none. One that does
// not open is no fault of the log (the next start moves it aside and
// rebuilds it from the leaves): report says so and fsck goes on without it.
func openIndexForFsck(dir string, mem badgerstore.Options, report func(string, ...any)) *badgerstore.Store {
	if _, err := os.Stat(dir); err != nil {
		return nil
	}
	o := mem
	o.NoSync = true
	ix, err := badgerstore.Open(dir, o)
	if err != nil {
		report("the index store %s does not open (%v): indexes not checked; the next start moves it aside and rebuilds it from the leaves", dir, err)
		return nil
	}
	return ix
}
