package pgstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// ErrSchemaTooNew is returned by Open when the database's schema was
// migrated by a newer Grantline than this one: this binary would not know
// how to read or write it. Nothing is changed.
var ErrSchemaTooNew = errors.New("database schema is newer than this grantline")

// migration is one step of the schema. Steps are applied in order, each
// once, and never changed after a release: a change is a new step.
type migration struct {
	version     int
	description string
	sql         string
}

// migrations are Grantline's schema, oldest first. docs/operations-postgres.md
// describes the tables. SQLSTATEs raised by grantline_commit: GLF01 (the
// lease is not held at this epoch), GLF02 (a tree size is not the one this
// node last saw).
var migrations = []migration{
	{1, "key-value table, sequencing lease, fenced commit", `
CREATE TABLE grantline_kv (
	k bytea PRIMARY KEY,
	v bytea NOT NULL
);
-- Tiles and leaves are hashes and protobuf: compressing them is wasted work.
ALTER TABLE grantline_kv ALTER COLUMN v SET STORAGE EXTERNAL;

CREATE TABLE grantline_lease (
	id          int PRIMARY KEY CHECK (id = 1),
	holder      text NOT NULL,
	epoch       bigint NOT NULL,
	expires_at  timestamptz NOT NULL,
	acquired_at timestamptz
);
INSERT INTO grantline_lease (id, holder, epoch, expires_at) VALUES (1, '', 0, '1970-01-01 00:00:00+00');

-- grantline_commit writes one batch, fenced: the caller must hold the lease
-- at p_epoch (the row stays locked until the commit ends, so no successor
-- can take it in between), and each fencing key p_fkeys[i] (the ledger's
-- tree sizes) must still hold p_fexpect[i] (NULL: absent): set by
-- compare-and-set to p_fnew[i] when that is not NULL, else unchanged.
-- p_new_keys are keys expected to be new: they are inserted plainly (much
-- cheaper than an upsert), and if one exists after all, they are upserted
-- like p_keys. A commit proves the holder alive, so it also extends the
-- lease by p_ttl_ms from its end.
CREATE FUNCTION grantline_commit(p_holder text, p_epoch bigint, p_ttl_ms bigint,
                                 p_fkeys bytea[], p_fexpect bytea[], p_fnew bytea[],
                                 p_keys bytea[], p_vals bytea[], p_new_keys bytea[], p_new_vals bytea[])
RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
	cur bytea;
BEGIN
	PERFORM 1 FROM grantline_lease
	 WHERE id = 1 AND holder = p_holder AND epoch = p_epoch FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'sequencing lease (epoch %) is no longer held by %', p_epoch, p_holder
			USING ERRCODE = 'GLF01';
	END IF;
	FOR i IN 1 .. coalesce(array_length(p_fkeys, 1), 0) LOOP
		IF p_fnew[i] IS NULL THEN
			cur := NULL;
			SELECT v INTO cur FROM grantline_kv WHERE k = p_fkeys[i] FOR SHARE;
			IF cur IS DISTINCT FROM p_fexpect[i] THEN
				RAISE EXCEPTION 'tree size % changed under this node', encode(p_fkeys[i], 'escape') USING ERRCODE = 'GLF02';
			END IF;
		ELSIF p_fexpect[i] IS NULL THEN
			INSERT INTO grantline_kv (k, v) VALUES (p_fkeys[i], p_fnew[i]) ON CONFLICT (k) DO NOTHING;
			IF NOT FOUND THEN
				RAISE EXCEPTION 'tree size % changed under this node', encode(p_fkeys[i], 'escape') USING ERRCODE = 'GLF02';
			END IF;
		ELSE
			UPDATE grantline_kv SET v = p_fnew[i] WHERE k = p_fkeys[i] AND v = p_fexpect[i];
			IF NOT FOUND THEN
				RAISE EXCEPTION 'tree size % changed under this node', encode(p_fkeys[i], 'escape') USING ERRCODE = 'GLF02';
			END IF;
		END IF;
	END LOOP;
	BEGIN
		INSERT INTO grantline_kv (k, v) SELECT * FROM unnest(p_new_keys, p_new_vals);
	EXCEPTION WHEN unique_violation THEN
		INSERT INTO grantline_kv (k, v) SELECT * FROM unnest(p_new_keys, p_new_vals)
		ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v;
	END;
	INSERT INTO grantline_kv (k, v)
	SELECT * FROM unnest(p_keys, p_vals)
	ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v;
	UPDATE grantline_lease SET expires_at = clock_timestamp() + p_ttl_ms * interval '1 millisecond'
	 WHERE id = 1;
END
$fn$;
`},
	{2, "the sequencer's advertised URL in the lease row", `
-- advertise is the URL at which the lease holder serves (serve
-- --advertise-url): other nodes forward appends there.
ALTER TABLE grantline_lease ADD COLUMN advertise text NOT NULL DEFAULT '';
`},
}

// SchemaVersion is the schema version this binary writes and understands.
var SchemaVersion = migrations[len(migrations)-1].version

// migrationLock is the advisory lock key (with the schema's name hashed as
// the second key) that serialises migrations of concurrently starting nodes.
const migrationLock = 0x67726e74 // "grnt"

// migrate brings the schema to SchemaVersion in one transaction, or refuses
// with ErrSchemaTooNew. Concurrent callers wait for each other.
func migrate(ctx context.Context, conn *pgx.Conn, node string) (from int, err error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("starting the migration transaction: %w", err)
	}
	defer tx.Rollback(ctx)
	var schema *string
	if err := tx.QueryRow(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
		return 0, fmt.Errorf("reading the current schema: %w", err)
	}
	if schema == nil {
		return 0, errors.New("no schema to create Grantline's tables in: the search_path names no existing schema; create it (CREATE SCHEMA name) or fix search_path in the store URL")
	}
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))", int32(migrationLock)); err != nil {
		return 0, fmt.Errorf("waiting for the migration lock: %w", err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS grantline_schema (
		version    int PRIMARY KEY,
		description text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now(),
		applied_by text NOT NULL
	)`); err != nil {
		return 0, fmt.Errorf("creating the schema version table in schema %s: %w", *schema, err)
	}
	if err := tx.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM grantline_schema").Scan(&from); err != nil {
		return 0, fmt.Errorf("reading the schema version: %w", err)
	}
	if from > SchemaVersion {
		return from, fmt.Errorf("%w: schema %s of the database is at version %d, this grantline knows versions up to %d; "+
			"run the grantline that migrated it (or a newer one), or point --store at another database or schema",
			ErrSchemaTooNew, *schema, from, SchemaVersion)
	}
	for _, m := range migrations {
		if m.version <= from {
			continue
		}
		if _, err := tx.Exec(ctx, m.sql); err != nil {
			return from, fmt.Errorf("applying schema migration %d (%s) in schema %s: %w", m.version, m.description, *schema, err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO grantline_schema (version, description, applied_by) VALUES ($1, $2, $3)",
			m.version, m.description, node); err != nil {
			return from, fmt.Errorf("recording schema migration %d: %w", m.version, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return from, fmt.Errorf("committing the schema migrations: %w", err)
	}
	return from, nil
}
