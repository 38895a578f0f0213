package witness

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/grantline/grantline/internal/witnesstest"
	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/checkpoint"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// memLog is an in-memory transparency log for the tests: x/mod's tlog for
// the tree and proofs, ledger/checkpoint for the signed notes (Ed25519, as
// stock witnesses require). It stands in for the ledger behind the
// Witnesser's two seams: checkpoints handed to Submit and ProofFunc.
type memLog struct {
	origin   string
	signer   note.Signer
	verifier note.Verifier
	vkey     string

	mu     sync.Mutex
	hashes []tlog.Hash
	n      int64
	proofs atomic.Int64 // ProofFunc calls
}

func newMemLog(t testing.TB, origin string, seed byte) *memLog {
	t.Helper()
	key := seededKey(seed)
	s, err := checkpoint.NewNoteSigner(origin, key)
	if err != nil {
		t.Fatal(err)
	}
	vkey, err := checkpoint.VerifierKey(origin, key.Public())
	if err != nil {
		t.Fatal(err)
	}
	v, err := checkpoint.NewNoteVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	return &memLog{origin: origin, signer: s, verifier: v, vkey: vkey}
}

// log is the memLog as a witness registers it.
func (l *memLog) log() witnesstest.Log { return witnesstest.Log{Origin: l.origin, VKey: l.vkey} }

func (l *memLog) reader() tlog.HashReader {
	return tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for i, x := range idx {
			if x >= int64(len(l.hashes)) {
				return nil, fmt.Errorf("memlog: hash %d not stored", x)
			}
			out[i] = l.hashes[x]
		}
		return out, nil
	})
}

// append adds k entries and returns the newly signed checkpoint note.
func (l *memLog) append(t testing.TB, k int) []byte {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for range k {
		hs, err := tlog.StoredHashes(l.n, fmt.Appendf(nil, "entry %d", l.n), l.reader())
		if err != nil {
			t.Fatal(err)
		}
		l.hashes = append(l.hashes, hs...)
		l.n++
	}
	root, err := tlog.TreeHash(l.n, l.reader())
	if err != nil {
		t.Fatal(err)
	}
	c, err := ledger.SignCheckpoint(l.signer, uint64(l.n), root)
	if err != nil {
		t.Fatal(err)
	}
	return c.Note
}

func (l *memLog) proof(ctx context.Context, old, new uint64) ([][]byte, error) {
	l.proofs.Add(1)
	l.mu.Lock()
	defer l.mu.Unlock()
	if int64(new) > l.n {
		return nil, fmt.Errorf("memlog: proof to %d beyond size %d", new, l.n)
	}
	p, err := tlog.ProveTree(int64(new), int64(old), l.reader())
	if err != nil {
		return nil, err
	}
	out := make([][]byte, len(p))
	for i, h := range p {
		out[i] = bytes.Clone(h[:])
	}
	return out, nil
}

// noteLines splits a signed note into its text and its signature lines.
func noteLines(t *testing.T, n []byte) (string, []string) {
	t.Helper()
	text, sigs, ok := strings.Cut(string(n), "\n\n")
	if !ok {
		t.Fatalf("note %q has no blank line", n)
	}
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(sigs))
	for sc.Scan() {
		lines = append(lines, sc.Text()+"\n")
	}
	return text + "\n", lines
}
