package pgstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The sequencing lease is one row (grantline_lease): holder, epoch and
// expiry, all times taken from the database's clock so that nodes' clocks
// never matter. A node takes the lease only once it has expired, and every
// take increments the epoch; the holder renews it every third of the TTL.
// A row lease rather than a session advisory lock, because a lock held by a
// frozen (SIGSTOPped) process's connection is never released (the kernel
// keeps answering for its socket), while a lease expires; and because the
// epoch and expiry can be checked by any transaction, which is what fences
// Commit.

// Lease is the state of the lease row as the database has it.
type Lease struct {
	Holder    string    // Node() of the holder; empty if never taken
	Advertise string    // the holder's Options.Advertise: where it serves; may be empty
	Epoch     int64     // incremented by every take-over
	ExpiresAt time.Time // when another node may take it, unless renewed
	Valid     bool      // not yet expired, by the database's clock
	Mine      bool      // held by this store at this epoch
}

// Acquire waits until this store holds the sequencing lease, taking it as
// soon as the current one expires, then keeps renewing it in the background
// until Close or until it is lost (Lost). Transient database errors are
// logged and retried; only ctx ends the wait. Acquire returns at once if the
// lease is already held.
func (s *Store) Acquire(ctx context.Context) error {
	if e := s.heldEpoch(); e != 0 {
		return nil
	}
	for {
		if err := s.ctx.Err(); err != nil {
			return fmt.Errorf("acquiring the sequencing lease: store closed: %w", err)
		}
		sent := time.Now()
		epoch, wait, err := s.tryAcquire(ctx)
		switch {
		case err != nil && ctx.Err() != nil:
			return fmt.Errorf("acquiring the sequencing lease: %w", ctx.Err())
		case err != nil:
			s.logger.Warn("acquiring the sequencing lease failed; retrying", "err", err)
			wait = s.ttl / 4
		case epoch != 0:
			s.took(epoch, sent)
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("acquiring the sequencing lease: %w", ctx.Err())
		case <-s.ctx.Done():
		case <-time.After(wait):
		}
	}
}

// TryAcquire takes the sequencing lease if it is free (expired, released or
// never taken) and then keeps renewing it as Acquire does; it reports
// whether this store holds the lease. It does not wait for another node's
// lease to expire.
func (s *Store) TryAcquire(ctx context.Context) (bool, error) {
	if e := s.heldEpoch(); e != 0 {
		return true, nil
	}
	sent := time.Now()
	epoch, _, err := s.tryAcquire(ctx)
	if err != nil || epoch == 0 {
		return false, err
	}
	s.took(epoch, sent)
	return true, nil
}

// tryAcquire takes the lease if it has expired. Otherwise it returns how
// long the current one has left (at most half a TTL, to notice a release).
func (s *Store) tryAcquire(ctx context.Context) (epoch int64, wait time.Duration, err error) {
	ctx, cancel := context.WithTimeout(ctx, s.ttl)
	defer cancel()
	err = pgx.BeginFunc(ctx, s.ctl, func(tx pgx.Tx) error {
		// A commit in flight share-locks the row; do not queue behind a
		// frozen one for long.
		if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", max(s.ttl/3, 100*time.Millisecond).Milliseconds())); err != nil {
			return err
		}
		err := tx.QueryRow(ctx, `UPDATE grantline_lease
			SET holder = $1, epoch = epoch + 1, acquired_at = clock_timestamp(), advertise = $3,
			    expires_at = clock_timestamp() + $2 * interval '1 millisecond'
			WHERE id = 1 AND expires_at <= clock_timestamp()
			RETURNING epoch`, s.holder, s.ttl.Milliseconds(), s.advertise).Scan(&epoch)
		if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		var left float64
		if err := tx.QueryRow(ctx, `SELECT greatest(extract(epoch FROM expires_at - clock_timestamp()), 0)
			FROM grantline_lease WHERE id = 1`).Scan(&left); err != nil {
			return err
		}
		wait = time.Duration(left*float64(time.Second)) + 5*time.Millisecond
		return nil
	})
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "55P03" { // lock_not_available
		return 0, s.ttl / 10, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("taking the lease row: %w", err)
	}
	return epoch, min(wait, s.ttl/2), nil
}

// took records a newly taken lease and starts renewing it.
func (s *Store) took(epoch int64, sent time.Time) {
	s.alive(sent)
	s.lmu.Lock()
	s.epoch, s.lost = epoch, make(chan struct{})
	lost := s.lost
	s.lmu.Unlock()
	s.logger.Info("sequencing lease acquired", "holder", s.holder, "epoch", epoch)
	if s.metrics != nil {
		s.metrics.sequencer.WithLabelValues(s.node).Set(1)
		s.metrics.epoch.WithLabelValues(s.node).Set(float64(epoch))
		s.metrics.changes.WithLabelValues(s.node, "acquired").Inc()
	}
	s.wg.Add(1)
	go s.renew(epoch, lost)
}

// alive records that a renewal or commit sent at t succeeded: the lease
// was extended to at least t + TTL.
func (s *Store) alive(t time.Time) {
	n := int64(t.Sub(s.start))
	for {
		old := s.aliveAt.Load()
		if n <= old || s.aliveAt.CompareAndSwap(old, n) {
			return
		}
	}
}

