package verify

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/grantline/grantline/internal/synth"
	"github.com/grantline/grantline/rules"
	"github.com/grantline/grantline/verify/format"
)

// realFixture exports a package from a synthetic organisation evaluated by
// the real rules engine with the organisation's sod_pairs params.
func realFixture(t testing.TB) (*ledgerFake, *synth.Org, *EvidenceSigner, []byte) {
	t.Helper()
	org, err := synth.Generate(synth.Config{Seed: 7, Identities: 60, FailureRate: 0.1})
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
	s, pub, _ := evidenceKey(t, "ecdsa")
	return l, org, s, pub
}

func TestRealRulesRoundTrip(t *testing.T) {
	l, org, s, pub := realFixture(t)
	dir := filepath.Join(t.TempDir(), "pkg")
	if err := Export(t.Context(), l, ExportOptions{Signer: s, AsOf: org.AsOf}, DirSink{Dir: dir}); err != nil {
		t.Fatalf("Export: %v", err)
	}
	keys := Keys{LogKey: l.vkey(), EvidenceKey: pub}
	rep, err := Verify(t.Context(), dir, keys, Options{}) // DefaultEvaluator: the rules engine
	if err != nil {
		t.Fatalf("Verify with the rules engine = %v", err)
	}
	if rep.Findings < len(org.Planted) {
		t.Errorf("package holds %d findings, fewer than the %d planted", rep.Findings, len(org.Planted))
	}

	// Tampering that only the re-evaluation can see: a different param
	// override, a finding's message, re-signed by the evidence key.
	for _, tc := range []struct {
		name string
		edit func(*format.Findings)
	}{
		{"params changed", func(d *format.Findings) { d.Params = []byte(`{"sod_pairs": [], "jit_grace": "1h"}`) }},
		{"message changed", func(d *format.Findings) { d.Findings[len(d.Findings)-1].Message += " (edited)" }},
		{"exposure changed", func(d *format.Findings) {
			for i := range d.Findings {
				if d.Findings[i].ExposureSeconds > 0 {
					d.Findings[i].ExposureSeconds /= 2
					return
				}
			}
			t.Fatal("no finding with exposure")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cp := filepath.Join(t.TempDir(), "pkg")
			if err := Export(t.Context(), l, ExportOptions{Signer: s, AsOf: org.AsOf}, DirSink{Dir: cp}); err != nil {
				t.Fatal(err)
			}
			editFindings(t, cp, tc.edit)
			resign(t, cp, s)
			_, err := Verify(t.Context(), cp, keys, Options{})
			var ce *CheckError
			if !errors.As(err, &ce) || ce.File != format.FileFindings || ce.Check != "findings reproduced" {
				t.Fatalf("Verify(%s) = %v, want findings.json/findings reproduced", tc.name, err)
			}
		})
	}
}
