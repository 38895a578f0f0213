package witness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/grantline/grantline/ledger"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/mod/sumdb/note"
)

// Defaults for Config fields left zero.
const (
	// DefaultMinInterval is the shortest time between two rounds, that is
	// between two checkpoints sent to the same witness (409 retries aside).
	DefaultMinInterval = time.Second
	// DefaultRequestTimeout bounds one add-checkpoint request.
	DefaultRequestTimeout = 10 * time.Second
	// DefaultRetryBackoff is the wait after a witness's first failure; it
	// doubles with each further failure in a row, up to DefaultMaxBackoff.
	DefaultRetryBackoff = time.Second
	// DefaultMaxBackoff caps the wait between attempts at a failing witness.
	DefaultMaxBackoff = time.Minute
	// DefaultLagWarning is how far witnessing may fall behind the log before
	// a warning is logged (then at most once per DefaultLagWarning).
	DefaultLagWarning = 30 * time.Second
)

// maxConflictRetries bounds how often one job answers 409 Conflict with a
// new proof before it gives up until the next round.
const maxConflictRetries = 3

// ErrFork is returned by Submit for a checkpoint with the size of one
// already submitted but another root hash: the log signed two views.
var ErrFork = errors.New("two different checkpoints of the same size")

// ProofFunc returns the RFC 6962 consistency proof between the log's trees of
// sizes old and new (0 < old < new <= a size already submitted), one 32-byte
// hash per element. It must be safe for concurrent use; it is called from
// one goroutine per witness.
type ProofFunc func(ctx context.Context, old, new uint64) ([][]byte, error)

// Config configures a Witnesser. Policy, Log and Proof are required.
type Config struct {
	Policy *Policy
	// Log verifies the log's signature on every submitted checkpoint; its
	// name is the log's origin. Stock witnesses accept only Ed25519 log keys.
	Log   note.Verifier
	Proof ProofFunc

	MinInterval    time.Duration // DefaultMinInterval
	RequestTimeout time.Duration // DefaultRequestTimeout
	RetryBackoff   time.Duration // DefaultRetryBackoff
	MaxBackoff     time.Duration // DefaultMaxBackoff
	LagWarning     time.Duration // DefaultLagWarning

	HTTPClient *http.Client // http.DefaultClient when nil
	Logger     *slog.Logger // nil discards
	// Registerer, when set, registers the witnessing metrics
	// (docs/witnessing.md lists them).
	Registerer prometheus.Registerer
	Now        func() time.Time // time.Now when nil

	// StateFile, when set, keeps the newest witnessed checkpoint across
	// restarts: each checkpoint that reaches the quorum is written there
	// (the signed note with its cosignatures; atomically: a synced
	// temporary file renamed over it), and New reads it back and serves it
	// until a newer one reaches the quorum. A stored note that does not
	// verify under Log and Policy (VerifyQuorum), or that Holds refuses, is
	// logged and ignored. A failed write is logged; witnessing goes on.
	StateFile string
	// Holds, when set, tells whether the log holds the checkpoint of this
	// size and root; New asks it about the checkpoint read from StateFile
	// (a data directory restored from an older backup holds a shorter log).
	// It returns nil when the log holds it, an error saying why not.
	Holds func(size uint64, root [32]byte) error
}

// Witnessed is a checkpoint that reached the policy's quorum.
type Witnessed struct {
	Size uint64
	Root [32]byte
	// Note is the signed note: the checkpoint text, the log's signature
	// line(s), then one cosignature line per cosigning witness.
	Note []byte
	// Cosigners are the policy names of the witnesses that cosigned, in
	// policy order.
	Cosigners []string
}

// WitnessStatus is what the Witnesser knows of one witness.
type WitnessStatus struct {
	Name      string
	URL       string
	Cosigned  uint64    // the newest size it cosigned; 0 before the first
	Known     uint64    // its tree size as far as the Witnesser knows
	Failures  int       // failed attempts in a row
	LastError string    // the last failure, "" after a success
	RetryAt   time.Time // no attempt before this time
}

