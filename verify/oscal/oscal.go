// Package oscal builds the OSCAL 1.1.3 assessment-results document of a
// Grantline evidence package (https://pages.nist.gov/OSCAL/reference/1.1.3/assessment-results/json-reference/):
// the reviewed controls (SP 800-53 rev5 control ids such as ac-2, ac-2.2,
// ac-5, ac-6, with NIST CSF 2.0 PR.AA-05 and CSF 1.1 PR.AC-4 as props), one
// observation per finding whose relevant evidence points at the ledger
// entries in entries.jsonl, one observation per population (control, rule)
// with its size and exceptions, one finding per control with the objective
// status satisfied or not-satisfied, and the package files as back-matter resources
// with their SHA-256. The output is deterministic: every UUID is a version 5
// UUID derived from the content, and every time is the as-of time.
package oscal

import (
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/grantline/grantline/verify/format"
)

// OSCALVersion is the OSCAL version the document claims and is validated against.
const OSCALVersion = "1.1.3"

// NS is the namespace of Grantline's OSCAL props.
const NS = "https://grantline.dev/ns/oscal"

// Document is the top-level OSCAL JSON object.
type Document struct {
	AssessmentResults AssessmentResults `json:"assessment-results"`
}

type AssessmentResults struct {
	UUID       string      `json:"uuid"`
	Metadata   Metadata    `json:"metadata"`
	ImportAP   ImportAP    `json:"import-ap"`
	Results    []Result    `json:"results"`
	BackMatter *BackMatter `json:"back-matter,omitempty"`
}

type Metadata struct {
	Title        string `json:"title"`
	LastModified string `json:"last-modified"`
	Version      string `json:"version"`
	OSCALVersion string `json:"oscal-version"`
	Props        []Prop `json:"props,omitempty"`
	Remarks      string `json:"remarks,omitempty"`
}

type Prop struct {
	Name    string `json:"name"`
	NS      string `json:"ns,omitempty"`
	Value   string `json:"value"`
	Class   string `json:"class,omitempty"`
	Remarks string `json:"remarks,omitempty"`
}

type ImportAP struct {
	Href    string `json:"href"`
	Remarks string `json:"remarks,omitempty"`
}

type Result struct {
	UUID             string           `json:"uuid"`
	Title            string           `json:"title"`
	Description      string           `json:"description"`
	Start            string           `json:"start"`
	End              string           `json:"end"`
	Props            []Prop           `json:"props,omitempty"`
	ReviewedControls ReviewedControls `json:"reviewed-controls"`
	Observations     []Observation    `json:"observations,omitempty"`
	Findings         []Finding        `json:"findings,omitempty"`
}

type ReviewedControls struct {
	Description       string             `json:"description,omitempty"`
	Props             []Prop             `json:"props,omitempty"`
	ControlSelections []ControlSelection `json:"control-selections"`
}

type ControlSelection struct {
	Description     string          `json:"description,omitempty"`
	Props           []Prop          `json:"props,omitempty"`
	IncludeControls []SelectControl `json:"include-controls,omitempty"`
	ExcludeControls []SelectControl `json:"exclude-controls,omitempty"`
}

type SelectControl struct {
	ControlID    string   `json:"control-id"`
	StatementIDs []string `json:"statement-ids,omitempty"`
}

type Observation struct {
	UUID             string             `json:"uuid"`
	Title            string             `json:"title"`
	Description      string             `json:"description"`
	Props            []Prop             `json:"props,omitempty"`
	Methods          []string           `json:"methods"`
	Types            []string           `json:"types"`
	Subjects         []SubjectReference `json:"subjects,omitempty"`
	RelevantEvidence []RelevantEvidence `json:"relevant-evidence"`
	Collected        string             `json:"collected"`
}

type SubjectReference struct {
	SubjectUUID string `json:"subject-uuid"`
	Type        string `json:"type"`
	Title       string `json:"title,omitempty"`
	Props       []Prop `json:"props,omitempty"`
}

type RelevantEvidence struct {
	Href        string `json:"href"`
	Description string `json:"description"`
	Props       []Prop `json:"props,omitempty"`
}

type Finding struct {
	UUID                string               `json:"uuid"`
	Title               string               `json:"title"`
	Description         string               `json:"description"`
	Props               []Prop               `json:"props,omitempty"`
	Target              Target               `json:"target"`
	RelatedObservations []RelatedObservation `json:"related-observations,omitempty"`
}

type Target struct {
	Type     string `json:"type"`
	TargetID string `json:"target-id"`
	Status   Status `json:"status"`
}

type Status struct {
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
}

type RelatedObservation struct {
	ObservationUUID string `json:"observation-uuid"`
}

type BackMatter struct {
	Resources []Resource `json:"resources"`
}