// renew keeps the lease at epoch until it is lost or the store closes.
// Commits extend the lease too (they hold its row locked while they run, so
// renewals would only queue behind them), so renew skips its turn while one
// runs. The lease counts as lost locally when a renewal finds another
// holder, or when neither a renewal nor a commit succeeded for a whole TTL
// (the database may then have let another node take it).
func (s *Store) renew(epoch int64, lost chan struct{}) {
	defer s.wg.Done()
	every := s.ttl / 3
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-lost:
			return
		case <-t.C:
		}
		if s.renewPaused.Load() || s.inCommit.Load() {
			continue // a test froze this node's renewals; a commit renews
		}
		sent := time.Now()
		ok, err := s.renewOnce(epoch, s.ttl/2)
		since := time.Duration(int64(time.Since(s.start)) - s.aliveAt.Load())
		switch {
		case err == nil && ok:
			s.alive(sent)
		case err == nil:
			s.lose("another node took the lease over")
			return
		case s.ctx.Err() != nil:
			return
		case since >= s.ttl && !s.inCommit.Load():
			s.lose(fmt.Sprintf("not renewed for %v: %v", since.Round(time.Millisecond), err))
			return
		default:
			s.logger.Warn("renewing the sequencing lease failed; retrying", "err", err)
		}
	}
}

func (s *Store) renewOnce(epoch int64, timeout time.Duration) (bool, error) {
	ctx, cancel := context.WithTimeout(s.ctx, timeout)
	defer cancel()
	tag, err := s.ctl.Exec(ctx, `UPDATE grantline_lease SET expires_at = clock_timestamp() + $3 * interval '1 millisecond'
		WHERE id = 1 AND holder = $1 AND epoch = $2`, s.holder, epoch, s.ttl.Milliseconds())
	if err != nil {
		return false, err
	}
	return tag.RowsAffected() == 1, nil
}

// lose gives up the held lease locally.
func (s *Store) lose(why string) {
	s.lmu.Lock()
	epoch := s.epoch
	if epoch == 0 {
		s.lmu.Unlock()
		return
	}
	s.epoch = 0
	close(s.lost)
	s.lmu.Unlock()
	s.logger.Error("sequencing lease lost", "holder", s.holder, "epoch", epoch, "why", why)
	if s.metrics != nil {
		s.metrics.sequencer.WithLabelValues(s.node).Set(0)
		s.metrics.epoch.WithLabelValues(s.node).Set(0)
		s.metrics.changes.WithLabelValues(s.node, "lost").Inc()
	}
}

// release ends a held lease in the database (expiry now), so that another
// node can take over without waiting for the TTL. Called by Close after the
// renewal goroutine stopped.
func (s *Store) release() error {
	s.lmu.Lock()
	epoch := s.epoch
	if epoch == 0 || s.noRelease.Load() {
		s.lmu.Unlock()
		return nil
	}
	s.epoch = 0
	close(s.lost)
	s.lmu.Unlock()
	if s.metrics != nil {
		s.metrics.sequencer.WithLabelValues(s.node).Set(0)
		s.metrics.epoch.WithLabelValues(s.node).Set(0)
		s.metrics.changes.WithLabelValues(s.node, "released").Inc()
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.ttl)
	defer cancel()
	_, err := s.ctl.Exec(ctx, `UPDATE grantline_lease SET expires_at = clock_timestamp()
		WHERE id = 1 AND holder = $1 AND epoch = $2`, s.holder, epoch)
	if err != nil {
		// Not fatal: the lease expires on its own.
		s.logger.Warn("releasing the sequencing lease failed; it expires on its own", "epoch", epoch, "err", err)
		return nil
	}
	s.logger.Info("sequencing lease released", "holder", s.holder, "epoch", epoch)
	return nil
}

// heldEpoch is the epoch of the lease this store holds, 0 if none.
func (s *Store) heldEpoch() int64 {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	return s.epoch
}

// Holding reports whether this store holds the sequencing lease, as far as
// it knows (the database decides at each Commit), and at which epoch.
func (s *Store) Holding() (epoch int64, ok bool) {
	e := s.heldEpoch()
	return e, e != 0
}

// Lost returns a channel that is closed when the lease taken by the last
// Acquire is lost or released; nil (never ready) before the first Acquire.
// A node stops sequencing when it is closed.
func (s *Store) Lost() <-chan struct{} {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	return s.lost
}

// Lease reads the lease row: who sequences, at which epoch, until when.
func (s *Store) Lease(ctx context.Context) (Lease, error) {
	var l Lease
	err := s.read.QueryRow(ctx, `SELECT holder, advertise, epoch, expires_at, expires_at > clock_timestamp() FROM grantline_lease WHERE id = 1`).
		Scan(&l.Holder, &l.Advertise, &l.Epoch, &l.ExpiresAt, &l.Valid)
	if err != nil {
		return Lease{}, fmt.Errorf("reading the sequencing lease: %w", err)
	}
	l.Mine = l.Holder == s.holder && l.Epoch == s.heldEpoch()
	return l, nil
}

func randomSuffix() string {
	var b [4]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