// pending is a checkpoint submitted by the log.
type pending struct {
	origin  string
	size    uint64
	root    [32]byte
	text    string // the checkpoint text, ending in a newline
	note    []byte // the note as submitted
	logSigs string // the log's verified signature lines
	arrived time.Time
	// superseded is when a newer checkpoint was submitted (zero while this
	// is the newest); the witnessing lag runs from then.
	superseded time.Time
	cosigs     map[string]note.Signature // by witness name; guarded by Witnesser.mu
}

type witnessState struct {
	w         *Witness
	jobs      chan *pending // capacity 1; sent to only when !busy
	busy      bool
	job       *pending
	known     uint64
	cosigned  uint64
	signedAny bool // cosigned is meaningful (an empty tree is witnessed too)
	failures  int
	lastErr   error
	retryAt   time.Time
}

type result struct {
	st   *witnessState
	c    *pending
	sig  note.Signature
	err  error
	size uint64 // the witness's size after the job, as far as known
}

// A Witnesser sends the log's checkpoints to the witnesses of a policy and
// keeps the newest checkpoint that reached the quorum. Checkpoints go out in
// rounds, at most one per MinInterval: a round takes the newest submitted
// checkpoint and sends it to every witness that is not still busy or backing
// off after failures; a witness that finishes late joins the round then
// running. So at most one request is in flight per witness, checkpoints
// submitted in between are coalesced into the newest, and a slow or dead
// witness delays neither the log nor the other witnesses. All methods are
// safe for concurrent use.
type Witnesser struct {
	cfg     Config
	log     *slog.Logger
	now     func() time.Time
	hc      *http.Client
	metrics *metrics

	wake    chan struct{}
	results chan result

	mu          sync.Mutex
	ws          []*witnessState
	latest      *pending
	first       time.Time // arrival of the first checkpoint submitted
	target      *pending
	roundStart  time.Time
	witnessedCP *pending
	witnessed   *Witnessed
	changed     chan struct{} // closed when witnessed changes
	lastLagLog  time.Time
	lagging     bool
}

// New returns a Witnesser for cfg. It sends nothing until Run is called.
func New(cfg Config) (*Witnesser, error) {
	switch {
	case cfg.Policy == nil || len(cfg.Policy.Witnesses) == 0:
		return nil, errors.New("new witnesser: no witness policy")
	case cfg.Log == nil:
		return nil, errors.New("new witnesser: no log verifier")
	case cfg.Proof == nil:
		return nil, errors.New("new witnesser: no consistency proof function")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.MinInterval, DefaultMinInterval)
	def(&cfg.RequestTimeout, DefaultRequestTimeout)
	def(&cfg.RetryBackoff, DefaultRetryBackoff)
	def(&cfg.MaxBackoff, DefaultMaxBackoff)
	def(&cfg.LagWarning, DefaultLagWarning)
	w := &Witnesser{
		cfg:     cfg,
		log:     cfg.Logger,
		now:     cfg.Now,
		hc:      cfg.HTTPClient,
		wake:    make(chan struct{}, 1),
		results: make(chan result, len(cfg.Policy.Witnesses)),
		changed: make(chan struct{}),
	}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	w.log = w.log.With("component", "witness")
	if w.now == nil {
		w.now = time.Now
	}
	if w.hc == nil {
		w.hc = http.DefaultClient
	}
	for _, wit := range cfg.Policy.Witnesses {
		w.ws = append(w.ws, &witnessState{w: wit, jobs: make(chan *pending, 1)})
	}
	w.metrics = newMetrics(w)
	if cfg.Registerer != nil {
		if err := w.metrics.register(cfg.Registerer); err != nil {
			return nil, fmt.Errorf("new witnesser: registering metrics: %w", err)
		}
	}
	if cfg.StateFile != "" {
		w.restore()
	}
	return w, nil
}

