package datadir

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/grantline/grantline/ledger"
)

// LogMustExist reports whether a store for this directory's keys must
// already hold their log: DIR/keys/log.state says the log was created (or
// the keys predate that file), and Options.Init was not given. A store
// without a log is then refused (ErrStoreMissing), as OpenLedger refuses an
// empty DIR/ledger, because a new log at size 0 under the same key would
// fork from the checkpoints auditors hold.
func (d *Dir) LogMustExist() bool { return d.state != stateCreating && !d.init }

// OpenLedgerOn opens the log in st, a store outside the data directory
// (PostgreSQL; where names it in errors, without credentials), with the
// directory's log key, under the rules of OpenLedger: it creates a new log
// only while the directory is being created or with Options.Init, refuses
// an empty store otherwise with ErrStoreMissing, and records in
// DIR/keys/log.state that the log was created once it is open. The Log owns
// st on success; on error the caller still does.
func (d *Dir) OpenLedgerOn(ctx context.Context, st ledger.Store, where string, o ledger.Options) (*ledger.Log, error) {
	o.MustExist = d.LogMustExist()
	o.Signer, o.Verifier = d.Keys.LogSigner, d.Keys.LogVerifier
	l, err := ledger.Open(ctx, st, o)
	if err != nil {
		if errors.Is(err, ledger.ErrNotFound) {
			return nil, d.NoLogIn(where)
		}
		return nil, fmt.Errorf("opening the ledger in %s: %w", where, err)
	}
	if err := d.MarkCreated(); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// MarkCreated records in DIR/keys/log.state that the log of this
// directory's keys exists (a node that follows the log another node
// created has seen it too), so that later starts refuse a store without it.
func (d *Dir) MarkCreated() error {
	if d.state == stateCreated {
		return nil
	}
	if err := writeLogState(d.Path, stateCreated, d.Keys.Origin); err != nil {
		return err
	}
	d.state = stateCreated
	return nil
}

// NoLogIn is the error for an external store (where) that holds no log
// although this directory's keys signed one.
func (d *Dir) NoLogIn(where string) error {
	return fmt.Errorf("%w: %s holds no log, but the keys in %s signed one (%s): point --store at the database that holds it, restore the database from a backup, or start a new, empty log under these keys with --init (auditors holding its checkpoints will see a fork); see docs/operations-postgres.md",
		ErrStoreMissing, where, filepath.Join(d.Path, KeysDir), d.stateWhy())
}
