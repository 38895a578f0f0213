package verify

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/grantline/grantline/rules"
	"github.com/grantline/grantline/verify/format"
)

// RulesEvaluator re-runs recorded rules with the Grantline rules engine
// (package rules): it parses each recorded rule text, rebuilds the set with
// the recorded param overrides, checks that every rule's sha256 and
// effective params equal the recorded ones, and evaluates at the recorded
// as-of time. It is the DefaultEvaluator.
type RulesEvaluator struct {
	// Options are the engine's limits; zero means its defaults.
	Options rules.Options
}

func init() { DefaultEvaluator = RulesEvaluator{} }

// ParamsFile is the name under which recorded param overrides are parsed
// (it appears in error messages).
const ParamsFile = "findings.json#params"

// Evaluate implements Evaluator.
func (e RulesEvaluator) Evaluate(ctx context.Context, doc *format.Findings, subjects []string, chains rules.ChainSource) ([]format.Finding, error) {
	set, err := RebuildSet(doc, e.Options)
	if err != nil {
		return nil, err
	}
	var res *rules.Result
	if doc.From != nil {
		res, err = set.EvaluatePeriod(ctx, subjects, chains, *doc.From, doc.AsOf)
	} else {
		res, err = set.Evaluate(ctx, subjects, chains, doc.AsOf)
	}
	if err != nil {
		return nil, err
	}
	recorded := map[[2]string]bool{}
	for _, re := range doc.Errors {
		recorded[[2]string{re.Rule, re.Subject}] = true
	}
	for _, re := range res.Errors {
		if !recorded[[2]string{re.Rule, re.Subject}] {
			return nil, fmt.Errorf("rule %q could not be evaluated for subject %q: %s (the export recorded no such error)", re.Rule, re.Subject, re.Message)
		}
	}
	got := FindingsFromRules(res.Findings)
	if err := CheckExposure(doc, got); err != nil {
		return nil, err
	}
	return got, nil
}

// CheckExposure checks that the recorded exposure_by_subject is the union
// of the exposure intervals of fs (the re-evaluated findings): the totals a
// report shows reconcile with its findings.
func CheckExposure(doc *format.Findings, fs []format.Finding) error {
	if doc.ExposureBySubject == nil {
		return nil // a package from before exposure_by_subject
	}
	want := ExposureBySubject(fs, doc.AsOf)
	if !maps.Equal(want, doc.ExposureBySubject) {
		for _, s := range slices.Sorted(maps.Keys(want)) {
			if doc.ExposureBySubject[s] != want[s] {
				return fmt.Errorf("exposure_by_subject[%q] is %ds, but the union of its findings' exposure is %ds", s, doc.ExposureBySubject[s], want[s])
			}
		}
		for s, n := range doc.ExposureBySubject {
			if _, ok := want[s]; !ok {
				return fmt.Errorf("exposure_by_subject[%q] is %ds, but no finding of that subject carries exposure", s, n)
			}
		}
	}
	return nil
}

// ExposureBySubject is rules.ExposureBySubject over package findings.
func ExposureBySubject(fs []format.Finding, asOf time.Time) map[string]int64 {
	rf := make([]rules.Finding, len(fs))
	for i, f := range fs {
		rf[i] = rules.Finding{Subject: f.Subject, ExposureSeconds: f.ExposureSeconds}
		if f.ClosedAt != nil {
			rf[i].ClosedAt = *f.ClosedAt
		}
	}
	return rules.ExposureBySubject(rf, asOf)
}

