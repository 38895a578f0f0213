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

	"golang.org/x/mod/sumdb/note"

	"github.com/grantline/grantline/ingest/auth"
	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/badgerstore"
	"github.com/grantline/grantline/ledger/checkpoint"
)

// Directory names inside a data directory.
const (
	LedgerDir = "ledger" // the ledger store (badger)
	KeysDir   = "keys"   // LogKeyFile, LogVerifierKeyFile, EvidenceKeyFile, EvidencePubFile
)

// Default is the data directory of a command given no --data.
const Default = "grantline-data"

// File names inside a data directory.
const (
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
}

// Open opens the data directory at path, creating it and whatever is
// missing: the keys (a new log key of algorithm alg, "" for Ed25519) and, if
// no principal exists yet, the admin principal with its token in
// DIR/admin.token. origin "" means the origin recorded in DIR/keys/log.vkey,
// or DefaultOrigin for a new directory; another origin than the recorded one
// is refused, because an origin cannot change. The ledger is opened
// separately (OpenLedger).
func Open(path, origin string, alg checkpoint.Algorithm) (*Dir, error) {
	if alg == "" {
		alg = checkpoint.Ed25519
	}
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("data directory %s: %w", path, err)
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
	keys, err := LoadOrCreateKeys(path, origin, alg)
	if err != nil {
		return nil, fmt.Errorf("keys in %s: %w", filepath.Join(path, KeysDir), err)
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
	return &Dir{Path: path, Keys: keys, Tokens: tokens, AdminTokenPath: adminPath, NewAdminToken: created}, nil
}

// OpenTokens opens the principals of the data directory at path
// (DIR/tokens.json; it need not exist yet), as a server and `grantline
// token` do; each sees the other's changes at once.
func OpenTokens(path string) (*auth.Store, error) {
	return auth.Open(filepath.Join(path, TokensFile))
}

// OpenLedger opens the log in DIR/ledger with the directory's log key; o's
// Signer and Verifier are set from Keys. The Log owns the store.
func (d *Dir) OpenLedger(ctx context.Context, o ledger.Options) (*ledger.Log, error) {
	st, err := OpenStore(d.Path, o.Logger)
	if err != nil {
		return nil, err
	}
	o.Signer, o.Verifier = d.Keys.LogSigner, d.Keys.LogVerifier
	l, err := ledger.Open(ctx, st, o)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("opening the ledger in %s: %w", filepath.Join(d.Path, LedgerDir), err)
	}
	return l, nil
}

// OpenStore opens the ledger store in DIR/ledger (creating it) for a caller
// that has no keys at hand (fsck, backup, restore). Only one process can
// hold it: a running server's store fails to open, with ledger.ErrStorage.
func OpenStore(path string, logger *slog.Logger) (*badgerstore.Store, error) {
	dir := filepath.Join(path, LedgerDir)
	st, err := badgerstore.Open(dir, badgerstore.Options{Logger: logger})
	if err != nil {
		return nil, fmt.Errorf("%w: opening the ledger store in %s: %w (is a server still running on it? stop it first)",
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
