// Package pgstore is the PostgreSQL storage driver of the ledger
// (github.com/jackc/pgx/v5): the same keys and values the badger store holds,
// in one bytea key-value table, with the schema owned and migrated by
// Grantline, durable batch commits, and a sequencing lease so that several
// Grantline nodes can share one database while exactly one of them writes.
//
// Every Commit is fenced, in the transaction that writes the batch: the
// store must hold the lease at the epoch it acquired (the lease row is
// share-locked until the commit ends, so no other node can take over in
// between), and the ledger's tree sizes (the keys FenceKeys) must still hold
// the values this store last read or wrote (compare-and-set). A store that
// lost the lease, or whose view of the tree is stale, gets ErrFenced and
// writes nothing, even if it was paused for a long time and resumes in the
// middle of a commit. docs/operations-postgres.md describes the schema, the
// lease and what happens on failover.
package pgstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/grantline/grantline/ledger"
)

// TreeSizeKey is the ledger's key of the size of its latest checkpoint
// (kind 'm', see ledger/store.go), IntegratedSizeKey that of the tree as
// integrated, written by every commit of appends. Together they are
// FenceKeys, the compare-and-set fencing tokens of Commit.
const (
	TreeSizeKey       = "mlatest"
	IntegratedSizeKey = "mtree"
)

// FenceKeys are the keys whose values Commit compares and sets; the ledger
// reads them when it opens.
var FenceKeys = []string{TreeSizeKey, IntegratedSizeKey}

// fence is the state of one fencing key as this store last saw it.
type fence struct {
	known   bool   // read (or committed) by this store
	present bool   // ... and present
	value   []byte // ... with this value
}

// ErrFenced is returned by Commit, which then writes nothing, when this store
// may not write: it does not hold the sequencing lease (never acquired, lost
// or released), another node took the lease over, or the stored tree size is
// not the one this store last read or committed (another node wrote). Once
// fenced, a store stays fenced: reopen it (and the ledger on it), which
// re-reads the tree, after acquiring the lease again.
var ErrFenced = errors.New("fenced: this node does not sequence the log (the lease or the tree size moved on)")

// ErrTooBig is returned by Commit, without writing, for a batch beyond Limits.
var ErrTooBig = errors.New("batch too big for one commit")

// Defaults for Options fields left zero.
const (
	// DefaultLeaseTTL is how long a lease lasts without renewal: the time
	// another node waits, after the sequencer died or froze, before it
	// takes over. The holder renews every third of it.
	DefaultLeaseTTL = 3 * time.Second
	// DefaultMaxConns is the size of the read connection pool.
	DefaultMaxConns = 8
	// DefaultTimeout bounds one Get or Commit.
	DefaultTimeout = time.Minute
)

// Limits of one Commit: entries, and bytes counted as ledger.Store says
// (key, value and ledger.EntryOverhead per entry), well below PostgreSQL's
// 1 GiB limit on one array parameter. The ledger's own batches (at most
// DefaultMaxBatch events, four entries each) stay far below both.
const (
	maxCount = 1 << 16
	maxBytes = 256 << 20
)

// Options configures Open.
type Options struct {
	// Node names this node as the lease holder and in metrics; the
	// host name when empty. Each Store adds a random suffix to it, so two
	// stores of one node are still told apart.
	Node string
	// LeaseTTL is DefaultLeaseTTL when zero; at least 300 ms.
	LeaseTTL time.Duration
	// MaxConns is the read pool size, DefaultMaxConns when zero. Commits
	// and lease renewals use a separate pool of two connections, so that
	// readers never delay them.
	MaxConns int32
	// Timeout bounds each Get and Commit; DefaultTimeout when zero.
	Timeout time.Duration
	// Metrics receives the store's metrics; nil records none.
	Metrics *Metrics
	// Logger receives lease changes and failures; nil discards.
	Logger *slog.Logger
	// Advertise is the URL at which this node serves (serve
	// --advertise-url), recorded in the lease row while it holds the
	// lease, so that other nodes can forward appends to it (Lease).
	Advertise string
}

