// Package rules is Grantline's rules engine: CEL expressions (github.com/google/cel-go)
// over each identity's event chain, the YAML rule file format, parameters,
// the built-in catalog rules of docs/rules.md (embedded from catalog/), and
// parallel, deterministic per-subject evaluation under a cost limit and a
// deadline. Rules read derived views built in Go in O(n log n) per chain
// (grants with their ends and sessions, approvals with their closing
// events, credentials, ...); docs/rules.md documents the environment.
// The package never reads the ledger itself: chains come through a
// ChainSource.
package rules

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/google/cel-go/cel"
	celast "github.com/google/cel-go/common/ast"
	"gopkg.in/yaml.v3"
)

//go:embed catalog/*.yaml
var catalogFS embed.FS

// Rule is one parsed, type-checked rule file.
type Rule struct {
	ID       string
	Title    string
	Severity string
	Controls []string
	// Expression is the CEL text.
	Expression string
	// Population, optional, is the CEL text of the rule's population: the
	// chain entries the rule tests, a list(rules.Event) (docs/rules.md
	// "Populations").
	Population string
	// File is where the rule came from; Text is the file as read.
	File string
	Text []byte

	params      map[string]param // declared in the file
	paramOrder  []string
	ast         *cel.Ast
	popAst      *cel.Ast
	env         *cel.Env
	usesOwner   bool
	usesSource  bool // calls newerFromSource
	usesHolders bool // reads holder_leavings
}

var severities = []string{"low", "medium", "high", "critical"}

var ruleFields = []string{"id", "title", "severity", "controls", "params", "expression", "population"}

// ParseRule parses and type-checks one rule file. Errors read
// "file:line:col: message", positions of CEL issues translated to the YAML file.
func ParseRule(filename string, data []byte) (*Rule, error) {
	r := &Rule{File: filename, Text: data, params: map[string]param{}}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, yamlError(filename, err)
	}
	if len(doc.Content) == 0 {
		return nil, fmt.Errorf("%s:1:1: empty rule file: want a mapping with %s", filename, strings.Join(ruleFields, ", "))
	}
	m := doc.Content[0]
	if m.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s:%d:%d: want a mapping with %s", filename, m.Line, m.Column, strings.Join(ruleFields, ", "))
	}
	at := func(n *yaml.Node, format string, args ...any) error {
		return fmt.Errorf("%s:%d:%d: %s", filename, n.Line, n.Column, fmt.Sprintf(format, args...))
	}
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		if !slices.Contains(ruleFields, k.Value) {
			return nil, at(k, "unknown field %q: a rule has only %s", k.Value, strings.Join(ruleFields, ", "))
		}
		if seen[k.Value] != nil {
			return nil, at(k, "field %q given twice", k.Value)
		}
		seen[k.Value] = v
		str := func(dst *string) error {
			if v.Kind != yaml.ScalarNode || v.Value == "" {
				return at(v, "%s: want a non-empty string", k.Value)
			}
			*dst = v.Value
			return nil
		}
		var err error
		switch k.Value {
		case "id":
			err = str(&r.ID)
		case "title":
			err = str(&r.Title)
		case "severity":
			if err = str(&r.Severity); err == nil && !slices.Contains(severities, r.Severity) {
				err = at(v, "severity %q: want one of %s", r.Severity, strings.Join(severities, ", "))
			}
		case "controls":
			if v.Kind != yaml.SequenceNode || len(v.Content) == 0 {
				err = at(v, "controls: want a non-empty list of control ids such as [PR.AA-05, AC-2]")
				break
			}
			for _, c := range v.Content {
				if c.Kind != yaml.ScalarNode || c.Value == "" {
					return nil, at(c, "controls: want a control id such as AC-2")
				}
				r.Controls = append(r.Controls, c.Value)
			}
		case "params":
			if v.Kind != yaml.MappingNode {
				if v.Tag == "!!null" {
					break
				}
				err = at(v, "params: want a mapping of param name to default value")
				break
			}
			for j := 0; j+1 < len(v.Content); j += 2 {
				pk, pv := v.Content[j], v.Content[j+1]
				var want *cel.Type
				if g, ok := globalParams[pk.Value]; ok {
					want = g.typ
				}
				p, perr := parseParam(filename, pk.Value, pv, want)
				if perr != nil {
					return nil, perr
				}
				p.pos = fmt.Sprintf("%s:%d:%d", filename, pk.Line, pk.Column)
				if _, dup := r.params[pk.Value]; dup {
					return nil, at(pk, "param %s given twice", pk.Value)
				}
				r.params[pk.Value] = p
				r.paramOrder = append(r.paramOrder, pk.Value)
			}
		case "expression":
			err = str(&r.Expression)
		case "population":
			err = str(&r.Population)
		}
		if err != nil {
			return nil, err
		}
	}
	for _, f := range ruleFields {
		if f != "params" && f != "population" && seen[f] == nil {
			return nil, at(m, "missing field %q", f)
		}
	}
	if err := r.compile(seen["expression"]); err != nil {
		return nil, err
	}
	if n := seen["population"]; n != nil {
		if err := r.compilePopulation(n); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// exprPos maps a position inside the expression (1-based line, 0-based
// column) to "file:line:col" in the YAML file. Multi-line expressions map
// exactly when written as a literal block (|); other multi-line styles map
// to the start of the value.
func (r *Rule) exprPos(n *yaml.Node, line, col int) string {
	switch {
	case n.Style&yaml.LiteralStyle != 0:
		fileLine := n.Line + line
		lines := strings.Split(string(r.Text), "\n")
		indent := 0
		for i := n.Line; i < len(lines); i++ { // first non-blank content line
			if s := strings.TrimLeft(lines[i], " "); s != "" {
				indent = len(lines[i]) - len(s)
				break
			}
		}
		return fmt.Sprintf("%s:%d:%d", r.File, fileLine, indent+col+1)
	case !strings.Contains(r.Expression, "\n") && line == 1:
		off := 0
		if n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) != 0 {
			off = 1
		}
		return fmt.Sprintf("%s:%d:%d", r.File, n.Line, n.Column+off+col)
	}
	return fmt.Sprintf("%s:%d:%d", r.File, n.Line, n.Column)
}

