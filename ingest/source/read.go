package source

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// Record is one raw record of an input and where it starts.
type Record struct {
	Line int    // 1-based line of the input (after gunzip) where the record starts
	N    int    // 1-based number of the record in the input
	Raw  []byte // the record: a JSON object, or a text line for Lines formats
}

// RecordError is an error about one record of a named input; it matches
// ErrRecord and unwraps to the adapter's *FieldError when there is one.
type RecordError struct {
	File   string
	Line   int
	Record int // 0 when the input is broken before any record is read
	Err    error
}

func (e *RecordError) Error() string {
	if e.Record == 0 {
		return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err)
	}
	return fmt.Sprintf("%s:%d: record %d: %v", e.File, e.Line, e.Record, e.Err)
}

func (e *RecordError) Unwrap() error { return e.Err }

// Is makes every RecordError match ErrRecord.
func (e *RecordError) Is(target error) bool { return target == ErrRecord }

// maxLine bounds one syslog line of a Lines format.
const maxLine = 1 << 20

// Read reads one input named name (for errors) and calls fn with each
// record and the events the adapter made of it (possibly none), in input
// order. A record the adapter refuses stops the read with a *RecordError
// naming the file, line, record number and field; an error from fn is
// returned as it is. See Records for the shapes accepted.
func (f Format) Read(name string, r io.Reader, system string, fn func(rec Record, evs []*pb.Event) error) error {
	return f.Records(name, r, func(rec Record) error {
		evs, err := f.Adapt(rec.Raw, system)
		if err != nil {
			return &RecordError{File: name, Line: rec.Line, Record: rec.N, Err: err}
		}
		return fn(rec, evs)
	})
}

// Records splits an input into raw records and calls fn with each. The
// input may be gzip-compressed (detected by its magic bytes) and is, after
// that, any sequence of: a JSON array of records, JSON records one after
// another (JSON lines, or pretty-printed), or the format's envelope object
// (Graph `{"value": [...]}`, Azure Monitor `{"records": [...]}`, CloudTrail
// `{"Records": [...]}`). For a Lines
// format an input that does not start with `[` is read as text lines, each
// non-blank line one record. Arrays and envelopes are held in memory while
// their records are read; JSON lines and text lines are streamed.
func (f Format) Records(name string, r io.Reader, fn func(Record) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return &RecordError{File: name, Line: 1, Err: fmt.Errorf("reading gzip header: %w", err)}
		}
		defer gz.Close()
		br = bufio.NewReaderSize(gz, 64<<10)
	}
	if f.Lines && firstByte(br) != '[' {
		return readLines(name, br, fn)
	}
	return readJSON(name, br, f.Envelopes, fn)
}

// firstByte returns the first byte that is not JSON whitespace, without
// consuming input; 0 at the end of the input or when it cannot tell.
func firstByte(br *bufio.Reader) byte {
	for n := 1; n <= br.Size(); n *= 2 {
		b, err := br.Peek(n)
		for _, c := range b {
			if c != ' ' && c != '\t' && c != '\r' && c != '\n' {
				return c
			}
		}
		if err != nil {
			return 0
		}
	}
	return 0
}

func readLines(name string, br *bufio.Reader, fn func(Record) error) error {
	sc := bufio.NewScanner(br)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	line, n := 0, 0
	for sc.Scan() {
		line++
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		n++
		if err := fn(Record{Line: line, N: n, Raw: b}); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			err = fmt.Errorf("a line is longer than %d bytes; is this a syslog file?", maxLine)
		}
		return &RecordError{File: name, Line: line + 1, Err: err}
	}
	return nil
}

func readJSON(name string, br *bufio.Reader, envelopes []string, fn func(Record) error) error {
	lt := &lineTracker{r: br}
	dec := json.NewDecoder(lt)
	n := 0
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			if err == io.EOF {
				return nil
			}
			off, skip := dec.InputOffset(), 0
			var se *json.SyntaxError
			if errors.As(err, &se) {
				off = se.Offset
			} else {
				// The broken value starts after the whitespace that follows
				// the last good one.
				rest, _ := io.ReadAll(dec.Buffered())
				ws := len(rest) - len(bytes.TrimLeft(rest, " \t\r\n"))
				skip = bytes.Count(rest[:ws], []byte("\n"))
			}
			return &RecordError{File: name, Line: lt.lineAt(off) + skip, Record: n + 1,
				Err: fmt.Errorf("not JSON (want a JSON array, JSON lines or the vendor's envelope): %w", err)}
		}
		start := dec.InputOffset() - int64(len(raw))
		line := lt.lineAt(start)
		switch raw[0] {
		case '[':
			if err := elements(name, raw, line, &n, fn); err != nil {
				return err
			}
		case '{':
			if arr, at, ok := envelopeArray(raw, envelopes); ok {
				if err := elements(name, arr, line+bytes.Count(raw[:at], []byte("\n")), &n, fn); err != nil {
					return err
				}
				continue
			}
			n++
			if err := fn(Record{Line: line, N: n, Raw: raw}); err != nil {
				return err
			}
		default:
			return &RecordError{File: name, Line: line, Record: n + 1, Err: errors.New("want a JSON object (one record), an array of records or the vendor's envelope")}
		}
	}
}