// Store is a ledger store in PostgreSQL. All methods are safe for
// concurrent use; the ledger calls Commit from one goroutine at a time.
type Store struct {
	read, ctl *pgxpool.Pool
	url       string
	node      string
	holder    string
	advertise string
	ttl       time.Duration
	timeout   time.Duration
	metrics   *Metrics
	logger    *slog.Logger

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // the renewal goroutine

	fmu    sync.Mutex
	fences []fence // by FenceKeys
	fenced error   // sticky ErrFenced

	lmu      sync.Mutex
	epoch    int64         // the lease epoch held; 0 none
	lost     chan struct{} // closed when the held lease is lost or released
	inCommit atomic.Bool   // a commit, which also renews the lease, is running
	aliveAt  atomic.Int64  // monotonic ns (since start) of the last renewal or commit sent
	start    time.Time

	closeOnce sync.Once
	closeErr  error

	commitSQL   string      // tests may add a delay inside the commit
	renewPaused atomic.Bool // tests freeze renewals
	noRelease   atomic.Bool // tests close as a crashed process would
}

// Open connects to the database at url (a PostgreSQL URL or key=value
// connection string; search_path selects the schema), checks that commits
// will be durable (fsync on; synchronous_commit off is overridden for this
// store's sessions) and migrates the schema to SchemaVersion in one
// transaction, refusing with ErrSchemaTooNew if the database is newer. The
// store does not sequence until Acquire returns.
func Open(ctx context.Context, url string, o Options) (*Store, error) {
	if o.Node == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "grantline"
		}
		o.Node = h
	}
	if o.LeaseTTL == 0 {
		o.LeaseTTL = DefaultLeaseTTL
	}
	if o.LeaseTTL < 300*time.Millisecond {
		return nil, fmt.Errorf("pgstore: lease TTL %v is too short: use at least 300ms (default %v)", o.LeaseTTL, DefaultLeaseTTL)
	}
	if o.MaxConns <= 0 {
		o.MaxConns = DefaultMaxConns
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parsing the PostgreSQL store URL: %w", err)
	}
	rp := cfg.ConnConfig.RuntimeParams
	for k, v := range map[string]string{
		"application_name": "grantline " + o.Node,
		// The server notices a vanished node (host down, partition) within
		// ~20 s and ends its transactions, releasing the locks they hold.
		"tcp_keepalives_idle":     "10",
		"tcp_keepalives_interval": "3",
		"tcp_keepalives_count":    "3",
	} {
		if rp[k] == "" {
			rp[k] = v
		}
	}
	where := fmt.Sprintf("%s:%d/%s", cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database)

	conn, err := pgx.ConnectConfig(ctx, cfg.ConnConfig.Copy())
	if err != nil {
		return nil, fmt.Errorf("connecting to PostgreSQL at %s: %w", where, err)
	}
	defer conn.Close(context.Background())
	var fsync, syncCommit string
	if err := conn.QueryRow(ctx, "SELECT current_setting('fsync'), current_setting('synchronous_commit')").Scan(&fsync, &syncCommit); err != nil {
		return nil, fmt.Errorf("reading the durability settings of %s: %w", where, err)
	}
	if fsync != "on" {
		return nil, fmt.Errorf("PostgreSQL at %s runs with fsync=%s, so a committed append could be lost in a crash; set fsync = on in postgresql.conf", where, fsync)
	}
	if syncCommit == "off" {
		cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "on"
	}
	s := &Store{
		url: url, start: time.Now(), fences: make([]fence, len(FenceKeys)), node: o.Node, holder: o.Node + "/" + randomSuffix(), advertise: o.Advertise, ttl: o.LeaseTTL, timeout: o.Timeout,
		metrics: o.Metrics, logger: o.Logger.With("node", o.Node),
		commitSQL: "SELECT grantline_commit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
	}
	from, err := migrate(ctx, conn, s.holder)
	if err != nil {
		return nil, err
	}
	if from != SchemaVersion {
		s.logger.Info("PostgreSQL schema migrated", "at", where, "from", from, "to", SchemaVersion)
	}
	rc := cfg.Copy()
	rc.MaxConns = o.MaxConns
	if s.read, err = pgxpool.NewWithConfig(ctx, rc); err != nil {
		return nil, fmt.Errorf("connecting to PostgreSQL at %s: %w", where, err)
	}
	cc := cfg.Copy()
	cc.MaxConns, cc.MinConns = 2, 0
	// A transaction on the lease row must never stay open for long.
	cc.ConnConfig.RuntimeParams["idle_in_transaction_session_timeout"] = fmt.Sprint((2 * o.LeaseTTL).Milliseconds())
	if s.ctl, err = pgxpool.NewWithConfig(ctx, cc); err != nil {
		s.read.Close()
		return nil, fmt.Errorf("connecting to PostgreSQL at %s: %w", where, err)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if s.metrics != nil {
		s.metrics.sequencer.WithLabelValues(s.node).Set(0)
	}
	return s, nil
}

