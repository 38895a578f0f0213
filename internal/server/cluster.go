package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	"github.com/grantline/grantline/ingest"
	"github.com/grantline/grantline/internal/datadir"
	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/event"
	"github.com/grantline/grantline/ledger/pgstore"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/proto/gen/grantline/v1/grantlinev1connect"
)

// A node of a log in PostgreSQL (docs/operations-postgres.md) is either the
// sequencer, which holds the lease and writes, or a follower, which serves
// reads from the database through a ledger.Follower and forwards appends to
// the sequencer's advertised URL. A follower waits for the lease in the
// background and, once it holds it, stops following and opens the ledger
// for writing on the same store: it becomes the sequencer without
// restarting and without a gap in its reads. A sequencer that loses the
// lease stops serving (ErrLeaseLost); restarted, it rejoins as a follower.

// Response headers every node of a PostgreSQL log sets, and the header a
// follower adds to a call it forwards (a node never forwards a call that
// carries it, so two nodes with stale views of the lease cannot bounce a
// call between them).
const (
	HeaderNode      = "Grantline-Node"      // this node's lease holder name
	HeaderRole      = "Grantline-Role"      // sequencer or follower
	HeaderSequencer = "Grantline-Sequencer" // the sequencer's advertised URL, when known
	headerForwarded = "Grantline-Forwarded-By"
)

// ClusterPath is the health endpoint of a node of a PostgreSQL log: GET
// answers, without a token, a JSON ClusterStatus.
const ClusterPath = "/cluster"

// ClusterStatus is what GET /cluster answers.
type ClusterStatus struct {
	Node      string `json:"node"`            // this node (lease holder name)
	URL       string `json:"url"`             // this node's advertised URL
	Role      string `json:"role"`            // "sequencer" or "follower"
	TreeSize  uint64 `json:"tree_size"`       // the checkpoint this node serves
	Sequencer *Lease `json:"sequencer"`       // the lease row as last read; nil if unknown
	Error     string `json:"error,omitempty"` // a follower's last failed refresh
}

// Lease is the sequencing lease as a ClusterStatus shows it.
type Lease struct {
	Node      string    `json:"node"`
	URL       string    `json:"url"`
	Epoch     int64     `json:"epoch"`
	ExpiresAt time.Time `json:"expires_at"`
	Valid     bool      `json:"valid"`
}

// leasePoll is how often every node reads the lease row, for forwarding and
// the headers above.
const leasePoll = 500 * time.Millisecond

// cluster is the ledger of a node on PostgreSQL: it implements
// ingest.Ledger (and ingest.LedgerStats) over the current sequencing Log or
// Follower, which it swaps when the node takes over.
type cluster struct {
	st     *pgstore.Store
	dd     *datadir.Dir
	lo     ledger.Options
	where  string // the database, for messages
	self   string // advertised URL
	logger *slog.Logger

	cur   atomic.Pointer[role]
	lease atomic.Pointer[pgstore.Lease]

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	onLost func()      // the lease was lost while sequencing
	onFail func(error) // taking over failed

	proxies sync.Map // advertised URL -> *httputil.ReverseProxy
	fwd     *prometheus.CounterVec

	fmu      sync.Mutex
	forwards map[*forwardCall]struct{} // calls being forwarded
}

// forwardCall is a call being forwarded under the lease of holder at epoch;
// cancel ends it.
type forwardCall struct {
	holder string
	epoch  int64
	cancel context.CancelFunc
}

// role is what a node is: exactly one field is set.
type role struct {
	log *ledger.Log
	fol *ledger.Follower
}

func (r *role) ledger() ingest.Ledger {
	if r.log != nil {
		return r.log
	}
	return r.fol
}

