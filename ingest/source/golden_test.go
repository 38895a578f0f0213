package source_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/grantline/grantline/ingest/source"
	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

var update = flag.Bool("update", false, "rewrite testdata/sources/*/*.golden.json from the current output (review the diff!)")

const testdataDir = "../../testdata/sources"

// farFuture disables the validator's bound on future times: adapters are
// pure and the test data is dated; every other check applies.
var farFuture = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)

// validate checks events the way the server does before storing them.
func validate(evs []*pb.Event) error {
	if len(evs) == 0 {
		return nil
	}
	return event.ValidateBatch("events", evs, farFuture)
}

type goldenEntry struct {
	Record int             `json:"record"`
	Line   int             `json:"line"`
	Event  json.RawMessage `json:"event"`
}

// readAll runs a format over a file and returns every event with where it
// came from.
func readAll(t *testing.T, f source.Format, path, system string) ([]goldenEntry, []*pb.Event) {
	t.Helper()
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	var entries []goldenEntry
	var all []*pb.Event
	err = f.Read(filepath.Base(path), fh, system, func(rec source.Record, evs []*pb.Event) error {
		if err := validate(evs); err != nil {
			t.Errorf("%s:%d: record %d: event does not validate: %v", path, rec.Line, rec.N, err)
		}
		for _, ev := range evs {
			b, err := protojson.Marshal(ev)
			if err != nil {
				t.Fatal(err)
			}
			entries = append(entries, goldenEntry{rec.N, rec.Line, b})
			all = append(all, ev)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Read(%s): %v", path, err)
	}
	return entries, all
}

func inputs(t *testing.T, format string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(testdataDir, format))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if n := e.Name(); !e.IsDir() && !strings.HasSuffix(n, ".golden.json") && n != "README.md" {
			out = append(out, filepath.Join(testdataDir, format, n))
		}
	}
	if len(out) == 0 {
		t.Fatalf("no inputs in %s/%s", testdataDir, format)
	}
	return out
}

// TestGolden: each format's inputs give the events in their golden files;
// every event validates, ids are unique, and a second read is identical.
func TestGolden(t *testing.T) {
	for _, f := range source.Formats() {
		t.Run(f.Name, func(t *testing.T) {
			for _, in := range inputs(t, f.Name) {
				system := "test-" + f.Name
				got, evs := readAll(t, f, in, system)
				if len(evs) == 0 {
					t.Errorf("%s: no events", in)
				}
				ids := map[string]int{}
				for i, ev := range evs {
					if j, dup := ids[ev.GetId()]; dup {
						t.Errorf("%s: events %d and %d share id %q", in, j, i, ev.GetId())
					}
					ids[ev.GetId()] = i
					if ev.GetSource().GetSystem() != system || ev.GetSource().GetRawId() == "" || ev.GetSource().GetRawType() == "" {
						t.Errorf("%s: event %s: source = %v, want system %q and raw_id, raw_type set", in, ev.GetId(), ev.GetSource(), system)
					}
				}
				again, _ := readAll(t, f, in, system)
				if !equalEntries(t, got, again) {
					t.Errorf("%s: a second read gave different events", in)
				}
				golden := in + ".golden.json"
				if *update {
					writeGolden(t, golden, got)
					continue
				}
				data, err := os.ReadFile(golden)
				if err != nil {
					t.Fatalf("%v (run go test ./ingest/source -run TestGolden -update)", err)
				}
				var want []goldenEntry
				if err := json.Unmarshal(data, &want); err != nil {
					t.Fatalf("%s: %v", golden, err)
				}
				if !equalEntries(t, got, want) {
					t.Errorf("%s: events differ from %s (run with -update and review the diff)", in, golden)
				}
			}
		})
	}
}

func equalEntries(t *testing.T, got, want []goldenEntry) bool {
	t.Helper()
	ok := true
	if len(got) != len(want) {
		t.Errorf("got %d events, want %d", len(got), len(want))
		ok = false
	}
	for i := range min(len(got), len(want)) {
		g, w := &pb.Event{}, &pb.Event{}
		if err := protojson.Unmarshal(got[i].Event, g); err != nil {
			t.Fatal(err)
		}
		if err := protojson.Unmarshal(want[i].Event, w); err != nil {
			t.Fatalf("golden event %d: %v", i, err)
		}
		if got[i].Record != want[i].Record || got[i].Line != want[i].Line || !proto.Equal(g, w) {
			t.Errorf("event %d: got record %d line %d\n%s\nwant record %d line %d\n%s", i,
				got[i].Record, got[i].Line, got[i].Event, want[i].Record, want[i].Line, want[i].Event)
			ok = false
		}
	}
	return ok
}

func writeGolden(t *testing.T, path string, entries []goldenEntry) {
	t.Helper()
	for i := range entries {
		var buf bytes.Buffer
		if err := json.Compact(&buf, entries[i].Event); err != nil {
			t.Fatal(err)
		}
		entries[i].Event = buf.Bytes()
	}
	b, err := json.MarshalIndent(entries, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}
