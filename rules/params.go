package rules

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/google/cel-go/cel"
	"gopkg.in/yaml.v3"
)

// param is one typed parameter value with where it was written.
type param struct {
	typ   *cel.Type
	value any // time.Duration, [][]string, []string, map[string][]string, int64, float64, bool or string
	pos   string
}

var (
	sodPairsType = cel.ListType(cel.ListType(cel.StringType))
	// authoritiesType is a map from a name to a list of names, such as
	// closing_authorities.
	authoritiesType = cel.MapType(cel.StringType, cel.ListType(cel.StringType))
	stringListType  = cel.ListType(cel.StringType)
)

// globalParams are the defaults of docs/rules.md; every rule may read them.
var globalParams = map[string]param{
	"revoke_grace":             {cel.DurationType, 15 * time.Minute, ""},
	"jit_grace":                {cel.DurationType, 15 * time.Minute, ""},
	"deprovision_sla":          {cel.DurationType, 24 * time.Hour, ""},
	"review_interval":          {cel.DurationType, 2160 * time.Hour, ""},
	"dormant_after":            {cel.DurationType, 2160 * time.Hour, ""},
	"max_credential_age":       {cel.DurationType, 2160 * time.Hour, ""},
	"max_checkout":             {cel.DurationType, 8 * time.Hour, ""},
	"breakglass_review_within": {cel.DurationType, 72 * time.Hour, ""},
	"mover_review_within":      {cel.DurationType, 720 * time.Hour, ""},
	"sod_pairs":                {sodPairsType, [][]string{}, ""},
	"max_backdate":             {cel.DurationType, 24 * time.Hour, ""},
	"inactive_after":           {cel.DurationType, 2160 * time.Hour, ""},
	"breakglass_remove_within": {cel.DurationType, 24 * time.Hour, ""},
	"closing_authorities":      {authoritiesType, map[string][]string{}, ""},
	// Sources (source.system) that end grants at expires_at themselves, so
	// grant-overstayed-expiry does not ask them for an end event
	// (docs/rules.md, "Expiry the source enforces").
	"expiry_enforced_by": {stringListType, []string{}, ""},
}

var globalParamNames = func() []string {
	var ns []string
	for n := range globalParams {
		ns = append(ns, n)
	}
	sort.Strings(ns)
	return ns
}()

// Params are parameter overrides read from a YAML file (serve --params).
// The zero value overrides nothing.
type Params struct {
	file string
	vals map[string]param
}

// Names returns the overridden parameter names, sorted.
func (p Params) Names() []string {
	var ns []string
	for n := range p.vals {
		ns = append(ns, n)
	}
	sort.Strings(ns)
	return ns
}

// LoadParams reads a YAML mapping of param name to value, e.g.
// `jit_grace: 30m` or `sod_pairs: [[a, b]]`. Names are checked against the
// loaded rules by NewSet; values of the global params must have their type.
func LoadParams(filename string) (Params, error) {
	data, err := os.ReadFile(filename)
	if err != nil {
		return Params{}, fmt.Errorf("reading params: %w", err)
	}
	return ParseParams(filename, data)
}

// ParseParams is LoadParams on bytes already read.
func ParseParams(filename string, data []byte) (Params, error) {
	p := Params{file: filename, vals: map[string]param{}}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return p, yamlError(filename, err)
	}
	if len(doc.Content) == 0 {
		return p, nil // empty file
	}
	m := doc.Content[0]
	if m.Kind != yaml.MappingNode {
		return p, fmt.Errorf("%s:%d:%d: want a mapping of param name to value, such as \"jit_grace: 30m\"", filename, m.Line, m.Column)
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, val := m.Content[i], m.Content[i+1]
		var want *cel.Type
		if g, ok := globalParams[k.Value]; ok {
			want = g.typ
		}
		pv, err := parseParam(filename, k.Value, val, want)
		if err != nil {
			return p, err
		}
		pv.pos = fmt.Sprintf("%s:%d:%d", filename, k.Line, k.Column)
		p.vals[k.Value] = pv
	}
	return p, nil
}

