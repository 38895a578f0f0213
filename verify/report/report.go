// Package report renders the human side of an evidence package: report.html,
// one self-contained page (inline CSS, charts as inline SVG, no scripts, no
// network) that a compliance lead can read in a minute and hand to an
// auditor, and findings.csv for spreadsheets, safe against formula injection.
// Everything is escaped by html/template.
package report

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	_ "embed"
	"encoding/csv"
	"encoding/hex"
	"fmt"
	"html/template"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/grantline/grantline/internal/textsafe"
	"github.com/grantline/grantline/rules"
	"github.com/grantline/grantline/verify/format"
	"github.com/grantline/grantline/verify/oscal"
)

// Options tune the report.
type Options struct {
	// PackageName is how the verify command names the package (a folder or
	// .tar.gz name).
	PackageName string
	// MaxRows bounds the identity and finding-detail tables (the CSV has
	// every finding); 0 means 200.
	MaxRows int
}

//go:embed report.html.tmpl
var pageText string

var page = template.Must(template.New("report").Funcs(template.FuncMap{
	"dur":   format.Duration,
	"lower": strings.ToLower,
}).Parse(pageText))

// stamp formats a time for people: UTC, to the second; "" for zero.
func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

// severities in descending order.
var severities = []string{"critical", "high", "medium", "low", "info"}

func sevRank(s string) int {
	if i := slices.Index(severities, strings.ToLower(s)); i >= 0 {
		return i
	}
	return len(severities)
}

type sevCount struct {
	Severity string
	Count    int
}

type group struct {
	Key, Label, Title string
	Severity          string // highest
	Count             int
	Subjects          int
	Exposure          int64
	Rules             []string
	subjects          map[string]bool
	rules             map[string]bool
}

type bar struct {
	Label    string
	Value    string
	Y, W     int
	TextY    int
	ValueX   int
	Severity string
}

type chart struct {
	Title, Note string
	Height      int
	Bars        []bar
	Empty       bool
}

type row struct {
	Rule, Title, Severity, Subject, Display, Message, Source string
	Entries                                                  string
	Exposure                                                 int64
	// Opened, Closed: when the finding opened and closed ("" while open).
	Opened, Closed string
	// Shares is the rule of the more specific finding it is grouped under.
	Shares string
	// Also are the findings grouped under this one (same primary entry,
	// or the same break-glass incident); Why says which, on those.
	Also []row
	Why  string
	// Incident is the request of the break-glass incident this finding
	// leads ("" when none).
	Incident string
	// Events are the cited entries; Params the rule's effective params.
	Events []eventRow
	Params string
}

type eventRow struct {
	Index                                        uint64
	EventID, Type, Time, Observed, Source, Actor string
	Approver                                     string
	Role                                         string
}

type controlRow struct {
	ID, Title, State, Why, Tested string
	Findings                      int
	// Population is "N items, K exceptions" when the control's rules
	// tested a population.
	Population string
}

// popRow is one population (control, rule) of the report's table.
type popRow struct {
	Control, ControlTitle, Rule, Title  string
	Items, Passes, Exceptions, Subjects int
	Rate                                string
	// First is set on the first row of a control (the control cell).
	First bool
	Span  int
}

type ruleRow struct {
	ID, Title, Severity, SHA256, Short string
	Controls, Params                   string
	Findings                           int
}

