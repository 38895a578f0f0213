package witness

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/grantline/grantline/ledger"
	"golang.org/x/mod/sumdb/note"
)

// Errors of VerifyQuorum, checked with errors.Is.
var (
	// ErrNoQuorum: fewer of the policy's witnesses cosigned than its quorum.
	ErrNoQuorum = errors.New("checkpoint is not cosigned by a quorum of the witness policy")
	// ErrInvalidCosignature: a signature line claims a policy witness's key
	// but does not verify: the checkpoint or the cosignature was altered.
	ErrInvalidCosignature = errors.New("invalid witness cosignature")
)

// Cosignature is a valid cosignature by a policy witness.
type Cosignature struct {
	Witness string    // the policy's name for the witness
	Time    time.Time // when the witness says it cosigned
}

// Verified is a checkpoint whose log signature and quorum VerifyQuorum checked.
type Verified struct {
	Checkpoint   ledger.Checkpoint
	Cosignatures []Cosignature // in policy order
}

// VerifyQuorum checks that signedNote is a checkpoint signed by the log
// (logVerifier) and cosigned, with valid cosignature/v1 signatures, by at
// least policy.Quorum of the policy's witnesses. It needs no network: this
// is what an auditor runs offline. Signatures by keys that are neither the
// log's nor a policy witness's are ignored. Errors wrap the errors of
// ledger.OpenCheckpoint for the log signature, ErrInvalidCosignature, or ErrNoQuorum
// (naming the witnesses that did not cosign).
func VerifyQuorum(signedNote []byte, logVerifier note.Verifier, policy *Policy) (*Verified, error) {
	if policy == nil || len(policy.Witnesses) == 0 {
		return nil, errors.New("verifying witness quorum: no witness policy")
	}
	cp, err := ledger.OpenCheckpoint(signedNote, logVerifier)
	if err != nil {
		return nil, fmt.Errorf("verifying witness quorum: the log's signature: %w", err)
	}
	type keyID struct {
		name string
		hash uint32
	}
	byKey := map[keyID]*Witness{}
	vs := []note.Verifier{logVerifier}
	for _, w := range policy.Witnesses {
		k := keyID{w.verifier.Name(), w.verifier.KeyHash()}
		if k == (keyID{logVerifier.Name(), logVerifier.KeyHash()}) {
			return nil, fmt.Errorf("verifying witness quorum: witness %q (policy line %d) has the log's own key id", w.Name, w.Line)
		}
		byKey[k] = w
		vs = append(vs, w.verifier)
	}
	n, err := note.Open(signedNote, note.VerifierList(vs...))
	if err != nil {
		var invalid *note.InvalidSignatureError
		if errors.As(err, &invalid) {
			if w := byKey[keyID{invalid.Name, invalid.Hash}]; w != nil {
				return nil, fmt.Errorf("%w: the cosignature by witness %q (%s+%08x) does not verify over checkpoint %d: the checkpoint text or its cosignature was altered",
					ErrInvalidCosignature, w.Name, invalid.Name, invalid.Hash, cp.Size)
			}
		}
		return nil, fmt.Errorf("verifying witness quorum: %w", err)
	}
	got := map[string]time.Time{}
	for _, s := range n.Sigs {
		w := byKey[keyID{s.Name, s.Hash}]
		if w == nil {
			continue // the log's own signature
		}
		t, err := cosignatureTime(s)
		if err != nil {
			return nil, fmt.Errorf("%w: witness %q: %w", ErrInvalidCosignature, w.Name, err)
		}
		got[w.Name] = t
	}
	v := &Verified{Checkpoint: cp}
	var missing []string
	for _, w := range policy.Witnesses {
		if t, ok := got[w.Name]; ok {
			v.Cosignatures = append(v.Cosignatures, Cosignature{Witness: w.Name, Time: t})
		} else {
			missing = append(missing, w.Name)
		}
	}
	if len(v.Cosignatures) < policy.Quorum {
		var others []string
		for _, s := range n.UnverifiedSigs {
			others = append(others, fmt.Sprintf("%s+%08x", s.Name, s.Hash))
		}
		msg := fmt.Sprintf("%v: checkpoint %d has valid cosignatures by %d of the policy's witnesses, the quorum is %d; not cosigned by: %s",
			ErrNoQuorum, cp.Size, len(v.Cosignatures), policy.Quorum, strings.Join(missing, ", "))
		if len(others) > 0 {
			msg += "; signed also by keys the policy does not name: " + strings.Join(others, ", ") + " (is the policy the one the log was witnessed under?)"
		}
		return nil, &quorumError{msg: msg}
	}
	return v, nil
}

type quorumError struct{ msg string }

func (e *quorumError) Error() string { return e.msg }
func (e *quorumError) Unwrap() error { return ErrNoQuorum }
