package verify

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigstore/sigstore/pkg/cryptoutils"

	"github.com/grantline/grantline/internal/synth"
	"github.com/grantline/grantline/ledger/checkpoint"
	"github.com/grantline/grantline/rules"
)

var update = flag.Bool("update", false, "rewrite testdata/evidence/sample and its keys")

const sampleDir = "../testdata/evidence"

// seededKey is a deterministic Ed25519 key, so that the sample package is
// the same bytes on every run.
func seededKey(label string) ed25519.PrivateKey {
	seed := sha256.Sum256([]byte("grantline test key: " + label))
	return ed25519.NewKeyFromSeed(seed[:])
}

// exportSample exports the sample package (a small synthetic organisation,
// the built-in rules, seeded Ed25519 keys) into dir.
func exportSample(t *testing.T, dir string) (vkey string, pubPEM, since100 []byte) {
	t.Helper()
	org, err := synth.Generate(synth.Config{Seed: 3, Identities: 40, Months: 4, FailureRate: 0.1})
	if err != nil {
		t.Fatal(err)
	}
	l := newLedgerFake(t, org.Events)
	logKey := seededKey("log")
	const origin = "grantline.example/sample-log"
	if l.signer, err = checkpoint.NewNoteSigner(origin, logKey); err != nil {
		t.Fatal(err)
	}
	if vkey, err = checkpoint.VerifierKey(origin, logKey.Public()); err != nil {
		t.Fatal(err)
	}
	l.origin = origin
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
	evKey := seededKey("evidence")
	privPEM, err := cryptoutils.MarshalPrivateKeyToPEM(evKey)
	if err != nil {
		t.Fatal(err)
	}
	s, err := LoadEvidenceSigner(privPEM)
	if err != nil {
		t.Fatal(err)
	}
	if pubPEM, err = cryptoutils.MarshalPublicKeyToPEM(evKey.Public()); err != nil {
		t.Fatal(err)
	}
	if err := Export(t.Context(), l, ExportOptions{Signer: s, AsOf: org.AsOf, PackageName: "sample", SinceSizes: []uint64{100},
		GeneratedAt: org.AsOf.Add(time.Hour), Version: "grantline (sample)", LogKey: vkey}, DirSink{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	return vkey, pubPEM, l.signedAt(t, 100)
}

// TestSample checks that the committed sample package verifies with its
// committed keys, and that export is deterministic. Run with -update to
// regenerate it (e.g. after a change to the rule catalog).
func TestSample(t *testing.T) {
	pkg := filepath.Join(sampleDir, "sample")
	if *update {
		os.RemoveAll(pkg)
		vkey, pub, since := exportSample(t, pkg)
		if err := os.WriteFile(filepath.Join(sampleDir, "checkpoint-100"), since, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sampleDir, "log.vkey"), []byte(vkey+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sampleDir, "evidence.pub"), pub, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	vkey, err := os.ReadFile(filepath.Join(sampleDir, "log.vkey"))
	if err != nil {
		t.Fatalf("%v (run go test ./verify -run TestSample -update)", err)
	}
	pub, err := os.ReadFile(filepath.Join(sampleDir, "evidence.pub"))
	if err != nil {
		t.Fatal(err)
	}
	since, err := os.ReadFile(filepath.Join(sampleDir, "checkpoint-100"))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Verify(t.Context(), pkg, Keys{LogKey: string(vkey), EvidenceKey: pub}, Options{Since: since})
	if err != nil {
		t.Fatalf("the committed sample does not verify: %v (if the rule catalog changed, run go test ./verify -run TestSample -update)", err)
	}
	if rep.Findings == 0 {
		t.Error("the sample has no findings")
	}

	a, b := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	exportSample(t, a)
	exportSample(t, b)
	ents, _ := os.ReadDir(a)
	for _, e := range ents {
		x, _ := os.ReadFile(filepath.Join(a, e.Name()))
		y, _ := os.ReadFile(filepath.Join(b, e.Name()))
		if !bytes.Equal(x, y) {
			t.Errorf("export is not deterministic: %s differs between two runs", e.Name())
		}
	}
}

var demoOut = flag.String("demo-out", "", "export a demo package (200 identities, built-in rules) into this folder, for docs/report.png")

// TestDemoPackage writes the package behind docs/report.png when -demo-out is given.
func TestDemoPackage(t *testing.T) {
	if *demoOut == "" {
		t.Skip("pass -demo-out DIR to write the demo package")
	}
	org, err := synth.Generate(synth.Config{Seed: 1, Identities: 200, FailureRate: 0.06})
	if err != nil {
		t.Fatal(err)
	}
	l := newLedgerFake(t, org.Events)
	l.origin = "grantline.example/prod-access-log"
	if l.signer, err = checkpoint.NewNoteSigner(l.origin, seededKey("demo-log")); err != nil {
		t.Fatal(err)
	}
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
	s, _, _ := evidenceKey(t, "ed25519")
	if err := Export(t.Context(), l, ExportOptions{Signer: s, AsOf: org.AsOf, PackageName: "evidence-2026-q2"}, DirSink{Dir: *demoOut}); err != nil {
		t.Fatal(err)
	}
}
