package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"

	"github.com/grantline/grantline/internal/datadir"
	"github.com/grantline/grantline/internal/server"
	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/badgerstore"
	"github.com/grantline/grantline/ledger/pgstore"
)

func init() {
	register(&command{
		name:    "backup",
		usage:   "--out FILE (--data DIR | --store postgres://... | --server URL --token ADMIN_TOKEN)",
		summary: "back up the ledger: of a stopped server (--data), online from PostgreSQL (--store) or from a running server (--server)",
		run:     runBackupCmd,
	})
	register(&command{
		name:    "restore",
		usage:   "--data DIR [--store postgres://...] --in FILE",
		summary: "restore a backup into an empty DIR/ledger (or empty PostgreSQL schema with --store), then fsck it (copy DIR/keys from the original)",
		run:     runRestoreCmd,
	})
}

func runBackupCmd(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, commands["backup"])
	data := fs.String("data", defaultDataDir, "the data directory of a stopped server")
	out := fs.String("out", "", "backup file to create (must not exist)")
	store := fs.String("store", "", "back up the ledger in this PostgreSQL database (as given to serve --store), online, from one snapshot")
	var cf clientFlags
	cf.register(fs, env)
	if _, err := parseInterspersed(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return &exitError{code: 2, msg: "--out FILE is required"}
	}
	online := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "server" || f.Name == "token" {
			online = true
		}
	})
	if online && *store != "" {
		return &exitError{code: 2, msg: "--store and --server exclude each other: back up from the database (--store) or through a server (--server)"}
	}
	if online {
		return onlineBackup(ctx, env, &cf, *out)
	}
	if *store != "" {
		return backupPostgres(ctx, env, *store, *out)
	}
	ldir := filepath.Join(*data, "ledger")
	if _, err := os.Stat(ldir); err != nil {
		return &exitError{code: 2, msg: fmt.Sprintf("--data %s: no ledger here (%v)", *data, err)}
	}
	st, err := datadir.OpenStore(*data, nil)
	if err != nil {
		return err
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
	store := fs.String("store", "", "restore into this PostgreSQL database (an empty schema; no node may run on it) instead of DIR/ledger; DIR/keys checks it afterwards")
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
	if *store != "" {
		return restorePostgres(ctx, env, *data, *store, *in, f)
	}
	ldir := filepath.Join(*data, "ledger")
	if err := os.MkdirAll(ldir, 0o700); err != nil {
		return err
	}
	st, err := datadir.OpenStore(*data, nil)
	if err != nil {
		return err
	}
	err = ledger.Restore(ctx, st, bufio.NewReaderSize(f, 1<<20))
	if cerr := st.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("restore into %s: %w", ldir, err)
	}
	fmt.Fprintf(env.stdout, "restored %s into %s\n", *in, ldir)
	if _, err := os.Stat(filepath.Join(*data, datadir.KeysDir, datadir.LogVerifierKeyFile)); err != nil {
		// No keys yet: check the tree all the same, without signatures.
		st, err := datadir.OpenStore(*data, nil)
		if err != nil {
			return err
		}
		err = ledger.Fsck(ctx, st, nil, nil)
		if cerr := st.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("%w: closing the store: %w", ledger.ErrStorage, cerr)
		}
		if err != nil {
			return &exitError{code: 1, msg: fmt.Sprintf("fsck %s: FAILED: %v", *data, err)}
		}
		fmt.Fprintf(env.stdout, "fsck %s: the tree is sound; checkpoint signatures were NOT checked (no %s)\n", *data, filepath.Join(datadir.KeysDir, datadir.LogVerifierKeyFile))
		fmt.Fprintf(env.stderr, "note: copy DIR/%s from the original into %s, then run 'grantline fsck --data %s' to check the signatures\n", datadir.KeysDir, *data, *data)
		return nil
	}
	return fsckDataDir(ctx, *data, badgerstore.Options{MaxMappedBytes: server.DefaultMaxMappedBytes}, env.stderr, true, env.stdout)
}

