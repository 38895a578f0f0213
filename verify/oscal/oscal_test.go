package oscal

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"gopkg.in/yaml.v3"

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
		ids = append(ids, c.ControlID+strings.Join(c.StatementIDs, "+"))
	}
	// The rules in the scope test AC-2 e (self-approval), f (approval), j
	// (review), AC-2(2), AC-5, AC-6(7) and IA-5 f (rotation), statement-level.
	if got, want := strings.Join(ids, ","), "ac-2ac-2_smt.e+ac-2_smt.f+ac-2_smt.j,ac-2.2,ac-5,ac-6.7,ia-5ia-5_smt.f"; got != want {
		t.Errorf("reviewed controls = %s, want %s", got, want)
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
		{"ac-2_smt.e", "not-satisfied", 1},
		{"ac-2_smt.f", "not-satisfied", 1},
		{"ac-2_smt.j", "satisfied", 0},
		{"ac-2.2_obj", "not-satisfied", 1},
		{"ac-5_obj", "not-satisfied", 1},
		{"ac-6.7_obj", "satisfied", 0},
		{"ia-5_smt.f", "satisfied", 0},
	} {
		if state[tc.obj] != tc.state || related[tc.obj] != tc.related {
			t.Errorf("finding %s = %s with %d observations, want %s with %d", tc.obj, state[tc.obj], related[tc.obj], tc.state, tc.related)
		}
	}
	if _, ok := state["ac-6_obj"]; ok {
		t.Error("AC-6 has a finding, but no rule of the package tests it: want it not tested")
	}
	nt := r.ReviewedControls.ControlSelections[1]
	if len(nt.ExcludeControls) == 0 || !strings.Contains(nt.Description, "not tested") {
		t.Errorf("second control selection = %+v, want the not-tested controls", nt)
	}
	bm := d.AssessmentResults.BackMatter.Resources // non-nil: 3 files
	if len(bm) != 3 || bm[1].RLinks[0].Href != format.FileEntries || bm[1].RLinks[0].Hashes[0].Value != strings.Repeat("02", 32) {
		t.Errorf("back-matter = %+v, want the 3 files with their SHA-256", bm)
	}
}

// TestControlNeedsParams: AC-5 is satisfied only when sod-conflict ran with
// sod_pairs set (and self-approval found nothing); with sod_pairs empty it
// is not tested, and says why.
func TestControlNeedsParams(t *testing.T) {
	cat, err := LoadCatalog("")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, pairs, state, why string
	}{
		{"empty sod_pairs", "[]", NotTested, "sod_pairs is empty"},
		{"sod_pairs set", "[[a, b]]", Satisfied, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := &format.Findings{Rules: []format.Rule{{ID: "sod-conflict", Params: map[string]string{"sod_pairs": tc.pairs}}}}
			sts, err := Assess(doc, cat)
			if err != nil {
				t.Fatal(err)
			}
			for _, st := range sts {
				if st.Control.ID != "AC-5" {
					continue
				}
				if st.State != tc.state || !strings.Contains(st.Why, tc.why) {
					t.Errorf("AC-5 = %s (%q), want %s (%q)", st.State, st.Why, tc.state, tc.why)
				}
				return
			}
			t.Fatal("no AC-5 in the catalog")
		})
	}
	// A rule that could not be evaluated for some subject leaves its
	// controls not tested, never satisfied.
	doc := &format.Findings{Rules: []format.Rule{{ID: "self-approval"}}, Errors: []format.RuleError{{Rule: "self-approval", Subject: "x", Message: "cost"}}}
	sts, _ := Assess(doc, cat)
	for _, st := range sts {
		if st.Control.ID == "AC-5" && st.State != NotTested {
			t.Errorf("AC-5 with a rule error = %s, want not-tested", st.State)
		}
	}
}

