package verify

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"

	"github.com/grantline/grantline/internal/textsafe"
	"github.com/grantline/grantline/rules"
	"github.com/grantline/grantline/verify/format"
	"github.com/grantline/grantline/verify/oscal"
)

// BuildPopulation derives the rows of population.jsonl (verify/FORMAT.md
// "Populations"): every item of the population of each rule of set that
// declares one, over the chains of subjects, evaluated like doc (at
// doc.AsOf, over [doc.From, doc.AsOf] for a period), once per control of
// doc's framework that maps the rule; an item is "fail" when a finding of
// doc has it as its primary entry. Rows are sorted by (control, rule,
// subject, index). The exporter and the verifier both call it, so a
// package's population is reproducible from its entries and rules.
func BuildPopulation(ctx context.Context, doc *format.Findings, set *rules.Set, subjects []string, chains rules.ChainSource) ([]format.PopulationRow, error) {
	cat, err := oscal.LoadCatalog(doc.Framework)
	if err != nil {
		return nil, err
	}
	type key struct {
		rule, subject string
		index         uint64
	}
	failed := map[key]int{}
	var primaries []rules.Primary
	for i, f := range doc.Findings {
		p, ok := f.Primary()
		if !ok {
			continue
		}
		k := key{f.Rule, f.Subject, p}
		if _, dup := failed[k]; !dup {
			failed[k] = i
			primaries = append(primaries, rules.Primary{Rule: f.Rule, Subject: f.Subject, Index: p})
		}
	}
	from := doc.AsOf
	if doc.From != nil {
		from = *doc.From
	}
	items, err := set.Population(ctx, subjects, chains, from, doc.AsOf, primaries)
	if err != nil {
		return nil, err
	}
	controlsOf := map[string][]string{}
	for _, c := range cat.Controls {
		for _, r := range c.Rules {
			controlsOf[r] = append(controlsOf[r], c.ID)
		}
	}
	rows := []format.PopulationRow{}
	for _, it := range items {
		row := format.PopulationRow{Rule: it.Rule, Subject: it.Subject, Index: it.Index, EventID: it.EventID,
			Time: it.Time.UTC(), Result: format.Pass}
		if i, ok := failed[key{it.Rule, it.Subject, it.Index}]; ok {
			row.Result, row.Finding = format.Fail, &i
		}
		for _, c := range controlsOf[it.Rule] {
			row.Control = c
			rows = append(rows, row)
		}
	}
	SortPopulation(rows)
	return rows, nil
}

// PopulationEvaluator is an Evaluator that also derives a package's
// population (population.jsonl). With an Evaluator that is not one, a
// package's population is empty. Safe for concurrent use.
type PopulationEvaluator interface {
	Evaluator
	// Populated reports whether some rule recorded in doc declares a
	// population (the exporter then keeps the chains it writes).
	Populated(doc *format.Findings) (bool, error)
	// Population returns the rows of population.jsonl for doc over the
	// chains of subjects (BuildPopulation).
	Population(ctx context.Context, doc *format.Findings, subjects []string, chains rules.ChainSource) ([]format.PopulationRow, error)
}

// Populated implements PopulationEvaluator.
func (e RulesEvaluator) Populated(doc *format.Findings) (bool, error) {
	set, err := RebuildSet(doc, e.Options)
	if err != nil {
		return false, err
	}
	return set.HasPopulation(), nil
}

// Population implements PopulationEvaluator.
func (e RulesEvaluator) Population(ctx context.Context, doc *format.Findings, subjects []string, chains rules.ChainSource) ([]format.PopulationRow, error) {
	set, err := RebuildSet(doc, e.Options)
	if err != nil {
		return nil, err
	}
	return BuildPopulation(ctx, doc, set, subjects, chains)
}

// populationOf derives the population with ev (empty unless ev is a
// PopulationEvaluator).
func populationOf(ctx context.Context, ev Evaluator, doc *format.Findings, subjects []string, chains rules.ChainSource) ([]format.PopulationRow, error) {
	pe, ok := ev.(PopulationEvaluator)
	if !ok {
		return []format.PopulationRow{}, nil
	}
	return pe.Population(ctx, doc, subjects, chains)
}

// SortPopulation sorts rows canonically: by control, rule, subject, index.
func SortPopulation(rows []format.PopulationRow) {
	slices.SortStableFunc(rows, func(a, b format.PopulationRow) int { return compareKeys(a.Key(), b.Key()) })
}

