package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/mod/sumdb/note"

	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/badgerstore"
	"github.com/grantline/grantline/ledger/checkpoint"
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
	_, v, err := dataDirVerifier(dir)
	if err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	ldir := filepath.Join(dir, "ledger")
	if _, err := os.Stat(ldir); err != nil {
		return &exitError{code: 2, msg: fmt.Sprintf("--data %s: no ledger here (%v)", dir, err)}
	}
	report := func(format string, args ...any) {
		if !quiet {
			fmt.Fprintf(progress, "fsck: "+strings.TrimSuffix(format, "\n")+"\n", args...)
		}
	}
	st, err := badgerstore.Open(ldir, badgerstore.Options{})
	if err == nil {
		err = ledger.Fsck(ctx, st, v, report)
		if cerr := st.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("%w: closing the store: %w", ledger.ErrStorage, cerr)
		}
	} else {
		err = fmt.Errorf("%w: %w", ledger.ErrStorage, err)
	}
	if err != nil {
		hint := ""
		if errors.Is(err, ledger.ErrStorage) {
			hint = " (is a server still running on this data directory? stop it first)"
		}
		return &exitError{code: 1, msg: fmt.Sprintf("%s: FAILED: %v%s", dir, err, hint)}
	}
	fmt.Fprintf(out, "fsck %s: ok\n", dir)
	return nil
}

// dataDirVerifier loads DIR/keys/log.vkey.
func dataDirVerifier(dir string) (origin string, v note.Verifier, err error) {
	p := filepath.Join(dir, "keys", "log.vkey")
	b, err := os.ReadFile(p)
	if err != nil {
		return "", nil, fmt.Errorf("--data %s: reading the log's verifier key: %w (is this a grantline data directory?)", dir, err)
	}
	vkey := strings.TrimSpace(string(b))
	origin, _, err = checkpoint.ParseVerifierKey(vkey)
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", p, err)
	}
	v, err = checkpoint.NewNoteVerifier(vkey)
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", p, err)
	}
	return origin, v, nil
}
