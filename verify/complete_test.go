package verify

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/grantline/grantline/verify/format"
)

// TestCompleteness checks the package kinds Verify reports and that
// RequireComplete passes only a package proving completeness: an --all
// package passes; a selective one fails; an --all package with one
// uncited entry dropped and the statement re-signed with the evidence key
// fails even without RequireComplete.
func TestCompleteness(t *testing.T) {
	tests := []struct {
		name     string
		all      bool
		tamper   func(t *testing.T, fx *pkgFixture)
		require  bool
		wantKind Kind
		wantErr  error  // nil: passes
		check    string // the failing check
	}{
		{"all", true, nil, false, KindAll, nil, ""},
		{"all, required", true, nil, true, KindAll, nil, ""},
		{"selected", false, nil, false, KindSelected, nil, ""},
		{"selected, required", false, nil, true, KindSelected, ErrIncomplete, "completeness required"},
		{"all, an entry removed and re-signed", true, func(t *testing.T, fx *pkgFixture) {
			dropLastEntry(t, fx.dir)
			resign(t, fx.dir, fx.signer)
		}, false, "", ErrVerification, "inclusion proof"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fx := exportFixture(t, "ed25519", ExportOptions{All: tt.all})
			if tt.tamper != nil {
				tt.tamper(t, fx)
			}
			opts := verifyOpts()
			opts.RequireComplete = tt.require
			rep, err := Verify(t.Context(), fx.dir, fx.keys, opts)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Verify = %v, want success", err)
				}
				if rep.Kind != tt.wantKind || rep.Complete() != (tt.wantKind == KindAll) {
					t.Errorf("Kind = %q (complete %v), want %q", rep.Kind, rep.Complete(), tt.wantKind)
				}
				return
			}
			var ce *CheckError
			if !errors.Is(err, tt.wantErr) || !errors.As(err, &ce) || ce.Check != tt.check {
				t.Fatalf("Verify = %v, want %v in check %q", err, tt.wantErr, tt.check)
			}
		})
	}
}

// dropLastEntry removes the last line of entries.jsonl (whether or not a
// finding cites it: the lines of an all package carry no proofs, so one
// missing line fails the recomputation of the tree first).
func dropLastEntry(t *testing.T, dir string) {
	t.Helper()
	editFile(t, dir, format.FileEntries, func(b []byte) []byte {
		lines := bytes.SplitAfter(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
		return bytes.Join(lines[:len(lines)-1], nil)
	})
}

// TestAllPackageWithoutProofs: an --all package carries no inclusion
// proofs (the root recomputed from every leaf proves them), and is smaller
// than the same lines with proofs; a selective package keeps a proof per
// line, and one line stripped of its proof fails.
func TestAllPackageWithoutProofs(t *testing.T) {
	fx := exportFixture(t, "ed25519", ExportOptions{All: true})
	b, err := os.ReadFile(filepath.Join(fx.dir, format.FileEntries))
	if err != nil {
		t.Fatal(err)
	}
	withProofs := 0
	for _, line := range bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n")) {
		e, err := ParseEntryLine(line)
		if err != nil {
			t.Fatal(err)
		}
		if len(e.InclusionProof) != 0 {
			t.Fatalf("entry %d of an --all package has an inclusion proof", e.Index)
		}
		p, err := fx.l.InclusionProof(t.Context(), e.Index, fx.l.cp.Size)
		if err != nil {
			t.Fatal(err)
		}
		e.InclusionProof = p
		nl, _ := json.Marshal(e)
		withProofs += len(nl) + 1
	}
	t.Logf("entries.jsonl of %d entries: %d bytes without proofs, %d with (%.0f%% saved)", fx.l.cp.Size, len(b), withProofs, 100*(1-float64(len(b))/float64(withProofs)))
	if len(b) >= withProofs {
		t.Errorf("entries.jsonl without proofs is %d bytes, with proofs %d", len(b), withProofs)
	}
	rep, err := Verify(t.Context(), fx.dir, fx.keys, verifyOpts())
	if err != nil {
		t.Fatalf("Verify(--all without proofs) = %v", err)
	}
	found := false
	for _, c := range rep.Checks {
		found = found || c.Name == "tree recomputed"
	}
	if !found {
		t.Errorf("no %q check in %+v", "tree recomputed", rep.Checks)
	}

	sel := exportFixture(t, "ed25519", ExportOptions{})
	editFile(t, sel.dir, format.FileEntries, func(b []byte) []byte {
		lines := bytes.SplitAfter(b, []byte("\n"))
		e, err := ParseEntryLine(lines[0])
		if err != nil {
			t.Fatal(err)
		}
		if len(e.InclusionProof) == 0 {
			t.Fatal("a selective package's line has no proof")
		}
		e.InclusionProof = nil
		nl, _ := json.Marshal(e)
		lines[0] = append(nl, '\n')
		return bytes.Join(lines, nil)
	})
	resign(t, sel.dir, sel.signer)
	var ce *CheckError
	if _, err := Verify(t.Context(), sel.dir, sel.keys, verifyOpts()); !errors.As(err, &ce) || ce.Check != "inclusion proof" {
		t.Fatalf("Verify(selective line without its proof) = %v, want an inclusion proof failure", err)
	}
}