func compareKeys(a, b format.RowKey) int {
	return cmp.Or(strings.Compare(a.Control, b.Control), strings.Compare(a.Rule, b.Rule),
		strings.Compare(a.Subject, b.Subject), cmp.Compare(a.Index, b.Index))
}

// EncodePopulation is population.jsonl: one JSON object a line.
func EncodePopulation(rows []format.PopulationRow) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	for _, r := range rows {
		if err := enc.Encode(r); err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), nil
}

// ParsePopulation reads population.jsonl strictly: known fields only, a
// result of pass or fail, and canonical order. Errors name the line.
func ParsePopulation(b []byte) ([]format.PopulationRow, error) {
	rows := []format.PopulationRow{}
	for n, line := range bytes.SplitAfter(b, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var r format.PopulationRow
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&r); err != nil {
			return nil, fmt.Errorf("%s line %d: %w", format.FilePopulation, n+1, err)
		}
		if r.Result != format.Pass && r.Result != format.Fail {
			return nil, fmt.Errorf("%s line %d: result %q: want %q or %q", format.FilePopulation, n+1, r.Result, format.Pass, format.Fail)
		}
		if len(rows) > 0 && compareKeys(rows[len(rows)-1].Key(), r.Key()) >= 0 {
			return nil, fmt.Errorf("%s line %d: not after line %d in (control, rule, subject, index) order", format.FilePopulation, n+1, n)
		}
		rows = append(rows, r)
	}
	return rows, nil
}

// ErrSample reports a sample that the package's population does not
// reproduce.
var ErrSample = errors.New("the sample is not the one its seed draws")

// DrawSample draws a sample of about size rows from rows (a package's
// population), stratified by control (verify/FORMAT.md "Samples"): each
// control with n of the N rows gets size·n/N rows, rounded down, the
// rows left over going to the largest remainders (ties: control order),
// and at least one; a control never gets more rows than it has. Within a
// control the rows are a uniform choice by ChaCha8 (math/rand/v2) seeded
// with SHA-256("grantline-sample-v1" 0 seed 0 control). The same seed,
// size and population always draw the same rows; they are returned in
// canonical order.
func DrawSample(rows []format.PopulationRow, seed string, size int) ([]format.RowKey, error) {
	if size < 1 {
		return nil, fmt.Errorf("sample size %d: want at least 1", size)
	}
	rows = slices.Clone(rows)
	SortPopulation(rows)
	type stratum struct {
		control     string
		rows        []format.PopulationRow
		quota, frac int
	}
	var strata []*stratum
	for _, r := range rows {
		if len(strata) == 0 || strata[len(strata)-1].control != r.Control {
			strata = append(strata, &stratum{control: r.Control})
		}
		s := strata[len(strata)-1]
		s.rows = append(s.rows, r)
	}
	total := len(rows)
	given := 0
	for _, s := range strata {
		s.quota = size * len(s.rows) / total
		s.frac = size * len(s.rows) % total
		given += s.quota
	}
	byRemainder := slices.Clone(strata)
	slices.SortStableFunc(byRemainder, func(a, b *stratum) int { return cmp.Compare(b.frac, a.frac) })
	for _, s := range byRemainder {
		if given >= size {
			break
		}
		if s.quota < len(s.rows) {
			s.quota++
			given++
		}
	}
	out := []format.RowKey{}
	for _, s := range strata {
		q := min(max(s.quota, 1), len(s.rows))
		h := sha256.Sum256([]byte("grantline-sample-v1\x00" + seed + "\x00" + s.control))
		rng := rand.New(rand.NewChaCha8(h))
		pick := rng.Perm(len(s.rows))[:q]
		slices.Sort(pick)
		for _, i := range pick {
			out = append(out, s.rows[i].Key())
		}
	}
	return out, nil
}

// NewSample draws the sample of seed and size from a package's
// population.jsonl (its bytes) and framework.
func NewSample(population []byte, framework, seed string, size int) (*format.Sample, error) {
	rows, err := ParsePopulation(population)
	if err != nil {
		return nil, err
	}
	keys, err := DrawSample(rows, seed, size)
	if err != nil {
		return nil, err
	}
	d := sha256.Sum256(population)
	return &format.Sample{Format: format.SampleFormat, Seed: seed, Size: size, Framework: framework,
		Population: hex.EncodeToString(d[:]), Rows: keys}, nil
}