type view struct {
	Origin, Root, AsOf, Package string
	// Period is "FROM to TO" for a period package, "" for an instant.
	Period, From      string
	Framework         string
	Controls          []controlRow
	ControlCounts     map[string]int
	Distinct, Grouped int
	// Incidents counts the findings that belong to a break-glass
	// incident of two or more findings.
	Incidents                int
	Generated, Version       string
	LogKey, LogKeySHA, EvKey string
	Complete                 bool
	Size                     uint64
	Entries, Subjects        uint64
	All                      bool
	Total                    int
	BySeverity               []sevCount
	Identities               int
	Evaluated                uint64
	Exposure                 int64
	ExposureFindings         int
	Rules                    []ruleRow
	ByRule                   []*group
	ByIdentity               []*group
	IdentitiesShown          int
	Charts                   []chart
	Rows                     []row
	RowsShown                int
	Files                    []format.FileDigest
	VerifyCmd                string
	Errors                   []format.RuleError
	// Populations are the population tables (population.jsonl), with
	// their totals.
	Populations                        []popRow
	PopItems, PopExceptions, PopGroups int
	SampleCmd                          string
	// MFA is the MFA coverage of privileged sessions (PCI DSS 8.4.1):
	// nil when the package's population has none.
	MFA *mfaCoverage

	// TrustedExpiry are the source systems the rule set trusts to end
	// access at its expiry (the expiry_enforced_by param, docs/rules.md).
	TrustedExpiry []string
}

// mfaCoverage counts the privileged sessions of the MFA rules'
// population (docs/rules.md "Populations") and those with MFA recorded
// and used: the items neither rule fails.
type mfaCoverage struct {
	Covered, Total int
	Percent        string
}

// mfaRules are the rules whose populations are the privileged sessions.
var mfaRules = []string{"privileged-session-without-mfa", "privileged-session-mfa-unrecorded"}

func mfaCoverageOf(rows []format.PopulationRow) *mfaCoverage {
	type item struct {
		subject string
		index   uint64
	}
	failed := map[item]bool{}
	for _, r := range rows {
		if slices.Contains(mfaRules, r.Rule) {
			k := item{r.Subject, r.Index}
			failed[k] = failed[k] || r.Result == format.Fail
		}
	}
	if len(failed) == 0 {
		return nil
	}
	c := &mfaCoverage{Total: len(failed)}
	for _, f := range failed {
		if !f {
			c.Covered++
		}
	}
	c.Percent = strconv.FormatFloat(100*float64(c.Covered)/float64(c.Total), 'f', 1, 64) + "%"
	return c
}

// WriteHTML writes report.html for scope. Beyond html/template's escaping,
// every control, format or separator character the data brings (a bidi
// override U+202E, a zero-width space U+200B, U+2028, U+0085, ESC...) is
// shown as an escape such as \u202e, so nothing in the report is hidden or
// reordered; a newline in the data is left as is (HTML shows it as a space).
func WriteHTML(w io.Writer, scope *format.Scope, opts Options) error {
	v := buildView(scope, opts)
	var b bytes.Buffer
	if err := page.Execute(&b, v); err != nil {
		return err
	}
	_, err := io.WriteString(w, textsafe.Escape(b.String(), '\n'))
	return err
}