// Submit hands the Witnesser a checkpoint the log has signed and published.
// It never blocks on witnesses: it verifies the log's signature, remembers
// the checkpoint if it is the newest so far, and returns. Older checkpoints
// and repeats are ignored. Errors: the note does not verify under
// Config.Log (ledger.ErrInvalidSignature and its kin), or ErrFork.
func (w *Witnesser) Submit(signedNote []byte) error {
	c, err := w.parse(signedNote)
	if err != nil {
		return fmt.Errorf("submitting checkpoint to witnesses: %w", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	prev := w.latest
	switch {
	case prev == nil:
		w.first = c.arrived
	case c.size < prev.size:
		return nil
	case c.size == prev.size:
		if c.text != prev.text {
			return fmt.Errorf("submitting checkpoint to witnesses: %w: size %d has roots %x and %x", ErrFork, c.size, prev.root, c.root)
		}
		return nil
	default:
		prev.superseded = c.arrived
	}
	if wc := w.witnessedCP; wc != nil && wc.superseded.IsZero() && c.size > wc.size {
		// A witnessed checkpoint restored from Config.StateFile was never
		// the newest submitted: the lag runs from its first successor.
		wc.superseded = c.arrived
	}
	w.latest = c
	w.metrics.latestSize.Set(float64(c.size))
	select {
	case w.wake <- struct{}{}:
	default:
	}
	return nil
}

func (w *Witnesser) parse(signedNote []byte) (*pending, error) {
	cp, err := ledger.OpenCheckpoint(signedNote, w.cfg.Log)
	if err != nil {
		return nil, err
	}
	n, err := note.Open(signedNote, note.VerifierList(w.cfg.Log))
	if err != nil {
		return nil, err
	}
	var sigs strings.Builder
	for _, s := range n.Sigs {
		sigs.WriteString(signatureLine(s))
	}
	return &pending{
		origin:  cp.Origin,
		size:    cp.Size,
		root:    cp.Root,
		text:    n.Text,
		note:    bytes.Clone(signedNote),
		logSigs: sigs.String(),
		arrived: w.now(),
		cosigs:  map[string]note.Signature{},
	}, nil
}

// Latest returns the newest checkpoint that reached the quorum (or the one
// restored from Config.StateFile), and false before any did.
func (w *Witnesser) Latest() (Witnessed, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.witnessed == nil {
		return Witnessed{}, false
	}
	return *w.witnessed, true
}

// Wait blocks until a checkpoint of at least size has reached the quorum and
// returns the newest witnessed checkpoint, or returns ctx's error.
func (w *Witnesser) Wait(ctx context.Context, size uint64) (Witnessed, error) {
	for {
		w.mu.Lock()
		wd, ch := w.witnessed, w.changed
		w.mu.Unlock()
		if wd != nil && wd.Size >= size {
			return *wd, nil
		}
		select {
		case <-ctx.Done():
			return Witnessed{}, fmt.Errorf("waiting for a witnessed checkpoint of size %d: %w", size, ctx.Err())
		case <-ch:
		}
	}
}

// Status reports each witness of the policy, in policy order.
func (w *Witnesser) Status() []WitnessStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]WitnessStatus, len(w.ws))
	for i, st := range w.ws {
		out[i] = WitnessStatus{Name: st.w.Name, URL: st.w.URL, Cosigned: st.cosigned, Known: st.known,
			Failures: st.failures, RetryAt: st.retryAt}
		if st.lastErr != nil {
			out[i].LastError = st.lastErr.Error()
		}
	}
	return out
}

// Lag returns how far witnessing is behind the newest submitted checkpoint:
// the time since the first checkpoint newer than the newest witnessed one was
// submitted, and the number of entries between them. Both are zero when the
// newest checkpoint is witnessed.
func (w *Witnesser) Lag() (time.Duration, uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lagLocked(w.now())
}

func (w *Witnesser) lagLocked(now time.Time) (time.Duration, uint64) {
	switch {
	case w.latest == nil:
		return 0, 0
	case w.witnessedCP == nil:
		return now.Sub(w.first), w.latest.size
	case w.witnessedCP.size >= w.latest.size:
		return 0, 0
	}
	return now.Sub(w.witnessedCP.superseded), w.latest.size - w.witnessedCP.size
}