// RebuildSet compiles the rule set recorded in doc and checks it is the one
// recorded: same ids, sha256s and effective params.
func RebuildSet(doc *format.Findings, o rules.Options) (*rules.Set, error) {
	var rs []*rules.Rule
	for _, r := range doc.Rules {
		name := r.File
		if name == "" {
			name = r.ID + ".yaml"
		}
		pr, err := rules.ParseRule(name, []byte(r.Text))
		if err != nil {
			return nil, fmt.Errorf("recorded rule %q does not compile: %w", r.ID, err)
		}
		if pr.ID != r.ID {
			return nil, fmt.Errorf("recorded rule %q: its text declares id %q", r.ID, pr.ID)
		}
		rs = append(rs, pr)
	}
	var params rules.Params
	if p := bytes.TrimSpace(doc.Params); len(p) > 0 && !bytes.Equal(p, []byte("null")) {
		var err error
		if params, err = rules.ParseParams(ParamsFile, p); err != nil {
			return nil, fmt.Errorf("recorded params: %w", err)
		}
	}
	set, err := rules.NewSetWithOptions(rs, params, o)
	if err != nil {
		return nil, fmt.Errorf("rebuilding the recorded rule set: %w", err)
	}
	got := set.Rules()
	if len(got) != len(doc.Rules) {
		return nil, fmt.Errorf("the recorded rules hold %d rules but only %d distinct ids", len(doc.Rules), len(got))
	}
	want := slices.Clone(doc.Rules)
	slices.SortFunc(want, func(a, b format.Rule) int { return strings.Compare(a.ID, b.ID) })
	for i, g := range got {
		w := want[i]
		if g.ID != w.ID || g.SHA256 != w.SHA256 {
			return nil, fmt.Errorf("rule %q: rebuilt sha256 %s, recorded %q %s", g.ID, g.SHA256, w.ID, w.SHA256)
		}
		if !maps.Equal(g.Params, w.Params) && (len(g.Params) > 0 || len(w.Params) > 0) {
			return nil, fmt.Errorf("rule %q: effective params %v with the recorded overrides, but the export recorded %v", g.ID, g.Params, w.Params)
		}
	}
	return set, nil
}

// FindingsFromRules converts the rules engine's findings to the package format.
func FindingsFromRules(fs []rules.Finding) []format.Finding {
	out := make([]format.Finding, len(fs))
	for i, f := range fs {
		refs := make([]format.EntryRef, len(f.Entries))
		for j, e := range f.Entries {
			refs[j] = format.EntryRef{Index: e.Index, EventID: e.EventID}
		}
		out[i] = format.Finding{Rule: f.Rule, Title: f.Title, Severity: f.Severity, Controls: f.Controls, Subject: f.Subject,
			Entries: refs, Message: f.Message, ExposureSeconds: f.ExposureSeconds,
			OpenedAt: f.OpenedAt.UTC(), SharesPrimaryWith: f.SharesPrimaryWith}
		if !f.ClosedAt.IsZero() {
			c := f.ClosedAt.UTC()
			out[i].ClosedAt = &c
		}
	}
	return out
}

// FindingsDocument builds the findings document a Source's Evaluate returns
// from a rule set, its result and the param overrides as given to the server
// (YAML or JSON, e.g. the `serve --params` file; nil for none). Export fills
// in the checkpoint and as-of fields.
func FindingsDocument(set *rules.Set, res *rules.Result, paramsYAML []byte) (*format.Findings, error) {
	pj, err := ParamsJSON(paramsYAML)
	if err != nil {
		return nil, err
	}
	doc := &format.Findings{Params: pj, SubjectsEvaluated: uint64(res.Subjects), EntriesEvaluated: uint64(res.Entries)}
	for _, r := range set.Rules() {
		doc.Rules = append(doc.Rules, format.Rule{ID: r.ID, Title: r.Title, Severity: r.Severity, Controls: r.Controls,
			File: r.File, SHA256: r.SHA256, Text: r.Text, Params: r.Params})
	}
	doc.Findings = FindingsFromRules(res.Findings)
	doc.ExposureBySubject = res.ExposureBySubject
	if res.Period {
		from := res.From.UTC()
		doc.From = &from
	}
	for _, e := range res.Errors {
		doc.Errors = append(doc.Errors, format.RuleError{Rule: e.Rule, Subject: e.Subject, Message: e.Message})
	}
	return doc, nil
}

// ParamsJSON converts a params file (YAML mapping, e.g. `jit_grace: 30m`) to
// the JSON object findings.json records; nil or empty input gives nil.
// rules.ParseParams reads the JSON back (JSON is YAML) with the same meaning.
func ParamsJSON(paramsYAML []byte) (json.RawMessage, error) {
	if len(bytes.TrimSpace(paramsYAML)) == 0 {
		return nil, nil
	}
	var m map[string]any
	if err := yaml.Unmarshal(paramsYAML, &m); err != nil {
		return nil, fmt.Errorf("params: %w", err)
	}
	if len(m) == 0 {
		return nil, nil
	}
	return json.Marshal(m)
}