// parseParam converts a YAML value to a typed param. With want nil the type
// is inferred: a Go duration string ("15m") is a duration, a list of pairs
// is list(list(string)), a list of scalars list(string), and scalars keep
// their YAML type.
func parseParam(file, name string, n *yaml.Node, want *cel.Type) (param, error) {
	where := fmt.Sprintf("%s:%d:%d: param %s", file, n.Line, n.Column, name)
	switch {
	case want == cel.DurationType || (want == nil && n.Kind == yaml.ScalarNode && n.Tag == "!!str" && isDuration(n.Value)):
		if n.Kind != yaml.ScalarNode {
			return param{}, fmt.Errorf("%s: want a Go duration such as 15m or 2160h", where)
		}
		d, err := time.ParseDuration(n.Value)
		if err != nil {
			return param{}, fmt.Errorf("%s: %q is not a Go duration (want e.g. 15m, 24h, 2160h)", where, n.Value)
		}
		return param{typ: cel.DurationType, value: d}, nil
	case want == sodPairsType || (want == nil && n.Kind == yaml.SequenceNode && len(n.Content) > 0 && n.Content[0].Kind == yaml.SequenceNode):
		if n.Kind != yaml.SequenceNode {
			return param{}, fmt.Errorf("%s: want a list of pairs such as [[entitlement-a, entitlement-b]]", where)
		}
		pairs := [][]string{}
		for _, it := range n.Content {
			if it.Kind != yaml.SequenceNode || len(it.Content) != 2 || it.Content[0].Kind != yaml.ScalarNode || it.Content[1].Kind != yaml.ScalarNode {
				return param{}, fmt.Errorf("%s:%d:%d: param %s: want a pair of entitlement ids such as [a, b]", file, it.Line, it.Column, name)
			}
			pairs = append(pairs, []string{it.Content[0].Value, it.Content[1].Value})
		}
		return param{typ: sodPairsType, value: pairs}, nil
	case want == authoritiesType || (want == nil && n.Kind == yaml.MappingNode):
		if n.Kind != yaml.MappingNode {
			return param{}, fmt.Errorf("%s: want a mapping from a name to a list of names, such as {pam: [iga]}", where)
		}
		m := map[string][]string{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode || v.Kind != yaml.SequenceNode {
				return param{}, fmt.Errorf("%s:%d:%d: param %s: want NAME: [NAME, ...]", file, k.Line, k.Column, name)
			}
			if _, dup := m[k.Value]; dup {
				return param{}, fmt.Errorf("%s:%d:%d: param %s: %q appears twice", file, k.Line, k.Column, name, k.Value)
			}
			names := []string{}
			for _, it := range v.Content {
				if it.Kind != yaml.ScalarNode {
					return param{}, fmt.Errorf("%s:%d:%d: param %s: want a list of names", file, it.Line, it.Column, name)
				}
				names = append(names, it.Value)
			}
			m[k.Value] = names
		}
		return param{typ: authoritiesType, value: m}, nil
	case want == stringListType:
		if n.Kind != yaml.SequenceNode {
			return param{}, fmt.Errorf("%s: want a list of strings such as [entra-pim, teleport]", where)
		}
		ss := []string{}
		for _, it := range n.Content {
			if it.Kind != yaml.ScalarNode {
				return param{}, fmt.Errorf("%s:%d:%d: param %s: want a list of strings", file, it.Line, it.Column, name)
			}
			ss = append(ss, it.Value)
		}
		return param{typ: stringListType, value: ss}, nil
	case want != nil:
		return param{}, fmt.Errorf("%s: unsupported type %s", where, want)
	case n.Kind == yaml.SequenceNode:
		ss := []string{}
		for _, it := range n.Content {
			if it.Kind != yaml.ScalarNode {
				return param{}, fmt.Errorf("%s:%d:%d: param %s: want a list of strings", file, it.Line, it.Column, name)
			}
			ss = append(ss, it.Value)
		}
		return param{typ: cel.ListType(cel.StringType), value: ss}, nil
	case n.Kind == yaml.ScalarNode:
		switch n.Tag {
		case "!!int":
			var v int64
			if err := n.Decode(&v); err != nil {
				return param{}, fmt.Errorf("%s: %w", where, err)
			}
			return param{typ: cel.IntType, value: v}, nil
		case "!!float":
			var v float64
			if err := n.Decode(&v); err != nil {
				return param{}, fmt.Errorf("%s: %w", where, err)
			}
			return param{typ: cel.DoubleType, value: v}, nil
		case "!!bool":
			var v bool
			if err := n.Decode(&v); err != nil {
				return param{}, fmt.Errorf("%s: %w", where, err)
			}
			return param{typ: cel.BoolType, value: v}, nil
		default:
			return param{typ: cel.StringType, value: n.Value}, nil
		}
	}
	return param{}, fmt.Errorf("%s: want a duration, number, bool, string, list of strings, list of pairs or mapping", where)
}

func isDuration(s string) bool {
	_, err := time.ParseDuration(s)
	return err == nil && strings.IndexFunc(s, func(r rune) bool { return r >= 'a' && r <= 'z' }) >= 0
}

// formatParam renders a param value for RuleInfo.
func formatParam(v any) string {
	switch x := v.(type) {
	case time.Duration:
		return x.String()
	case [][]string:
		parts := make([]string, len(x))
		for i, p := range x {
			parts[i] = "[" + strings.Join(p, ", ") + "]"
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case []string:
		return "[" + strings.Join(x, ", ") + "]"
	case map[string][]string:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = k + ": " + formatParam(x[k])
		}
		return "{" + strings.Join(parts, ", ") + "}"
	}
	return fmt.Sprint(v)
}

// yamlError turns a yaml.v3 error into "file:line:col: message"; yaml.v3
// does not report a column for syntax errors, so those point at column 1.
func yamlError(file string, err error) error {
	var te *yaml.TypeError
	msg := err.Error()
	if errors.As(err, &te) && len(te.Errors) > 0 {
		msg = te.Errors[0]
	}
	msg = strings.TrimPrefix(msg, "yaml: ")
	var line int
	if n, _ := fmt.Sscanf(msg, "line %d:", &line); n == 1 {
		msg = strings.TrimSpace(msg[strings.Index(msg, ":")+1:])
		return fmt.Errorf("%s:%d:1: invalid YAML: %s", file, line, msg)
	}
	return fmt.Errorf("%s:1:1: invalid YAML: %s", file, msg)
}