// Node is this store's lease holder name (Options.Node and a random suffix).
func (s *Store) Node() string { return s.holder }

// Limits is the largest batch Commit accepts: its number of entries and the
// sum over them of len(key) + len(value) + ledger.EntryOverhead.
func (s *Store) Limits() (count int, bytes int64) { return maxCount, maxBytes }

// Get reads the values of keys from one snapshot (one statement). A missing
// key is a nil entry (a present empty value is non-nil), never an error; the
// returned slices belong to the caller. The first Get that reads a key of
// FenceKeys sets the value Commit expects of it (see Commit).
func (s *Store) Get(keys ...[]byte) ([][]byte, error) {
	out := make([][]byte, len(keys))
	if len(keys) == 0 {
		return out, nil
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.timeout)
	defer cancel()
	if len(keys) == 1 {
		var v []byte
		err := s.read.QueryRow(ctx, "SELECT v FROM grantline_kv WHERE k = $1", keys[0]).Scan(&v)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil:
			return nil, fmt.Errorf("reading 1 key from PostgreSQL: %w", err)
		default:
			out[0] = nonNil(v)
		}
	} else {
		rows, err := s.read.Query(ctx, `SELECT q.i, kv.v FROM unnest($1::bytea[]) WITH ORDINALITY AS q(k, i)
			JOIN grantline_kv kv ON kv.k = q.k`, keys)
		if err != nil {
			return nil, fmt.Errorf("reading %d keys from PostgreSQL: %w", len(keys), err)
		}
		var i int64
		var v pgtype.DriverBytes
		_, err = pgx.ForEachRow(rows, []any{&i, &v}, func() error {
			if i < 1 || i > int64(len(keys)) {
				return fmt.Errorf("PostgreSQL returned row %d of %d keys", i, len(keys))
			}
			out[i-1] = append(make([]byte, 0, len(v)), v...)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("reading %d keys from PostgreSQL: %w", len(keys), err)
		}
	}
	for i, k := range keys {
		if f := fenceIndex(k); f >= 0 {
			s.observe(f, out[i])
		}
	}
	return out, nil
}

// fenceIndex is k's index in FenceKeys, -1 if none.
func fenceIndex(k []byte) int {
	if len(k) == 0 || k[0] != 'm' {
		return -1
	}
	for i, f := range FenceKeys {
		if string(k) == f {
			return i
		}
	}
	return -1
}

// observe records the value of fencing key f read by the first Get of it,
// before any commit: the state the ledger built its in-memory tree from.
func (s *Store) observe(f int, v []byte) {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	if s.fences[f].known {
		return
	}
	s.fences[f] = fence{known: true, present: v != nil, value: append([]byte(nil), v...)}
}

// ResetFences forgets the tree sizes this store has read, so that the next
// Get of FenceKeys sets what Commit expects. A node that followed the log
// read-only (ledger.Follower) calls it after it acquired the lease and
// stopped following, and before it opens the ledger for writing: the
// values its follower read were the log of another sequencer, while those
// read after the lease was taken are final (a take-over waits for any
// commit in flight, and later ones by the old holder are fenced). Never
// call it while a ledger that wrote through this store is still open. It
// does not clear a sticky ErrFenced.
func (s *Store) ResetFences() {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	for i := range s.fences {
		s.fences[i] = fence{}
	}
}