// Run sends checkpoints to the witnesses until ctx is done, then waits for
// the requests in flight to end and returns nil. Call it once.
func (w *Witnesser) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, st := range w.ws {
		wg.Go(func() {
			for c := range st.jobs {
				w.results <- w.witness(ctx, st, c)
			}
		})
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	inflight := 0
	for {
		w.mu.Lock()
		next, started := w.step(w.now())
		w.mu.Unlock()
		inflight += started
		wait := time.Hour
		if !next.IsZero() {
			wait = max(time.Until(next), time.Millisecond)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			for _, st := range w.ws {
				close(st.jobs)
			}
			for ; inflight > 0; inflight-- {
				<-w.results
			}
			wg.Wait()
			return nil
		case <-w.wake:
		case <-timer.C:
		case r := <-w.results:
			inflight--
			w.mu.Lock()
			stored := w.finish(r)
			w.mu.Unlock()
			if stored != nil && w.cfg.StateFile != "" {
				// Outside the lock; Run is the only writer, so writes
				// happen in order.
				if err := writeState(w.cfg.StateFile, stored); err != nil {
					w.log.Error("could not store the witnessed checkpoint; it is served, but a restart serves an older one until the quorum is reached again",
						"size", r.c.size, "err", err)
				}
			}
		}
	}
}

// step starts a round if one is due, hands the round's checkpoint to every
// idle witness, logs a lag warning when due, and returns when it next needs
// to run (zero: only when woken) and how many jobs it started. w.mu is held.
func (w *Witnesser) step(now time.Time) (next time.Time, started int) {
	if w.latest == nil {
		return time.Time{}, 0
	}
	later := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	if w.target == nil || (w.latest.size > w.target.size && w.roundOver()) {
		if due := w.roundStart.Add(w.cfg.MinInterval); w.target != nil && now.Before(due) {
			later(due)
		} else {
			w.target, w.roundStart = w.latest, now
		}
	}
	for _, st := range w.ws {
		if st.busy || (st.signedAny && st.cosigned >= w.target.size) {
			continue
		}
		if now.Before(st.retryAt) {
			later(st.retryAt)
			continue
		}
		st.busy, st.job = true, w.target
		st.jobs <- w.target
		started++
	}
	if lag, entries := w.lagLocked(now); entries > 0 {
		if lag >= w.cfg.LagWarning && now.Sub(w.lastLagLog) >= w.cfg.LagWarning {
			w.lastLagLog, w.lagging = now, true
			args := []any{"lag", lag.Round(time.Millisecond), "entries", entries, "newest_size", w.latest.size,
				"quorum", w.cfg.Policy.Quorum}
			if w.witnessedCP != nil {
				args = append(args, "witnessed_size", w.witnessedCP.size)
			}
			for _, st := range w.ws {
				if st.lastErr != nil {
					args = append(args, "witness."+st.w.Name, st.lastErr.Error())
				}
			}
			w.log.Warn("witnessing lags behind the log", args...)
		}
		due := now.Add(w.cfg.LagWarning - lag)
		if again := w.lastLagLog.Add(w.cfg.LagWarning); again.After(due) {
			due = again
		}
		if due.After(now) {
			later(due)
		}
	}
	return next, started
}

// roundOver reports whether the current round's checkpoint reached the
// quorum or no witness is still working on it. w.mu is held.
func (w *Witnesser) roundOver() bool {
	if len(w.target.cosigs) >= w.cfg.Policy.Quorum {
		return true
	}
	for _, st := range w.ws {
		if st.busy && st.job == w.target {
			return false
		}
	}
	return true
}

