package oscal

import (
	"github.com/grantline/grantline/verify/format"
)

// severityRank orders severities, most severe first.
var severityRank = map[string]int{"critical": 0, "high": 1, "medium": 2, "low": 3}

// IsBreakglass reports whether e is a break-glass use: a
// breakglass.invoked, or an event with its breakglass flag set.
func IsBreakglass(e format.EventRow) bool {
	return e.Type == "breakglass.invoked" || e.Breakglass
}

// BreakglassIncidents groups the findings of doc about one break-glass
// incident: findings of one subject whose primary entries are break-glass
// uses (IsBreakglass, from events) with the same non-empty refs.request.
// One incident (invoked, the firecall grant, its session) is one thing,
// however many entries and rules it fires. It returns, for every finding
// of an incident of two or more findings, the index (in doc.Findings) of
// the incident's lead: among the incident's findings that lead their own
// primary entry (no shares_primary_with), the most severe, then one with
// exposure, then the one opened first, then the lowest rule id and primary
// index. A lead maps to itself; findings of no incident are absent.
func BreakglassIncidents(doc *format.Findings, events map[uint64]format.EventRow) map[int]int {
	type key struct{ subject, request string }
	members := map[key][]int{}
	var order []key
	for i, f := range doc.Findings {
		p, ok := f.Primary()
		if !ok {
			continue
		}
		e, ok := events[p]
		if !ok || e.Request == "" || !IsBreakglass(e) {
			continue
		}
		k := key{f.Subject, e.Request}
		if _, seen := members[k]; !seen {
			order = append(order, k)
		}
		members[k] = append(members[k], i)
	}
	better := func(a, b format.Finding) bool {
		ra, oka := severityRank[a.Severity]
		rb, okb := severityRank[b.Severity]
		if !oka {
			ra = len(severityRank)
		}
		if !okb {
			rb = len(severityRank)
		}
		switch {
		case ra != rb:
			return ra < rb
		case (a.ExposureSeconds > 0) != (b.ExposureSeconds > 0):
			return a.ExposureSeconds > 0
		case !a.OpenedAt.Equal(b.OpenedAt):
			return a.OpenedAt.Before(b.OpenedAt)
		case a.Rule != b.Rule:
			return a.Rule < b.Rule
		}
		pa, _ := a.Primary()
		pb, _ := b.Primary()
		return pa < pb
	}
	out := map[int]int{}
	for _, k := range order {
		ms := members[k]
		if len(ms) < 2 {
			continue
		}
		lead := -1
		for _, i := range ms {
			f := doc.Findings[i]
			if f.SharesPrimaryWith != "" {
				continue
			}
			if lead < 0 || better(f, doc.Findings[lead]) {
				lead = i
			}
		}
		if lead < 0 {
			lead = ms[0]
		}
		for _, i := range ms {
			out[i] = lead
		}
	}
	return out
}
