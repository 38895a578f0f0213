package witness

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/grantline/grantline/internal/witnesstest"
	"github.com/grantline/grantline/ledger"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

const testOrigin = "grantline.test/log"

func mustPolicy(t *testing.T, text string) *Policy {
	t.Helper()
	p, err := ParsePolicy("test.policy", []byte(text))
	if err != nil {
		t.Fatalf("ParsePolicy:\n%s\n%v", text, err)
	}
	return p
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a logger.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type running struct {
	*Witnesser
	reg  *prometheus.Registry
	logs *syncBuffer
}

// startWitnesser runs a Witnesser with fast test timings until the test ends.
func startWitnesser(t *testing.T, l *memLog, p *Policy, tune func(*Config)) *running {
	t.Helper()
	r := &running{reg: prometheus.NewRegistry(), logs: &syncBuffer{}}
	cfg := Config{
		Policy: p, Log: l.verifier, Proof: l.proof,
		MinInterval: 20 * time.Millisecond, RequestTimeout: 2 * time.Second,
		RetryBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		Logger:     slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer: r.reg,
	}
	if tune != nil {
		tune(&cfg)
	}
	w, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.Witnesser = w
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
		if t.Failed() {
			t.Logf("witnesser log:\n%s", r.logs)
		}
	})
	return r
}

