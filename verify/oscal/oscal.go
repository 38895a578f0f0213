// Package oscal builds the OSCAL 1.1.3 assessment-results document of a
// Grantline evidence package (https://pages.nist.gov/OSCAL/reference/1.1.3/assessment-results/json-reference/):
// the reviewed controls (SP 800-53 rev5 control ids such as ac-2, ac-2.2,
// ac-5, ac-6, with NIST CSF 2.0 PR.AA-05 and CSF 1.1 PR.AC-4 as props), one
// observation per finding whose relevant evidence points at the ledger
// entries in entries.jsonl, one finding per control with the objective status
// satisfied or not-satisfied, and the package files as back-matter resources
// with their SHA-256. The output is deterministic: every UUID is a version 5
// UUID derived from the content, and every time is the as-of time.
package oscal

import (
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/grantline/grantline/verify/format"
)

// OSCALVersion is the OSCAL version the document claims and is validated against.
const OSCALVersion = "1.1.3"

// NS is the namespace of Grantline's OSCAL props.
const NS = "https://grantline.dev/ns/oscal"

// baseControls are always reviewed: privileged-access management in SP 800-53.
var baseControls = []string{"ac-2", "ac-5", "ac-6"}

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
	IncludeControls []SelectControl `json:"include-controls"`
}