// onlineBackup fetches GET /admin/backup from a running server (admin token)
// into out. The file is written to a temporary name and renamed only when
// the whole response arrived, so a cut-short backup never looks complete.
func onlineBackup(ctx context.Context, env *cmdEnv, cf *clientFlags, out string) error {
	c, err := cf.dial()
	if err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	if _, err := os.Stat(out); err == nil {
		return &exitError{code: 2, msg: fmt.Sprintf("--out %s already exists; choose a new file", out)}
	}
	resp, err := c.Open(ctx, "/admin/backup")
	if err != nil {
		return fmt.Errorf("online backup from %s: %w", c.URL(), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("online backup from %s: %s: %s", c.URL(), resp.Status, string(body))
	}
	n, err := writePartial(out, func(w io.Writer) error { _, err := io.Copy(w, resp.Body); return err })
	if errors.Is(err, errOutFile) {
		return err
	}
	if err != nil {
		return fmt.Errorf("online backup from %s: the response was cut short or could not be written (%w); nothing was kept, try again", c.URL(), err)
	}
	fmt.Fprintf(env.stdout, "online backup from %s written to %s (%d bytes); keep DATA/keys with it\n", c.URL(), out, n)
	return nil
}

// errOutFile marks writePartial's failure to create its temporary file.
var errOutFile = errors.New("--out")

// writePartial writes a backup through write into OUT.partial (created
// exclusively, buffered, synced) and renames it to out only when write and
// the sync succeed, so that an interrupted backup never leaves a file under
// the name of a whole one. It returns the bytes written; on failure it
// removes the temporary file, and an error creating it matches errOutFile.
func writePartial(out string, write func(io.Writer) error) (int64, error) {
	tmp := out + ".partial"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", errOutFile, err)
	}
	cw := &countingWriter{w: f}
	w := bufio.NewWriterSize(cw, 1<<20)
	err = write(w)
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, out)
	}
	if err != nil {
		os.Remove(tmp)
		return 0, err
	}
	return cw.n, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// backupPostgres writes a backup of the ledger in PostgreSQL, from one
// snapshot while nodes keep appending, in the same format as a badger
// store's backup (restorable into either). Like onlineBackup it writes a
// temporary file and renames it only when complete.
func backupPostgres(ctx context.Context, env *cmdEnv, url, out string) error {
	if _, err := os.Stat(out); err == nil {
		return &exitError{code: 2, msg: fmt.Sprintf("--out %s already exists; choose a new file", out)}
	}
	st, err := pgstore.Open(ctx, url, pgstore.Options{Node: "backup"})
	if err != nil {
		return &exitError{code: 2, msg: fmt.Sprintf("--store: %v", err)}
	}
	defer st.Close()
	_, err = writePartial(out, func(w io.Writer) error { return st.Backup(ctx, w) })
	if errors.Is(err, errOutFile) {
		return err
	}
	if err != nil {
		return fmt.Errorf("backup of %s: %w; nothing was kept, try again", redactURL(url), err)
	}
	fi, _ := os.Stat(out)
	fmt.Fprintf(env.stdout, "backup of %s written to %s (%d bytes); keep DATA/keys with it\n", redactURL(url), out, fi.Size())
	return nil
}

// restorePostgres restores a backup (of either store) into an empty
// PostgreSQL schema, holding the sequencing lease so that no node starts on
// it meanwhile, then checks it with fsck --store.
func restorePostgres(ctx context.Context, env *cmdEnv, data, url, in string, r io.Reader) error {
	if _, _, err := datadir.ReadVerifier(data); err != nil {
		return &exitError{code: 2, msg: fmt.Sprintf("--data %s: the log's keys check the restored log: %v; copy DIR/%s from the original first", data, err, datadir.KeysDir)}
	}
	st, err := pgstore.Open(ctx, url, pgstore.Options{Node: "restore"})
	if err != nil {
		return &exitError{code: 2, msg: fmt.Sprintf("--store: %v", err)}
	}
	if l, err := st.Lease(ctx); err == nil && l.Valid {
		st.Close()
		return &exitError{code: 2, msg: fmt.Sprintf("--store: node %s runs on this database (lease epoch %d); restore into a new, empty schema with every node stopped", l.Holder, l.Epoch)}
	}
	actx, cancel := context.WithTimeout(ctx, 2*pgstore.DefaultLeaseTTL)
	ok, err := st.TryAcquire(actx)
	cancel()
	if err != nil || !ok {
		st.Close()
		return &exitError{code: 2, msg: fmt.Sprintf("--store: a node started on this database (%v); stop every node, then restore", err)}
	}
	err = ledger.Restore(ctx, st, bufio.NewReaderSize(r, 1<<20))
	if cerr := st.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("restore into %s: %w", redactURL(url), err)
	}
	fmt.Fprintf(env.stdout, "restored %s into %s\n", in, redactURL(url))
	return fsckPostgres(ctx, data, url, env.stderr, true, env.stdout)
}