func buildView(scope *format.Scope, opts Options) *view {
	doc := scope.Findings
	maxRows := opts.MaxRows
	if maxRows <= 0 {
		maxRows = 200
	}
	name := opts.PackageName
	if name == "" {
		name = "evidence"
	}
	v := &view{
		Origin: doc.Origin, Size: doc.CheckpointSize, Root: hex.EncodeToString(doc.CheckpointRoot),
		AsOf: stamp(doc.AsOf), Package: name, Complete: doc.All,
		Generated: stamp(scope.GeneratedAt), Version: scope.Version, LogKey: scope.LogKey, EvKey: scope.EvidenceKeyID,
		Entries: scope.Entries, Subjects: scope.Subjects, All: doc.All, Total: len(doc.Findings),
		Files: scope.Files, Errors: doc.Errors,
		VerifyCmd: fmt.Sprintf("grantline verify %s --log-key log.vkey --evidence-key evidence.pub", shellQuote(name)),
		SampleCmd: fmt.Sprintf("grantline sample %s --seed SEED --size N", shellQuote(name)),
	}
	if doc.From != nil {
		v.From = stamp(*doc.From)
		v.Period = v.From + " to " + v.AsOf
	}
	if scope.LogKey != "" {
		sum := sha256.Sum256([]byte(strings.TrimSpace(scope.LogKey)))
		v.LogKeySHA = hex.EncodeToString(sum[:])
	}
	ruleTitles := map[string]string{}
	for _, r := range doc.Rules {
		ruleTitles[r.ID] = r.Title
	}
	if cat, err := oscal.LoadCatalog(doc.Framework); err == nil {
		v.Framework = cat.Title
		controlTitles := map[string]string{}
		for _, c := range cat.Controls {
			controlTitles[c.ID] = c.Title
		}
		pop := map[string][2]int{}
		groups := oscal.SummarizePopulation(scope.Population, cat)
		for i, g := range groups {
			r := popRow{Control: g.Control, ControlTitle: controlTitles[g.Control], Rule: g.Rule, Title: ruleTitles[g.Rule],
				Items: g.Items, Passes: g.Passes(), Exceptions: g.Exceptions, Subjects: g.Subjects, Rate: rate(g.Exceptions, g.Items)}
			if i == 0 || groups[i-1].Control != g.Control {
				r.First = true
				for j := i; j < len(groups) && groups[j].Control == g.Control; j++ {
					r.Span++
				}
			}
			v.Populations = append(v.Populations, r)
			c := pop[g.Control]
			pop[g.Control] = [2]int{c[0] + g.Items, c[1] + g.Exceptions}
			v.PopItems += g.Items
			v.PopExceptions += g.Exceptions
		}
		v.PopGroups = len(groups)
		sts, _ := oscal.Assess(doc, cat)
		v.ControlCounts = map[string]int{}
		for _, st := range sts {
			cr := controlRow{ID: st.Control.ID, Title: st.Control.Title, State: st.State,
				Why: st.Why, Tested: strings.Join(st.Tested, ", "), Findings: len(st.Findings)}
			if p, ok := pop[st.Control.ID]; ok {
				cr.Population = fmt.Sprintf("%d items, %d exception%s", p[0], p[1], plural(p[1]))
			}
			v.Controls = append(v.Controls, cr)
			v.ControlCounts[st.State]++
		}
	}
	counts := map[string]int{}
	byRule := map[string]*group{}
	byID := map[string]*group{}
	bySource := map[string]*group{}
	subjects := map[string]bool{}
	titles := map[string]string{}
	for _, r := range doc.Rules {
		titles[r.ID] = r.Title
	}
	get := func(m map[string]*group, key, label string) *group {
		g, ok := m[key]
		if !ok {
			g = &group{Key: key, Label: label, subjects: map[string]bool{}, rules: map[string]bool{}, Severity: "info"}
			m[key] = g
		}
		return g
	}
	ruleFindings := map[string]int{}
	// Exposure is a union of intervals (rules.ExposureBySubject): per
	// identity from findings.json's exposure_by_subject, per rule and per
	// source over their own findings, so one grant cited by several rules
	// counts once everywhere.
	union := map[string][]rules.Finding{}
	// A finding is grouped under another when it shares its primary entry
	// with a more specific one, or belongs to a break-glass incident led by
	// another finding (oscal.BreakglassIncidents).
	incident := oscal.BreakglassIncidents(doc, scope.Events)
	groupedUnder := func(i int) (lead int, ok bool) {
		if l, in := incident[i]; in {
			return l, l != i
		}
		return -1, doc.Findings[i].SharesPrimaryWith != ""
	}
	for i, f := range doc.Findings {
		counts[strings.ToLower(f.Severity)]++
		subjects[f.Subject] = true
		if f.ExposureSeconds > 0 {
			v.ExposureFindings++
		}
		if _, ok := groupedUnder(i); ok {
			v.Grouped++
		}
		if _, ok := incident[i]; ok {
			v.Incidents++
		}
		rf := rules.Finding{Subject: f.Subject, ExposureSeconds: f.ExposureSeconds}
		if f.ClosedAt != nil {
			rf.ClosedAt = *f.ClosedAt
		}
		ruleFindings[f.Rule]++
		src := "unknown"
		if p, ok := f.Primary(); ok && scope.SourceOf[p] != "" {
			src = scope.SourceOf[p]
		}
		union["rule\x00"+f.Rule] = append(union["rule\x00"+f.Rule], rf)
		union["source\x00"+src] = append(union["source\x00"+src], rf)
		for _, g := range []*group{get(byRule, f.Rule, f.Rule), get(byID, f.Subject, f.Subject), get(bySource, src, src)} {
			g.Count++
			g.subjects[f.Subject] = true
			g.rules[f.Rule] = true
			if sevRank(f.Severity) < sevRank(g.Severity) {
				g.Severity = strings.ToLower(f.Severity)
			}
		}
	}
	exposureOf := func(fs []rules.Finding) int64 {
		var n int64
		for _, e := range rules.ExposureBySubject(fs, doc.AsOf) {
			n += e
		}
		return n
	}
	for k, g := range byRule {
		g.Exposure = exposureOf(union["rule\x00"+k])
	}
	for k, g := range bySource {
		g.Exposure = exposureOf(union["source\x00"+k])
	}
	for k, g := range byID {
		g.Exposure = doc.ExposureBySubject[k]
	}
	for _, e := range doc.ExposureBySubject {
		v.Exposure += e
	}
	v.Distinct = len(doc.Findings) - v.Grouped
	for _, s := range severities {
		if s != "info" || counts[s] > 0 {
			v.BySeverity = append(v.BySeverity, sevCount{s, counts[s]})
		}
	}
	params := map[string]string{}
	for _, r := range doc.Rules {
		var ps []string
		for _, k := range slices.Sorted(maps.Keys(r.Params)) {
			ps = append(ps, k+" = "+r.Params[k])
		}
		params[r.ID] = strings.Join(ps, ", ")
	}
	v.Evaluated = doc.SubjectsEvaluated
	v.MFA = mfaCoverageOf(scope.Population)
	v.TrustedExpiry = trustedExpiry(doc.Rules)
	v.Identities = len(subjects)
	for _, r := range doc.Rules {
		short := r.SHA256
		if len(short) > 12 {
			short = short[:12]
		}
		v.Rules = append(v.Rules, ruleRow{ID: r.ID, Title: r.Title, Severity: strings.ToLower(r.Severity), SHA256: r.SHA256, Short: short, Controls: strings.Join(r.Controls, ", "), Params: params[r.ID], Findings: ruleFindings[r.ID]})
	}
	finish := func(m map[string]*group) []*group {
		out := make([]*group, 0, len(m))
		for _, g := range m {
			g.Subjects = len(g.subjects)
			for r := range g.rules {
				g.Rules = append(g.Rules, r)
			}
			slices.Sort(g.Rules)
			g.Title = titles[g.Key]
			out = append(out, g)
		}
		slices.SortFunc(out, func(a, b *group) int {
			if c := cmp.Compare(sevRank(a.Severity), sevRank(b.Severity)); c != 0 {
				return c
			}
			if c := cmp.Compare(b.Exposure, a.Exposure); c != 0 {
				return c
			}
			if c := cmp.Compare(b.Count, a.Count); c != 0 {
				return c
			}
			return cmp.Compare(a.Key, b.Key)
		})
		return out
	}
	v.ByRule = finish(byRule)
	ids := finish(byID)
	for _, g := range ids {
		if d := scope.DisplayOf[g.Key]; d != "" {
			g.Title = d
		}
	}
	v.IdentitiesShown = min(len(ids), maxRows)
	v.ByIdentity = ids[:v.IdentitiesShown]
	sources := finish(bySource)

	v.Charts = []chart{
		exposureChart("Exposure by rule", "How long privilege outlived its deadline, per rule (overlapping intervals of one identity counted once).", byExposure(v.ByRule), 12),
		exposureChart("Exposure by identity", "The identities whose privilege outlived its purpose longest.", byExposure(ids), 12),
		exposureChart("Exposure by source", "Which system's privilege lingers: by the source of each finding's primary event (overlaps counted once).", byExposure(sources), 12),
	}

	mkRow := func(f format.Finding) row {
		var es []string
		r := row{Rule: f.Rule, Title: titles[f.Rule], Severity: strings.ToLower(f.Severity), Subject: f.Subject, Display: scope.DisplayOf[f.Subject],
			Message: f.Message, Exposure: f.ExposureSeconds, Opened: stamp(f.OpenedAt), Shares: f.SharesPrimaryWith, Params: params[f.Rule]}
		if f.ClosedAt != nil {
			r.Closed = stamp(*f.ClosedAt)
		}
		for i, e := range f.Entries {
			es = append(es, strconv.FormatUint(e.Index, 10))
			ev, ok := scope.Events[e.Index]
			role := "cited"
			if i == 0 {
				role = "primary"
			}
			er := eventRow{Index: e.Index, EventID: e.EventID, Role: role}
			if ok {
				er.Type, er.Time, er.Observed, er.Source, er.Actor = ev.Type, stamp(ev.Time), stamp(ev.ObservedTime), ev.Source, ev.Actor
				if ev.Request != "" {
					er.Approver = scope.ApproverOf[format.ApprovalKey(f.Subject, ev.Request)]
				}
			}
			r.Events = append(r.Events, er)
		}
		p, _ := f.Primary()
		r.Source = scope.SourceOf[p]
		r.Entries = strings.Join(es, ", ")
		return r
	}
	// Findings that share a primary entry with a more specific one are
	// shown under it.
	type key struct {
		subject string
		index   uint64
	}
	also := map[key][]row{}
	alsoIncident := map[int][]row{} // lead finding -> its incident's others
	var leads []int
	for i, f := range doc.Findings {
		p, _ := f.Primary()
		lead, grouped := groupedUnder(i)
		switch {
		case grouped && lead >= 0:
			r := mkRow(f)
			r.Why = "Same entry"
			if lp, _ := doc.Findings[lead].Primary(); lp != p {
				r.Why = "Same break-glass incident (request " + scope.Events[p].Request + ")"
			}
			alsoIncident[lead] = append(alsoIncident[lead], r)
		case grouped:
			r := mkRow(f)
			r.Why = "Same entry"
			also[key{f.Subject, p}] = append(also[key{f.Subject, p}], r)
		default:
			leads = append(leads, i)
		}
	}
	slices.SortStableFunc(leads, func(i, j int) int {
		a, b := doc.Findings[i], doc.Findings[j]
		if c := cmp.Compare(sevRank(a.Severity), sevRank(b.Severity)); c != 0 {
			return c
		}
		return cmp.Compare(b.ExposureSeconds, a.ExposureSeconds)
	})
	v.RowsShown = min(len(leads), maxRows)
	for _, i := range leads[:v.RowsShown] {
		f := doc.Findings[i]
		r := mkRow(f)
		p, _ := f.Primary()
		r.Also = append(also[key{f.Subject, p}], alsoIncident[i]...)
		if _, ok := incident[i]; ok {
			r.Incident = scope.Events[p].Request
		}
		v.Rows = append(v.Rows, r)
	}
	return v
}