func (r *running) submit(t *testing.T, n []byte) {
	t.Helper()
	start := time.Now()
	if err := r.Submit(n); err != nil {
		t.Fatalf("Submit: %v", err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("Submit took %v; it must never wait for witnesses", d)
	}
}

func (r *running) wait(t *testing.T, size uint64) Witnessed {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	wd, err := r.Wait(ctx, size)
	if err != nil {
		t.Fatalf("%v; status %+v", err, r.Status())
	}
	return wd
}

func (r *running) requests(witness, result string) float64 {
	return testutil.ToFloat64(r.metrics.requests.WithLabelValues(witness, result))
}

func TestQuorumWithLitewitness(t *testing.T) {
	l := newMemLog(t, testOrigin, 0x42)
	lw := witnesstest.Start(t, "witness1.test", l.log())
	p := mustPolicy(t, fmt.Sprintf("witness one %s %s\nquorum 1\n", lw.VKey, lw.URL))
	w := startWitnesser(t, l, p, nil)

	// Checkpoints arrive faster than rounds: the Witnesser coalesces them
	// and proves consistency from whatever size the witness last saw.
	var last []byte
	for i := range 30 {
		last = l.append(t, 1+i%7)
		w.submit(t, last)
		time.Sleep(3 * time.Millisecond)
	}
	size := uint64(l.n)
	wd := w.wait(t, size)

	if wd.Size != size || fmt.Sprint(wd.Cosigners) != "[one]" {
		t.Errorf("witnessed size %d by %v, want %d by [one]", wd.Size, wd.Cosigners, size)
	}
	// The witnessed note is still the log's checkpoint ...
	cp, err := ledger.OpenCheckpoint(wd.Note, l.verifier)
	if err != nil || cp.Size != size {
		t.Fatalf("ledger.OpenCheckpoint(witnessed) = %+v, %v", cp, err)
	}
	text, sigs := noteLines(t, wd.Note)
	if !strings.HasPrefix(string(last), text+"\n"+sigs[0]) {
		t.Errorf("witnessed note does not start with the log's checkpoint and signature:\n%s", wd.Note)
	}
	// ... with a cosignature that a verifier written from the spec accepts.
	if len(sigs) != 2 {
		t.Fatalf("witnessed note has %d signature lines, want 2 (log, witness):\n%s", len(sigs), wd.Note)
	}
	ts, err := witnesstest.Verify(text, sigs[1], "witness1.test", lw.Pub)
	if err != nil {
		t.Fatalf("independent cosignature/v1 verifier: %v\n%s", err, wd.Note)
	}
	if d := time.Since(ts); d < -time.Minute || d > time.Minute {
		t.Errorf("cosignature time %v is not now", ts)
	}
	v, err := VerifyQuorum(wd.Note, l.verifier, p)
	if err != nil {
		t.Fatalf("VerifyQuorum: %v", err)
	}
	if len(v.Cosignatures) != 1 || v.Cosignatures[0].Witness != "one" || !v.Cosignatures[0].Time.Equal(ts) {
		t.Errorf("VerifyQuorum cosignatures = %+v, want one at %v", v.Cosignatures, ts)
	}
	if got := lw.Size(t, testOrigin); got != fmt.Sprint(size) {
		t.Errorf("witnessctl list-logs size = %s, want %d", got, size)
	}
	if l.proofs.Load() == 0 {
		t.Error("no consistency proof was ever asked for")
	}
	if lag, entries := w.Lag(); lag != 0 || entries != 0 {
		t.Errorf("Lag() = %v, %d after witnessing the newest checkpoint, want 0, 0", lag, entries)
	}
	if got := testutil.ToFloat64(w.metrics.witnessedSize); got != float64(size) {
		t.Errorf("grantline_witnessed_size = %v, want %d", got, size)
	}
	if n := w.requests("one", "ok"); n < 1 || n > 30 {
		t.Errorf("%v successful requests for 30 checkpoints, want between 1 and 30", n)
	}
}

// TestConflictRecovery: a Witnesser that starts afresh (old size 0), and one
// whose idea of the witness's size went stale because another fed it, both
// recover from 409 Conflict with a proof from the size the witness reports.
func TestConflictRecovery(t *testing.T) {
	l := newMemLog(t, testOrigin, 0x42)
	lw := witnesstest.Start(t, "witness1.test", l.log())
	p := mustPolicy(t, fmt.Sprintf("witness one %s %s\nquorum 1\n", lw.VKey, lw.URL))

	a := startWitnesser(t, l, p, nil)
	a.submit(t, l.append(t, 5))
	a.wait(t, 5)

	// Restarted witnessing: knows nothing of the witness, sends old 0.
	b := startWitnesser(t, l, p, nil)
	b.submit(t, l.append(t, 3))
	if wd := b.wait(t, 8); wd.Size != 8 {
		t.Errorf("after restart witnessed size %d, want 8", wd.Size)
	}
	if n := b.requests("one", "conflict"); n < 1 {
		t.Errorf("restarted witnesser saw %v conflicts, want at least 1 (it cannot know the witness is at 5)", n)
	}

	// a still believes the witness is at 5; it is at 8.
	a.submit(t, l.append(t, 4))
	if wd := a.wait(t, 12); wd.Size != 12 {
		t.Errorf("stale witnesser witnessed size %d, want 12", wd.Size)
	}
	if n := a.requests("one", "conflict"); n < 1 {
		t.Errorf("stale witnesser saw %v conflicts, want at least 1", n)
	}
	if _, err := VerifyQuorum(mustLatest(t, a.Witnesser).Note, l.verifier, p); err != nil {
		t.Errorf("VerifyQuorum after recovery: %v", err)
	}

	// The witness restarts too: its state is in its database.
	lw.Stop()
	lw.Restart(t)
	a.submit(t, l.append(t, 2))
	if wd := a.wait(t, 14); wd.Size != 14 {
		t.Errorf("after witness restart witnessed size %d, want 14", wd.Size)
	}
}

func mustLatest(t *testing.T, w *Witnesser) Witnessed {
	t.Helper()
	wd, ok := w.Latest()
	if !ok {
		t.Fatal("Latest: nothing witnessed")
	}
	return wd
}

// TestDeadWitness: a witness that refuses connections and one that never
// answers hold up neither Submit nor the quorum of the live witness; with a
// quorum that needs them, the lag shows in the metrics and the log.
func TestDeadWitness(t *testing.T) {
	dead := "http://" + witnesstest.FreeAddr(t) // nothing listens there
	stop := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // so the server notices when the client gives up
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	}))
	t.Cleanup(func() { close(stop); hang.Close() })
	k2 := testVKey("dead.test", seededKey(2).Public().(ed25519.PublicKey))
	k3 := testVKey("hang.test", seededKey(3).Public().(ed25519.PublicKey))

	tests := []struct {
		name       string
		quorum     int
		witnessed  bool
		wantLagLog bool
	}{
		{name: "quorum 1 proceeds", quorum: 1, witnessed: true},
		{name: "quorum 2 lags", quorum: 2, wantLagLog: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newMemLog(t, testOrigin, 0x42)
			lw := witnesstest.Start(t, "witness1.test", l.log())
			p := mustPolicy(t, fmt.Sprintf("witness live %s %s\nwitness dead %s %s\nwitness hang %s %s\nquorum %d\n",
				lw.VKey, lw.URL, k2, dead, k3, hang.URL, tt.quorum))
			w := startWitnesser(t, l, p, func(c *Config) {
				c.RequestTimeout = 500 * time.Millisecond
				c.LagWarning = time.Hour // a loaded machine may lag a little
				if tt.wantLagLog {
					c.LagWarning = 200 * time.Millisecond
				}
			})
			deadline := time.Now().Add(1500 * time.Millisecond)
			for time.Now().Before(deadline) {
				w.submit(t, l.append(t, 10))
				time.Sleep(10 * time.Millisecond)
			}
			size := uint64(l.n)
			if tt.witnessed {
				w.wait(t, size)
			} else {
				time.Sleep(100 * time.Millisecond)
				if wd, ok := w.Latest(); ok {
					t.Fatalf("witnessed size %d by %v without a quorum of 2", wd.Size, wd.Cosigners)
				}
			}
			lagS := testutil.ToFloat64(w.metrics.lagSeconds)
			lagN := testutil.ToFloat64(w.metrics.lagEntries)
			if tt.witnessed && (lagS != 0 || lagN != 0) {
				t.Errorf("lag = %vs, %v entries after witnessing the newest checkpoint, want 0", lagS, lagN)
			}
			if !tt.witnessed && (lagS < 1 || lagN != float64(size)) {
				t.Errorf("lag = %vs, %v entries with nothing witnessed, want >= 1s and %d", lagS, lagN, size)
			}
			if n := w.requests("dead", "error"); n < 2 {
				t.Errorf("dead witness: %v failed requests, want retries", n)
			}
			if n := w.requests("dead", "error"); n > 40 {
				t.Errorf("dead witness: %v failed requests in about 2 s, want backoff (without it: one every round, over 80)", n)
			}
			if n := w.requests("hang", "error"); n < 1 {
				t.Errorf("hanging witness: %v timed-out requests, want at least 1", n)
			}
			st := w.Status()
			if st[1].Failures == 0 || !strings.Contains(st[1].LastError, "connection refused") {
				t.Errorf("dead witness status = %+v, want failures with connection refused", st[1])
			}
			// The live witness keeps up (without a quorum, a round lasts until
			// the hanging witness's request times out).
			witnesstest.WaitFor(t, func() bool { return w.Status()[0].Cosigned == size },
				fmt.Sprintf("the live witness to cosign size %d", size), func() string { return fmt.Sprintf("%+v", w.Status()) })
			logs := w.logs.String()
			if !strings.Contains(logs, `msg="witness failed" component=witness witness=dead`) {
				t.Errorf("no log line for the dead witness:\n%s", logs)
			}
			if got := strings.Contains(logs, "witnessing lags behind the log"); got != tt.wantLagLog {
				t.Errorf("lag warning logged = %v, want %v:\n%s", got, tt.wantLagLog, logs)
			}
			// The metrics are registered and gathered.
			if n, err := testutil.GatherAndCount(w.reg, "grantline_witness_lag_seconds", "grantline_witness_requests_total"); err != nil || n < 2 {
				t.Errorf("gathered %d metrics, %v", n, err)
			}
		})
	}
}

