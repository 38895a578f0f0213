package verify

import (
	"bytes"
	"errors"
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
		}, false, "", ErrVerification, "all entries present"},
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
// finding cites it, the "all entries present" check comes first).
func dropLastEntry(t *testing.T, dir string) {
	t.Helper()
	editFile(t, dir, format.FileEntries, func(b []byte) []byte {
		lines := bytes.SplitAfter(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
		return bytes.Join(lines[:len(lines)-1], nil)
	})
}