// ParseSample reads sample.json strictly.
func ParseSample(b []byte) (*format.Sample, error) {
	var s format.Sample
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("reading the sample: %w", err)
	}
	if s.Format != format.SampleFormat {
		return nil, fmt.Errorf("reading the sample: format %q: want %q (a file written by grantline sample)", s.Format, format.SampleFormat)
	}
	return &s, nil
}

// CheckSample draws s's sample again from population (the verified
// population.jsonl of a package with framework) and reports the first
// difference, wrapping ErrSample.
func CheckSample(s *format.Sample, population []byte, framework string) error {
	want, err := NewSample(population, framework, s.Seed, s.Size)
	if err != nil {
		return err
	}
	switch {
	case s.Framework != framework:
		return fmt.Errorf("%w: drawn from framework %q, the package's is %q", ErrSample, s.Framework, framework)
	case s.Population != want.Population:
		return fmt.Errorf("%w: drawn from a population with sha256 %s, the package's is %s", ErrSample, s.Population, want.Population)
	}
	for i := 0; i < len(want.Rows) || i < len(s.Rows); i++ {
		switch {
		case i >= len(s.Rows):
			return fmt.Errorf("%w: seed %q, size %d draws %d rows, the sample lists %d", ErrSample, s.Seed, s.Size, len(want.Rows), len(s.Rows))
		case i >= len(want.Rows):
			return fmt.Errorf("%w: the sample lists %d rows, seed %q, size %d draws %d", ErrSample, len(s.Rows), s.Seed, s.Size, len(want.Rows))
		case s.Rows[i] != want.Rows[i]:
			return fmt.Errorf("%w: row %d is %s, seed %q draws %s", ErrSample, i+1, describeKey(s.Rows[i]), s.Seed, describeKey(want.Rows[i]))
		}
	}
	return nil
}

func describeKey(k format.RowKey) string {
	return fmt.Sprintf("(control %q, rule %s, subject %q, entry %d)", k.Control, k.Rule, k.Subject, k.Index)
}

// checkPopulation derives population.jsonl again from the package's
// entries and recorded rules and requires the file to be exactly that;
// then checks Options.Sample against it.
func (v *verifier) checkPopulation(ctx context.Context, doc *format.Findings) error {
	const file = format.FilePopulation
	b, err := v.readSmall(file)
	if err != nil {
		return err
	}
	if _, err := ParsePopulation(b); err != nil {
		return fail(file, "population reproduced", "%v", err)
	}
	ev := v.opts.Evaluator
	if ev == nil {
		ev = DefaultEvaluator
	}
	subjects := slices.Sorted(maps.Keys(v.chains))
	rows, err := populationOf(ctx, ev, doc, subjects, v)
	if err != nil {
		return fail(file, "population reproduced", "deriving the population: %v", err)
	}
	want, err := EncodePopulation(rows)
	if err != nil {
		return err
	}
	if !bytes.Equal(b, want) {
		got := bytes.SplitAfter(b, []byte("\n"))
		exp := bytes.SplitAfter(want, []byte("\n"))
		for i := 0; ; i++ {
			var g, e []byte
			if i < len(got) {
				g = got[i]
			}
			if i < len(exp) {
				e = exp[i]
			}
			if !bytes.Equal(g, e) {
				return fail(file, "population reproduced", "line %d is %s; the entries and rules give %s",
					i+1, textsafe.Quote(string(bytes.TrimSpace(g))), textsafe.Quote(string(bytes.TrimSpace(e))))
			}
		}
	}
	fails := 0
	ruleSet := map[string]bool{}
	for _, r := range rows {
		ruleSet[r.Rule] = true
		if r.Result == format.Fail {
			fails++
		}
	}
	v.pass(file, "population reproduced", "%d rows of %d rules (%d fail), derived again from the entries and rules",
		len(rows), len(ruleSet), fails)
	if s := v.opts.Sample; s != nil {
		if err := CheckSample(s, b, doc.Framework); err != nil {
			return fail(file, "sample reproduced", "%w", err)
		}
		v.pass(file, "sample reproduced", "seed %s, size %d: the same %d rows", textsafe.Quote(s.Seed), s.Size, len(s.Rows))
	}
	return nil
}