type Resource struct {
	UUID        string  `json:"uuid"`
	Title       string  `json:"title"`
	Description string  `json:"description,omitempty"`
	RLinks      []RLink `json:"rlinks"`
}

type RLink struct {
	Href      string `json:"href"`
	MediaType string `json:"media-type,omitempty"`
	Hashes    []Hash `json:"hashes"`
}

type Hash struct {
	Algorithm string `json:"algorithm"`
	Value     string `json:"value"`
}

// namespace is the UUIDv5 namespace of Grantline's OSCAL documents.
var namespace = [16]byte{0x6b, 0x1d, 0x3e, 0x52, 0x8c, 0x0f, 0x5a, 0x4e, 0x9d, 0x7b, 0x21, 0x44, 0xa0, 0x5c, 0x19, 0x3f}

// UUIDv5 returns the RFC 9562 version 5 UUID of name in namespace ns.
func UUIDv5(ns [16]byte, name string) string {
	h := sha1.New()
	h.Write(ns[:])
	h.Write([]byte(name))
	var u [16]byte
	copy(u[:], h.Sum(nil))
	u[6] = u[6]&0x0f | 0x50
	u[8] = u[8]&0x3f | 0x80
	x := hex.EncodeToString(u[:])
	return x[0:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:]
}

var mediaTypes = map[string]string{
	format.FileCheckpoint:  "text/plain",
	format.FileEntries:     "application/jsonl",
	format.FileFindings:    "application/json",
	format.FilePopulation:  "application/jsonl",
	format.FileCSV:         "text/csv",
	format.FileReport:      "text/html",
	format.FileConsistency: "application/json",
}