// scanPage is the first page size of Scan; pages grow to scanMaxPage, so
// that a scan the caller stops early reads little.
const (
	scanPage    = 64
	scanMaxPage = 8192
)

// Scan calls fn for each key in [start, end) in ascending byte order (end
// nil: no upper bound), from one snapshot (a REPEATABLE READ, READ ONLY
// transaction read in pages); key and value are valid only during the call.
// An error from fn stops the scan and is returned unchanged.
func (s *Store) Scan(start, end []byte, fn func(key, value []byte) error) error {
	ctx := s.ctx
	tx, err := s.read.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("starting a PostgreSQL read transaction: %w", err)
	}
	defer tx.Rollback(context.Background())
	from, cmp, page := start, ">=", scanPage
	if from == nil {
		from = []byte{}
	}
	for {
		q := "SELECT k, v FROM grantline_kv WHERE k " + cmp + " $1"
		args := []any{from, page}
		if end != nil {
			q += " AND k < $3"
			args = append(args, end)
		}
		rows, err := tx.Query(ctx, q+" ORDER BY k LIMIT $2", args...)
		if err != nil {
			return fmt.Errorf("scanning PostgreSQL from %x: %w", from, err)
		}
		n := 0
		var k, v pgtype.DriverBytes
		var fnErr error
		for rows.Next() {
			if err := rows.Scan(&k, &v); err != nil {
				rows.Close()
				return fmt.Errorf("scanning PostgreSQL from %x: %w", from, err)
			}
			if fnErr = fn(k, v); fnErr != nil {
				rows.Close()
				return fnErr
			}
			if n++; n == page {
				from = append([]byte(nil), k...)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("scanning PostgreSQL: %w", err)
		}
		if n < page {
			return nil
		}
		cmp, page = ">", min(page*4, scanMaxPage)
	}
}