// envelopeArray returns the array under one of keys in obj and its offset
// in obj.
func envelopeArray(obj []byte, keys []string) ([]byte, int, bool) {
	var m map[string]json.RawMessage
	for _, key := range keys {
		if !bytes.Contains(obj, []byte(`"`+key+`"`)) {
			continue
		}
		if m == nil && json.Unmarshal(obj, &m) != nil {
			return nil, 0, false
		}
		arr, ok := m[key]
		if !ok || len(arr) == 0 || arr[0] != '[' {
			continue
		}
		at := bytes.Index(obj, arr)
		if at < 0 {
			at = 0
		}
		return arr, at, true
	}
	return nil, 0, false
}

// elements calls fn with each element of the JSON array arr, which starts
// on line base of the input.
func elements(name string, arr []byte, base int, n *int, fn func(Record) error) error {
	dec := json.NewDecoder(bytes.NewReader(arr))
	if _, err := dec.Token(); err != nil { // '['
		return &RecordError{File: name, Line: base, Record: *n + 1, Err: err}
	}
	line, pos := base, 0
	for dec.More() {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return &RecordError{File: name, Line: line, Record: *n + 1, Err: err}
		}
		start := int(dec.InputOffset()) - len(raw)
		line += bytes.Count(arr[pos:start], []byte("\n"))
		pos = start
		*n++
		if raw[0] != '{' {
			return &RecordError{File: name, Line: line, Record: *n, Err: fmt.Errorf("want a JSON object for each record, got %s", cut(string(raw), 32))}
		}
		if err := fn(Record{Line: line, N: *n, Raw: raw}); err != nil {
			return err
		}
	}
	return nil
}

// lineTracker remembers where the newlines are in what it has read, so a
// byte offset can be turned into a line number; offsets must be asked in
// increasing order, and the newlines before the last one asked are dropped.
type lineTracker struct {
	r    io.Reader
	off  int64   // bytes read so far
	nl   []int64 // offsets of newlines not yet counted
	head int
	line int // newlines before nl[head]
}

func (t *lineTracker) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	b := p[:n]
	for i := 0; ; {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			break
		}
		t.nl = append(t.nl, t.off+int64(i+j))
		i += j + 1
	}
	t.off += int64(n)
	return n, err
}

// lineAt returns the 1-based line of byte offset off.
func (t *lineTracker) lineAt(off int64) int {
	for t.head < len(t.nl) && t.nl[t.head] < off {
		t.head++
		t.line++
	}
	if t.head > 1024 && t.head*2 > len(t.nl) {
		t.nl = append(t.nl[:0], t.nl[t.head:]...)
		t.head = 0
	}
	return t.line + 1
}

// Unwrap removes the wrapper a vendor's push delivery puts around its
// records, so the result is something Read accepts: an Okta event hook's
// {"data": {"events": [...]}} becomes the events array, and an Amazon
// EventBridge event ({"detail-type": ..., "detail": {...}}, how CloudTrail
// records are pushed) becomes its detail. Any other body is returned as it is.
func Unwrap(format string, body []byte) []byte {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return body
	}
	switch format {
	case "okta":
		var hook struct {
			Data struct {
				Events json.RawMessage `json:"events"`
			} `json:"data"`
		}
		if bytes.Contains(trimmed, []byte(`"events"`)) && json.Unmarshal(trimmed, &hook) == nil &&
			len(hook.Data.Events) > 0 && hook.Data.Events[0] == '[' {
			return hook.Data.Events
		}
	case "cloudtrail":
		var eb struct {
			DetailType string          `json:"detail-type"`
			Detail     json.RawMessage `json:"detail"`
		}
		if bytes.Contains(trimmed, []byte(`"detail-type"`)) && json.Unmarshal(trimmed, &eb) == nil &&
			eb.DetailType != "" && len(eb.Detail) > 0 && eb.Detail[0] == '{' {
			return eb.Detail
		}
	}
	return body
}
