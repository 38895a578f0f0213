package verify

import (
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/grantline/grantline/internal/synth"
	"github.com/grantline/grantline/ledger/checkpoint"
	"github.com/grantline/grantline/rules"
	"github.com/grantline/grantline/verify/format"
)

// periodFake is a ledgerFake that can evaluate an audit period.
type periodFake struct{ *ledgerFake }

func (p periodFake) EvaluatePeriod(ctx context.Context, size uint64, from, to time.Time) (*format.Findings, error) {
	subs := make([]string, 0, len(p.bySubject))
	for s := range p.bySubject {
		subs = append(subs, s)
	}
	res, err := p.set.EvaluatePeriod(ctx, subs, p.ledgerFake, from, to)
	if err != nil {
		return nil, err
	}
	p.evaluated = true
	return FindingsDocument(p.set, res, p.paramsYAML)
}

// demoOrg is the synthetic organisation behind the demo, as a ledger fake
// with the built-in rules and its params.
func demoOrg(t *testing.T, cfg synth.Config) (*synth.Org, periodFake) {
	t.Helper()
	org, err := synth.Generate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l := newLedgerFake(t, org.Events)
	builtin, err := rules.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	l.paramsYAML = org.ParamsYAML()
	params, err := rules.ParseParams("params.yaml", l.paramsYAML)
	if err != nil {
		t.Fatal(err)
	}
	if l.set, err = rules.NewSet(builtin, params); err != nil {
		t.Fatal(err)
	}
	return org, periodFake{l}
}

