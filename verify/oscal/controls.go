package oscal

import (
	"embed"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"gopkg.in/yaml.v3"

	"github.com/grantline/grantline/verify/format"
)

// Control catalogs are data: catalogs/*.yaml map the built-in rules to the
// controls of one framework each, and catalogs/needs.yaml names the params a
// rule needs before it tests anything (docs/controls.md).
//
//go:embed catalogs/*.yaml
var catalogFS embed.FS

// DefaultFramework is the view used when none is chosen.
const DefaultFramework = "sp800-53r5"

// ErrUnknownFramework is returned for a framework with no catalog.
var ErrUnknownFramework = errors.New("unknown control framework")

// Catalog is one framework's mapping of rules to controls.
type Catalog struct {
	Framework string    `yaml:"framework"`
	Title     string    `yaml:"title"`
	Controls  []Control `yaml:"controls"`
}

// Control is one control (or control statement) of a framework.
type Control struct {
	// ID is the control as the framework writes it ("AC-2 g", "CC6.1").
	ID    string `yaml:"id"`
	Title string `yaml:"title"`
	// OSCAL are the ids the control has in OSCAL: a control id and, for a
	// statement-level mapping, the statement id (ac-2, ac-2_smt.g).
	OSCAL struct {
		Control   string `yaml:"control"`
		Statement string `yaml:"statement"`
	} `yaml:"oscal"`
	// Rules are the built-in rules that test it.
	Rules []string `yaml:"rules"`
}

// need is a param a rule needs set (not empty) to test anything.
type need struct {
	Param string `yaml:"param"`
	Why   string `yaml:"why"`
}

var loadCatalogs = sync.OnceValues(func() (map[string]*Catalog, error) {
	ents, err := catalogFS.ReadDir("catalogs")
	if err != nil {
		return nil, err
	}
	out := map[string]*Catalog{}
	for _, e := range ents {
		if e.Name() == "needs.yaml" {
			continue
		}
		data, err := catalogFS.ReadFile("catalogs/" + e.Name())
		if err != nil {
			return nil, err
		}
		var c Catalog
		dec := yaml.NewDecoder(strings.NewReader(string(data)))
		dec.KnownFields(true)
		if err := dec.Decode(&c); err != nil {
			return nil, fmt.Errorf("control catalog %s: %w", e.Name(), err)
		}
		if c.Framework == "" || len(c.Controls) == 0 {
			return nil, fmt.Errorf("control catalog %s: want a framework name and controls", e.Name())
		}
		out[c.Framework] = &c
	}
	return out, nil
})

var loadNeeds = sync.OnceValues(func() (map[string]need, error) {
	data, err := catalogFS.ReadFile("catalogs/needs.yaml")
	if err != nil {
		return nil, err
	}
	var n map[string]need
	if err := yaml.Unmarshal(data, &n); err != nil {
		return nil, fmt.Errorf("catalogs/needs.yaml: %w", err)
	}
	return n, nil
})

// Frameworks lists the framework names with a catalog, sorted.
func Frameworks() []string {
	cs, err := loadCatalogs()
	if err != nil {
		return nil
	}
	var out []string
	for k := range cs {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// LoadCatalog returns the catalog of framework name ("" is
// DefaultFramework), or ErrUnknownFramework naming the known ones.
func LoadCatalog(name string) (*Catalog, error) {
	if name == "" {
		name = DefaultFramework
	}
	cs, err := loadCatalogs()
	if err != nil {
		return nil, err
	}
	c, ok := cs[name]
	if !ok {
		return nil, fmt.Errorf("%w %q: choose one of %s", ErrUnknownFramework, name, strings.Join(Frameworks(), ", "))
	}
	return c, nil
}

// Control states.
const (
	Satisfied    = "satisfied"
	NotSatisfied = "not-satisfied"
	NotTested    = "not-tested"
)

// ControlStatus is what a package shows about one control.
type ControlStatus struct {
	Control Control
	// State is Satisfied, NotSatisfied or NotTested.
	State string
	// Why explains a NotTested state (and lists what was tested).
	Why string
	// Tested are the rules that ran with the params they need; Mapped
	// every rule of the package the catalog maps to the control.
	Tested, Mapped []string
	// Findings are the indices in doc.Findings of the control's findings.
	Findings []int
}

// paramSet reports whether a recorded param value is set (not empty).
func paramSet(v string) bool {
	v = strings.TrimSpace(v)
	return v != "" && v != "[]" && v != "{}"
}

// Assess works out each control of cat for the package's findings: a
// control is not satisfied when a rule mapped to it found something,
// satisfied only when some mapped rule ran with the params it needs and
// found nothing, and otherwise not tested, with why.
func Assess(doc *format.Findings, cat *Catalog) ([]ControlStatus, error) {
	needs, err := loadNeeds()
	if err != nil {
		return nil, err
	}
	ran := map[string]format.Rule{}
	for _, r := range doc.Rules {
		ran[r.ID] = r
	}
	errs := map[string]int{}
	for _, e := range doc.Errors {
		errs[e.Rule]++
	}
	byRule := map[string][]int{}
	for i, f := range doc.Findings {
		byRule[f.Rule] = append(byRule[f.Rule], i)
	}
	out := make([]ControlStatus, 0, len(cat.Controls))
	for _, c := range cat.Controls {
		st := ControlStatus{Control: c}
		var whys []string
		for _, id := range c.Rules {
			r, ok := ran[id]
			if !ok {
				continue
			}
			st.Mapped = append(st.Mapped, id)
			st.Findings = append(st.Findings, byRule[id]...)
			if n, ok := needs[id]; ok && !paramSet(r.Params[n.Param]) {
				whys = append(whys, n.Why)
				continue
			}
			if errs[id] > 0 {
				whys = append(whys, fmt.Sprintf("%s could not be evaluated for %d identities (rule errors)", id, errs[id]))
				continue
			}
			st.Tested = append(st.Tested, id)
		}
		slices.Sort(st.Findings)
		failed := false
		for _, id := range st.Mapped {
			failed = failed || errs[id] > 0
		}
		switch {
		case len(st.Findings) > 0:
			st.State = NotSatisfied
		case len(st.Mapped) == 0:
			st.State = NotTested
			st.Why = fmt.Sprintf("no rule of this package tests it (the catalog maps %s)", strings.Join(c.Rules, ", "))
		case failed || len(st.Tested) == 0:
			st.State = NotTested
			st.Why = strings.Join(whys, "; ")
		default:
			st.State = Satisfied
			if len(whys) > 0 {
				st.Why = "tested by " + strings.Join(st.Tested, ", ") + "; not by the rest: " + strings.Join(whys, "; ")
			}
		}
		out = append(out, st)
	}
	return out, nil
}