// TestCatalogMappings pins the mappings issue 12 asked to fix, and checks
// every catalog names only built-in rules and builds valid OSCAL.
func TestCatalogMappings(t *testing.T) {
	builtin := map[string]bool{}
	ents, err := os.ReadDir(filepath.Join("..", "..", "rules", "catalog"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		builtin[strings.TrimSuffix(e.Name(), ".yaml")] = true
	}
	maps := func(fw, control, rule string) bool {
		cat, err := LoadCatalog(fw)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cat.Controls {
			if c.ID == control && slices.Contains(c.Rules, rule) {
				return true
			}
		}
		return false
	}
	for _, tc := range []struct{ fw, control, rule string }{
		{"sp800-53r5", "IA-5 f", "credential-rotation-overdue"},
		{"sp800-53r5", "AC-2 g", "breakglass-unreviewed"},
		{"sp800-53r5", "AU-6 a", "breakglass-unreviewed"},
		{"sp800-53r5", "AC-2 b", "orphaned-nhi"},
		{"sp800-53r5", "PS-4 a", "leaver-access-retained"},
		{"sp800-53r5", "PS-5", "mover-access-retained"},
		{"sp800-53r5", "AC-2 h.2", "mover-access-retained"},
		{"sp800-53r5", "AC-2 j", "review-overdue"},
		{"csf-2.0", "PR.AA-03", "privileged-session-without-mfa"},
		{"soc2-2017", "CC6.2", "leaver-access-retained"},
		{"iso27001-2022", "A.8.2", "standing-privilege"},
		{"pci-dss-4.0.1", "8.4.1", "privileged-session-without-mfa"},
	} {
		if !maps(tc.fw, tc.control, tc.rule) {
			t.Errorf("%s %s does not map %s", tc.fw, tc.control, tc.rule)
		}
	}
	for _, wrong := range []struct{ fw, control, rule string }{
		{"sp800-53r5", "AC-2(2)", "breakglass-unreviewed"},
	} {
		if maps(wrong.fw, wrong.control, wrong.rule) {
			t.Errorf("%s %s still maps %s", wrong.fw, wrong.control, wrong.rule)
		}
	}
	if got := Frameworks(); len(got) != 6 {
		t.Errorf("frameworks = %v, want 6", got)
	}
	for _, fw := range Frameworks() {
		cat, _ := LoadCatalog(fw)
		covered := map[string]bool{}
		for _, c := range cat.Controls {
			for _, r := range c.Rules {
				if !builtin[r] {
					t.Errorf("%s %s maps %q, which is no built-in rule", fw, c.ID, r)
				}
				covered[r] = true
			}
		}
		t.Run(fw, func(t *testing.T) {
			s := testScope()
			s.Findings.Framework = fw
			if err := validate(t, build(t, s)); err != nil {
				t.Fatalf("assessment-results for %s not valid OSCAL 1.1.3: %v", fw, err)
			}
		})
	}
	if _, err := LoadCatalog("cobit"); !errors.Is(err, ErrUnknownFramework) || !strings.Contains(err.Error(), "pci-dss-4.0.1") {
		t.Errorf("LoadCatalog(cobit) = %v, want ErrUnknownFramework listing the known ones", err)
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

// TestRuleFilesAgreeWithCatalogs: the controls a built-in rule file names
// are exactly those the CSF 2.0, CSF 1.1 and SP 800-53 catalogs map it to,
// so that findings.json and the catalogs never tell two stories.
func TestRuleFilesAgreeWithCatalogs(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "rules", "catalog", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("rule files: %v", err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var r struct {
			ID       string   `yaml:"id"`
			Controls []string `yaml:"controls"`
		}
		if err := yaml.Unmarshal(data, &r); err != nil {
			t.Fatal(err)
		}
		var want []string
		for _, fw := range []string{"csf-2.0", "csf-1.1", "sp800-53r5"} {
			cat, err := LoadCatalog(fw)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range cat.Controls {
				if slices.Contains(c.Rules, r.ID) {
					want = append(want, c.ID)
				}
			}
		}
		got := slices.Clone(r.Controls)
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s: controls %v, the catalogs map it to %v", f, got, want)
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

// popScope is testScope with a population: approval-without-revocation
// tested three approvals (alice's fails: the first finding), self-approval
// two (bob's fails: the second finding), under each control the catalog
// maps the rules to.
func popScope(t *testing.T) *format.Scope {
	t.Helper()
	s := testScope()
	cat, err := LoadCatalog(s.Findings.Framework)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)
	items := []format.PopulationRow{
		{Rule: "approval-without-revocation", Subject: "alice", Index: 7, EventID: "ev-7", Result: format.Fail, Finding: ptrInt(0)},
		{Rule: "approval-without-revocation", Subject: "alice", Index: 12, EventID: "ev-12", Result: format.Pass},
		{Rule: "approval-without-revocation", Subject: "carol", Index: 15, EventID: "ev-15", Result: format.Pass},
		{Rule: "self-approval", Subject: "bob\u00e9", Index: 11, EventID: "ev-11", Result: format.Fail, Finding: ptrInt(1)},
		{Rule: "self-approval", Subject: "carol", Index: 16, EventID: "ev-16", Result: format.Pass},
	}
	for _, c := range cat.Controls {
		for _, it := range items {
			if slices.Contains(c.Rules, it.Rule) {
				it.Control, it.Time = c.ID, at
				s.Population = append(s.Population, it)
			}
		}
	}
	s.Files = append(s.Files, format.FileDigest{Name: format.FilePopulation, SHA256: strings.Repeat("04", 32), Size: 800})
	return s
}

func ptrInt(i int) *int { return &i }

// TestBuildPopulations: one observation per population (control, rule)
// with its size and exceptions, population.jsonl as its resource subject,
// the identities with exceptions as parties, each control's finding
// related to its populations and carrying their totals; valid OSCAL.
func TestBuildPopulations(t *testing.T) {
	s := popScope(t)
	b := build(t, s)
	if err := validate(t, b); err != nil {
		t.Fatalf("assessment-results with populations not valid OSCAL 1.1.3: %v", err)
	}
	d, err := Build(s)
	if err != nil {
		t.Fatal(err)
	}
	r := d.AssessmentResults.Results[0]
	prop := func(ps []Prop, name string) string {
		for _, p := range ps {
			if p.Name == name {
				return p.Value
			}
		}
		return ""
	}
	var popRes string
	for _, res := range d.AssessmentResults.BackMatter.Resources {
		if res.Title == format.FilePopulation {
			popRes = res.UUID
		}
	}
	pops := map[string]Observation{} // control|rule
	for _, o := range r.Observations[2:] {
		pops[prop(o.Props, "control")+"|"+prop(o.Props, "rule")] = o
	}
	for _, tc := range []struct {
		control, rule, size, exceptions string
		failed                          []string
	}{
		{"AC-2 f", "approval-without-revocation", "3", "1", []string{"alice"}},
		{"AC-2(2)", "approval-without-revocation", "3", "1", []string{"alice"}},
		{"AC-2 e", "self-approval", "2", "1", []string{"bob\u00e9"}},
		{"AC-5", "self-approval", "2", "1", []string{"bob\u00e9"}},
	} {
		o, ok := pops[tc.control+"|"+tc.rule]
		if !ok {
			t.Errorf("no population observation for %s, %s (have %d)", tc.control, tc.rule, len(pops))
			continue
		}
		if prop(o.Props, "population-size") != tc.size || prop(o.Props, "exceptions") != tc.exceptions {
			t.Errorf("%s, %s: size %s, exceptions %s; want %s, %s", tc.control, tc.rule, prop(o.Props, "population-size"), prop(o.Props, "exceptions"), tc.size, tc.exceptions)
		}
		var parties []string
		for _, sub := range o.Subjects[1:] {
			parties = append(parties, sub.Title)
		}
		if o.Subjects[0].Type != "resource" || o.Subjects[0].SubjectUUID != popRes || !slices.Equal(parties, tc.failed) {
			t.Errorf("%s, %s: subjects %+v; want population.jsonl's resource %s, then %v", tc.control, tc.rule, o.Subjects, popRes, tc.failed)
		}
	}
	if len(pops) != len(SummarizePopulation(s.Population, nil)) {
		t.Errorf("%d population observations, want one per (control, rule): %d", len(pops), len(SummarizePopulation(s.Population, nil)))
	}
	for _, f := range r.Findings {
		if f.Target.TargetID != "ac-5_obj" {
			continue
		}
		if prop(f.Props, "population-size") != "2" || prop(f.Props, "exceptions") != "1" || !strings.Contains(f.Description, "population of 2 item(s), 1 exception(s)") {
			t.Errorf("AC-5 finding = %+v; want its population's totals", f)
		}
		if n := len(f.RelatedObservations); n != 2 { // the self-approval finding and its population
			t.Errorf("AC-5 finding relates %d observations, want 2", n)
		}
	}
}

// TestBreakglassIncidents: findings whose primary entries are break-glass
// uses with one request are one incident, led by the most specific one;
// their observations say so; a use with another request or no request,
// or an entry that is no break-glass use, is in none.
func TestBreakglassIncidents(t *testing.T) {
	f := func(rule string, index uint64, exposure int64, shares string) format.Finding {
		return format.Finding{Rule: rule, Severity: "high", Subject: "omar", Entries: []format.EntryRef{{Index: index, EventID: fmt.Sprint("e", index)}},
			ExposureSeconds: exposure, SharesPrimaryWith: shares}
	}
	s := testScope()
	s.Findings.Findings = []format.Finding{
		f("breakglass-unreviewed", 1, 0, ""),
		f("breakglass-access-retained", 2, 60, ""),
		f("breakglass-unreviewed", 2, 0, "breakglass-access-retained"),
		f("breakglass-unreviewed", 3, 0, ""),
		f("breakglass-unreviewed", 4, 0, ""), // another request
		f("breakglass-unreviewed", 5, 0, ""), // no request
		f("session-without-approval", 6, 0, ""),
	}
	s.Events = map[uint64]format.EventRow{
		1: {Type: "breakglass.invoked", Request: "BG-1"},
		2: {Type: "grant.activated", Request: "BG-1", Breakglass: true},
		3: {Type: "session.started", Request: "BG-1", Breakglass: true},
		4: {Type: "breakglass.invoked", Request: "BG-2"},
		5: {Type: "breakglass.invoked"},
		6: {Type: "session.started", Request: "BG-1"}, // not a break-glass use
	}
	got := BreakglassIncidents(s.Findings, s.Events)
	want := map[int]int{0: 1, 1: 1, 2: 1, 3: 1}
	if !maps.Equal(got, want) {
		t.Errorf("incidents = %v, want %v", got, want)
	}
	d, err := Build(s)
	if err != nil {
		t.Fatal(err)
	}
	for i, o := range d.AssessmentResults.Results[0].Observations[:len(s.Findings.Findings)] {
		has := slices.ContainsFunc(o.Props, func(p Prop) bool { return p.Name == "breakglass-incident" && p.Value == "BG-1" })
		if _, in := want[i]; has != in {
			t.Errorf("observation %d (%s) has the incident prop: %v, want %v", i, o.Title, has, in)
		}
	}
	if err := validate(t, build(t, s)); err != nil {
		t.Fatalf("not valid OSCAL 1.1.3: %v", err)
	}
}