// rate is the share of exceptions, "0%" to "100%" with one decimal when
// it is not whole.
func rate(exceptions, items int) string {
	if items == 0 {
		return "—"
	}
	p := float64(exceptions) * 100 / float64(items)
	if p == float64(int(p)) {
		return fmt.Sprintf("%d%%", int(p))
	}
	return fmt.Sprintf("%.1f%%", p)
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func byExposure(gs []*group) []*group {
	out := slices.Clone(gs)
	slices.SortStableFunc(out, func(a, b *group) int {
		if c := cmp.Compare(b.Exposure, a.Exposure); c != 0 {
			return c
		}
		return cmp.Compare(a.Key, b.Key)
	})
	return out
}

// exposureChart lays out a horizontal bar chart of the groups' exposure.
func exposureChart(title, note string, gs []*group, limit int) chart {
	const barH, gap, width = 18, 8, 520
	c := chart{Title: title, Note: note}
	var maxE int64
	for _, g := range gs {
		maxE = max(maxE, g.Exposure)
	}
	if maxE == 0 {
		c.Empty = true
		c.Height = 30
		return c
	}
	for i, g := range gs {
		if i == limit || g.Exposure == 0 {
			break
		}
		w := int(float64(g.Exposure) / float64(maxE) * width)
		y := i * (barH + gap)
		label := g.Label
		if len([]rune(label)) > 28 {
			label = string([]rune(label)[:27]) + "…"
		}
		c.Bars = append(c.Bars, bar{Label: label, Value: format.Duration(g.Exposure), Y: y, W: max(w, 2), TextY: y + 13, ValueX: 210 + max(w, 2) + 6, Severity: g.Severity})
	}
	c.Height = len(c.Bars)*(barH+gap) + 4
	return c
}

func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./+:=@", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// CSVHeader is the header row of findings.csv.
var CSVHeader = []string{"rule", "title", "severity", "subject", "subject_display", "primary_index", "primary_event_id", "entries", "controls", "exposure_seconds", "exposure", "source", "message", "opened_at", "closed_at", "shares_primary_with"}

// SafeCell neutralises spreadsheet formula injection and hidden text: a cell
// that starts with = + - @, white space (tab, carriage return, newline,
// space...) or a control character gets a leading single quote, and every
// control, format or separator character in it (tab, newline, U+202E,
// U+200B, U+2028, U+0085...) is shown as an escape such as \u202e.
// findings.json keeps the exact text.
func SafeCell(s string) string {
	if r, _ := utf8.DecodeRuneInString(s); s != "" && (strings.ContainsRune("=+-@", r) || unicode.IsSpace(r) || textsafe.Hidden(r)) {
		s = "'" + s
	}
	return textsafe.Escape(s)
}

// WriteCSV writes findings.csv: one row per finding, in findings.json order.
func WriteCSV(w io.Writer, scope *format.Scope) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(CSVHeader); err != nil {
		return err
	}
	for _, f := range scope.Findings.Findings {
		var es []string
		for _, e := range f.Entries {
			es = append(es, fmt.Sprintf("%d:%s", e.Index, e.EventID))
		}
		p, _ := f.Primary()
		pid := ""
		if len(f.Entries) > 0 {
			pid = f.Entries[0].EventID
		}
		closedAt := ""
		if f.ClosedAt != nil {
			closedAt = f.ClosedAt.UTC().Format(time.RFC3339)
		}
		rec := []string{f.Rule, f.Title, f.Severity, f.Subject, scope.DisplayOf[f.Subject], strconv.FormatUint(p, 10), pid,
			strings.Join(es, " "), strings.Join(f.Controls, " "), strconv.FormatInt(f.ExposureSeconds, 10), format.Duration(f.ExposureSeconds), scope.SourceOf[p], f.Message,
			f.OpenedAt.UTC().Format(time.RFC3339), closedAt, f.SharesPrimaryWith}
		for i := range rec {
			rec[i] = SafeCell(rec[i])
		}
		if err := cw.Write(rec); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// trustedExpiry reads the expiry_enforced_by param ("[a, b]", as the rules
// engine formats a list) of the rules that read it, and returns the systems
// named, sorted and unique.
func trustedExpiry(rs []format.Rule) []string {
	seen := map[string]bool{}
	for _, r := range rs {
		v, ok := r.Params["expiry_enforced_by"]
		if !ok {
			continue
		}
		for _, sys := range strings.Split(strings.TrimSuffix(strings.TrimPrefix(v, "["), "]"), ",") {
			if sys = strings.TrimSpace(sys); sys != "" {
				seen[sys] = true
			}
		}
	}
	return slices.Sorted(maps.Keys(seen))
}