// finish records the outcome of one job, and returns the witnessed note
// when this job made a newer checkpoint reach the quorum. w.mu is held.
func (w *Witnesser) finish(r result) []byte {
	st, c := r.st, r.c
	st.busy, st.job = false, nil
	if r.size > 0 || r.err == nil {
		st.known = r.size
	}
	now := w.now()
	if r.err != nil {
		st.failures++
		st.lastErr = r.err
		backoff := w.cfg.RetryBackoff << min(st.failures-1, 20)
		if backoff > w.cfg.MaxBackoff || backoff <= 0 {
			backoff = w.cfg.MaxBackoff
		}
		st.retryAt = now.Add(backoff)
		level := slog.LevelWarn
		if errors.Is(r.err, ErrBadProof) || errors.Is(r.err, ErrBadCosignature) || errors.Is(r.err, ErrWitnessAhead) {
			level = slog.LevelError // a split view, a rollback or a key change: someone must look
		}
		w.log.Log(context.Background(), level, "witness failed", "witness", st.w.Name, "url", st.w.URL,
			"size", c.size, "witness_size", st.known, "failures", st.failures, "retry_in", backoff, "err", r.err)
		return nil
	}
	if st.failures > 0 {
		w.log.Info("witness recovered", "witness", st.w.Name, "size", c.size, "after_failures", st.failures)
	}
	st.failures, st.lastErr, st.retryAt = 0, nil, time.Time{}
	st.cosigned, st.signedAny = c.size, true
	w.metrics.cosigned.WithLabelValues(st.w.Name).Set(float64(c.size))
	c.cosigs[st.w.Name] = r.sig
	if len(c.cosigs) < w.cfg.Policy.Quorum || (w.witnessedCP != nil && c.size <= w.witnessedCP.size) {
		return nil
	}
	wd := &Witnessed{Size: c.size, Root: c.root}
	var b strings.Builder
	b.WriteString(c.text)
	b.WriteString("\n")
	b.WriteString(c.logSigs)
	for _, ws := range w.ws {
		if s, ok := c.cosigs[ws.w.Name]; ok {
			b.WriteString(signatureLine(s))
			wd.Cosigners = append(wd.Cosigners, ws.w.Name)
		}
	}
	wd.Note = []byte(b.String())
	w.witnessedCP, w.witnessed = c, wd
	w.metrics.witnessedSize.Set(float64(c.size))
	close(w.changed)
	w.changed = make(chan struct{})
	if w.lagging {
		if _, entries := w.lagLocked(now); entries == 0 {
			w.lagging = false
			w.log.Info("witnessing caught up with the log", "size", c.size)
		}
	}
	return wd.Note
}

// witness sends c to one witness, answering 409 Conflict with a proof from
// the size the witness reports, and returns the verified cosignature.
func (w *Witnesser) witness(ctx context.Context, st *witnessState, c *pending) result {
	w.mu.Lock()
	old := st.known
	w.mu.Unlock()
	r := result{st: st, c: c, size: old}
	for range maxConflictRetries + 1 {
		if old > c.size {
			w.metrics.requests.WithLabelValues(st.w.Name, "ahead").Inc()
			r.err = fmt.Errorf("%w: the witness has size %d, the checkpoint %d (was the log rolled back, or is another process feeding this witness?)", ErrWitnessAhead, old, c.size)
			return r
		}
		var proof [][]byte
		if old > 0 && old < c.size {
			p, err := w.cfg.Proof(ctx, old, c.size)
			if err != nil {
				r.err = fmt.Errorf("consistency proof %d..%d for witness %s: %w", old, c.size, st.w.Name, err)
				w.metrics.requests.WithLabelValues(st.w.Name, "error").Inc()
				return r
			}
			proof = p
		}
		rctx, cancel := context.WithTimeout(ctx, w.cfg.RequestTimeout)
		start := time.Now()
		sig, err := addCheckpoint(rctx, w.hc, st.w, c, old, proof)
		cancel()
		w.metrics.duration.WithLabelValues(st.w.Name).Observe(time.Since(start).Seconds())
		w.metrics.requests.WithLabelValues(st.w.Name, resultLabel(err)).Inc()
		var ce *conflictError
		if errors.As(err, &ce) {
			old, r.size = ce.size, ce.size
			continue
		}
		if err == nil {
			r.size, r.sig = c.size, sig
		}
		r.err = err
		return r
	}
	r.err = fmt.Errorf("%w: %d times in a row; the witness's size keeps changing (is another process feeding it?)", ErrConflict, maxConflictRetries+1)
	return r
}

func resultLabel(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrConflict):
		return "conflict"
	case errors.Is(err, ErrRejected):
		return "rejected"
	case errors.Is(err, ErrBadProof):
		return "bad_proof"
	case errors.Is(err, ErrBadCosignature):
		return "bad_cosignature"
	}
	return "error"
}
