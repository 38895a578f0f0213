package oscal

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/grantline/grantline/verify/format"
)

var (
	schemaOnce sync.Once
	schema     *jsonschema.Schema
	schemaErr  error
)

// oscalSchema compiles NIST's OSCAL 1.1.3 complete JSON schema, with format
// assertions on.
func oscalSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	schemaOnce.Do(func() {
		f, err := os.Open(filepath.Join("..", "..", "testdata", "oscal", "oscal_complete_schema-1-1-3.json"))
		if err != nil {
			schemaErr = err
			return
		}
		defer f.Close()
		doc, err := jsonschema.UnmarshalJSON(f)
		if err != nil {
			schemaErr = err
			return
		}
		c := jsonschema.NewCompiler()
		c.AssertFormat()
		if err := c.AddResource("oscal.json", doc); err != nil {
			schemaErr = err
			return
		}
		schema, schemaErr = c.Compile("oscal.json")
	})
	if schemaErr != nil {
		t.Fatalf("compiling the OSCAL schema: %v", schemaErr)
	}
	return schema
}

func validate(t *testing.T, b []byte) error {
	t.Helper()
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return oscalSchema(t).Validate(inst)
}

func testScope() *format.Scope {
	doc := &format.Findings{
		Format: format.FindingsFormat, Origin: "grantline.example/log", CheckpointSize: 1234,
		CheckpointRoot: bytes.Repeat([]byte{0xab}, 32), AsOf: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC),
		Rules: []format.Rule{
			{ID: "approval-without-revocation", Title: "Approvals with no matching revocation", Severity: "high", Controls: []string{"PR.AA-05", "PR.AC-4", "AC-2", "AC-2(2)"}},
			{ID: "self-approval", Title: "Self-approval", Severity: "high", Controls: []string{"PR.AA-05", "PR.AC-4", "AC-5"}},
			{ID: "review-overdue", Title: "Review overdue", Severity: "medium", Controls: []string{"PR.AA-05", "PR.AC-4", "AC-2(j)", "AC-6(7)"}},
			{ID: "credential-rotation-overdue", Title: "Rotation overdue", Severity: "medium", Controls: []string{"PR.AA-01", "IA-5(1)"}},
		},
		SubjectsEvaluated: 10,
		Findings: []format.Finding{
			{Rule: "approval-without-revocation", Severity: "high", Subject: "alice", Controls: []string{"PR.AA-05", "AC-2", "AC-2(2)"},
				Entries: []format.EntryRef{{Index: 7, EventID: "ev-7"}, {Index: 9, EventID: "ev-9"}}, Message: `approval "req-1" <never> revoked`, ExposureSeconds: 3600},
			{Rule: "self-approval", Severity: "high", Subject: "bob\u00e9", Controls: []string{"AC-5"},
				Entries: []format.EntryRef{{Index: 11, EventID: "ev-11"}}, Message: "bob approved his own request"},
		},
	}
	return &format.Scope{Findings: doc, Files: []format.FileDigest{
		{Name: format.FileCheckpoint, SHA256: strings.Repeat("01", 32), Size: 120},
		{Name: format.FileEntries, SHA256: strings.Repeat("02", 32), Size: 9999},
		{Name: format.FileFindings, SHA256: strings.Repeat("03", 32), Size: 500},
	}}
}

func build(t *testing.T, s *format.Scope) []byte {
	t.Helper()
	d, err := Build(s)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestBuildValidatesAgainstOSCALSchema(t *testing.T) {
	for _, tc := range []struct {
		name  string
		scope func() *format.Scope
	}{
		{"findings", testScope},
		{"no findings", func() *format.Scope { s := testScope(); s.Findings.Findings = nil; return s }},
		{"no files", func() *format.Scope { s := testScope(); s.Files = nil; return s }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := validate(t, build(t, tc.scope())); err != nil {
				t.Fatalf("assessment-results not valid OSCAL 1.1.3: %v", err)
			}
		})
	}
}

