package witness

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
)

// Errors of one add-checkpoint request, checked with errors.Is. The
// Witnesser retries all of them with backoff except ErrConflict, which it
// answers at once with a proof from the witness's size.
var (
	// ErrConflict: 409, the witness's size is not the old size sent.
	ErrConflict = errors.New("witness has another size for this log")
	// ErrRejected: 403 or 404, the witness does not know the log or its key,
	// or refused the log's signature.
	ErrRejected = errors.New("witness rejected the checkpoint")
	// ErrBadProof: 422, the witness could not verify the consistency proof.
	ErrBadProof = errors.New("witness could not verify the consistency proof")
	// ErrWitnessAhead: the witness has a larger tree than the checkpoint.
	ErrWitnessAhead = errors.New("witness has a larger tree than the checkpoint")
	// ErrBadCosignature: the witness answered 200 without a valid
	// cosignature by the policy's key for it.
	ErrBadCosignature = errors.New("witness returned no valid cosignature")
	// ErrWitnessFailed: any other answer, or no answer.
	ErrWitnessFailed = errors.New("witness request failed")
)

// conflictError carries the size a witness reported with 409 Conflict.
type conflictError struct{ size uint64 }

func (e *conflictError) Error() string {
	return fmt.Sprintf("%v: it has size %d", ErrConflict, e.size)
}
func (e *conflictError) Unwrap() error { return ErrConflict }

// maxResponse bounds what is read of a witness's answer.
const maxResponse = 64 << 10

// addCheckpointBody formats a tlog-witness add-checkpoint request body: the
// old size, one base64 proof hash a line, a blank line, the signed note.
func addCheckpointBody(old uint64, proof [][]byte, signedNote []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "old %d\n", old)
	for _, h := range proof {
		b.WriteString(base64.StdEncoding.EncodeToString(h))
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	b.Write(signedNote)
	return b.Bytes()
}

// addCheckpoint sends one add-checkpoint request to w and returns the
// witness's verified cosignature of c.
func addCheckpoint(ctx context.Context, hc *http.Client, w *Witness, c *pending, old uint64, proof [][]byte) (note.Signature, error) {
	body := addCheckpointBody(old, proof, c.note)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL+"/add-checkpoint", bytes.NewReader(body))
	if err != nil {
		return note.Signature{}, fmt.Errorf("%w: building the request to %s: %w", ErrWitnessFailed, w.URL, err)
	}
	req.Header.Set("Content-Type", "text/plain; charset=utf-8")
	resp, err := hc.Do(req)
	if err != nil {
		return note.Signature{}, fmt.Errorf("%w: %w", ErrWitnessFailed, err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return note.Signature{}, fmt.Errorf("%w: reading the answer: %w", ErrWitnessFailed, err)
	}
	switch resp.StatusCode {
	case http.StatusOK:
		return checkCosignature(w, c, answer)
	case http.StatusConflict:
		s := strings.TrimSpace(string(answer))
		size, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return note.Signature{}, fmt.Errorf("%w: 409 Conflict whose body %q is not a tree size", ErrWitnessFailed, clip(answer))
		}
		return note.Signature{}, &conflictError{size: size}
	case http.StatusForbidden, http.StatusNotFound:
		return note.Signature{}, fmt.Errorf("%w: %s: %q (register the log's origin %q and its verifier key with the witness)", ErrRejected, resp.Status, clip(answer), c.origin)
	case http.StatusUnprocessableEntity:
		return note.Signature{}, fmt.Errorf("%w: %s: %q (old size %d, new size %d)", ErrBadProof, resp.Status, clip(answer), old, c.size)
	}
	return note.Signature{}, fmt.Errorf("%w: %s: %q", ErrWitnessFailed, resp.Status, clip(answer))
}

// checkCosignature finds, in a witness's 200 answer (signature lines), the
// cosignature by w's key and verifies it over c's checkpoint text.
func checkCosignature(w *Witness, c *pending, answer []byte) (note.Signature, error) {
	n, err := note.Open(append([]byte(c.text+"\n"), answer...), note.VerifierList(w.verifier))
	if err != nil {
		var unverified *note.UnverifiedNoteError
		if errors.As(err, &unverified) {
			return note.Signature{}, fmt.Errorf("%w: the answer has no signature by %s+%08x (does the policy have this witness's current key?)", ErrBadCosignature, w.verifier.Name(), w.verifier.KeyHash())
		}
		return note.Signature{}, fmt.Errorf("%w: %w: answer %q", ErrBadCosignature, err, clip(answer))
	}
	return n.Sigs[0], nil
}

// clip shortens a witness's answer for an error message.
func clip(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}