// Build returns the assessment-results document for scope. scope.Files must
// list the package files written so far (they become back-matter resources).
func Build(scope *format.Scope) (*Document, error) {
	doc := scope.Findings
	if doc == nil {
		return nil, fmt.Errorf("no findings document")
	}
	asOf := doc.AsOf.UTC().Format(time.RFC3339Nano)
	pkgID := fmt.Sprintf("%s|%d|%x|%s", doc.Origin, doc.CheckpointSize, doc.CheckpointRoot, asOf)
	pkgNS := parse(UUIDv5(namespace, pkgID))
	uuid := func(parts ...string) string { return UUIDv5(pkgNS, strings.Join(parts, "|")) }

	// Controls: the chosen framework's catalog (controls as data), each
	// satisfied, not satisfied or not tested (controls.go).
	cat, err := LoadCatalog(doc.Framework)
	if err != nil {
		return nil, err
	}
	statuses, err := Assess(doc, cat)
	if err != nil {
		return nil, err
	}
	period := "as of " + asOf
	start := asOf
	if doc.From != nil {
		start = doc.From.UTC().Format(time.RFC3339Nano)
		period = "over the period " + start + " to " + asOf
	}
	fwProps := []Prop{{Name: "framework", NS: NS, Value: cat.Framework, Remarks: cat.Title}}

	// Back matter: the package files with their SHA-256.
	var res []Resource
	resUUID := map[string]string{}
	for _, f := range scope.Files {
		u := uuid("resource", f.Name)
		resUUID[f.Name] = u
		res = append(res, Resource{
			UUID: u, Title: f.Name, Description: fmt.Sprintf("Evidence package file %s (%d bytes).", f.Name, f.Size),
			RLinks: []RLink{{Href: f.Name, MediaType: mediaTypes[f.Name], Hashes: []Hash{{Algorithm: "SHA-256", Value: f.SHA256}}}},
		})
	}

	// One observation per finding; the findings of one break-glass
	// incident say so (incident.go).
	incident := BreakglassIncidents(doc, scope.Events)
	obs := make([]Observation, 0, len(doc.Findings))
	for i, f := range doc.Findings {
		p, _ := f.Primary()
		ou := uuid("observation", f.Rule, f.Subject, fmt.Sprint(p))
		props := []Prop{
			{Name: "rule", NS: NS, Value: f.Rule},
			{Name: "severity", NS: NS, Value: f.Severity},
			{Name: "exposure-seconds", NS: NS, Value: fmt.Sprint(f.ExposureSeconds)},
			{Name: "opened-at", NS: NS, Value: f.OpenedAt.UTC().Format(time.RFC3339)},
		}
		if f.ClosedAt != nil {
			props = append(props, Prop{Name: "closed-at", NS: NS, Value: f.ClosedAt.UTC().Format(time.RFC3339)})
		} else {
			props = append(props, Prop{Name: "state", NS: NS, Value: "open", Remarks: "Still open at the as-of time."})
		}
		if f.SharesPrimaryWith != "" {
			props = append(props, Prop{Name: "shares-primary-with", NS: NS, Value: f.SharesPrimaryWith,
				Remarks: "Same subject and primary entry as a more specific finding of that rule: one thing, counted once."})
		}
		if lead, ok := incident[i]; ok {
			lf := doc.Findings[lead]
			lp, _ := lf.Primary()
			props = append(props, Prop{Name: "breakglass-incident", NS: NS, Value: nonEmpty(scope.Events[p].Request),
				Remarks: fmt.Sprintf("One break-glass incident (one request) with %s's finding of %s on entry %d, which leads it: one thing, counted once.", lf.Subject, lf.Rule, lp)})
		}
		o := Observation{
			UUID: ou, Title: fmt.Sprintf("%s: %s", f.Rule, f.Subject), Description: f.Message,
			Props:   props,
			Methods: []string{"TEST"}, Types: []string{"finding"},
			Subjects:  []SubjectReference{{SubjectUUID: uuid("subject", f.Subject), Type: "party", Title: f.Subject, Props: []Prop{{Name: "identity-id", NS: NS, Value: f.Subject}}}},
			Collected: asOf,
		}
		for i, e := range f.Entries {
			role := "primary"
			if i > 0 {
				role = "supporting"
			}
			o.RelevantEvidence = append(o.RelevantEvidence, RelevantEvidence{
				Href:        fmt.Sprintf("%s#index=%d", format.FileEntries, e.Index),
				Description: fmt.Sprintf("Ledger entry %d (event %s), %s evidence; its leaf and RFC 6962 inclusion proof are in %s.", e.Index, e.EventID, role, format.FileEntries),
				Props:       []Prop{{Name: "ledger-index", NS: NS, Value: fmt.Sprint(e.Index)}, {Name: "event-id", NS: NS, Value: nonEmpty(e.EventID)}},
			})
		}
		obs = append(obs, o)
	}

	// One observation per population (control, rule), after the
	// findings' observations (population.go).
	popGroups := SummarizePopulation(scope.Population, cat)
	popObs, popByControl := populationObservations(popGroups, uuid, resUUID[format.FilePopulation], asOf, period)
	obs = append(obs, popObs...)
	popCount := map[string][2]int{} // control -> items, exceptions
	for _, g := range popGroups {
		c := popCount[g.Control]
		popCount[g.Control] = [2]int{c[0] + g.Items, c[1] + g.Exceptions}
	}

	// One finding per tested control; not-tested controls are listed, with
	// why, in a control selection of their own.
	var findings []Finding
	var include, exclude []SelectControl
	var notTested []Prop
	for _, st := range statuses {
		c := st.Control
		sel := SelectControl{ControlID: c.OSCAL.Control}
		if c.OSCAL.Statement != "" {
			sel.StatementIDs = []string{c.OSCAL.Statement}
		}
		if st.State == NotTested {
			exclude = appendSelect(exclude, sel)
			notTested = append(notTested, Prop{Name: "not-tested", NS: NS, Value: c.ID, Remarks: st.Why})
			continue
		}
		include = appendSelect(include, sel)
		target := Target{Type: "objective-id", TargetID: c.OSCAL.Control + "_obj"}
		if c.OSCAL.Statement != "" {
			target = Target{Type: "statement-id", TargetID: c.OSCAL.Statement}
		}
		fd := Finding{
			UUID: uuid("finding", cat.Framework, c.ID), Title: c.ID + ": " + c.Title,
			Props: append(slices.Clone(fwProps), Prop{Name: "control", NS: NS, Value: c.ID},
				Prop{Name: "tested-by", NS: NS, Value: strings.Join(st.Tested, " ")}),
			Target: target,
		}
		popNote := ""
		if pc, ok := popCount[c.ID]; ok {
			fd.Props = append(fd.Props, Prop{Name: "population-size", NS: NS, Value: fmt.Sprint(pc[0])},
				Prop{Name: "exceptions", NS: NS, Value: fmt.Sprint(pc[1])})
			popNote = fmt.Sprintf(" Tested on a population of %d item(s), %d exception(s) (%s).", pc[0], pc[1], format.FilePopulation)
		}
		if n := len(st.Findings); n > 0 {
			fd.Description = fmt.Sprintf("%d finding(s) of rules mapped to %s (%s) at checkpoint size %d, %s.", n, c.ID, strings.Join(st.Mapped, ", "), doc.CheckpointSize, period)
			fd.Target.Status = Status{State: "not-satisfied", Reason: "fail"}
			for _, i := range st.Findings {
				fd.RelatedObservations = append(fd.RelatedObservations, RelatedObservation{ObservationUUID: obs[i].UUID})
			}
		} else {
			fd.Description = fmt.Sprintf("No findings of %s, which test %s, at checkpoint size %d, %s.", strings.Join(st.Tested, ", "), c.ID, doc.CheckpointSize, period)
			if st.Why != "" {
				fd.Description += " " + st.Why + "."
			}
			fd.Target.Status = Status{State: "satisfied", Reason: "pass"}
		}
		fd.Description += popNote
		for _, u := range popByControl[c.ID] {
			fd.RelatedObservations = append(fd.RelatedObservations, RelatedObservation{ObservationUUID: u})
		}
		findings = append(findings, fd)
	}
	selections := []ControlSelection{{Description: cat.Title + ": the controls the package's rules tested.", Props: fwProps, IncludeControls: include}}
	if len(exclude) > 0 {
		selections = append(selections, ControlSelection{
			Description:     cat.Title + ": controls not tested (the rules that could test them did not run, or lacked the params they need); each not-tested prop says why.",
			Props:           notTested,
			ExcludeControls: exclude,
		})
	}
	if len(include) == 0 {
		selections = selections[1:]
	}

	ap := "#" + resUUID[format.FileFindings]
	if ap == "#" {
		ap = format.FileFindings
	}
	rules := make([]string, 0, len(doc.Rules))
	for _, r := range doc.Rules {
		rules = append(rules, r.ID)
	}
	return &Document{AssessmentResults: AssessmentResults{
		UUID: uuid("assessment-results"),
		Metadata: Metadata{
			Title:        "Grantline privileged-access evidence: " + doc.Origin,
			LastModified: asOf, Version: fmt.Sprintf("checkpoint-%d", doc.CheckpointSize), OSCALVersion: OSCALVersion,
			Props: append([]Prop{
				{Name: "log-origin", NS: NS, Value: doc.Origin},
				{Name: "checkpoint-size", NS: NS, Value: fmt.Sprint(doc.CheckpointSize)},
				{Name: "checkpoint-root", NS: NS, Value: hex.EncodeToString(doc.CheckpointRoot)},
				{Name: "period-start", NS: NS, Value: start},
				{Name: "period-end", NS: NS, Value: asOf},
			}, fwProps...),
			Remarks: "Generated by Grantline from a signed ledger checkpoint; verify the package offline with `grantline verify`.",
		},
		ImportAP: ImportAP{Href: ap, Remarks: "No separate assessment plan: the rule set (texts and SHA-256) and params in findings.json define the assessment."},
		Results: []Result{{
			UUID: uuid("result"), Title: "Privileged access: does privilege disappear when the work is complete?",
			Description: fmt.Sprintf("CEL rules (%s) evaluated over %s in the ledger %s at checkpoint size %d, %s.", strings.Join(rules, ", "), scopeOf(doc), doc.Origin, doc.CheckpointSize, period),
			Start:       start, End: asOf,
			Props: []Prop{{Name: "findings", NS: NS, Value: fmt.Sprint(len(doc.Findings))}, {Name: "subjects-evaluated", NS: NS, Value: fmt.Sprint(doc.SubjectsEvaluated)},
				{Name: "population-rows", NS: NS, Value: fmt.Sprint(len(scope.Population)), Remarks: "Rows of " + format.FilePopulation + ": one per (control, rule, item)."}},
			ReviewedControls: ReviewedControls{
				Description:       "Controls of " + cat.Title + " mapped to the rule set (Grantline's control catalogs are data: verify/oscal/catalogs).",
				Props:             fwProps,
				ControlSelections: selections,
			},
			Observations: obs,
			Findings:     findings,
		}},
		BackMatter: backMatter(res),
	}}, nil
}