// Commit writes keys[i] = values[i] for all i (a later duplicate key wins)
// in one transaction, fenced: it fails with ErrFenced, writing nothing, unless
// this store holds the sequencing lease at the epoch Acquire got and every
// key of FenceKeys still holds the value this store first read (Get) or last
// committed. A batch that writes such a key sets it by compare-and-set;
// Commit refuses to run before the fencing keys were read.
// When Commit returns nil the batch is durable (PostgreSQL flushed its
// WAL); after a crash or a dropped connection either all or none of it is
// present. After an error other than ErrFenced or ErrTooBig, the batch may or
// may not have been committed. A batch beyond Limits fails with ErrTooBig.
func (s *Store) Commit(keys, values [][]byte) error {
	if len(keys) != len(values) {
		return fmt.Errorf("commit: %d keys but %d values", len(keys), len(values))
	}
	if len(keys) > maxCount {
		return fmt.Errorf("commit of %d entries (limit %d): %w", len(keys), maxCount, ErrTooBig)
	}
	var size int64
	for i, k := range keys {
		size += int64(len(k) + len(values[i]) + ledger.EntryOverhead)
	}
	if size > maxBytes {
		return fmt.Errorf("commit of %d entries, %d bytes (limit %d): %w", len(keys), size, maxBytes, ErrTooBig)
	}
	s.fmu.Lock()
	defer s.fmu.Unlock()
	if s.fenced != nil {
		return s.fenced
	}
	for i, f := range s.fences {
		if !f.known {
			return fmt.Errorf("pgstore: Commit before the tree size %q was read: read FenceKeys with Get first (ledger.Open does), so that Commit can check no other node wrote since", FenceKeys[i])
		}
	}
	epoch := s.heldEpoch()
	if epoch == 0 {
		return s.fence(fmt.Errorf("%w: this store does not hold the sequencing lease (acquire it first)", ErrFenced), false)
	}

	// The tree sizes go through compare-and-set; keys of the kinds the
	// ledger writes once go through a plain insert, the rest through an
	// upsert. A later duplicate of a key replaces an earlier one.
	fnew := make([][]byte, len(FenceKeys))
	ks, vs := make([][]byte, 0, 16), make([][]byte, 0, 16)
	nks, nvs := make([][]byte, 0, len(keys)), make([][]byte, 0, len(keys))
	type pos struct {
		once bool
		i    int
	}
	var seen map[string]pos
	if len(keys) > 1 {
		seen = make(map[string]pos, len(keys))
	}
	for i, k := range keys {
		v := values[i]
		if v == nil {
			v = []byte{}
		}
		if f := fenceIndex(k); f >= 0 {
			fnew[f] = v
			continue
		}
		if seen != nil {
			if p, ok := seen[string(k)]; ok {
				if p.once {
					nvs[p.i] = v
				} else {
					vs[p.i] = v
				}
				continue
			}
		}
		if writtenOnce(k) {
			if seen != nil {
				seen[string(k)] = pos{true, len(nks)}
			}
			nks, nvs = append(nks, k), append(nvs, v)
		} else {
			if seen != nil {
				seen[string(k)] = pos{false, len(ks)}
			}
			ks, vs = append(ks, k), append(vs, v)
		}
	}
	fkeys, fexpect := make([][]byte, len(FenceKeys)), make([][]byte, len(FenceKeys))
	for i, f := range s.fences {
		fkeys[i] = []byte(FenceKeys[i])
		if f.present {
			fexpect[i] = nonNil(f.value)
		}
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.timeout)
	defer cancel()
	t0 := time.Now()
	s.inCommit.Store(true)
	_, err := s.ctl.Exec(ctx, s.commitSQL, s.holder, epoch, s.ttl.Milliseconds(), fkeys, fexpect, fnew, ks, vs, nks, nvs)
	s.inCommit.Store(false)
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && (pe.Code == "GLF01" || pe.Code == "GLF02") {
			what := "another node took the sequencing lease over"
			if pe.Code == "GLF02" {
				what = "a stored tree size is no longer the one this node read or wrote (another node appended)"
			}
			return s.fence(fmt.Errorf("%w: committing %d entries: %s (lease epoch %d, holder %s)", ErrFenced, len(keys), what, epoch, s.holder), pe.Code == "GLF01")
		}
		s.count("error")
		return fmt.Errorf("committing %d entries to PostgreSQL: %w", len(keys), err)
	}
	if s.metrics != nil {
		s.metrics.latency.WithLabelValues(s.node).Observe(time.Since(t0).Seconds())
	}
	s.count("ok")
	// The commit extended the lease from its end. The local view of the
	// lease only decides when to give it up (the database fences every
	// commit), so it may count from when the commit returned.
	s.alive(time.Now())
	for i, v := range fnew {
		if v != nil {
			s.fences[i] = fence{known: true, present: true, value: append([]byte(nil), v...)}
		}
	}
	return nil
}

// writtenOnce reports whether k is of a kind the ledger writes once and
// never changes (ledger/store.go: leaves, leaf-hash, dedupe and subject
// index entries, checkpoints), as opposed to tiles (partial tiles grow)
// and the tree size. It is only a guess that makes commits cheaper: a batch
// in which such a key exists already is upserted whole, with the same result.
func writtenOnce(k []byte) bool {
	if len(k) == 0 {
		return false
	}
	switch k[0] {
	case 'l', 'h', 'd', 's', 'c':
		return true
	}
	return false
}

// fence makes err sticky (s.fmu held) and, when the lease was found taken,
// gives it up locally.
func (s *Store) fence(err error, leaseGone bool) error {
	s.fenced = err
	s.count("fenced")
	s.logger.Error("commit fenced", "err", err)
	if leaseGone {
		s.lose("another node took the lease over")
	}
	return err
}

func (s *Store) count(result string) {
	if s.metrics != nil {
		s.metrics.commits.WithLabelValues(s.node, result).Inc()
	}
}

func nonNil(v []byte) []byte {
	if v == nil {
		return []byte{}
	}
	return v
}

// Close stops renewing the lease and releases it (so another node can take
// over at once), then closes the connections. Later calls return the first
// call's result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		s.wg.Wait()
		s.closeErr = s.release()
		s.read.Close()
		s.ctl.Close()
	})
	return s.closeErr
}
