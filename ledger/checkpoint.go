package ledger

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	flog "github.com/transparency-dev/formats/log"
	"golang.org/x/mod/sumdb/note"
)

// Errors returned by OpenCheckpoint, checked with errors.Is. Each is wrapped
// with a message saying where and what.
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

// MaxCheckpointSize bounds the checkpoint notes OpenCheckpoint accepts.
const MaxCheckpointSize = 64 << 10

// Checkpoint is a signed checkpoint of the log: the C2SP tlog-checkpoint
// (https://c2sp.org/tlog-checkpoint) text as a signed note, and the values it
// commits to. It is the one checkpoint type of Grantline: the log publishes
// it, the services serve it, evidence packages embed it and verifiers open it.
type Checkpoint struct {
	Origin string   // the log's name: the first line, and the signer's key name
	Size   uint64   // the tree size
	Root   [32]byte // the RFC 6962 root hash of the tree of Size leaves
	Note   []byte   // the signed note, verbatim
}

// CheckpointBody returns the unsigned checkpoint text: the origin, the
// decimal size and the base64 root hash, each on its own line.
func CheckpointBody(origin string, size uint64, root [32]byte) []byte {
	return flog.Checkpoint{Origin: origin, Size: size, Hash: root[:]}.Marshal()
}

// SignCheckpoint signs the checkpoint of a tree of the given size and root
// with s. The origin is the signer's key name.
func SignCheckpoint(s note.Signer, size uint64, root [32]byte) (Checkpoint, error) {
	msg, err := note.Sign(&note.Note{Text: string(CheckpointBody(s.Name(), size, root))}, s)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("signing checkpoint %d: %w", size, err)
	}
	return Checkpoint{Origin: s.Name(), Size: size, Root: root, Note: msg}, nil
}

// OpenCheckpoint parses a signed checkpoint note and verifies its signature by v. The
// origin line must equal v's key name. Signatures by other keys (witness
// cosignatures) are ignored; extension lines after the root are allowed and
// ignored. Errors wrap ErrMalformed (naming the line), ErrMissingSignature,
// ErrUnknownKey, ErrInvalidSignature or ErrOriginMismatch.
func OpenCheckpoint(noteText []byte, v note.Verifier) (Checkpoint, error) {
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
	c.Note = noteText
	return c, nil
}

// checkNoteShape reproduces note.Open's well-formedness checks so that a
// malformed note gets a message naming its line.
func checkNoteShape(msg []byte) error {
	if len(msg) > MaxCheckpointSize {
		return fmt.Errorf("%w: note is %d bytes, more than the %d allowed", ErrMalformed, len(msg), MaxCheckpointSize)
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
		if err := CheckOrigin(name); err != nil || strings.Contains(b64, " ") {
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
	if len(root) != 32 {
		return Checkpoint{}, fmt.Errorf("%w: line 3: root hash is %d bytes, want %d", ErrMalformed, len(root), 32)
	}
	var fc flog.Checkpoint
	if _, err := fc.Unmarshal(text); err != nil {
		return Checkpoint{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	c := Checkpoint{Origin: fc.Origin, Size: fc.Size}
	copy(c.Root[:], fc.Hash)
	return c, nil
}

// CheckOrigin applies the signed-note key name rules to a log origin (which
// is also its key name): non-empty UTF-8 with no spaces and no "+".
func CheckOrigin(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty origin: give the log a name such as example.com/grantline")
	case !utf8.ValidString(name):
		return fmt.Errorf("origin %q is not valid UTF-8", name)
	case strings.IndexFunc(name, unicode.IsSpace) >= 0:
		return fmt.Errorf("origin %q contains white space, which a signed-note key name may not", name)
	case strings.Contains(name, "+"):
		return fmt.Errorf("origin %q contains '+', which a signed-note key name may not", name)
	}
	return nil
}
