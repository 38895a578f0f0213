package main

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/grantline/grantline/ingest/source"
	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// sourceFormat checks append's --format and --source: both or neither.
func sourceFormat(name, system string) (*source.Format, error) {
	switch {
	case name == "" && system == "":
		return nil, nil
	case name == "":
		return nil, &exitError{code: 2, msg: "--source names the system of --format records; Grantline JSON lines carry their own source.system (add --format NAME, see grantline adapters)"}
	case system == "":
		return nil, &exitError{code: 2, msg: "--format needs --source SYSTEM: the source.system of the events it makes (the name your token may send)"}
	}
	f, err := source.Lookup(name)
	if err != nil {
		return nil, &exitError{code: 2, msg: err.Error()}
	}
	return &f, nil
}

// eachRecordEvent reads vendor records with the input's format and calls fn
// with each event made of them, at the line its record starts on. A record
// the adapter refuses, or an event the server would refuse, arrives as lerr
// (naming file, line, record and field) and reading goes on, so every bad
// record is reported; input that is not records at all stops the read.
func (in *inputFile) eachRecordEvent(r io.Reader, fn func(line int, ev *pb.Event, lerr error) error) error {
	in.records, in.unmapped = 0, 0
	return in.format.Records(in.name, r, func(rec source.Record) error {
		in.records++
		evs, err := in.format.Adapt(rec.Raw, in.system)
		if err != nil {
			return fn(rec.Line, nil, &source.RecordError{File: in.name, Line: rec.Line, Record: rec.N, Err: err})
		}
		if len(evs) == 0 {
			in.unmapped++
		}
		for _, ev := range evs {
			var lerr error
			if err := validateRecordEvent(ev); err != nil {
				lerr = fmt.Errorf("%s:%d: record %d: event %s: %w", in.name, rec.Line, rec.N, ev.GetId(), err)
			}
			if err := fn(rec.Line, ev, lerr); err != nil {
				return err
			}
		}
		return nil
	})
}

// reportRecords tells, for a --format input, how many records were read and
// how many of them map to no event (docs/sources.md says which and why).
func (in *inputFile) reportRecords(w io.Writer) {
	if in.format == nil {
		return
	}
	fmt.Fprintf(w, "%s: %d %s records, %d without an event (not about access, or failed operations: %s)\n",
		in.name, in.records, in.format.Name, in.unmapped, in.format.Doc)
}

// validateRecordEvent is the server's validation (event.Validate), its
// error reported as "field x.y: problem", as for JSON lines.
func validateRecordEvent(ev *pb.Event) error {
	err := event.Validate(ev, time.Now())
	var fe *event.FieldError
	if errors.As(err, &fe) {
		return fmt.Errorf("field %s: %s", fe.Path, fe.Msg)
	}
	return err
}