type SelectControl struct {
	ControlID string `json:"control-id"`
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

var (
	sp80053 = regexp.MustCompile(`^([A-Za-z]{2})-(\d+)(?:\((\d+)\))?(?:\(([a-z])\))?$`)
	csf     = regexp.MustCompile(`^[A-Z]{2}\.[A-Z]{2}-\d+$`)
)

// ControlID maps a rule's control name to an OSCAL SP 800-53 rev5 control
// id ("AC-2" → "ac-2", "AC-2(2)" → "ac-2.2", "AC-2(j)" → "ac-2"), and reports
// false for names that are not SP 800-53 controls (CSF subcategories).
func ControlID(name string) (string, bool) {
	m := sp80053.FindStringSubmatch(strings.TrimSpace(name))
	if m == nil {
		// "AC-2(j)": a statement item, not an enhancement
		if i := strings.IndexByte(name, '('); i > 0 {
			if m2 := sp80053.FindStringSubmatch(name[:i]); m2 != nil {
				return strings.ToLower(m2[1]) + "-" + m2[2], true
			}
		}
		return "", false
	}
	id := strings.ToLower(m[1]) + "-" + m[2]
	if m[3] != "" {
		id += "." + m[3]
	}
	return id, true
}

// CSF reports whether name is a NIST CSF subcategory such as PR.AA-05.
func CSF(name string) bool { return csf.MatchString(name) }

func csfProp(name string) Prop {
	class := "csf-2.0"
	if strings.HasPrefix(name, "PR.AC-") {
		class = "csf-1.1"
	}
	return Prop{Name: "framework-subcategory", NS: NS, Value: name, Class: class}
}

var mediaTypes = map[string]string{
	format.FileCheckpoint:  "text/plain",
	format.FileEntries:     "application/jsonl",
	format.FileFindings:    "application/json",
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

	// Reviewed controls: every SP 800-53 control a rule names, plus the base set.
	ctlSet := map[string]bool{}
	csfSet := map[string]bool{"PR.AA-05": true, "PR.AC-4": true}
	ruleCtls := map[string][]string{}
	for _, c := range baseControls {
		ctlSet[c] = true
	}
	for _, r := range doc.Rules {
		for _, c := range r.Controls {
			if id, ok := ControlID(c); ok {
				ctlSet[id] = true
				ruleCtls[r.ID] = append(ruleCtls[r.ID], id)
			} else if CSF(c) {
				csfSet[c] = true
			}
		}
	}
	ctls := sortedKeys(ctlSet)
	var csfProps []Prop
	for _, c := range sortedKeys(csfSet) {
		csfProps = append(csfProps, csfProp(c))
	}

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

	// One observation per finding.
	obs := make([]Observation, 0, len(doc.Findings))
	obsByCtl := map[string][]string{}
	countByCtl := map[string]int{}
	for _, f := range doc.Findings {
		p, _ := f.Primary()
		ou := uuid("observation", f.Rule, f.Subject, fmt.Sprint(p))
		o := Observation{
			UUID: ou, Title: fmt.Sprintf("%s: %s", f.Rule, f.Subject), Description: f.Message,
			Props: []Prop{
				{Name: "rule", NS: NS, Value: f.Rule},
				{Name: "severity", NS: NS, Value: f.Severity},
				{Name: "exposure-seconds", NS: NS, Value: fmt.Sprint(f.ExposureSeconds)},
			},
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
		seen := map[string]bool{}
		for _, c := range ruleCtlsOf(f, ruleCtls) {
			if !seen[c] {
				seen[c] = true
				obsByCtl[c] = append(obsByCtl[c], ou)
				countByCtl[c]++
			}
		}
	}

	// One finding per reviewed control.
	var findings []Finding
	for _, c := range ctls {
		fd := Finding{
			UUID: uuid("finding", c), Title: "Control " + strings.ToUpper(c),
			Props:  csfProps,
			Target: Target{Type: "objective-id", TargetID: c + "_obj"},
		}
		if n := countByCtl[c]; n > 0 {
			fd.Description = fmt.Sprintf("%d finding(s) of rules mapped to %s at checkpoint size %d, as of %s.", n, strings.ToUpper(c), doc.CheckpointSize, asOf)
			fd.Target.Status = Status{State: "not-satisfied", Reason: "fail"}
			for _, u := range obsByCtl[c] {
				fd.RelatedObservations = append(fd.RelatedObservations, RelatedObservation{ObservationUUID: u})
			}
		} else {
			fd.Description = fmt.Sprintf("No findings of rules mapped to %s at checkpoint size %d, as of %s.", strings.ToUpper(c), doc.CheckpointSize, asOf)
			fd.Target.Status = Status{State: "satisfied", Reason: "pass"}
		}
		findings = append(findings, fd)
	}

	include := make([]SelectControl, 0, len(ctls))
	for _, c := range ctls {
		include = append(include, SelectControl{ControlID: c})
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
			}, csfProps...),
			Remarks: "Generated by Grantline from a signed ledger checkpoint; verify the package offline with `grantline verify`.",
		},
		ImportAP: ImportAP{Href: ap, Remarks: "No separate assessment plan: the rule set (texts and SHA-256) and params in findings.json define the assessment."},
		Results: []Result{{
			UUID: uuid("result"), Title: "Privileged access: does privilege disappear when the work is complete?",
			Description: fmt.Sprintf("CEL rules (%s) evaluated over %s in the ledger %s at checkpoint size %d, as of %s.", strings.Join(rules, ", "), scopeOf(doc), doc.Origin, doc.CheckpointSize, asOf),
			Start:       asOf, End: asOf,
			Props: []Prop{{Name: "findings", NS: NS, Value: fmt.Sprint(len(doc.Findings))}, {Name: "subjects-evaluated", NS: NS, Value: fmt.Sprint(doc.SubjectsEvaluated)}},
			ReviewedControls: ReviewedControls{
				Description:       "SP 800-53 rev5 controls named by the rule set, reviewed for NIST CSF 2.0 PR.AA-05 (CSF 1.1 PR.AC-4).",
				Props:             csfProps,
				ControlSelections: []ControlSelection{{IncludeControls: include}},
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

func backMatter(res []Resource) *BackMatter {
	if len(res) == 0 {
		return nil
	}
	return &BackMatter{Resources: res}
}

func ruleCtlsOf(f format.Finding, byRule map[string][]string) []string {
	if c, ok := byRule[f.Rule]; ok {
		return c
	}
	var out []string
	for _, c := range f.Controls {
		if id, ok := ControlID(c); ok {
			out = append(out, id)
		}
	}
	return out
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
