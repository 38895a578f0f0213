package witness

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"filippo.io/torchwood"
	"github.com/grantline/grantline/internal/witnesstest"
	"github.com/grantline/grantline/ledger"
	"golang.org/x/mod/sumdb/note"
)

// faultyWitness is an in-process stand-in for a witness that misbehaves in
// one named way. It checks the shape of each request (old line, proof lines,
// blank line, a note signed by the log) before it applies its fault; the
// well-behaved protocol is tested against the real litewitness.
type faultyWitness struct {
	t     *testing.T
	fault string
	log   note.Verifier
	calls atomic.Int64
	srv   *httptest.Server
}

func newFaultyWitness(t *testing.T, fault string, log note.Verifier) *faultyWitness {
	f := &faultyWitness{t: t, fault: fault, log: log}
	f.srv = httptest.NewServer(f)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *faultyWitness) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := f.calls.Add(1)
	if r.Method != http.MethodPost || r.URL.Path != "/add-checkpoint" {
		f.t.Errorf("faulty witness: %s %s, want POST /add-checkpoint", r.Method, r.URL.Path)
	}
	body, _ := io.ReadAll(r.Body)
	head, signed, ok := bytes.Cut(body, []byte("\n\n"))
	lines := strings.Split(string(head), "\n")
	old, err := strconv.ParseUint(strings.TrimPrefix(lines[0], "old "), 10, 64)
	if !ok || err != nil || !strings.HasPrefix(lines[0], "old ") {
		f.t.Errorf("faulty witness: malformed request %q", body)
	}
	cp, err := ledger.OpenCheckpoint(signed, f.log)
	if err != nil {
		f.t.Errorf("faulty witness: the note is not the log's: %v", err)
	}
	if old > 0 && old < cp.Size && len(lines) == 1 {
		f.t.Errorf("faulty witness: old %d < size %d with no proof", old, cp.Size)
	}
	sign := func(key byte) {
		s, err := torchwood.NewCosignatureSigner("faulty.test", seededKey(key))
		if err != nil {
			f.t.Fatal(err)
		}
		msg, err := note.Sign(&note.Note{Text: string(signed[:bytes.Index(signed, []byte("\n\n"))+1])}, s)
		if err != nil {
			f.t.Fatal(err)
		}
		w.Write(msg[bytes.LastIndex(msg, []byte("\n\n"))+2:])
	}
	switch f.fault {
	case "forbidden":
		http.Error(w, "unknown log", http.StatusForbidden)
	case "not found":
		http.Error(w, "unknown log", http.StatusNotFound)
	case "bad proof":
		http.Error(w, "bad consistency proof", http.StatusUnprocessableEntity)
	case "server error":
		http.Error(w, "database is locked", http.StatusInternalServerError)
	case "wrong key":
		sign(0x66)
	case "garbage":
		io.WriteString(w, "hello\n")
	case "conflict garbage":
		w.WriteHeader(http.StatusConflict)
		io.WriteString(w, "twelve\n")
	case "ahead":
		w.WriteHeader(http.StatusConflict)
		fmt.Fprintf(w, "%d\n", cp.Size+100)
	case "size keeps changing":
		w.WriteHeader(http.StatusConflict)
		fmt.Fprintf(w, "%d\n", 1+n%2)
	case "ok":
		sign(0x55)
	default:
		f.t.Fatalf("unknown fault %q", f.fault)
	}
}

