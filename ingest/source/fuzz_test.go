package source_test

import (
	"bytes"
	"os"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/grantline/grantline/ingest/source"
)

// fuzzAdapter seeds a format's fuzz target with the records of its test
// data and checks, for any input: no panic; every event validates, has a
// distinct id and carries the system; the same input gives the same events.
func fuzzAdapter(f *testing.F, name string) {
	format, err := source.Lookup(name)
	if err != nil {
		f.Fatal(err)
	}
	ents, err := os.ReadDir(testdataDir + "/" + name)
	if err != nil {
		f.Fatal(err)
	}
	for _, e := range ents {
		fh, err := os.Open(testdataDir + "/" + name + "/" + e.Name())
		if err != nil {
			f.Fatal(err)
		}
		_ = format.Records(e.Name(), fh, func(r source.Record) error {
			f.Add(append([]byte(nil), r.Raw...))
			return nil
		})
		fh.Close()
	}
	f.Fuzz(func(t *testing.T, rec []byte) {
		evs, err := format.Adapt(rec, "fuzz")
		if err != nil {
			if len(evs) != 0 {
				t.Fatalf("error %v with %d events", err, len(evs))
			}
			return
		}
		if err := validate(evs); err != nil {
			t.Fatalf("event does not validate: %v\nrecord: %q", err, rec)
		}
		ids := map[string]bool{}
		for _, ev := range evs {
			if ids[ev.GetId()] {
				t.Fatalf("two events with id %q", ev.GetId())
			}
			ids[ev.GetId()] = true
			if ev.GetSource().GetSystem() != "fuzz" {
				t.Fatalf("source.system = %q, want fuzz", ev.GetSource().GetSystem())
			}
		}
		again, err := format.Adapt(rec, "fuzz")
		if err != nil || len(again) != len(evs) {
			t.Fatalf("second run: %d events, %v; first %d", len(again), err, len(evs))
		}
		for i := range evs {
			if !proto.Equal(evs[i], again[i]) {
				t.Fatalf("event %d differs between runs", i)
			}
		}
	})
}

func FuzzEntra(f *testing.F)      { fuzzAdapter(f, "entra") }
func FuzzCloudTrail(f *testing.F) { fuzzAdapter(f, "cloudtrail") }
func FuzzOkta(f *testing.F)       { fuzzAdapter(f, "okta") }
func FuzzCyberArk(f *testing.F)   { fuzzAdapter(f, "cyberark") }
func FuzzSailPoint(f *testing.F)  { fuzzAdapter(f, "sailpoint") }
func FuzzTeleport(f *testing.F)   { fuzzAdapter(f, "teleport") }
func FuzzOCSF(f *testing.F)       { fuzzAdapter(f, "ocsf") }

// FuzzRecords: the reader never panics, and every record it yields is a
// JSON object for a JSON format.
func FuzzRecords(f *testing.F) {
	f.Add([]byte(`{"Records": [{"eventID": "a"}]}`))
	f.Add([]byte("[{}]\n{}"))
	f.Add([]byte("\x1f\x8b\x08"))
	ct, _ := source.Lookup("cloudtrail")
	f.Fuzz(func(t *testing.T, in []byte) {
		_ = ct.Records("in", bytesReader(in), func(r source.Record) error {
			if len(r.Raw) == 0 || r.Raw[0] != '{' || r.N < 1 || r.Line < 1 {
				t.Fatalf("record %d line %d: %q", r.N, r.Line, r.Raw)
			}
			return nil
		})
	})
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }
