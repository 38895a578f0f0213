// Package datadir owns the layout of a Grantline server's data directory
// (`grantline serve --data DIR`): the ledger store in DIR/ledger, the signing
// keys in DIR/keys (LoadOrCreateKeys), the principals' hashed tokens in
// DIR/tokens.json and the first admin token in DIR/admin.token (both through
// ingest/auth). The server, the offline commands (fsck, backup, restore,
// token) and the tests find every file of a data directory here.
package datadir

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/grantline/grantline/ingest/auth"
	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/badgerstore"
	"github.com/grantline/grantline/ledger/checkpoint"
)

// Directory names inside a data directory.
const (
	LedgerDir = "ledger" // the ledger store (badger)
	// IndexDir, inside LedgerDir, is the ledger's index store (badger,
	// not fsynced: the ledger rebuilds it from the leaves; see
	// docs/design.md, "Indexes off the durable commit").
	IndexDir = "index"
	// RunsDir, inside LedgerDir, holds the ledger's leaf-hash and dedupe
	// indexes as sorted run files (written in the background behind the
	// leaves' durable commit, from buffers a crash loses: the ledger
	// re-appends what they lack from the log; see docs/design.md, "The
	// leaf-hash runs").
	RunsDir = "runs"
	KeysDir = "keys" // LogKeyFile, LogVerifierKeyFile, EvidenceKeyFile, EvidencePubFile
)

// Default is the data directory of a command given no --data.
const Default = "grantline-data"

// File names inside a data directory.
const (
	LogStateFile   = "log.state"   // in KeysDir: the log is being created, or was (see OpenWith)
	TokensFile     = "tokens.json" // principals and their token hashes (ingest/auth)
	AdminTokenFile = "admin.token" // the first admin's token, written once
)

// DefaultOrigin names a new log whose operator gave no origin.
const DefaultOrigin = "localhost/grantline"

// Dir is an opened data directory: its keys and its principals.
type Dir struct {
	Path           string
	Keys           *Keys
	Tokens         *auth.Store // DIR/tokens.json
	AdminTokenPath string      // DIR/admin.token
	NewAdminToken  bool        // Open created the first admin token

	state logState // of DIR/keys/log.state when Open looked
	init  bool     // Options.Init
	store badgerstore.Options
}

// Options configures OpenWith.
type Options struct {
	// Origin of a new log; "" means the origin recorded in
	// DIR/keys/log.vkey, or DefaultOrigin for a new directory. Another
	// origin than the recorded one is refused: an origin cannot change.
	Origin string
	// Algorithm of a new log key; "" for Ed25519.
	Algorithm checkpoint.Algorithm
	// Init allows OpenLedger to start a new, empty log under keys that
	// already exist, when the store holds none (`grantline serve --init`):
	// for keys restored on purpose without their ledger. Without it such a
	// directory is refused as damaged. It never overwrites a store that
	// holds a log.
	Init bool
	// Store tunes the badger store OpenLedger opens (memory budget, bound
	// on mapped files); its Logger is the ledger's.
	Store badgerstore.Options
}

// Open is OpenWith with an origin and an algorithm and no Init.
func Open(path, origin string, alg checkpoint.Algorithm) (*Dir, error) {
	return OpenWith(path, Options{Origin: origin, Algorithm: alg})
}

