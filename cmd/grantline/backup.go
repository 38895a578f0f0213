package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/badgerstore"
)

func init() {
	register(&command{
		name:    "backup",
		usage:   "--data DIR --out FILE",
		summary: "write a backup of a stopped server's ledger (badger backup format; keys are not included)",
		run:     runBackupCmd,
	})
	register(&command{
		name:    "restore",
		usage:   "--data DIR --in FILE",
		summary: "restore a backup into an empty DIR/ledger, then fsck it (copy DIR/keys from the original)",
		run:     runRestoreCmd,
	})
}

func runBackupCmd(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, commands["backup"])
	data := fs.String("data", defaultDataDir, "the server's data directory")
	out := fs.String("out", "", "backup file to create (must not exist)")
	if _, err := parseInterspersed(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return &exitError{code: 2, msg: "--out FILE is required"}
	}
	ldir := filepath.Join(*data, "ledger")
	if _, err := os.Stat(ldir); err != nil {
		return &exitError{code: 2, msg: fmt.Sprintf("--data %s: no ledger here (%v)", *data, err)}
	}
	st, err := badgerstore.Open(ldir, badgerstore.Options{})
	if err != nil {
		return fmt.Errorf("opening %s: %w (is a server still running on it? stop it first)", ldir, err)
	}
	defer st.Close()
	f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	err = st.Backup(ctx, w)
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(*out)
		return fmt.Errorf("writing backup %s: %w", *out, err)
	}
	fi, _ := os.Stat(*out)
	fmt.Fprintf(env.stdout, "backup of %s written to %s (%d bytes); keep DIR/keys with it\n", ldir, *out, fi.Size())
	return nil
}

func runRestoreCmd(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, commands["restore"])
	data := fs.String("data", "", "the data directory to restore into; DIR/ledger must not exist or be empty")
	in := fs.String("in", "", "backup file written by 'grantline backup'")
	if _, err := parseInterspersed(fs, args); err != nil {
		return err
	}
	if *data == "" || *in == "" {
		return &exitError{code: 2, msg: "--data DIR and --in FILE are required"}
	}
	f, err := os.Open(*in)
	if err != nil {
		return fmt.Errorf("--in: %w", err)
	}
	defer f.Close()
	ldir := filepath.Join(*data, "ledger")
	if err := os.MkdirAll(ldir, 0o700); err != nil {
		return err
	}
	if err := ledger.Restore(ctx, ldir, bufio.NewReaderSize(f, 1<<20), badgerstore.Options{}); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "restored %s into %s\n", *in, ldir)
	if _, err := os.Stat(filepath.Join(*data, "keys", "log.vkey")); err != nil {
		fmt.Fprintf(env.stderr, "note: %s has no keys/log.vkey; copy DIR/keys from the original, then run 'grantline fsck --data %s'\n", *data, *data)
		return nil
	}
	return fsckDataDir(ctx, *data, env.stderr, true, env.stdout)
}