// TestPeriodPackageDemoOrg exports a period package of the demo
// organisation, verifies it offline with the real rules engine, checks what
// a period promises (every finding open in the period, exposure clipped,
// totals a union), and that an edited closed_at is caught even re-signed.
func TestPeriodPackageDemoOrg(t *testing.T) {
	org, l := demoOrg(t, synth.Config{Seed: 3, Identities: 40, Months: 4, FailureRate: 0.1})
	from := org.AsOf.AddDate(0, -3, 0)
	s, pub, _ := evidenceKey(t, "ed25519")
	dir := filepath.Join(t.TempDir(), "pkg")
	if err := Export(t.Context(), l, ExportOptions{Signer: s, AsOf: org.AsOf, From: from, Framework: "soc2-2017"}, DirSink{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	keys := Keys{LogKey: l.vkey(), EvidenceKey: pub}
	if _, err := Verify(t.Context(), dir, keys, Options{}); err != nil {
		t.Fatalf("the period package does not verify: %v", err)
	}
	doc := readFindings(t, dir)
	if doc.From == nil || !doc.From.Equal(from) || !doc.AsOf.Equal(org.AsOf.UTC()) || doc.Framework != "soc2-2017" {
		t.Fatalf("findings.json covers %v to %s (%s), want %s to %s (soc2-2017)", doc.From, doc.AsOf, doc.Framework, from, org.AsOf)
	}
	period := int64(org.AsOf.Sub(from) / time.Second)
	closedIn, open, points := 0, 0, 0
	for _, f := range doc.Findings {
		switch {
		case f.ClosedAt == nil:
			open++
		case f.ClosedAt.Equal(f.OpenedAt): // an occurrence: dated in the period
			points++
			if f.OpenedAt.Before(from) {
				t.Errorf("%s %s: an occurrence at %s, before the period", f.Rule, f.Subject, f.OpenedAt)
			}
		case !f.ClosedAt.After(from):
			t.Errorf("%s %s: closed at %s, before the period starts", f.Rule, f.Subject, f.ClosedAt)
		default:
			closedIn++
		}
		if f.ExposureSeconds > period {
			t.Errorf("%s %s: exposure %ds, longer than the period (%ds)", f.Rule, f.Subject, f.ExposureSeconds, period)
		}
	}
	if open == 0 || closedIn == 0 || points == 0 {
		t.Errorf("findings open %d, closed within the period %d, occurrences %d: the demo has all three", open, closedIn, points)
	}
	for sub, n := range doc.ExposureBySubject {
		if n > period {
			t.Errorf("exposure_by_subject[%s] = %ds, longer than the period", sub, n)
		}
	}

	// The same ledger at the instant: every finding open at the end of the
	// period is in both, with the same opened_at.
	instant, err := l.Evaluate(t.Context(), l.cp.Size, org.AsOf)
	if err != nil {
		t.Fatal(err)
	}
	type key struct {
		rule, subject string
		index         uint64
	}
	inPeriod := map[key]format.Finding{}
	for _, f := range doc.Findings {
		p, _ := f.Primary()
		inPeriod[key{f.Rule, f.Subject, p}] = f
	}
	for _, f := range instant.Findings {
		p, _ := f.Primary()
		g, ok := inPeriod[key{f.Rule, f.Subject, p}]
		if f.ClosedAt == nil && (!ok || !g.OpenedAt.Equal(f.OpenedAt)) {
			t.Errorf("%s %s %d is open at the end of the period but not in the period package with opened_at %s", f.Rule, f.Subject, p, f.OpenedAt)
		}
	}

	// A tamperer with the evidence key moves a closed_at, and fixes the
	// digests in assessment-results.json and the statement: re-derivation
	// still fails.
	before, err := fileSHA256(filepath.Join(dir, format.FileFindings))
	if err != nil {
		t.Fatal(err)
	}
	editFindings(t, dir, func(d *format.Findings) {
		for i, f := range d.Findings {
			if f.ClosedAt != nil && !f.ClosedAt.Equal(f.OpenedAt) {
				c := f.ClosedAt.Add(time.Hour)
				d.Findings[i].ClosedAt = &c
				return
			}
		}
	})
	after, err := fileSHA256(filepath.Join(dir, format.FileFindings))
	if err != nil {
		t.Fatal(err)
	}
	editFile(t, dir, format.FileAssessment, func(b []byte) []byte {
		return []byte(strings.ReplaceAll(string(b), before, after))
	})
	resign(t, dir, s)
	_, err = Verify(t.Context(), dir, keys, Options{})
	var ce *CheckError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "closed_at") {
		t.Fatalf("verify of an edited closed_at = %v, want a findings reproduced failure naming closed_at", err)
	}
}

func readFindings(t *testing.T, dir string) *format.Findings {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, format.FileFindings))
	if err != nil {
		t.Fatal(err)
	}
	doc, err := ParseFindings(b)
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

var demoPeriodOut = flag.String("demo-period-out", "", "export the demo organisation's Q2 period package into this folder, for docs/report-period.png")

// TestDemoPeriodPackage writes the package behind docs/report-period.png
// when -demo-period-out is given.
func TestDemoPeriodPackage(t *testing.T) {
	if *demoPeriodOut == "" {
		t.Skip("pass -demo-period-out DIR to write the demo period package")
	}
	org, l := demoOrg(t, synth.Config{Seed: 1, Identities: 200, FailureRate: 0.06})
	l.origin = "grantline.example/prod-access-log"
	var err error
	if l.signer, err = checkpoint.NewNoteSigner(l.origin, seededKey("demo-log")); err != nil {
		t.Fatal(err)
	}
	vkey, err := checkpoint.VerifierKey(l.origin, seededKey("demo-log").Public())
	if err != nil {
		t.Fatal(err)
	}
	s, _, _ := evidenceKey(t, "ed25519")
	from := org.AsOf.AddDate(0, -3, 0)
	if err := Export(t.Context(), l, ExportOptions{Signer: s, AsOf: org.AsOf, From: from, PackageName: "evidence-2026-q2",
		LogKey: vkey, GeneratedAt: org.AsOf.Add(2 * time.Hour)}, DirSink{Dir: *demoPeriodOut}); err != nil {
		t.Fatal(err)
	}
}