func (r *Rule) compile(exprNode *yaml.Node) error {
	base, err := baseEnv()
	if err != nil {
		return fmt.Errorf("building the CEL environment: %w", err)
	}
	env := base
	var extra []cel.EnvOption
	for _, name := range r.paramOrder {
		p := r.params[name]
		if _, global := globalParams[name]; !global {
			extra = append(extra, cel.Variable("params."+name, p.typ))
		}
	}
	if len(extra) > 0 {
		if env, err = base.Extend(extra...); err != nil {
			return fmt.Errorf("%s: declaring params: %w", r.File, err)
		}
	}
	r.env = env
	parsed, iss := env.Parse(r.Expression)
	if iss.Err() != nil {
		return r.celError(exprNode, iss)
	}
	// Unknown params, reported with their position.
	var unknown error
	native := parsed.NativeRep()
	celast.PostOrderVisit(native.Expr(), celast.NewExprVisitor(func(e celast.Expr) {
		if e.Kind() == celast.IdentKind && e.AsIdent() == "owner" {
			r.usesOwner = true
		}
		if e.Kind() == celast.IdentKind && e.AsIdent() == "holder_leavings" {
			r.usesHolders = true
		}
		if e.Kind() == celast.CallKind && e.AsCall().FunctionName() == "newerFromSource" {
			r.usesSource = true
		}
		if unknown != nil || e.Kind() != celast.SelectKind {
			return
		}
		sel := e.AsSelect()
		if sel.Operand().Kind() != celast.IdentKind || sel.Operand().AsIdent() != "params" {
			return
		}
		name := sel.FieldName()
		if _, ok := r.params[name]; ok {
			return
		}
		if _, ok := globalParams[name]; ok {
			return
		}
		loc := native.SourceInfo().GetStartLocation(sel.Operand().ID())
		unknown = fmt.Errorf("%s: unknown param %q: declare it under params: in this file, or use one of %s",
			r.exprPos(exprNode, loc.Line(), loc.Column()), name, strings.Join(globalParamNames, ", "))
	}))
	if unknown != nil {
		return unknown
	}
	checked, iss := env.Check(parsed)
	if iss.Err() != nil {
		return r.celError(exprNode, iss)
	}
	if !checked.OutputType().IsExactType(findingsType) {
		return fmt.Errorf("%s: the expression yields %s; a rule must yield a list of findings (list(grantline.Finding)), e.g. grants.filter(g, ...).map(g, finding(g.event, [], \"message\"))",
			r.exprPos(exprNode, 1, 0), checked.OutputType())
	}
	r.ast = checked
	return nil
}

func (r *Rule) celError(exprNode *yaml.Node, iss *cel.Issues) error {
	errs := iss.Errors()
	var b strings.Builder
	for i, e := range errs {
		if i > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "%s: %s", r.exprPos(exprNode, e.Location.Line(), e.Location.Column()), e.Message)
	}
	return fmt.Errorf("%s", b.String())
}

// sha256 is the hex digest of the rule file as read.
func (r *Rule) sha256() string {
	s := sha256.Sum256(r.Text)
	return hex.EncodeToString(s[:])
}

// Builtin returns the built-in catalog rules of docs/rules.md, in id order.
func Builtin() ([]*Rule, error) {
	ents, err := catalogFS.ReadDir("catalog")
	if err != nil {
		return nil, err
	}
	var rs []*Rule
	for _, e := range ents {
		data, err := catalogFS.ReadFile("catalog/" + e.Name())
		if err != nil {
			return nil, err
		}
		r, err := ParseRule("catalog/"+e.Name(), data)
		if err != nil {
			return nil, fmt.Errorf("built-in rule: %w", err)
		}
		rs = append(rs, r)
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].ID < rs[j].ID })
	return rs, nil
}

// LoadDir parses every *.yaml and *.yml file of dir, in name order. All
// errors are reported, one per line.
func LoadDir(dir string) ([]*Rule, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("reading rules directory: %w", err)
	}
	var rs []*Rule
	var errs []string
	for _, e := range ents {
		ext := filepath.Ext(e.Name())
		if e.IsDir() || (ext != ".yaml" && ext != ".yml") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(path)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		r, err := ParseRule(path, data)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		rs = append(rs, r)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%s", strings.Join(errs, "\n"))
	}
	return rs, nil
}
