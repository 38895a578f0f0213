// Package report renders the human side of an evidence package: report.html,
// one self-contained page (inline CSS, charts as inline SVG, no scripts, no
// network) that a compliance lead can read in a minute and hand to an
// auditor, and findings.csv for spreadsheets, safe against formula injection.
// Everything is escaped by html/template.
package report

import (
	"bytes"
	"cmp"
	_ "embed"
	"encoding/csv"
	"encoding/hex"
	"fmt"
	"html/template"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/grantline/grantline/internal/textsafe"
	"github.com/grantline/grantline/verify/format"
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
	"dur":   Duration,
	"lower": strings.ToLower,
}).Parse(pageText))

// severities in descending order.
var severities = []string{"critical", "high", "medium", "low", "info"}

func sevRank(s string) int {
	if i := slices.Index(severities, strings.ToLower(s)); i >= 0 {
		return i
	}
	return len(severities)
}

// Duration formats seconds as days, hours and minutes ("3d 4h", "25m").
func Duration(sec int64) string {
	if sec <= 0 {
		return "0"
	}
	d := time.Duration(sec) * time.Second
	days := int64(d / (24 * time.Hour))
	h := int64(d/time.Hour) % 24
	m := int64(d/time.Minute) % 60
	switch {
	case days > 0 && h > 0:
		return fmt.Sprintf("%dd %dh", days, h)
	case days > 0:
		return fmt.Sprintf("%dd", days)
	case h > 0:
		return fmt.Sprintf("%dh %dm", h, m)
	case m > 0:
		return fmt.Sprintf("%dm", m)
	}
	return fmt.Sprintf("%ds", sec)
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
	Rule, Severity, Subject, Display, Message, Source string
	Entries                                           string
	Exposure                                          int64
}

type ruleRow struct {
	ID, Title, Severity, SHA256, Short string
	Controls                           string
	Findings                           int
}

type view struct {
	Origin, Root, AsOf, Package string
	Size                        uint64
	Entries, Subjects           uint64
	All                         bool
	Total                       int
	BySeverity                  []sevCount
	Identities                  int
	Evaluated                   uint64
	Exposure                    int64
	ExposureFindings            int
	Rules                       []ruleRow
	ByRule                      []*group
	ByIdentity                  []*group
	IdentitiesShown             int
	Charts                      []chart
	Rows                        []row
	RowsShown                   int
	Files                       []format.FileDigest
	VerifyCmd                   string
	Errors                      []format.RuleError
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
		AsOf: doc.AsOf.UTC().Format("2006-01-02 15:04:05 MST"), Package: name,
		Entries: scope.Entries, Subjects: scope.Subjects, All: doc.All, Total: len(doc.Findings),
		Files: scope.Files, Errors: doc.Errors,
		VerifyCmd: fmt.Sprintf("grantline verify %s --log-key log.vkey --evidence-key evidence.pub", shellQuote(name)),
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
	for _, f := range doc.Findings {
		counts[strings.ToLower(f.Severity)]++
		subjects[f.Subject] = true
		v.Exposure += f.ExposureSeconds
		if f.ExposureSeconds > 0 {
			v.ExposureFindings++
		}
		ruleFindings[f.Rule]++
		src := "unknown"
		if p, ok := f.Primary(); ok && scope.SourceOf[p] != "" {
			src = scope.SourceOf[p]
		}
		for _, g := range []*group{get(byRule, f.Rule, f.Rule), get(byID, f.Subject, f.Subject), get(bySource, src, src)} {
			g.Count++
			g.Exposure += f.ExposureSeconds
			g.subjects[f.Subject] = true
			g.rules[f.Rule] = true
			if sevRank(f.Severity) < sevRank(g.Severity) {
				g.Severity = strings.ToLower(f.Severity)
			}
		}
	}
	for _, s := range severities {
		if s != "info" || counts[s] > 0 {
			v.BySeverity = append(v.BySeverity, sevCount{s, counts[s]})
		}
	}
	v.Evaluated = doc.SubjectsEvaluated
	v.Identities = len(subjects)
	for _, r := range doc.Rules {
		short := r.SHA256
		if len(short) > 12 {
			short = short[:12]
		}
		v.Rules = append(v.Rules, ruleRow{ID: r.ID, Title: r.Title, Severity: strings.ToLower(r.Severity), SHA256: r.SHA256, Short: short, Controls: strings.Join(r.Controls, ", "), Findings: ruleFindings[r.ID]})
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
		exposureChart("Exposure by rule", "How long privilege outlived its deadline, summed per rule.", byExposure(v.ByRule), 12),
		exposureChart("Exposure by identity", "The identities whose privilege outlived its purpose longest.", byExposure(ids), 12),
		exposureChart("Exposure by source", "Which system's privilege lingers: summed by the source of each finding's primary event.", byExposure(sources), 12),
	}

	fs := slices.Clone(doc.Findings)
	slices.SortStableFunc(fs, func(a, b format.Finding) int {
		if c := cmp.Compare(sevRank(a.Severity), sevRank(b.Severity)); c != 0 {
			return c
		}
		return cmp.Compare(b.ExposureSeconds, a.ExposureSeconds)
	})
	v.RowsShown = min(len(fs), maxRows)
	for _, f := range fs[:v.RowsShown] {
		var es []string
		for _, e := range f.Entries {
			es = append(es, strconv.FormatUint(e.Index, 10))
		}
		p, _ := f.Primary()
		v.Rows = append(v.Rows, row{Rule: f.Rule, Severity: strings.ToLower(f.Severity), Subject: f.Subject, Display: scope.DisplayOf[f.Subject],
			Message: f.Message, Source: scope.SourceOf[p], Entries: strings.Join(es, ", "), Exposure: f.ExposureSeconds})
	}
	return v
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
		c.Bars = append(c.Bars, bar{Label: label, Value: Duration(g.Exposure), Y: y, W: max(w, 2), TextY: y + 13, ValueX: 210 + max(w, 2) + 6, Severity: g.Severity})
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
var CSVHeader = []string{"rule", "title", "severity", "subject", "subject_display", "primary_index", "primary_event_id", "entries", "controls", "exposure_seconds", "exposure", "source", "message"}

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
		rec := []string{f.Rule, f.Title, f.Severity, f.Subject, scope.DisplayOf[f.Subject], strconv.FormatUint(p, 10), pid,
			strings.Join(es, " "), strings.Join(f.Controls, " "), strconv.FormatInt(f.ExposureSeconds, 10), Duration(f.ExposureSeconds), scope.SourceOf[p], f.Message}
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
