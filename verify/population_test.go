package verify

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/grantline/grantline/internal/synth"
	"github.com/grantline/grantline/verify/format"
	"github.com/grantline/grantline/verify/oscal"
)

// populationPackage exports the demo organisation with --all at its as-of
// time and returns the package folder, its findings, its population rows,
// the organisation, the signer and the verify keys.
func populationPackage(t *testing.T) (string, *format.Findings, []format.PopulationRow, *synth.Org, *EvidenceSigner, Keys) {
	t.Helper()
	org, l := demoOrg(t, synth.Config{Seed: 3, Identities: 40, Months: 4, FailureRate: 0.1})
	s, pub, _ := evidenceKey(t, "ed25519")
	dir := filepath.Join(t.TempDir(), "pkg")
	if err := Export(t.Context(), l, ExportOptions{Signer: s, AsOf: org.AsOf, All: true}, DirSink{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	keys := Keys{LogKey: l.vkey(), EvidenceKey: pub}
	if _, err := Verify(t.Context(), dir, keys, Options{}); err != nil {
		t.Fatalf("the package does not verify: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(dir, format.FilePopulation))
	if err != nil {
		t.Fatal(err)
	}
	rows, err := ParsePopulation(b)
	if err != nil {
		t.Fatal(err)
	}
	return dir, readFindings(t, dir), rows, org, s, keys
}

// TestPopulationDemoOrg checks the population of a demo-organisation
// package: one row per (control, rule, item), fail exactly for the items
// that are a finding's primary entry, every plant a fail, and the
// grant-overstayed-expiry population against a plain-Go reading.
func TestPopulationDemoOrg(t *testing.T) {
	_, doc, rows, org, _, _ := populationPackage(t)
	cat, err := oscal.LoadCatalog(doc.Framework)
	if err != nil {
		t.Fatal(err)
	}
	controlsOf := map[string][]string{}
	for _, c := range cat.Controls {
		for _, r := range c.Rules {
			controlsOf[r] = append(controlsOf[r], c.ID)
		}
	}
	type item struct {
		rule, subject string
		index         uint64
	}
	under := map[item][]string{} // item -> controls of its rows
	result := map[item]format.PopulationRow{}
	for _, r := range rows {
		it := item{r.Rule, r.Subject, r.Index}
		under[it] = append(under[it], r.Control)
		if prev, ok := result[it]; ok && (prev.Result != r.Result || prev.EventID != r.EventID) {
			t.Errorf("item %v reads %s/%s under one control and %s/%s under another", it, prev.Result, prev.EventID, r.Result, r.EventID)
		}
		result[it] = r
		switch r.Result {
		case format.Fail:
			if r.Finding == nil || *r.Finding >= len(doc.Findings) {
				t.Fatalf("fail row %+v names no finding", r)
			}
			f := doc.Findings[*r.Finding]
			if p, _ := f.Primary(); f.Rule != r.Rule || f.Subject != r.Subject || p != r.Index || f.Entries[0].EventID != r.EventID {
				t.Errorf("fail row %+v names finding %d, which is %s/%s/%d", r, *r.Finding, f.Rule, f.Subject, p)
			}
		case format.Pass:
			if r.Finding != nil {
				t.Errorf("pass row %+v names finding %d", r, *r.Finding)
			}
		}
	}
	for it, cs := range under {
		if want := controlsOf[it.rule]; !slices.Equal(slices.Sorted(slices.Values(cs)), slices.Sorted(slices.Values(want))) {
			t.Errorf("item %v has rows under %v, want one under each of %v", it, cs, want)
		}
	}
	populated := map[string]bool{}
	for _, r := range rows {
		populated[r.Rule] = true
	}
	for _, want := range []string{"breakglass-unreviewed", "grant-overstayed-expiry", "jit-outlived-session", "leaver-access-retained", "review-overdue"} {
		if !populated[want] {
			t.Errorf("no population rows for %s", want)
		}
	}
	// Every finding of a populated rule is a fail row.
	for i, f := range doc.Findings {
		p, _ := f.Primary()
		if r, ok := result[item{f.Rule, f.Subject, p}]; populated[f.Rule] && (!ok || r.Result != format.Fail || *r.Finding != i) {
			t.Errorf("finding %d (%s, %s, entry %d) has no fail row", i, f.Rule, f.Subject, p)
		}
	}
	// Every plant of a populated rule fails, found by its event id.
	byEvent := map[[3]string]format.PopulationRow{}
	for _, r := range rows {
		byEvent[[3]string{r.Rule, r.Subject, r.EventID}] = r
	}
	plants := 0
	for _, p := range org.Planted {
		if !populated[p.Rule] {
			continue
		}
		plants++
		if r, ok := byEvent[[3]string{p.Rule, p.Subject, p.EventID}]; !ok || r.Result != format.Fail {
			t.Errorf("plant %s/%s/%s: row %+v (present %v), want a fail", p.Rule, p.Subject, p.EventID, r, ok)
		}
	}
	if plants == 0 {
		t.Fatal("no plant of a populated rule: the check above tested nothing")
	}
	// grant-overstayed-expiry, read in plain Go: at one instant, every grant
	// event with an expiry whose deadline passed; pass when an end event
	// of the grant came by the deadline.
	var grace time.Duration
	for _, r := range doc.Rules {
		if r.ID == "grant-overstayed-expiry" {
			if grace, err = time.ParseDuration(r.Params["revoke_grace"]); err != nil {
				t.Fatalf("revoke_grace %q: %v", r.Params["revoke_grace"], err)
			}
		}
	}
	firstEnd := map[string]time.Time{}
	for _, e := range org.Events {
		switch e.GetType() {
		case "grant.deactivated", "grant.removed", "grant.expired":
			g, tm := e.GetRefs().GetGrant(), e.GetTime().AsTime()
			if old, ok := firstEnd[g]; g != "" && (!ok || tm.Before(old)) {
				firstEnd[g] = tm
			}
		}
	}
	want := map[string]string{} // event id -> pass/fail
	for _, e := range org.Events {
		if (e.GetType() != "grant.assigned" && e.GetType() != "grant.activated") || e.GetRefs().GetGrant() == "" || e.GetExpiresAt() == nil {
			continue
		}
		deadline := e.GetExpiresAt().AsTime().Add(grace)
		if !org.AsOf.After(deadline) {
			continue
		}
		want[e.GetId()] = format.Fail
		if end, ok := firstEnd[e.GetRefs().GetGrant()]; ok && !end.After(deadline) {
			want[e.GetId()] = format.Pass
		}
	}
	got := map[string]string{}
	for _, r := range rows {
		if r.Rule == "grant-overstayed-expiry" {
			got[r.EventID] = r.Result
		}
	}
	passes := 0
	for id, w := range want {
		if got[id] != w {
			t.Errorf("grant-overstayed-expiry, event %s: %q, want %q", id, got[id], w)
		}
		if w == format.Pass {
			passes++
		}
	}
	if len(got) != len(want) || passes == 0 || passes == len(want) {
		t.Errorf("grant-overstayed-expiry population: %d items, want %d (%d pass): want both outcomes", len(got), len(want), passes)
	}
}

// TestPopulationEditedResigned: a population.jsonl edited and re-signed
// with the evidence key fails verify, whichever way it was edited.
func TestPopulationEditedResigned(t *testing.T) {
	dir, _, _, _, s, keys := populationPackage(t)
	orig, err := os.ReadFile(filepath.Join(dir, format.FilePopulation))
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.SplitAfter(orig, []byte("\n"))
	failLine := slices.IndexFunc(lines, func(l []byte) bool { return bytes.Contains(l, []byte(`"result":"fail"`)) })
	if failLine < 0 {
		t.Fatal("no fail row")
	}
	for _, tc := range []struct {
		name string
		edit func() []byte
		want string
	}{
		{"fail turned pass", func() []byte {
			l := slices.Clone(lines)
			l[failLine] = regexp.MustCompile(`"result":"fail","finding":\d+`).ReplaceAll(l[failLine], []byte(`"result":"pass","finding":null`))
			return bytes.Join(l, nil)
		}, "line"},
		{"row removed", func() []byte { return bytes.Join(slices.Delete(slices.Clone(lines), failLine, failLine+1), nil) }, "line"},
		{"emptied", func() []byte { return nil }, "line 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cp := filepath.Join(t.TempDir(), "pkg")
			copyDir(t, dir, cp)
			if err := os.WriteFile(filepath.Join(cp, format.FilePopulation), tc.edit(), 0o600); err != nil {
				t.Fatal(err)
			}
			resign(t, cp, s)
			_, err := Verify(t.Context(), cp, keys, Options{})
			var ce *CheckError
			if !errors.As(err, &ce) || ce.File != format.FilePopulation || ce.Check != "population reproduced" || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("verify = %v, want population.jsonl: population reproduced ... %s", err, tc.want)
			}
		})
	}
}

// TestSampleDraw: a seed draws the same sample twice, another seed another
// one; every control is in it; verify re-derives it, and refuses it edited.
func TestSampleDraw(t *testing.T) {
	dir, doc, rows, _, _, keys := populationPackage(t)
	pop, err := os.ReadFile(filepath.Join(dir, format.FilePopulation))
	if err != nil {
		t.Fatal(err)
	}
	const size = 25
	a, err := NewSample(pop, doc.Framework, "auditor's seed 1", size)
	if err != nil {
		t.Fatal(err)
	}
	a2, _ := NewSample(pop, doc.Framework, "auditor's seed 1", size)
	b, _ := NewSample(pop, doc.Framework, "auditor's seed 2", size)
	if !slices.Equal(a.Rows, a2.Rows) {
		t.Error("the same seed drew two different samples")
	}
	if slices.Equal(a.Rows, b.Rows) {
		t.Error("two seeds drew the same sample")
	}
	controls := map[string]int{}
	for _, r := range rows {
		controls[r.Control]++
	}
	inSample := map[string]int{}
	for _, k := range a.Rows {
		inSample[k.Control]++
	}
	for c, n := range controls {
		if inSample[c] < 1 || inSample[c] > n {
			t.Errorf("control %s: %d of its %d rows sampled, want 1..%d", c, inSample[c], n, n)
		}
	}
	if len(a.Rows) < size || len(a.Rows) > max(size, len(controls))+len(controls) {
		t.Errorf("drew %d rows for size %d over %d controls", len(a.Rows), size, len(controls))
	}
	if _, err := Verify(t.Context(), dir, keys, Options{Sample: a}); err != nil {
		t.Fatalf("verify --sample = %v, want the sample reproduced", err)
	}
	notDrawn := slices.IndexFunc(rows, func(r format.PopulationRow) bool { return !slices.Contains(a.Rows, r.Key()) })
	for _, tc := range []struct {
		name string
		edit func(s *format.Sample)
	}{
		{"row swapped", func(s *format.Sample) { s.Rows[0] = rows[notDrawn].Key() }},
		{"row dropped", func(s *format.Sample) { s.Rows = s.Rows[1:] }},
		{"seed changed", func(s *format.Sample) { s.Seed = "operator's seed" }},
		{"size changed", func(s *format.Sample) { s.Size *= 3 }},
		{"framework changed", func(s *format.Sample) { s.Framework = "soc2-2017" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := *a
			s.Rows = slices.Clone(a.Rows)
			tc.edit(&s)
			_, err := Verify(t.Context(), dir, keys, Options{Sample: &s})
			var ce *CheckError
			if !errors.As(err, &ce) || ce.Check != "sample reproduced" || !errors.Is(err, ErrSample) {
				t.Fatalf("verify --sample = %v, want sample reproduced: %v", err, ErrSample)
			}
		})
	}
}

// copyDir copies the files of src into a new folder dst.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
