package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/grantline/grantline/internal/datadir"
	"github.com/grantline/grantline/ledger"
)

func init() {
	register(&command{
		name:    "fsck",
		usage:   "--data DIR [--quiet]",
		summary: "re-verify a stopped server's whole store: every leaf, tile, index and checkpoint (exit 1 on any problem)",
		run:     runFsckCmd,
	})
}

func runFsckCmd(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, commands["fsck"])
	data := fs.String("data", defaultDataDir, "the server's data directory")
	quiet := fs.Bool("quiet", false, "print only the result")
	rest, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return &exitError{code: 2, msg: fmt.Sprintf("unexpected argument %q", rest[0])}
	}
	return fsckDataDir(ctx, *data, env.stderr, *quiet, env.stdout)
}

// fsckDataDir runs ledger.Fsck over DIR/ledger with the verifier key in
// DIR/keys/log.vkey, printing progress to progress unless quiet, and the
// verdict to out.
func fsckDataDir(ctx context.Context, dir string, progress io.Writer, quiet bool, out io.Writer) error {
	_, v, err := datadir.ReadVerifier(dir)
	if err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	ldir := filepath.Join(dir, "ledger")
	if _, err := os.Stat(ldir); err != nil {
		return &exitError{code: 2, msg: fmt.Sprintf("--data %s: no ledger here (%v)", dir, err)}
	}
	report := func(format string, args ...any) {
		if !quiet {
			// ledger.Fsck may start its lines with "fsck: " itself.
			fmt.Fprintf(progress, "fsck: "+strings.TrimPrefix(strings.TrimSuffix(format, "\n"), "fsck: ")+"\n", args...)
		}
	}
	st, err := datadir.OpenStore(dir, nil)
	if err == nil {
		err = ledger.Fsck(ctx, st, v, report)
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
