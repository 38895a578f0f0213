package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// MaxLineBytes is the longest JSON line ReadEvents accepts; an event is at
// most event.MaxEventBytes once encoded.
const MaxLineBytes = 1 << 20

// ReadEvents reads JSON lines from r, one event per non-blank line, and calls
// fn for each with its 1-based line number and the decoded, validated event,
// or with lerr, a problem of that line reading "NAME:LINE: field x.y:
// problem" (fn decides whether to go on). name names r in messages. An error
// fn returns ends the reading and is returned; so is a read error or a line
// over MaxLineBytes.
func ReadEvents(name string, r io.Reader, fn func(line int, ev *pb.Event, lerr error) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), MaxLineBytes)
	line := 0
	for sc.Scan() {
		line++
		text := bytes.TrimSpace(sc.Bytes())
		if len(text) == 0 {
			continue
		}
		ev, lerr := DecodeEventLine(text)
		if lerr != nil {
			lerr = fmt.Errorf("%s:%d: %w", name, line, lerr)
		}
		if err := fn(line, ev, lerr); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("%s:%d: line longer than %d bytes: one event per line, each at most 32 KiB encoded", name, line+1, MaxLineBytes)
		}
		return fmt.Errorf("reading %s: %w", name, err)
	}
	return nil
}

// validateEvent is event.Validate, its error reported as "field x.y: problem".
func validateEvent(ev *pb.Event) error {
	err := event.Validate(ev, time.Now())
	var fe *event.FieldError
	if errors.As(err, &fe) {
		return fmt.Errorf("field %s: %s", fe.Path, fe.Msg)
	}
	return err
}

// MaxBatchBytes keeps a stream message well inside the server's limit
// (event.MaxMessageBytes) whatever the events' sizes.
const MaxBatchBytes = 4 << 20

// Packer groups events into Batches of at most n events and about
// MaxBatchBytes, numbered from 0, and sends them to out. Not safe for
// concurrent use.
type Packer struct {
	n     int
	out   chan<- *Batch
	cur   *Batch
	bytes int
}

// NewPacker returns a Packer of batches of at most n events.
func NewPacker(n int, out chan<- *Batch) *Packer {
	return &Packer{n: n, out: out, cur: &Batch{}}
}

// Add adds ev, which came from where (e.g. "FILE:LINE"), sending the batch
// when it is full. It returns ctx.Err() when cancelled while sending.
func (p *Packer) Add(ctx context.Context, where string, ev *pb.Event) error {
	if len(p.cur.Events) == 0 {
		p.cur.Where = where
	}
	p.cur.Events = append(p.cur.Events, ev)
	p.cur.Origins = append(p.cur.Origins, where)
	p.bytes += proto.Size(ev)
	if len(p.cur.Events) >= p.n || p.bytes >= MaxBatchBytes {
		p.bytes = 0
		return p.Flush(ctx)
	}
	return nil
}

// Flush sends the batch being filled, if it holds any event.
func (p *Packer) Flush(ctx context.Context) error {
	if len(p.cur.Events) == 0 {
		return nil
	}
	select {
	case p.out <- p.cur:
	case <-ctx.Done():
		return ctx.Err()
	}
	p.cur = &Batch{Seq: p.cur.Seq + 1, Events: make([]*pb.Event, 0, p.n), Origins: make([]string, 0, p.n)}
	return nil
}

var protojsonPos = regexp.MustCompile(`^proto:[\s\x{00a0}]*(?:syntax error[\s\x{00a0}]*)?\(line (\d+):(\d+)\):[\s\x{00a0}]*`)

// DecodeEventLine decodes one protojson event and validates it as the
// server will (event.Validate). Its errors read "field x.y: problem (byte N)"
// or "byte N: problem".
func DecodeEventLine(text []byte) (*pb.Event, error) {
	ev := &pb.Event{}
	if err := (protojson.UnmarshalOptions{}).Unmarshal(text, ev); err != nil {
		msg := err.Error()
		// protojson's messages carry "(line 1:COL)"; turn the column into a
		// byte offset and a field path the user can find.
		m := protojsonPos.FindStringSubmatch(msg)
		if m == nil {
			msg = strings.TrimLeft(strings.TrimPrefix(msg, "proto:"), " \u00a0")
			return nil, fmt.Errorf("byte %d: %s: is the JSON object complete and on one line?", len(text), msg)
		}
		problem := msg[len(m[0]):]
		col, _ := strconv.Atoi(m[2])
		off := runeColumnToByte(text, col)
		if path := jsonPathAt(text, off); path != "" {
			return nil, fmt.Errorf("field %s: %s (byte %d)", path, problem, off+1)
		}
		return nil, fmt.Errorf("byte %d: %s", off+1, problem)
	}
	if err := validateEvent(ev); err != nil {
		return nil, err
	}
	return ev, nil
}

// runeColumnToByte converts a 1-based rune column into a 0-based byte offset.
func runeColumnToByte(b []byte, col int) int {
	off := 0
	for i := 1; i < col && off < len(b); i++ {
		_, n := utf8.DecodeRune(b[off:])
		off += n
	}
	return off
}

// jsonPathAt returns the dotted field path (with [i] for array elements) of
// the JSON token at byte offset off, or "" at the top level or when the
// line does not tokenise that far.
func jsonPathAt(b []byte, off int) string {
	type frame struct {
		obj       bool
		key       string
		expectKey bool
		idx       int
	}
	var stack []*frame
	path := func() string {
		var sb strings.Builder
		for _, f := range stack {
			if f.obj {
				if f.key == "" {
					continue
				}
				if sb.Len() > 0 {
					sb.WriteByte('.')
				}
				sb.WriteString(f.key)
			} else {
				fmt.Fprintf(&sb, "[%d]", f.idx)
			}
		}
		return sb.String()
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	for {
		tok, err := dec.Token()
		if err != nil {
			return path()
		}
		end := int(dec.InputOffset())
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.obj && top.expectKey {
			if d, ok := tok.(json.Delim); ok && d == '}' {
				stack = stack[:len(stack)-1]
				if len(stack) > 0 && stack[len(stack)-1].obj {
					stack[len(stack)-1].expectKey = true
				}
				continue
			}
			top.key, _ = tok.(string)
			top.expectKey = false
			if off < end {
				return path()
			}
			continue
		}
		if top != nil && !top.obj {
			if d, ok := tok.(json.Delim); !ok || d != ']' {
				top.idx++
			}
		}
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{':
				if off < end {
					return path()
				}
				stack = append(stack, &frame{obj: true, expectKey: true})
			case '[':
				if off < end {
					return path()
				}
				stack = append(stack, &frame{idx: -1})
			case ']', '}':
				stack = stack[:len(stack)-1]
				if len(stack) > 0 && stack[len(stack)-1].obj {
					stack[len(stack)-1].expectKey = true
				}
			}
			continue
		}
		if off < end {
			return path()
		}
		if top != nil && top.obj {
			top.expectKey = true
		}
	}
}
