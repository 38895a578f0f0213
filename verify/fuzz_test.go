package verify

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/grantline/grantline/ledger/event"
	"github.com/grantline/grantline/verify/format"
)

// FuzzParseEntryLine: a line of entries.jsonl never panics the reader, and a
// line it accepts survives a round trip.
func FuzzParseEntryLine(f *testing.F) {
	f.Add([]byte(`{"index":3,"leaf":"CgQKAmlk","inclusion_proof":["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="],"event":{"id":"id"}}`))
	f.Add([]byte(`{"index":0,"leaf":"","inclusion_proof":[],"event":null}`))
	f.Add([]byte(`{"index":-1}`))
	f.Add([]byte(`{"index":1,"leaf":"AA==","inclusion_proof":null,"event":{},"extra":1}`))
	f.Add([]byte(`{"index":1,"leaf":"AA==","event":{}} {}`))
	f.Add([]byte("\n"))
	if b, err := os.ReadFile(filepath.Join("..", "testdata", "evidence", "sample", format.FileEntries)); err == nil {
		for _, line := range bytes.Split(b, []byte("\n")) {
			f.Add(line)
		}
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		e, err := ParseEntryLine(line)
		if err != nil {
			return
		}
		out, err := json.Marshal(e)
		if err != nil {
			t.Fatalf("accepted line does not re-encode: %v", err)
		}
		e2, err := ParseEntryLine(out)
		if err != nil || e2.Index != e.Index || !bytes.Equal(e2.Leaf, e.Leaf) || len(e2.InclusionProof) != len(e.InclusionProof) {
			t.Fatalf("round trip of %q = %+v, %v", out, e2, err)
		}
		_, _ = event.DecodeLeaf(e.Leaf) // must not panic
	})
}

// FuzzParseFindings: findings.json never panics the reader, and comparing
// a document with itself finds no difference.
func FuzzParseFindings(f *testing.F) {
	f.Add([]byte(`{"format":"grantline.dev/evidence/findings/v1","origin":"o","checkpoint_size":3,"checkpoint_root":"AA==","as_of":"2026-01-01T00:00:00Z","all":false,"rules":[],"params":null,"subjects_evaluated":0,"entries_evaluated":0,"findings":[{"rule":"r","title":"","severity":"high","controls":null,"subject":"s","entries":[{"index":1,"event_id":"e"}],"message":"m","exposure_seconds":5}],"errors":null}`))
	f.Add([]byte(`{"format":"x"}`))
	f.Add([]byte(`{"findings":[{"entries":[]}]}`))
	f.Add([]byte(`[]`))
	if b, err := os.ReadFile(filepath.Join("..", "testdata", "evidence", "sample", format.FileFindings)); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		doc, err := ParseFindings(b)
		if err != nil {
			return
		}
		if err := CompareFindings(doc.Findings, doc.Findings); err != nil {
			t.Fatalf("a document differs from itself: %v", err)
		}
	})
}

// TestExportedAssessmentResultsValid validates an exported package's OSCAL
// document against NIST's OSCAL 1.1.3 complete schema.
func TestExportedAssessmentResultsValid(t *testing.T) {
	fx := exportFixture(t, "ed25519", ExportOptions{})
	sf, err := os.Open(filepath.Join("..", "testdata", "oscal", "oscal_complete_schema-1-1-3.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer sf.Close()
	sdoc, err := jsonschema.UnmarshalJSON(sf)
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource("oscal.json", sdoc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile("oscal.json")
	if err != nil {
		t.Fatal(err)
	}
	af, err := os.Open(filepath.Join(fx.dir, format.FileAssessment))
	if err != nil {
		t.Fatal(err)
	}
	defer af.Close()
	inst, err := jsonschema.UnmarshalJSON(af)
	if err != nil {
		t.Fatal(err)
	}
	if err := sch.Validate(inst); err != nil {
		t.Fatalf("%s is not valid OSCAL 1.1.3: %v", format.FileAssessment, err)
	}
}