// openCluster opens the store and becomes the sequencer if the lease is
// free, a follower otherwise. With no log in the database yet it waits
// (another node is creating it), unless the data directory says the log
// exists, which is refused (datadir.Dir.NoLogIn).
func openCluster(ctx context.Context, dsn, advertise string, dd *datadir.Dir, lo ledger.Options, reg *prometheus.Registry, logger *slog.Logger) (*cluster, error) {
	if !strings.HasPrefix(dsn, "postgres://") && !strings.HasPrefix(dsn, "postgresql://") {
		return nil, fmt.Errorf("%w: --store %q: want a PostgreSQL URL, postgres://USER@HOST:PORT/DB?...", ErrConfig, dsn)
	}
	m, err := pgstore.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	st, err := pgstore.Open(ctx, dsn, pgstore.Options{Metrics: m, Logger: logger.With("component", "pgstore"), Advertise: advertise})
	if err != nil {
		return nil, fmt.Errorf("--store: %w", err)
	}
	c := &cluster{st: st, dd: dd, lo: lo, forwards: make(map[*forwardCall]struct{}), where: "the PostgreSQL store " + redact(dsn), self: advertise, logger: logger,
		fwd: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grantline_forwarded_appends_total",
			Help: "Append calls a follower forwarded to the sequencer, by result: ok (a response came back) or unavailable.",
		}, []string{"result"})}
	if err := reg.Register(c.fwd); err != nil {
		st.Close()
		return nil, err
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	waiting := false
	for {
		ok, err := st.TryAcquire(ctx)
		switch {
		case err != nil && ctx.Err() != nil:
			st.Close()
			return nil, err
		case err != nil:
			logger.Warn("reading the sequencing lease failed; retrying", "err", err)
		case ok:
			l, err := dd.OpenLedgerOn(ctx, st, c.where, lo)
			if err != nil {
				st.Close()
				return nil, err
			}
			c.cur.Store(&role{log: l})
			epoch, _ := st.Holding()
			logger.Info("sequencing the log", "node", st.Node(), "epoch", epoch, "url", advertise)
			return c, nil
		default:
			f, err := ledger.OpenFollower(ctx, st, ledger.FollowerOptions{
				Verifier: dd.Keys.LogVerifier,
				OnError: func(err error) {
					logger.Error("following the log failed; serving the last verified checkpoint", "err", err)
				},
			})
			if err == nil {
				if err := dd.MarkCreated(); err != nil {
					f.Close()
					return nil, err
				}
				c.cur.Store(&role{fol: f})
				l, _ := st.Lease(ctx)
				logger.Info("standing by: another node sequences the log; serving reads and forwarding appends to it, taking over when its lease expires",
					"holder", l.Holder, "epoch", l.Epoch, "sequencer_url", l.Advertise, "tree_size", f.Latest().Size)
				return c, nil
			}
			if !errors.Is(err, ledger.ErrNotFound) {
				st.Close()
				return nil, fmt.Errorf("following the log in %s: %w", c.where, err)
			}
			if dd.LogMustExist() {
				st.Close()
				return nil, dd.NoLogIn(c.where)
			}
			if !waiting {
				logger.Info("waiting: another node holds the sequencing lease and has not created the log yet")
				waiting = true
			}
		}
		select {
		case <-ctx.Done():
			st.Close()
			return nil, fmt.Errorf("waiting for the log in %s: %w", c.where, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// redact drops the password from a PostgreSQL URL for messages.
func redact(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return "(unparsable URL)"
	}
	u.RawQuery = ""
	return u.Redacted()
}

// start runs the node's background work: polling the lease row, watching
// the lease while sequencing, waiting for it while following.
func (c *cluster) start(onLost func(), onFail func(error)) {
	c.onLost, c.onFail = onLost, onFail
	c.pollLease()
	c.wg.Go(func() {
		t := time.NewTicker(leasePoll)
		defer t.Stop()
		for {
			select {
			case <-c.ctx.Done():
				return
			case <-t.C:
				c.pollLease()
			}
		}
	})
	if c.cur.Load().log != nil {
		c.wg.Go(c.watch)
	} else {
		c.wg.Go(c.takeOver)
	}
}

func (c *cluster) pollLease() {
	ctx, cancel := context.WithTimeout(c.ctx, leasePoll)
	defer cancel()
	if l, err := c.st.Lease(ctx); err == nil {
		c.lease.Store(&l)
		c.cutForwards(&l)
	}
}

// cutForwards ends the calls forwarded under a lease other than l (nil:
// all of them): a forwarded stream ends when the lease of the sequencer it
// goes to ends, whether or not its connection noticed the sequencer's death
// (a frozen host keeps its TCP connections open). The caller gets an error
// for what was not acknowledged, and resends it.
func (c *cluster) cutForwards(l *pgstore.Lease) {
	c.fmu.Lock()
	defer c.fmu.Unlock()
	for fc := range c.forwards {
		if l == nil || !l.Valid || l.Holder != fc.holder || l.Epoch != fc.epoch {
			fc.cancel()
		}
	}
}

// watch stops the node when another node takes the lease over: every
// append would be fenced from then on.
func (c *cluster) watch() {
	select {
	case <-c.ctx.Done():
		return
	case <-c.st.Lost():
	}
	if c.ctx.Err() == nil {
		c.onLost()
	}
}

// takeOver waits for the lease, then turns the follower into the
// sequencer on the same store.
func (c *cluster) takeOver() {
	if err := c.st.Acquire(c.ctx); err != nil {
		return // closing
	}
	t0 := time.Now()
	f := c.cur.Load().fol
	f.Stop()
	// The follower's reads of the tree size were another sequencer's; the
	// ledger re-reads them now that no other node can write.
	c.st.ResetFences()
	l, err := c.dd.OpenLedgerOn(c.ctx, c.st, c.where, c.lo)
	if err != nil {
		c.logger.Error("taking over sequencing failed; stopping", "err", err)
		c.onFail(fmt.Errorf("taking over sequencing the log: %w", err))
		return
	}
	c.cur.Store(&role{log: l})
	c.cutForwards(nil)
	c.pollLease()
	epoch, _ := c.st.Holding()
	c.logger.Info("took over sequencing the log", "node", c.st.Node(), "epoch", epoch, "tree_size", l.Latest().Size,
		"opened_in", time.Since(t0).Round(time.Millisecond))
	c.watch()
}

// close stops the background work and closes the ledger and the store
// (releasing a held lease).
func (c *cluster) close() error {
	c.cancel()
	c.wg.Wait()
	r := c.cur.Load()
	var err error
	if r.log != nil {
		err = r.log.Close()
	} else {
		err = r.fol.Close()
	}
	if errors.Is(err, ledger.ErrClosed) {
		err = nil
	}
	return err
}

// sequencer returns the Log while this node sequences, else nil.
func (c *cluster) sequencer() *ledger.Log { return c.cur.Load().log }

// ---- ingest.Ledger ----

func (c *cluster) Append(ctx context.Context, evs []*pb.Event) ([]ledger.AppendResult, uint64, error) {
	r := c.cur.Load()
	if r.log == nil {
		return nil, 0, c.notSequencer("this node follows the log read-only")
	}
	return r.log.Append(ctx, evs)
}

// AppendBatch is Append taking what ingest's decoder and validation know of
// the events (ingest.BatchAppender).
func (c *cluster) AppendBatch(ctx context.Context, b *event.Batch) ([]ledger.AppendResult, uint64, error) {
	r := c.cur.Load()
	if r.log == nil {
		return nil, 0, c.notSequencer("this node follows the log read-only")
	}
	return r.log.AppendBatch(ctx, b)
}

func (c *cluster) Latest() ledger.Checkpoint { return c.cur.Load().ledger().Latest() }

func (c *cluster) CheckpointAt(ctx context.Context, size uint64) (ledger.Checkpoint, error) {
	return c.cur.Load().ledger().CheckpointAt(ctx, size)
}

func (c *cluster) Entries(ctx context.Context, start, count uint64) ([]ledger.Entry, error) {
	return c.cur.Load().ledger().Entries(ctx, start, count)
}

func (c *cluster) InclusionProof(ctx context.Context, index, size uint64) ([][]byte, error) {
	return c.cur.Load().ledger().InclusionProof(ctx, index, size)
}

func (c *cluster) LookupLeafHash(ctx context.Context, hash []byte) (uint64, error) {
	return c.cur.Load().ledger().LookupLeafHash(ctx, hash)
}

func (c *cluster) ConsistencyProof(ctx context.Context, from, to uint64) ([][]byte, error) {
	return c.cur.Load().ledger().ConsistencyProof(ctx, from, to)
}

func (c *cluster) SubjectEntries(ctx context.Context, subject string, size, start uint64, limit int) ([]ledger.Entry, error) {
	return c.cur.Load().ledger().SubjectEntries(ctx, subject, size, start, limit)
}

func (c *cluster) ForEachSubject(ctx context.Context, size uint64, fn func(subject string) error) error {
	return c.cur.Load().ledger().ForEachSubject(ctx, size, fn)
}

func (c *cluster) ReadTile(ctx context.Context, level, index uint64, width int) ([]byte, error) {
	return c.cur.Load().ledger().ReadTile(ctx, level, index, width)
}

func (c *cluster) ReadEntryBundle(ctx context.Context, index uint64, width int) ([]byte, error) {
	return c.cur.Load().ledger().ReadEntryBundle(ctx, index, width)
}

func (c *cluster) Stats() ledger.Stats {
	r := c.cur.Load()
	if r.log != nil {
		return r.log.Stats()
	}
	return r.fol.Stats()
}

// Backup writes a backup of the log in the database (ingest.Backuper,
// GET /admin/backup): the same format as a badger store's backup, so that
// `grantline restore` restores it into either store.
func (c *cluster) Backup(ctx context.Context, w io.Writer) error {
	return c.st.Backup(ctx, w)
}

// ---- forwarding ----

// notSequencer is the Unavailable error a follower answers an append with
// when it cannot forward it: it names the sequencer (its advertised URL in
// the Grantline-Sequencer header and an ErrorInfo detail) when known.
func (c *cluster) notSequencer(why string) *connect.Error {
	l := c.lease.Load()
	msg := why + ": no node sequences the log right now (its lease expired); retry in a few seconds"
	meta := map[string]string{}
	if l != nil && l.Valid {
		switch {
		case l.Advertise == "":
			msg = fmt.Sprintf("%s: node %s sequences the log (epoch %d) but advertises no URL (start it with --advertise-url); send appends to it", why, l.Holder, l.Epoch)
		default:
			msg = fmt.Sprintf("%s: node %s at %s sequences the log (epoch %d); send appends there or retry", why, l.Holder, l.Advertise, l.Epoch)
		}
		meta["sequencer_node"], meta["sequencer_url"], meta["epoch"] = l.Holder, l.Advertise, strconv.FormatInt(l.Epoch, 10)
	}
	ce := connect.NewError(connect.CodeUnavailable, fmt.Errorf("%w: %s", ledger.ErrNotSequencer, msg))
	if u := meta["sequencer_url"]; u != "" {
		ce.Meta().Set(HeaderSequencer, u)
	}
	if d, err := connect.NewErrorDetail(&errdetails.ErrorInfo{Reason: "NOT_SEQUENCER", Domain: "grantline", Metadata: meta}); err == nil {
		ce.AddDetail(d)
	}
	return ce
}

var errorWriter = connect.NewErrorWriter()

// isAppend reports whether r writes to the log: the Append RPCs, source
// pushes and Shared Signals events.
func isAppend(r *http.Request) bool {
	switch p := r.URL.Path; {
	case p == grantlinev1connect.IngestServiceAppendProcedure, p == grantlinev1connect.IngestServiceAppendStreamProcedure:
		return true
	case r.Method == http.MethodPost && (strings.HasPrefix(p, "/v1/sources/") || p == ingest.SSFPath):
		return true
	}
	return false
}

// handler wraps the API: it names the node and the sequencer in response
// headers, serves ClusterPath, and on a follower forwards appends to the
// sequencer.
func (c *cluster) handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cur := c.cur.Load()
		h := w.Header()
		h.Set(HeaderNode, c.st.Node())
		l := c.lease.Load()
		if cur.log != nil {
			h.Set(HeaderRole, "sequencer")
			if c.self != "" {
				h.Set(HeaderSequencer, c.self)
			}
		} else {
			h.Set(HeaderRole, "follower")
			if l != nil && l.Valid && l.Advertise != "" {
				h.Set(HeaderSequencer, l.Advertise)
			}
		}
		if r.URL.Path == ClusterPath && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
			c.serveStatus(w, cur, l)
			return
		}
		if cur.log == nil && isAppend(r) {
			c.forward(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (c *cluster) serveStatus(w http.ResponseWriter, cur *role, l *pgstore.Lease) {
	s := ClusterStatus{Node: c.st.Node(), URL: c.self, Role: "follower", TreeSize: cur.ledger().Latest().Size}
	if cur.log != nil {
		s.Role = "sequencer"
	} else if err := cur.fol.Err(); err != nil {
		s.Error = err.Error()
	}
	if l != nil {
		s.Sequencer = &Lease{Node: l.Holder, URL: l.Advertise, Epoch: l.Epoch, ExpiresAt: l.ExpiresAt.UTC(), Valid: l.Valid}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(s)
}

// forward proxies an append to the sequencer's advertised URL with the
// caller's headers (its token included; the sequencer authorises it), or
// answers Unavailable naming the sequencer if that is not possible.
func (c *cluster) forward(w http.ResponseWriter, r *http.Request) {
	if by := r.Header.Get(headerForwarded); by != "" {
		c.fwd.WithLabelValues("unavailable").Inc()
		errorWriter.Write(w, r, c.notSequencer(fmt.Sprintf("this node follows the log and does not forward a call node %s forwarded", by)))
		return
	}
	l := c.lease.Load()
	if l == nil || !l.Valid || l.Advertise == "" || l.Advertise == c.self {
		c.pollLease() // the lease may have moved since the last poll
		l = c.lease.Load()
	}
	if l == nil || !l.Valid || l.Advertise == "" || l.Advertise == c.self {
		c.fwd.WithLabelValues("unavailable").Inc()
		errorWriter.Write(w, r, c.notSequencer("this node follows the log"))
		return
	}
	p, err := c.proxy(l.Advertise)
	if err != nil {
		c.fwd.WithLabelValues("unavailable").Inc()
		errorWriter.Write(w, r, c.notSequencer(fmt.Sprintf("this node cannot forward to the advertised URL %q: %v", l.Advertise, err)))
		return
	}
	r.Header.Set(headerForwarded, c.st.Node())
	ctx, cancel := context.WithCancel(r.Context())
	fc := &forwardCall{holder: l.Holder, epoch: l.Epoch, cancel: cancel}
	c.fmu.Lock()
	c.forwards[fc] = struct{}{}
	c.fmu.Unlock()
	defer func() {
		c.fmu.Lock()
		delete(c.forwards, fc)
		c.fmu.Unlock()
		cancel()
	}()
	// Ending the call must also end a read of the caller's body: the
	// HTTP/2 transport writes the body to the sequencer until that read
	// returns (the reverse proxy never closes the caller's body), and only
	// then fails the response it relays, so a stream whose caller waits
	// for acknowledgements would hang on a dead sequencer forever.
	if r.Body != nil {
		body := r.Body
		defer context.AfterFunc(ctx, func() { body.Close() })()
	}
	p.ServeHTTP(w, r.WithContext(ctx))
}

// proxy returns the reverse proxy to an advertised URL: HTTP/2 to it (h2c
// for http://, so that gRPC and bidirectional streams pass), flushing every
// message at once.
func (c *cluster) proxy(target string) (*httputil.ReverseProxy, error) {
	if p, ok := c.proxies.Load(target); ok {
		return p.(*httputil.ReverseProxy), nil
	}
	u, err := url.Parse(target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("want http://HOST:PORT or https://HOST:PORT")
	}
	var protos http.Protocols
	if u.Scheme == "http" {
		protos.SetUnencryptedHTTP2(true)
	} else {
		protos.SetHTTP2(true)
	}
	h2 := ingest.HTTP2Config()
	// Pings notice a sequencer whose host froze or vanished while a call
	// is forwarded to it (cutForwards notices its lease ending).
	h2.SendPingTimeout, h2.PingTimeout = 2*time.Second, 2*time.Second
	tr := &http.Transport{
		Protocols:           &protos,
		HTTP2:               h2,
		TLSHandshakeTimeout: 10 * time.Second,
		IdleConnTimeout:     2 * time.Minute,
	}
	p := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			pr.Out.Host = u.Host
		},
		Transport:     tr,
		FlushInterval: -1,
		ModifyResponse: func(*http.Response) error {
			c.fwd.WithLabelValues("ok").Inc()
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			c.fwd.WithLabelValues("unavailable").Inc()
			c.logger.Warn("forwarding an append to the sequencer failed", "sequencer_url", target, "err", err)
			errorWriter.Write(w, r, c.notSequencer(fmt.Sprintf("forwarding to the sequencing node at %s failed (%v); nothing of this call was acknowledged", target, err)))
		},
		ErrorLog: slog.NewLogLogger(c.logger.Handler(), slog.LevelWarn),
	}
	actual, _ := c.proxies.LoadOrStore(target, p)
	return actual.(*httputil.ReverseProxy), nil
}
