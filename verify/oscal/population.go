package oscal

import (
	"fmt"
	"slices"
	"strings"

	"github.com/grantline/grantline/verify/format"
)

// PopulationGroup counts the population of one control tested by one rule
// (the rows of population.jsonl with that control and rule).
type PopulationGroup struct {
	Control, Rule string
	// Items is the population size; Exceptions the items that fail (a
	// finding of Rule has them as its primary entry).
	Items, Exceptions int
	// Subjects counts the identities with an item; FailedSubjects those
	// with an exception, sorted.
	Subjects       int
	FailedSubjects []string
}

// Passes is the number of items that pass.
func (g PopulationGroup) Passes() int { return g.Items - g.Exceptions }

// SummarizePopulation groups a package's population rows by (control,
// rule), in the order of cat's controls, then rule id; controls cat does not
// list come last, by id.
func SummarizePopulation(rows []format.PopulationRow, cat *Catalog) []PopulationGroup {
	type key struct{ control, rule string }
	by := map[key]*PopulationGroup{}
	subjects := map[key]map[string]bool{}
	failed := map[key]map[string]bool{}
	for _, r := range rows {
		k := key{r.Control, r.Rule}
		g := by[k]
		if g == nil {
			g = &PopulationGroup{Control: r.Control, Rule: r.Rule}
			by[k] = g
			subjects[k], failed[k] = map[string]bool{}, map[string]bool{}
		}
		g.Items++
		subjects[k][r.Subject] = true
		if r.Result == format.Fail {
			g.Exceptions++
			failed[k][r.Subject] = true
		}
	}
	order := map[string]int{}
	if cat != nil {
		for i, c := range cat.Controls {
			order[c.ID] = i
		}
	}
	rank := func(c string) int {
		if i, ok := order[c]; ok {
			return i
		}
		return len(order)
	}
	out := make([]PopulationGroup, 0, len(by))
	for k, g := range by {
		g.Subjects = len(subjects[k])
		g.FailedSubjects = sortedKeys(failed[k])
		out = append(out, *g)
	}
	slices.SortFunc(out, func(a, b PopulationGroup) int {
		if c := rank(a.Control) - rank(b.Control); c != 0 {
			return c
		}
		if c := strings.Compare(a.Control, b.Control); c != 0 {
			return c
		}
		return strings.Compare(a.Rule, b.Rule)
	})
	return out
}

// populationObservations are one observation per population (control,
// rule): the population's size and exceptions as props, population.jsonl as
// a subject of type resource (its back-matter resource) and as relevant
// evidence, and each identity with an exception as a party subject.
// byControl maps a control id to the observations of its populations.
func populationObservations(groups []PopulationGroup, uuid func(...string) string, popResource, collected, period string) (obs []Observation, byControl map[string][]string) {
	byControl = map[string][]string{}
	for _, g := range groups {
		u := uuid("population", g.Control, g.Rule)
		o := Observation{
			UUID:  u,
			Title: fmt.Sprintf("Population of %s tested by %s", g.Control, g.Rule),
			Description: fmt.Sprintf("%d item(s) of %d identities tested by %s for %s, %s: %d pass, %d exception(s). Each item is a row of %s (control %q, rule %q), pass or fail; a fail names its finding.",
				g.Items, g.Subjects, g.Rule, g.Control, period, g.Passes(), g.Exceptions, format.FilePopulation, g.Control, g.Rule),
			Props: []Prop{
				{Name: "control", NS: NS, Value: g.Control},
				{Name: "rule", NS: NS, Value: g.Rule},
				{Name: "population-size", NS: NS, Value: fmt.Sprint(g.Items)},
				{Name: "exceptions", NS: NS, Value: fmt.Sprint(g.Exceptions)},
				{Name: "passes", NS: NS, Value: fmt.Sprint(g.Passes())},
				{Name: "population-identities", NS: NS, Value: fmt.Sprint(g.Subjects)},
			},
			Methods:   []string{"TEST"},
			Types:     []string{"control-objective"},
			Collected: collected,
			RelevantEvidence: []RelevantEvidence{{
				Href:        fmt.Sprintf("%s#control=%s&rule=%s", format.FilePopulation, queryEscape(g.Control), queryEscape(g.Rule)),
				Description: fmt.Sprintf("The %d rows of %s with control %q and rule %q; grantline verify derives them again from the entries and rules, and grantline sample draws an auditor's sample from them.", g.Items, format.FilePopulation, g.Control, g.Rule),
			}},
		}
		if popResource != "" {
			o.Subjects = append(o.Subjects, SubjectReference{SubjectUUID: popResource, Type: "resource", Title: format.FilePopulation,
				Props: []Prop{{Name: "population-size", NS: NS, Value: fmt.Sprint(g.Items)}}})
		}
		for _, s := range g.FailedSubjects {
			o.Subjects = append(o.Subjects, SubjectReference{SubjectUUID: uuid("subject", s), Type: "party", Title: s,
				Props: []Prop{{Name: "identity-id", NS: NS, Value: nonEmpty(s)}, {Name: "result", NS: NS, Value: format.Fail}}})
		}
		obs = append(obs, o)
		byControl[g.Control] = append(byControl[g.Control], u)
	}
	return obs, byControl
}

// queryEscape escapes what would end a fragment parameter.
func queryEscape(s string) string {
	r := strings.NewReplacer("%", "%25", "&", "%26", "=", "%3D", "#", "%23", " ", "%20")
	return r.Replace(s)
}