// TestSchemaRejects makes sure the validation above can fail.
func TestSchemaRejects(t *testing.T) {
	for _, tc := range []struct{ name, from, to string }{
		{"bad uuid", `"uuid": "`, `"uuid": "x`},
		{"bad state", `"state": "satisfied"`, `"state": "fine"`},
		{"bad time", `"last-modified": "2026-03-01T12:00:00Z"`, `"last-modified": "2026-03-01 12:00"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := build(t, testScope())
			bad := bytes.Replace(b, []byte(tc.from), []byte(tc.to), 1)
			if bytes.Equal(bad, b) {
				t.Fatalf("%q not found in the document", tc.from)
			}
			if err := validate(t, bad); err == nil {
				t.Fatalf("schema accepted a document with %s", tc.name)
			}
		})
	}
}

func TestBuildContent(t *testing.T) {
	d, err := Build(testScope())
	if err != nil {
		t.Fatal(err)
	}
	r := d.AssessmentResults.Results[0]
	var ids []string
	for _, c := range r.ReviewedControls.ControlSelections[0].IncludeControls {
		ids = append(ids, c.ControlID)
	}
	if got, want := strings.Join(ids, ","), "ac-2,ac-2.2,ac-5,ac-6,ac-6.7,ia-5.1"; got != want {
		t.Errorf("reviewed controls = %s, want %s", got, want)
	}
	var csf []string
	for _, p := range r.ReviewedControls.Props {
		csf = append(csf, p.Value)
	}
	if got := strings.Join(csf, ","); got != "PR.AA-01,PR.AA-05,PR.AC-4" {
		t.Errorf("CSF props = %s, want PR.AA-01,PR.AA-05,PR.AC-4", got)
	}
	if len(r.Observations) != 2 {
		t.Fatalf("observations = %d, want one per finding (2)", len(r.Observations))
	}
	if got := r.Observations[0].RelevantEvidence[1].Href; got != "entries.jsonl#index=9" {
		t.Errorf("relevant evidence href = %q, want entries.jsonl#index=9", got)
	}
	state := map[string]string{}
	related := map[string]int{}
	for _, f := range r.Findings {
		state[f.Target.TargetID] = f.Target.Status.State
		related[f.Target.TargetID] = len(f.RelatedObservations)
	}
	for _, tc := range []struct {
		obj, state string
		related    int
	}{
		{"ac-2_obj", "not-satisfied", 1},
		{"ac-2.2_obj", "not-satisfied", 1},
		{"ac-5_obj", "not-satisfied", 1},
		{"ac-6_obj", "satisfied", 0},
		{"ia-5.1_obj", "satisfied", 0},
	} {
		if state[tc.obj] != tc.state || related[tc.obj] != tc.related {
			t.Errorf("finding %s = %s with %d observations, want %s with %d", tc.obj, state[tc.obj], related[tc.obj], tc.state, tc.related)
		}
	}
	bm := d.AssessmentResults.BackMatter.Resources // non-nil: 3 files
	if len(bm) != 3 || bm[1].RLinks[0].Href != format.FileEntries || bm[1].RLinks[0].Hashes[0].Value != strings.Repeat("02", 32) {
		t.Errorf("back-matter = %+v, want the 3 files with their SHA-256", bm)
	}
}

func TestBuildDeterministic(t *testing.T) {
	a, b := build(t, testScope()), build(t, testScope())
	if !bytes.Equal(a, b) {
		t.Fatal("Build is not deterministic for the same inputs")
	}
	s := testScope()
	s.Findings.CheckpointRoot[0] ^= 1
	c := build(t, s)
	var da, dc Document
	json.Unmarshal(a, &da)
	json.Unmarshal(c, &dc)
	if da.AssessmentResults.UUID == dc.AssessmentResults.UUID {
		t.Error("documents for different checkpoints share a UUID")
	}
}

func TestUUIDv5(t *testing.T) {
	// RFC 9562 / Python: uuid5(NAMESPACE_DNS, "python.org").
	dns := [16]byte{0x6b, 0xa7, 0xb8, 0x10, 0x9d, 0xad, 0x11, 0xd1, 0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4, 0x30, 0xc8}
	if got, want := UUIDv5(dns, "python.org"), "886313e1-3b8a-5372-9b90-0c9aee199e5d"; got != want {
		t.Errorf("UUIDv5(DNS, python.org) = %s, want %s", got, want)
	}
}

func TestControlID(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"AC-2", "ac-2", true},
		{"AC-2(2)", "ac-2.2", true},
		{"AC-2(j)", "ac-2", true},
		{"IA-5(1)", "ia-5.1", true},
		{"ac-6", "ac-6", true},
		{"PR.AA-05", "", false},
		{"", "", false},
	} {
		got, ok := ControlID(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("ControlID(%q) = %q, %v, want %q, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

// TestBuildClaimsOnlyWhatThePackageProves: "every identity's event chain"
// only for a package that holds every entry (docs/completeness.md).
func TestBuildClaimsOnlyWhatThePackageProves(t *testing.T) {
	for _, all := range []bool{false, true} {
		s := testScope()
		s.Findings.All = all
		d, err := Build(s)
		if err != nil {
			t.Fatal(err)
		}
		desc := d.AssessmentResults.Results[0].Description
		if got := strings.Contains(desc, "every identity's event chain"); got != all {
			t.Errorf("all=%v: description %q claims every chain: %v, want %v", all, desc, got, all)
		}
		if !all && !strings.Contains(desc, "does not prove them complete") {
			t.Errorf("all=false: description %q does not say the chains are unproven", desc)
		}
	}
}
