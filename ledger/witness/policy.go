package witness

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
)

// ErrPolicy is wrapped by every PolicyError.
var ErrPolicy = errors.New("bad witness policy")

// PolicyError is one mistake in a policy file: where, what, and what to do.
type PolicyError struct {
	File string
	Line int // 1-based; 0 when the mistake is about the whole file
	Msg  string
}

func (e *PolicyError) Error() string {
	if e.Line == 0 {
		return fmt.Sprintf("%s: %s", e.File, e.Msg)
	}
	return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
}

func (e *PolicyError) Unwrap() error { return ErrPolicy }

// Witness is one witness of a policy.
type Witness struct {
	Name        string // the policy's name for it (metrics and log lines)
	VerifierKey string // its cosignature/v1 signed-note verifier key
	URL         string // the base URL; requests go to URL + "/add-checkpoint"
	Line        int    // where the policy file names it

	verifier note.Verifier
}

// Verifier returns the note.Verifier of the witness's cosignatures.
func (w *Witness) Verifier() note.Verifier { return w.verifier }

// Policy is a parsed witness policy: the witnesses and how many of them must
// cosign a checkpoint. A Policy is immutable and safe for concurrent use.
type Policy struct {
	Witnesses []*Witness
	Quorum    int
}

// LoadPolicy reads and parses the policy file at path.
func LoadPolicy(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading witness policy: %w", err)
	}
	return ParsePolicy(path, data)
}

// ParsePolicy parses a policy file; file names it in errors. The format
// (docs/witnessing.md): blank lines and text from '#' on are ignored; each
// other line is
//
//	witness NAME VKEY URL
//	quorum N
//
// with exactly one quorum line, 1 <= N <= the number of witnesses. Every
// mistake is reported as a *PolicyError ("FILE:LINE: what, what to do");
// when there are several, they are joined with errors.Join in line order.
func ParsePolicy(file string, data []byte) (*Policy, error) {
	var (
		p          Policy
		errs       []error
		quorumLine int
		names      = map[string]int{}
		keys       = map[string]int{}
	)
	fail := func(line int, format string, args ...any) {
		errs = append(errs, &PolicyError{File: file, Line: line, Msg: fmt.Sprintf(format, args...)})
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	ln := 0
	for sc.Scan() {
		ln++
		text, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(text)
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "witness":
			if len(f) != 4 {
				fail(ln, "a witness line has %d field(s) after \"witness\", want 3: witness NAME VKEY URL", len(f)-1)
				continue
			}
			w := &Witness{Name: f[1], VerifierKey: f[2], URL: strings.TrimRight(f[3], "/"), Line: ln}
			ok := true
			if prev, dup := names[w.Name]; dup {
				fail(ln, "witness name %q is already used on line %d; give each witness its own name", w.Name, prev)
				ok = false
			}
			v, err := newCosignatureVerifier(w.VerifierKey)
			if err != nil {
				fail(ln, "witness %q: %v; copy the witness's verifier key exactly as its operator publishes it", w.Name, err)
				ok = false
			} else if prev, dup := keys[w.VerifierKey]; dup {
				fail(ln, "witness %q has the same key as the witness on line %d; one witness counts once toward the quorum, so remove one of the lines", w.Name, prev)
				ok = false
			}
			if msg := checkURL(f[3]); msg != "" {
				fail(ln, "witness %q: %s", w.Name, msg)
				ok = false
			}
			if !ok {
				continue
			}
			w.verifier = v
			names[w.Name] = ln
			keys[w.VerifierKey] = ln
			p.Witnesses = append(p.Witnesses, w)
		case "quorum":
			if quorumLine != 0 {
				fail(ln, "a second quorum line (the first is line %d); keep one", quorumLine)
				continue
			}
			quorumLine = ln
			if len(f) != 2 {
				fail(ln, "a quorum line has %d field(s) after \"quorum\", want 1: quorum N", len(f)-1)
				continue
			}
			n, err := strconv.Atoi(f[1])
			if err != nil || n < 1 {
				fail(ln, "quorum %q is not a whole number of at least 1; write how many witnesses must cosign, e.g. quorum 1", f[1])
				continue
			}
			p.Quorum = n
		default:
			fail(ln, "unknown keyword %q; a line is \"witness NAME VKEY URL\", \"quorum N\" or a # comment", f[0])
		}
	}
	if err := sc.Err(); err != nil {
		fail(ln+1, "reading the file: %v (is a line longer than 64 KiB?)", err)
	}
	if len(errs) == 0 {
		switch {
		case len(p.Witnesses) == 0:
			fail(0, "no witness lines; add at least one \"witness NAME VKEY URL\"")
		case quorumLine == 0:
			fail(0, "no quorum line; add \"quorum N\" saying how many of the %d witness(es) must cosign", len(p.Witnesses))
		case p.Quorum > len(p.Witnesses):
			fail(quorumLine, "quorum %d is more than the %d witness(es) named; lower it or add witnesses", p.Quorum, len(p.Witnesses))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &p, nil
}

// checkURL returns what is wrong with a witness base URL, or "".
func checkURL(s string) string {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return fmt.Sprintf("URL %q does not parse (%v); write the witness's base URL, e.g. https://witness.example.com", s, err)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Sprintf("URL %q is not http:// or https://; write the witness's base URL, e.g. https://witness.example.com", s)
	case u.Host == "":
		return fmt.Sprintf("URL %q has no host; write the witness's base URL, e.g. https://witness.example.com", s)
	case u.RawQuery != "" || u.Fragment != "" || u.User != nil:
		return fmt.Sprintf("URL %q has a query, fragment or user; write only the base to which /add-checkpoint is appended", s)
	case strings.HasSuffix(strings.TrimRight(u.Path, "/"), "/add-checkpoint"):
		return fmt.Sprintf("URL %q already ends in /add-checkpoint; write only the base URL, /add-checkpoint is appended", s)
	}
	return ""
}