// OpenWith opens the data directory at path, creating it and whatever is
// missing: the keys (a new log key of o.Algorithm) and, if no principal
// exists yet, the admin principal with its token in DIR/admin.token. The
// ledger is opened separately (OpenLedger).
//
// A new log is only created in a new directory: one without log keys and
// without store files. OpenWith refuses, before writing anything, store
// files without keys (a new key cannot sign an existing log). A new
// directory is marked in DIR/keys/log.state as being created before its keys
// are written, and as created once its ledger holds the first checkpoint
// (OpenLedger); a start interrupted in between resumes where it stopped.
// From then on OpenLedger refuses a missing or empty store (see
// ErrStoreMissing) unless o.Init is set.
func OpenWith(path string, o Options) (*Dir, error) {
	alg, origin := o.Algorithm, o.Origin
	if alg == "" {
		alg = checkpoint.Ed25519
	}
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("data directory %s: %w", path, err)
	}
	state, err := readLogState(path)
	if err != nil {
		return nil, err
	}
	keysPresent := exists(filepath.Join(path, KeysDir, LogKeyFile)) || exists(filepath.Join(path, KeysDir, LogVerifierKeyFile))
	if !keysPresent && storeFilesExist(path) {
		return nil, fmt.Errorf("%w: %s holds store files but %s has no log key: copy DIR/%s from the original data directory (a new key cannot sign an existing log), or move %s away to start a new log",
			ErrStoreMissing, filepath.Join(path, LedgerDir), filepath.Join(path, KeysDir), KeysDir, filepath.Join(path, LedgerDir))
	}
	existing, _, err := ReadVerifier(path)
	switch {
	case err == nil:
		if origin != "" && origin != existing {
			return nil, fmt.Errorf("origin %q: this data directory's log is %q (%s); an origin cannot change",
				origin, existing, filepath.Join(path, KeysDir, LogVerifierKeyFile))
		}
		origin = existing
	case errors.Is(err, fs.ErrNotExist):
		if origin == "" {
			origin = DefaultOrigin
		}
	default:
		return nil, err
	}
	if !keysPresent && state == stateNone {
		// A new directory: say so before the first key exists.
		if err := ledger.CheckOrigin(origin); err != nil {
			return nil, err
		}
		if err := writeLogState(path, stateCreating, origin); err != nil {
			return nil, err
		}
		state = stateCreating
	}
	if err := testHook("state"); err != nil {
		return nil, err
	}
	keys, err := LoadOrCreateKeys(path, origin, alg)
	if err != nil {
		return nil, fmt.Errorf("keys in %s: %w", filepath.Join(path, KeysDir), err)
	}
	if err := testHook("keys"); err != nil {
		return nil, err
	}
	tokens, err := OpenTokens(path)
	if err != nil {
		return nil, err
	}
	adminPath := filepath.Join(path, AdminTokenFile)
	created, err := tokens.Bootstrap(adminPath)
	if err != nil {
		return nil, fmt.Errorf("creating the admin token: %w", err)
	}
	if err := testHook("tokens"); err != nil {
		return nil, err
	}
	return &Dir{Path: path, Keys: keys, Tokens: tokens, AdminTokenPath: adminPath, NewAdminToken: created, state: state, init: o.Init, store: o.Store}, nil
}

// ErrStoreMissing is returned by OpenWith and OpenLedger when the ledger
// store is missing, empty or damaged although this data directory's keys
// signed a log, or when store files exist without keys.
var ErrStoreMissing = errors.New("store damaged or missing")

// testHook is called between the steps of creating a data directory
// ("state", "keys", "tokens", "ledger"); a test makes it fail to stand for
// a crash there.
var testHook = func(step string) error { return nil }

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// storeFilesExist reports whether DIR/ledger holds any file.
func storeFilesExist(path string) bool {
	ents, err := os.ReadDir(filepath.Join(path, LedgerDir))
	return err == nil && len(ents) > 0
}

// OpenTokens opens the principals of the data directory at path
// (DIR/tokens.json; it need not exist yet), as a server and `grantline
// token` do; each sees the other's changes at once.
func OpenTokens(path string) (*auth.Store, error) {
	return auth.Open(filepath.Join(path, TokensFile))
}

// OpenLedger opens the log in DIR/ledger with the directory's log key; o's
// Signer and Verifier are set from Keys. The Log owns the store.
//
// It creates a new log only while the directory is being created (see
// OpenWith) or with Options.Init. Otherwise a missing or empty store is
// refused with ErrStoreMissing: the keys signed checkpoints that auditors
// may hold, and a new log at size 0 under the same key would fork from
// them. A damaged store (badgerstore.ErrDamaged) is refused alike. Once the
// log is open, DIR/keys/log.state records that it was created.
func (d *Dir) OpenLedger(ctx context.Context, o ledger.Options) (*ledger.Log, error) {
	ldir := filepath.Join(d.Path, LedgerDir)
	o.MustExist = d.state != stateCreating && !d.init
	if o.MustExist && !storeFilesExist(d.Path) {
		// Refused before opening, which would create store files.
		return nil, d.noLog(ldir)
	}
	so := d.store
	so.Logger = o.Logger
	st, err := OpenStoreWith(d.Path, so)
	if err != nil {
		return nil, err
	}
	ix, err := OpenIndexStore(d.Path, o.Logger)
	if err != nil {
		st.Close()
		return nil, err
	}
	o.Index = ix
	o.RunsDir = filepath.Join(ldir, RunsDir)
	o.Signer, o.Verifier = d.Keys.LogSigner, d.Keys.LogVerifier
	l, err := ledger.Open(ctx, st, o)
	if err != nil {
		st.Close()
		ix.Close()
		if errors.Is(err, ledger.ErrNotFound) {
			return nil, d.noLog(ldir)
		}
		if errors.Is(err, ledger.ErrCorrupt) {
			return nil, fmt.Errorf("%w: opening the ledger in %s: %w; restore from a backup (grantline restore), or run grantline fsck --data %s for details; see docs/operations.md",
				ErrStoreMissing, ldir, err, d.Path)
		}
		return nil, fmt.Errorf("opening the ledger in %s: %w", ldir, err)
	}
	if err := testHook("ledger"); err != nil {
		l.Close()
		return nil, err
	}
	if d.state != stateCreated {
		if err := writeLogState(d.Path, stateCreated, d.Keys.Origin); err != nil {
			l.Close()
			return nil, err
		}
		d.state = stateCreated
	}
	return l, nil
}

