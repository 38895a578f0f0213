// Package format defines the files of a Grantline evidence package and the
// JSON shapes inside them: the entry lines of entries.jsonl, the findings
// document findings.json and the consistency proofs of consistency.json. It
// is pure data, shared by the exporter and verifier (package verify) and the
// OSCAL and HTML renderers (verify/oscal, verify/report); see docs/design.md,
// "Evidence package".
package format

import (
	"encoding/json"
	"time"
)

// File names inside a package. A package holds exactly the required files,
// plus FileConsistency when the exporter was asked for consistency proofs.
const (
	FileCheckpoint  = "checkpoint"              // the signed checkpoint note, verbatim
	FileConsistency = "consistency.json"        // optional: Consistency
	FileEntries     = "entries.jsonl"           // one EntryLine a line, ascending index
	FileFindings    = "findings.json"           // Findings
	FilePopulation  = "population.jsonl"        // one PopulationRow a line
	FileCSV         = "findings.csv"            // findings for spreadsheets
	FileReport      = "report.html"             // the human report
	FileAssessment  = "assessment-results.json" // OSCAL 1.1.3 assessment-results
	FileStatement   = "statement.dsse.json"     // DSSE envelope over an in-toto Statement v1
)

// FindingsFormat is the value of Findings.Format for this version.
const FindingsFormat = "grantline.dev/evidence/findings/v1"

// ConsistencyFormat is the value of Consistency.Format for this version.
const ConsistencyFormat = "grantline.dev/evidence/consistency/v1"

// RequiredFiles are the files every package holds, in the order the exporter
// writes them (the statement last, since it signs the digests of the others).
var RequiredFiles = []string{FileCheckpoint, FileEntries, FileFindings, FilePopulation, FileCSV, FileReport, FileAssessment, FileStatement}

// Known reports whether name is a file a package may hold.
func Known(name string) bool {
	if name == FileConsistency {
		return true
	}
	for _, f := range RequiredFiles {
		if f == name {
			return true
		}
	}
	return false
}

// EntryLine is one line of entries.jsonl. Leaf is the ledger leaf exactly as
// stored (base64 in JSON); InclusionProof is the RFC 6962 audit path from the
// leaf to the checkpoint's root; Event is the protojson encoding of the event
// decoded from Leaf, for reading — the leaf is authoritative.
type EntryLine struct {
	Index          uint64          `json:"index"`
	Leaf           []byte          `json:"leaf"`
	InclusionProof [][]byte        `json:"inclusion_proof,omitempty"` // absent in an "all" package: the root recomputed from every leaf proves every line
	Event          json.RawMessage `json:"event"`
}

// Findings is findings.json: the result of evaluating the rule set at a
// checkpoint and an as-of time, with everything needed to reproduce it.
type Findings struct {
	Format         string    `json:"format"`
	Origin         string    `json:"origin"`
	CheckpointSize uint64    `json:"checkpoint_size"`
	CheckpointRoot []byte    `json:"checkpoint_root"` // base64 in JSON
	AsOf           time.Time `json:"as_of"`
	// From, when set, is the start of the audit period [From, AsOf] the
	// package covers (docs/rules.md "Periods"): the findings are every one
	// open at some instant of it. Null for a single instant (AsOf).
	From *time.Time `json:"from"`
	// All is true when entries.jsonl holds every entry of the tree; otherwise
	// it holds the chains of the subjects with findings and of the subjects
	// whose entries a finding cites.
	All bool `json:"all"`
	// Framework is the control catalog the report and OSCAL were written
	// in (verify/oscal); empty for the default.
	Framework string `json:"framework,omitempty"`
	Rules     []Rule `json:"rules"`
	// Params are the parameter overrides the rule set was built with (a JSON
	// object, the shape of `serve --params` YAML), or null.
	Params            json.RawMessage `json:"params"`
	SubjectsEvaluated uint64          `json:"subjects_evaluated"`
	EntriesEvaluated  uint64          `json:"entries_evaluated"`
	Findings          []Finding       `json:"findings"`
	Errors            []RuleError     `json:"errors"`
	// ExposureBySubject is, per subject, the seconds in the union of its
	// findings' exposure intervals (rules.ExposureBySubject): one grant
	// cited by several rules counts once.
	ExposureBySubject map[string]int64 `json:"exposure_by_subject"`
}

// Rule is one rule of the evaluated set: its file text and the sha256 (hex)
// of that text, and the effective params (rules.RuleInfo).
type Rule struct {
	ID       string   `json:"id"`
	Title    string   `json:"title"`
	Severity string   `json:"severity"`
	Controls []string `json:"controls"`
	// File is where the server read the rule (for messages).
	File   string `json:"file,omitempty"`
	SHA256 string `json:"sha256"`
	Text   string `json:"text"`
	// Params are the effective values of the params the rule declares or
	// reads, as the rules engine formats them.
	Params map[string]string `json:"params,omitempty"`
}

// Finding is one finding, the shape of `grantline evaluate --json`, with the
// primary entry first in Entries.
type Finding struct {
	Rule            string     `json:"rule"`
	Title           string     `json:"title"`
	Severity        string     `json:"severity"`
	Controls        []string   `json:"controls"`
	Subject         string     `json:"subject"`
	Entries         []EntryRef `json:"entries"`
	Message         string     `json:"message"`
	ExposureSeconds int64      `json:"exposure_seconds"`
	// OpenedAt is when the finding opened; ClosedAt when it closed, null
	// while still open at the as-of time.
	OpenedAt time.Time  `json:"opened_at"`
	ClosedAt *time.Time `json:"closed_at"`
	// SharesPrimaryWith is the rule of a more specific finding about the
	// same subject and primary entry, when there is one.
	SharesPrimaryWith string `json:"shares_primary_with,omitempty"`
}