// TestVerifyQuorum checks notes witnessed by a real litewitness against
// policies that should and should not accept them.
func TestVerifyQuorum(t *testing.T) {
	l := newMemLog(t, testOrigin, 0x42)
	lw := witnesstest.Start(t, "witness1.test", l.log())
	good := fmt.Sprintf("witness one %s %s\n", lw.VKey, lw.URL)
	other := fmt.Sprintf("witness other %s https://other.example\n", testVKey("witness1.test", seededKey(9).Public().(ed25519.PublicKey)))
	w := startWitnesser(t, l, mustPolicy(t, good+"quorum 1\n"), nil)
	w.submit(t, l.append(t, 17))
	wd := w.wait(t, 17)

	text, sigs := noteLines(t, wd.Note)
	tamperedSig := []byte(text + "\n" + sigs[0] + sigs[1][:len(sigs[1])-6] + "AAAAA\n")
	otherLog := newMemLog(t, "grantline.test/other", 0x07)

	tests := []struct {
		name   string
		note   []byte
		policy string
		log    *memLog
		want   error // nil: accepted
		msg    string
	}{
		{name: "witnessed", note: wd.Note, policy: good + "quorum 1\n", log: l},
		{name: "one of two", note: wd.Note, policy: good + other + "quorum 1\n", log: l},
		{name: "another witness key", note: wd.Note, policy: other + "quorum 1\n", log: l, want: ErrNoQuorum,
			msg: "not cosigned by: other; signed also by keys the policy does not name: witness1.test+"},
		{name: "quorum 2", note: wd.Note, policy: good + other + "quorum 2\n", log: l, want: ErrNoQuorum,
			msg: "valid cosignatures by 1 of the policy's witnesses, the quorum is 2; not cosigned by: other"},
		{name: "unwitnessed checkpoint", note: l.append(t, 1), policy: good + "quorum 1\n", log: l, want: ErrNoQuorum},
		{name: "tampered cosignature", note: tamperedSig, policy: good + "quorum 1\n", log: l, want: ErrInvalidCosignature},
		{name: "another log", note: wd.Note, policy: good + "quorum 1\n", log: otherLog, want: ledger.ErrUnknownKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := VerifyQuorum(tt.note, tt.log.verifier, mustPolicy(t, tt.policy))
			if tt.want == nil {
				if err != nil {
					t.Fatalf("VerifyQuorum = %v, want success", err)
				}
				if v.Checkpoint.Size != 17 || len(v.Cosignatures) != 1 {
					t.Errorf("VerifyQuorum = %+v", v)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("VerifyQuorum = %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("VerifyQuorum = %q, want it to contain %q", err, tt.msg)
			}
		})
	}
}