// scopeOf says which chains the package's evidence covers: "every
// identity's event chain" only when the package proves it (every entry
// present); otherwise the included chains, without a completeness claim
// (docs/completeness.md).
func scopeOf(doc *format.Findings) string {
	if doc.All {
		return "every identity's event chain (the package holds every entry, so every chain is complete)"
	}
	return "the event chains of the identities with findings and those the findings cite (the package holds these chains only; it does not prove them complete)"
}

// appendSelect adds sel, merging statement ids of one control.
func appendSelect(sels []SelectControl, sel SelectControl) []SelectControl {
	for i := range sels {
		if sels[i].ControlID == sel.ControlID {
			if len(sels[i].StatementIDs) == 0 || len(sel.StatementIDs) == 0 {
				sels[i].StatementIDs = nil // the whole control
			} else {
				sels[i].StatementIDs = append(sels[i].StatementIDs, sel.StatementIDs...)
			}
			return sels
		}
	}
	return append(sels, sel)
}

func backMatter(res []Resource) *BackMatter {
	if len(res) == 0 {
		return nil
	}
	return &BackMatter{Resources: res}
}

func nonEmpty(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func parse(u string) [16]byte {
	var b [16]byte
	hex.Decode(b[:], []byte(strings.ReplaceAll(u, "-", "")))
	return b
}
