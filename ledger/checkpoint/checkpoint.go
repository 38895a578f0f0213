// Package checkpoint reads, writes, signs and verifies Grantline's log
// checkpoints: C2SP tlog-checkpoints (https://c2sp.org/tlog-checkpoint) as
// signed notes (https://c2sp.org/signed-note). Signing goes through sigstore
// signers (github.com/sigstore/sigstore/pkg/signature) with Ed25519 (the
// default, verifiable by golang.org/x/mod/sumdb/note) or ECDSA P-256 (the
// signed-note ECDSA algorithm of github.com/transparency-dev/formats/note).
// The package also owns the key files of a data directory (keys/log.key,
// keys/log.vkey, keys/evidence.key, keys/evidence.pub); see LoadOrCreateKeys.
// Sigstore signing is confined to this package; everything here is pure
// format and file code, safe to use from offline verifiers.
package checkpoint

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	flog "github.com/transparency-dev/formats/log"
	"golang.org/x/mod/sumdb/note"
)

// Errors returned by Open, checked with errors.Is. Each is wrapped with a
// message saying where and what.
var (
	// ErrMalformed: the text is not a well-formed signed checkpoint.
	ErrMalformed = errors.New("malformed checkpoint")
	// ErrMissingSignature: the note carries no signature at all.
	ErrMissingSignature = errors.New("checkpoint is not signed")
	// ErrUnknownKey: every signature is by a key other than the verifier's.
	ErrUnknownKey = errors.New("checkpoint signed by an unknown key")
	// ErrInvalidSignature: the verifier's key signed, but the signature does
	// not verify over the text (the text or the signature was altered).
	ErrInvalidSignature = errors.New("invalid checkpoint signature")
	// ErrOriginMismatch: the origin line is not the verifier key's name.
	ErrOriginMismatch = errors.New("checkpoint origin does not match the key")
)

// MaxNoteSize bounds the checkpoint notes Open accepts.
const MaxNoteSize = 64 << 10

// HashSize is the size of a root hash (SHA-256).
const HashSize = 32

// Checkpoint is a verified checkpoint.
type Checkpoint struct {
	Origin string
	Size   uint64
	Root   [HashSize]byte
}

// Body returns the unsigned checkpoint text: the origin, the decimal size and
// the base64 root hash, each on its own line. root should be 32 bytes.
func Body(origin string, size uint64, root []byte) []byte {
	return flog.Checkpoint{Origin: origin, Size: size, Hash: root}.Marshal()
}

// Sign returns the signed note for a checkpoint of the given size and root,
// signed by s. The origin is the signer's name.
func Sign(s note.Signer, size uint64, root []byte) ([]byte, error) {
	if len(root) != HashSize {
		return nil, fmt.Errorf("signing checkpoint: root hash is %d bytes, want %d", len(root), HashSize)
	}
	msg, err := note.Sign(&note.Note{Text: string(Body(s.Name(), size, root))}, s)
	if err != nil {
		return nil, fmt.Errorf("signing checkpoint: %w", err)
	}
	return msg, nil
}