func TestWitnessFaults(t *testing.T) {
	tests := []struct {
		fault   string
		result  string // the requests_total result label
		lastErr string
	}{
		{fault: "forbidden", result: "rejected", lastErr: "witness rejected the checkpoint: 403 Forbidden: \"unknown log\" (register the log's origin"},
		{fault: "not found", result: "rejected", lastErr: "404 Not Found"},
		{fault: "bad proof", result: "bad_proof", lastErr: "witness could not verify the consistency proof: 422"},
		{fault: "server error", result: "error", lastErr: "witness request failed: 500 Internal Server Error: \"database is locked\""},
		{fault: "wrong key", result: "bad_cosignature", lastErr: "witness returned no valid cosignature"},
		{fault: "garbage", result: "bad_cosignature", lastErr: "witness returned no valid cosignature"},
		{fault: "conflict garbage", result: "error", lastErr: "409 Conflict whose body \"twelve\" is not a tree size"},
		{fault: "ahead", result: "ahead", lastErr: "witness has a larger tree than the checkpoint: the witness has size 105, the checkpoint 5"},
		{fault: "size keeps changing", result: "conflict", lastErr: "4 times in a row"},
	}
	for _, tt := range tests {
		t.Run(tt.fault, func(t *testing.T) {
			l := newMemLog(t, testOrigin, 0x42)
			f := newFaultyWitness(t, tt.fault, l.verifier)
			vkey := testVKey("faulty.test", seededKey(0x55).Public().(ed25519.PublicKey))
			w := startWitnesser(t, l, mustPolicy(t, fmt.Sprintf("witness faulty %s %s\nquorum 1\n", vkey, f.srv.URL)), nil)
			w.submit(t, l.append(t, 5))
			witnesstest.WaitFor(t, func() bool { return w.Status()[0].Failures >= 2 }, "two failures", func() string { return fmt.Sprintf("%+v", w.Status()) })
			st := w.Status()[0]
			if !strings.Contains(st.LastError, tt.lastErr) {
				t.Errorf("LastError = %q, want it to contain %q", st.LastError, tt.lastErr)
			}
			if n := w.requests("faulty", tt.result); n < 2 {
				t.Errorf("requests{result=%q} = %v, want >= 2", tt.result, n)
			}
			if wd, ok := w.Latest(); ok {
				t.Errorf("witnessed %d despite the fault", wd.Size)
			}
			if !st.RetryAt.After(time.Now().Add(-time.Second)) {
				t.Errorf("RetryAt = %v, want a backoff", st.RetryAt)
			}
			if !strings.Contains(w.logs.String(), `msg="witness failed"`) {
				t.Errorf("no log line for the failure:\n%s", w.logs)
			}
		})
	}

	// The control: the same stand-in without a fault reaches the quorum.
	t.Run("ok", func(t *testing.T) {
		l := newMemLog(t, testOrigin, 0x42)
		f := newFaultyWitness(t, "ok", l.verifier)
		vkey := testVKey("faulty.test", seededKey(0x55).Public().(ed25519.PublicKey))
		p := mustPolicy(t, fmt.Sprintf("witness faulty %s %s\nquorum 1\n", vkey, f.srv.URL))
		w := startWitnesser(t, l, p, nil)
		w.submit(t, l.append(t, 5))
		wd := w.wait(t, 5)
		if _, err := VerifyQuorum(wd.Note, l.verifier, p); err != nil {
			t.Error(err)
		}
		w.submit(t, l.append(t, 5))
		w.wait(t, 10)
	})
}

func TestSubmit(t *testing.T) {
	l := newMemLog(t, testOrigin, 0x42)
	other := newMemLog(t, testOrigin, 0x43) // same origin, another key
	w, err := New(Config{Policy: mustPolicy(t, fmt.Sprintf("witness a %s http://127.0.0.1:1\nquorum 1\n",
		testVKey("a.test", seededKey(1).Public().(ed25519.PublicKey)))), Log: l.verifier, Proof: l.proof})
	if err != nil {
		t.Fatal(err)
	}
	n5 := l.append(t, 5)
	n8 := l.append(t, 3)
	fork := other.append(t, 8)
	tampered := bytes.Replace(n8, []byte("\n8\n"), []byte("\n9\n"), 1)

	steps := []struct {
		name   string
		note   []byte
		want   error
		latest uint64
	}{
		{"first", n5, nil, 5},
		{"newer", n8, nil, 8},
		{"older is ignored", n5, nil, 8},
		{"repeat is ignored", n8, nil, 8},
		{"another key", fork, ledger.ErrUnknownKey, 8},
		{"altered", tampered, ledger.ErrInvalidSignature, 8},
		{"garbage", []byte("hello"), ledger.ErrMalformed, 8},
	}
	for _, s := range steps {
		err := w.Submit(s.note)
		if !errors.Is(err, s.want) || (s.want == nil) != (err == nil) {
			t.Errorf("%s: Submit = %v, want %v", s.name, err, s.want)
		}
		if got := w.latest.size; got != s.latest {
			t.Errorf("%s: latest size = %d, want %d", s.name, got, s.latest)
		}
	}

	// The same size with another root, signed by the log's own key: a fork.
	sameSize := l.append(t, 0)
	if err := w.Submit(sameSize); err != nil {
		t.Fatalf("re-signed same checkpoint: %v", err)
	}
	forked, err := ledger.SignCheckpoint(l.signer, 8, [32]byte(bytesOf(7, 32)))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Submit(forked.Note); !errors.Is(err, ErrFork) {
		t.Errorf("Submit(another root at size 8) = %v, want ErrFork", err)
	}
}