// noLog is the error for a store that holds no log although one was created.
func (d *Dir) noLog(ldir string) error {
	return fmt.Errorf("%w: %s holds no log, but the keys in %s signed one (%s): restore it from a backup (grantline restore --data %s --in FILE), or start a new, empty log under these keys with --init (auditors holding its checkpoints will see a fork); see docs/operations.md",
		ErrStoreMissing, ldir, filepath.Join(d.Path, KeysDir), d.stateWhy(), d.Path)
}

// stateWhy says why the directory is known to have had a log.
func (d *Dir) stateWhy() string {
	if d.state == stateCreated {
		return filepath.Join(d.Path, KeysDir, LogStateFile) + " records its creation"
	}
	return "a log key is only made with its log"
}

// multiError is an error with its own message that matches several
// sentinels with errors.Is.
type multiError struct {
	msg  string
	errs []error
}

func (e *multiError) Error() string   { return e.msg }
func (e *multiError) Unwrap() []error { return e.errs }

// OpenStore opens the ledger store in DIR/ledger (creating it) for a caller
// that has no keys at hand (fsck, backup, restore). Only one process can
// hold it: a running server's store fails to open, with ledger.ErrStorage.
// A damaged store fails with ErrStoreMissing (and badgerstore.ErrDamaged).
func OpenStore(path string, logger *slog.Logger) (*badgerstore.Store, error) {
	return OpenStoreWith(path, badgerstore.Options{Logger: logger})
}

// OpenStoreWith is OpenStore with the store's options (memory budget,
// bound on mapped files), as `grantline fsck` opens it.
func OpenStoreWith(path string, o badgerstore.Options) (*badgerstore.Store, error) {
	dir := filepath.Join(path, LedgerDir)
	st, err := badgerstore.Open(dir, o)
	if errors.Is(err, badgerstore.ErrDamaged) {
		what := strings.TrimPrefix(err.Error(), badgerstore.ErrDamaged.Error()+": ")
		return nil, &multiError{
			msg: fmt.Sprintf("%v: %s: restore it from a backup (move %s away, then grantline restore --data %s --in FILE); see docs/operations.md",
				ErrStoreMissing, what, dir, path),
			errs: []error{ErrStoreMissing, err},
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%w: opening the ledger store in %s: %w (is a server still running on it? stop it first)",
			ledger.ErrStorage, dir, err)
	}
	return st, nil
}

// OpenIndexStore opens the ledger's index store in DIR/ledger/index
// (creating it; it need not exist: the ledger rebuilds it from the
// leaves). A damaged one is moved aside to DIR/ledger/index.damaged-UNIXTIME
// and started afresh, since nothing in it is lost.
func OpenIndexStore(path string, logger *slog.Logger) (*badgerstore.Store, error) {
	dir := filepath.Join(path, LedgerDir, IndexDir)
	o := badgerstore.Options{Logger: logger, NoSync: true}
	st, err := badgerstore.Open(dir, o)
	if errors.Is(err, badgerstore.ErrDamaged) {
		aside := fmt.Sprintf("%s.damaged-%d", dir, time.Now().Unix())
		if rerr := os.Rename(dir, aside); rerr != nil {
			return nil, fmt.Errorf("%w: the index store in %s is damaged (%w) and could not be moved aside: %w", ledger.ErrStorage, dir, err, rerr)
		}
		if logger != nil {
			logger.Warn("the ledger's index store was damaged: moved aside, it is rebuilt from the leaves", "dir", dir, "moved_to", aside, "err", err)
		}
		st, err = badgerstore.Open(dir, o)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: opening the ledger's index store in %s: %w (is a server still running on it? stop it first)",
			ledger.ErrStorage, dir, err)
	}
	return st, nil
}

// ReadVerifier reads the log's verifier key in DIR/keys/log.vkey and returns
// the origin it names and the verifier. A missing file matches fs.ErrNotExist.
func ReadVerifier(path string) (origin string, v note.Verifier, err error) {
	p := filepath.Join(path, KeysDir, LogVerifierKeyFile)
	v, _, err = checkpoint.ReadVerifierKeyFile(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", nil, fmt.Errorf("data directory %s: no log verifier key %s (is this a grantline data directory?): %w", path, p, err)
		}
		return "", nil, err
	}
	return v.Name(), v, nil
}