// Open parses a signed checkpoint note and verifies its signature by v. The
// origin line must equal v's key name. Signatures by other keys (witness
// cosignatures) are ignored; extension lines after the root are allowed and
// ignored. Errors wrap ErrMalformed (naming the line), ErrMissingSignature,
// ErrUnknownKey, ErrInvalidSignature or ErrOriginMismatch.
func Open(noteText []byte, v note.Verifier) (Checkpoint, error) {
	if v == nil {
		return Checkpoint{}, errors.New("opening checkpoint: no verifier given")
	}
	if err := checkNoteShape(noteText); err != nil {
		return Checkpoint{}, err
	}
	n, err := note.Open(noteText, note.VerifierList(v))
	if err != nil {
		var unverified *note.UnverifiedNoteError
		var invalid *note.InvalidSignatureError
		switch {
		case errors.As(err, &unverified):
			var keys []string
			for _, s := range unverified.Note.UnverifiedSigs {
				keys = append(keys, fmt.Sprintf("%s+%08x", s.Name, s.Hash))
			}
			return Checkpoint{}, fmt.Errorf("%w: signed by %s, want %s+%08x (check that the verifier key belongs to this log)",
				ErrUnknownKey, strings.Join(keys, ", "), v.Name(), v.KeyHash())
		case errors.As(err, &invalid):
			return Checkpoint{}, fmt.Errorf("%w: the signature by %s+%08x does not verify: the checkpoint text or its signature was altered",
				ErrInvalidSignature, invalid.Name, invalid.Hash)
		}
		return Checkpoint{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	c, err := parseBody([]byte(n.Text))
	if err != nil {
		return Checkpoint{}, err
	}
	if c.Origin != v.Name() {
		return Checkpoint{}, fmt.Errorf("%w: line 1: origin is %q, the key is for %q", ErrOriginMismatch, c.Origin, v.Name())
	}
	return c, nil
}

// checkNoteShape reproduces note.Open's well-formedness checks so that a
// malformed note gets a message naming its line.
func checkNoteShape(msg []byte) error {
	if len(msg) > MaxNoteSize {
		return fmt.Errorf("%w: note is %d bytes, more than the %d allowed", ErrMalformed, len(msg), MaxNoteSize)
	}
	if len(msg) == 0 {
		return fmt.Errorf("%w: empty input", ErrMalformed)
	}
	line := 1
	for i := 0; i < len(msg); {
		r, size := utf8.DecodeRune(msg[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			return fmt.Errorf("%w: line %d: invalid UTF-8 at byte offset %d", ErrMalformed, line, i)
		case r == '\n':
			line++
		case r < 0x20:
			return fmt.Errorf("%w: line %d: control character 0x%02x at byte offset %d", ErrMalformed, line, r, i)
		}
		i += size
	}
	if msg[len(msg)-1] != '\n' {
		return fmt.Errorf("%w: line %d: the note does not end with a newline (truncated?)", ErrMalformed, line)
	}
	split := bytes.LastIndex(msg, []byte("\n\n"))
	if split < 0 {
		return fmt.Errorf("%w: no blank line followed by signature lines after the checkpoint text", ErrMissingSignature)
	}
	sigs := msg[split+2:]
	if len(sigs) == 0 {
		return fmt.Errorf("%w: nothing follows the blank line that should precede the signature lines", ErrMissingSignature)
	}
	first := bytes.Count(msg[:split+2], []byte("\n")) + 1
	for i, l := range bytes.Split(sigs[:len(sigs)-1], []byte("\n")) {
		ln := first + i
		rest, ok := bytes.CutPrefix(l, []byte("— "))
		if !ok {
			return fmt.Errorf("%w: line %d: a signature line must start with an em dash and a space (\"— \")", ErrMalformed, ln)
		}
		name, b64, _ := strings.Cut(string(rest), " ")
		if err := checkName(name); err != nil || strings.Contains(b64, " ") {
			return fmt.Errorf("%w: line %d: want \"— <key name> <base64 signature>\"", ErrMalformed, ln)
		}
		sig, err := base64.StdEncoding.DecodeString(b64)
		if err != nil || len(sig) < 5 {
			return fmt.Errorf("%w: line %d: the signature by %q is not valid base64 of a key id and signature (truncated?)", ErrMalformed, ln, name)
		}
	}
	return nil
}

// parseBody parses checkpoint text with transparency-dev/formats/log after
// checking each line, so errors can name the line.
func parseBody(text []byte) (Checkpoint, error) {
	lines := strings.SplitN(string(text), "\n", 4)
	if len(lines) < 4 {
		return Checkpoint{}, fmt.Errorf("%w: the text has %d line(s), want at least 3 (origin, size, root hash)", ErrMalformed, len(lines)-1)
	}
	if lines[0] == "" {
		return Checkpoint{}, fmt.Errorf("%w: line 1: empty origin", ErrMalformed)
	}
	s := lines[1]
	if s == "" || strings.TrimLeft(s, "0123456789") != "" || (len(s) > 1 && s[0] == '0') {
		return Checkpoint{}, fmt.Errorf("%w: line 2: tree size %q is not a decimal number without leading zeros", ErrMalformed, s)
	}
	if _, err := strconv.ParseUint(s, 10, 64); err != nil {
		return Checkpoint{}, fmt.Errorf("%w: line 2: tree size %q does not fit in 64 bits", ErrMalformed, s)
	}
	root, err := base64.StdEncoding.Strict().DecodeString(lines[2])
	if err != nil {
		return Checkpoint{}, fmt.Errorf("%w: line 3: root hash is not valid base64", ErrMalformed)
	}
	if len(root) != HashSize {
		return Checkpoint{}, fmt.Errorf("%w: line 3: root hash is %d bytes, want %d", ErrMalformed, len(root), HashSize)
	}
	var fc flog.Checkpoint
	if _, err := fc.Unmarshal(text); err != nil {
		return Checkpoint{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	c := Checkpoint{Origin: fc.Origin, Size: fc.Size}
	copy(c.Root[:], fc.Hash)
	return c, nil
}