// Primary returns the index of the finding's primary entry, and false when it
// cites none.
func (f *Finding) Primary() (uint64, bool) {
	if len(f.Entries) == 0 {
		return 0, false
	}
	return f.Entries[0].Index, true
}

// PopulationRow is one line of population.jsonl: one item of the population
// of one rule, under one control of the package's framework
// (verify/FORMAT.md "Populations"). Lines are sorted by (control, rule,
// subject, index).
type PopulationRow struct {
	Control string    `json:"control"`
	Rule    string    `json:"rule"`
	Subject string    `json:"subject"`
	Index   uint64    `json:"index"`
	EventID string    `json:"event_id"`
	Time    time.Time `json:"time"`
	// Result is "pass", or "fail" when a finding of Rule has this entry as
	// its primary entry; Finding is then that finding's position in
	// findings.json's findings (0-based), null for a pass.
	Result  string `json:"result"`
	Finding *int   `json:"finding"`
}

// RowKey identifies a population row within a package.
type RowKey struct {
	Control string `json:"control"`
	Rule    string `json:"rule"`
	Subject string `json:"subject"`
	Index   uint64 `json:"index"`
}

// Key is the row's RowKey.
func (r PopulationRow) Key() RowKey {
	return RowKey{Control: r.Control, Rule: r.Rule, Subject: r.Subject, Index: r.Index}
}

// SampleFormat is the value of Sample.Format for this version.
const SampleFormat = "grantline.dev/evidence/sample/v1"

// Sample is sample.json, written by `grantline sample`: the seed and size an
// auditor chose and the rows drawn, which `grantline verify --sample`
// draws again from the package's population (verify/FORMAT.md "Samples").
type Sample struct {
	Format string `json:"format"`
	Seed   string `json:"seed"`
	Size   int    `json:"size"`
	// Framework is the package's framework (findings.json), "" for the default.
	Framework string `json:"framework,omitempty"`
	// Population is the sha256 (hex) of the population.jsonl drawn from.
	Population string   `json:"population_sha256"`
	Rows       []RowKey `json:"rows"`
}

// Population results.
const (
	Pass = "pass"
	Fail = "fail"
)

// EntryRef names a ledger entry a finding cites.
type EntryRef struct {
	Index   uint64 `json:"index"`
	EventID string `json:"event_id"`
}

// RuleError is a rule that could not be evaluated for a subject.
type RuleError struct {
	Rule    string `json:"rule"`
	Subject string `json:"subject"`
	Message string `json:"message"`
}

// Consistency is consistency.json: RFC 6962 consistency proofs from earlier
// checkpoint sizes to the package's checkpoint size, so that an auditor who
// kept an older checkpoint can check the log only grew.
type Consistency struct {
	Format string             `json:"format"`
	Size   uint64             `json:"size"`
	Proofs []ConsistencyProof `json:"proofs"`
}

// ConsistencyProof proves that the tree of size From is a prefix of the tree
// of size To.
type ConsistencyProof struct {
	From  uint64   `json:"from"`
	To    uint64   `json:"to"`
	Proof [][]byte `json:"proof"`
}

// FileDigest is the sha256 (hex) and size of one file of a package.
type FileDigest struct {
	Name   string
	SHA256 string
	Size   int64
}

// Scope is what a renderer needs beside the findings: the files written so
// far, and facts about the cited entries gathered while exporting.
type Scope struct {
	Findings *Findings
	// Files are the digests of the package files written before the renderer runs.
	Files []FileDigest
	// Entries is the number of entries in entries.jsonl.
	Entries uint64
	// Subjects is the number of distinct subjects in entries.jsonl.
	Subjects uint64
	// SourceOf maps a cited entry's index to its event's source.system.
	SourceOf map[uint64]string
	// DisplayOf maps a subject id to its display name, when an event gave one.
	DisplayOf map[string]string
	// Events describes each cited entry, for the report's rows.
	Events map[uint64]EventRow
	// ApproverOf maps ApprovalKey(subject, request) to the actor of the
	// access.approved of that request in the package's entries.
	ApproverOf map[string]string
	// GeneratedAt is when the package was made; Version the Grantline
	// version that made it.
	GeneratedAt time.Time
	Version     string
	// LogKey is the log's verifier key (signed-note form) when known;
	// EvidenceKeyID the SHA-256 (hex) of the evidence public key (DER).
	LogKey, EvidenceKeyID string
	// Population are the rows of population.jsonl, for the report's and
	// OSCAL's population tables and the report's MFA coverage (nil: no
	// population).
	Population []PopulationRow
}

// EventRow is what a report shows of one cited ledger entry.
type EventRow struct {
	Index                  uint64
	EventID, Type          string
	Time, ObservedTime     time.Time
	Source, Actor, Request string
	// Breakglass is the event's breakglass flag.
	Breakglass bool
}

// ApprovalKey is the key of Scope.ApproverOf.
func ApprovalKey(subject, request string) string { return subject + "\x00" + request }
