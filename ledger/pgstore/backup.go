package pgstore

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/dgraph-io/badger/v4/pb"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"google.golang.org/protobuf/proto"
)

// The backup format is badger's (github.com/dgraph-io/badger/v4, DB.Backup
// and DB.Load): a sequence of records, each a little-endian uint64 length
// and a protobuf pb.KVList of key-value pairs. The ledger's keys and values
// are the same in both stores, so a backup of either restores into either
// (`grantline restore`, docs/operations-postgres.md, "Backup"). Backup
// writes each key once, at version 1; Restore takes the newest version of
// each key and skips deleted ones, as a badger backup may hold several.

// backupListKeys and backupListBytes bound one KVList record.
const (
	backupListKeys  = 1024
	backupListBytes = 4 << 20
)

// badgerBitDelete is badger's meta bit of a deletion (badger/v4 value.go).
const badgerBitDelete = 1 << 0

// Backup writes every key of the store to w in badger's backup format, from
// one snapshot (a REPEATABLE READ, READ ONLY transaction): a consistent copy
// of the log while nodes keep appending. It neither needs nor takes the
// lease.
func (s *Store) Backup(ctx context.Context, w io.Writer) error {
	tx, err := s.read.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("backup: starting a PostgreSQL read transaction: %w", err)
	}
	defer tx.Rollback(context.Background())
	list := &pb.KVList{}
	size := 0
	flush := func() error {
		if len(list.Kv) == 0 {
			return nil
		}
		b, err := proto.Marshal(list)
		if err != nil {
			return err
		}
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], uint64(len(b)))
		if _, err := w.Write(n[:]); err != nil {
			return err
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
		list.Kv, size = list.Kv[:0], 0
		return nil
	}
	from, cmp := []byte{}, ">="
	for {
		rows, err := tx.Query(ctx, "SELECT k, v FROM grantline_kv WHERE k "+cmp+" $1 ORDER BY k LIMIT $2", from, scanMaxPage)
		if err != nil {
			return fmt.Errorf("backup: reading PostgreSQL from %x: %w", from, err)
		}
		n := 0
		var k, v pgtype.DriverBytes
		for rows.Next() {
			if err := rows.Scan(&k, &v); err != nil {
				rows.Close()
				return fmt.Errorf("backup: reading PostgreSQL: %w", err)
			}
			kc, vc := bytes.Clone([]byte(k)), bytes.Clone([]byte(v))
			if vc == nil {
				vc = []byte{}
			}
			list.Kv = append(list.Kv, &pb.KV{Key: kc, Value: vc, UserMeta: []byte{0}, Meta: []byte{0}, Version: 1})
			size += len(kc) + len(vc)
			if len(list.Kv) >= backupListKeys || size >= backupListBytes {
				if err := flush(); err != nil {
					rows.Close()
					return fmt.Errorf("backup: writing: %w", err)
				}
			}
			n++
			from = kc
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("backup: reading PostgreSQL: %w", err)
		}
		if n < scanMaxPage {
			break
		}
		cmp = ">"
	}
	if err := flush(); err != nil {
		return fmt.Errorf("backup: writing: %w", err)
	}
	return nil
}

// Restore loads a backup in badger's format (Backup's, or a badger store's)
// into the store, in one transaction: all of it or nothing. The store must
// hold the sequencing lease (so that no node runs on the database
// meanwhile) and the database must hold no ledger keys; Restore refuses
// otherwise, writing nothing.
func (s *Store) Restore(r io.Reader) error {
	epoch := s.heldEpoch()
	if epoch == 0 {
		return fmt.Errorf("%w: restoring needs the sequencing lease: stop every node of this log first", ErrFenced)
	}
	ctx := s.ctx
	tx, err := s.ctl.Begin(ctx)
	if err != nil {
		return fmt.Errorf("restore: starting a transaction: %w", err)
	}
	defer tx.Rollback(context.Background())
	var held bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM grantline_lease WHERE id = 1 AND holder = $1 AND epoch = $2 FOR UPDATE)`,
		s.holder, epoch).Scan(&held); err != nil {
		return fmt.Errorf("restore: reading the lease: %w", err)
	}
	if !held {
		return fmt.Errorf("%w: another node took the sequencing lease over; stop every node of this log, then restore", ErrFenced)
	}
	var nonEmpty bool
	if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM grantline_kv)").Scan(&nonEmpty); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if nonEmpty {
		return errors.New("restore: the database already holds ledger keys; restore into a new, empty schema")
	}
	src := &backupSource{r: bufio.NewReaderSize(r, 1<<20)}
	n, err := tx.CopyFrom(ctx, pgx.Identifier{"grantline_kv"}, []string{"k", "v"}, src)
	if src.err != nil {
		return fmt.Errorf("restore: reading the backup (record %d): %w", src.records, src.err)
	}
	if err != nil {
		return fmt.Errorf("restore: writing to PostgreSQL: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("restore: committing %d keys: %w", n, err)
	}
	s.logger.Info("backup restored", "keys", n)
	return nil
}

// backupSource reads the newest live version of each key of a backup as
// a pgx.CopyFromSource.
type backupSource struct {
	r       *bufio.Reader
	list    []*pb.KV
	i       int
	prev    []byte // the last key seen (any version)
	row     []any
	err     error
	records int
}

func (b *backupSource) Next() bool {
	for {
		for b.i < len(b.list) {
			kv := b.list[b.i]
			b.i++
			if b.prev != nil && bytes.Equal(kv.Key, b.prev) {
				continue // an older version of the key just handled
			}
			b.prev = kv.Key
			if bytes.HasPrefix(kv.Key, []byte("!badger!")) {
				continue
			}
			if len(kv.Meta) > 0 && kv.Meta[0]&badgerBitDelete != 0 {
				continue
			}
			v := kv.Value
			if v == nil {
				v = []byte{}
			}
			b.row = []any{kv.Key, v}
			return true
		}
		var n uint64
		if err := binary.Read(b.r, binary.LittleEndian, &n); err != nil {
			if err != io.EOF {
				b.err = fmt.Errorf("truncated record length: %w", err)
			}
			return false
		}
		if n > 1<<30 {
			b.err = fmt.Errorf("record of %d bytes: not a backup written by grantline backup", n)
			return false
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(b.r, buf); err != nil {
			b.err = fmt.Errorf("truncated record of %d bytes: %w", n, err)
			return false
		}
		list := &pb.KVList{}
		if err := proto.Unmarshal(buf, list); err != nil {
			b.err = fmt.Errorf("malformed record: %w", err)
			return false
		}
		b.records++
		b.list, b.i = list.Kv, 0
	}
}

func (b *backupSource) Values() ([]any, error) { return b.row, nil }
func (b *backupSource) Err() error             { return b.err }
