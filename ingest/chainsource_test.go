package ingest

import (
	"context"
	"reflect"
	"testing"

	"github.com/grantline/grantline/rules"
)

// chainsOnly hides chainSource's upgrades (rules.LogScanner and
// rules.SubjectLister) but for listing subjects: the engine then builds
// backdated-closure's source index from every subject's chain.
type chainsOnly struct{ c *chainSource }

func (s chainsOnly) Chain(ctx context.Context, subject string) ([]rules.Entry, error) {
	return s.c.Chain(ctx, subject)
}

func (s chainsOnly) Subjects(ctx context.Context) ([]string, error) { return s.c.Subjects(ctx) }

// TestChainSourceScanLog: the source index built from a scan of the ledger
// (chainSource is a rules.LogScanner) gives the evaluation that reading
// every chain gives, with backdated-closure findings among them.
func TestChainSourceScanLog(t *testing.T) {
	l, set, asOf := synthLedger(t, 40)
	size := l.Latest().Size
	var subjects []string
	if err := l.ForEachSubject(t.Context(), size, func(s string) error { subjects = append(subjects, s); return nil }); err != nil {
		t.Fatal(err)
	}
	cs := &chainSource{l: l, size: size}
	var _ rules.LogScanner = cs
	scanned, err := set.Evaluate(t.Context(), subjects, cs, asOf)
	if err != nil {
		t.Fatal(err)
	}
	chained, err := set.Evaluate(t.Context(), subjects, chainsOnly{cs}, asOf)
	if err != nil {
		t.Fatal(err)
	}
	backdated := 0
	for _, f := range scanned.Findings {
		if f.Rule == "backdated-closure" {
			backdated++
		}
	}
	if backdated == 0 {
		t.Fatal("no backdated-closure finding in the synthetic ledger: the test compares nothing; plant one")
	}
	if !reflect.DeepEqual(scanned, chained) {
		t.Fatalf("evaluation with the index from a log scan (%d findings) differs from the one from the chains (%d findings)",
			len(scanned.Findings), len(chained.Findings))
	}

	// A scan past the tree fails with the ledger's error.
	err = (&chainSource{l: l, size: size + 10}).ScanLog(t.Context(), size, size+10, func(rules.Entry) error { return nil })
	if err == nil {
		t.Fatal("a scan past the tree succeeded")
	}
}
