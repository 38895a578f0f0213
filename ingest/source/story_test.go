package source_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/grantline/grantline/ingest/source"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/rules"
)

// chains is a rules.ChainSource over events read from vendor files, as the
// ledger would hold them (indices in read order), limited to the as-of time.
type chains struct {
	bySubject map[string][]rules.Entry
	now       time.Time
}

func (c *chains) Chain(_ context.Context, subject string) ([]rules.Entry, error) {
	var out []rules.Entry
	for _, e := range c.bySubject[subject] {
		if !e.Event.GetTime().AsTime().After(c.now) {
			out = append(out, e)
		}
	}
	return out, nil
}

func loadChains(t *testing.T, format, system string, files ...string) *chains {
	t.Helper()
	f, err := source.Lookup(format)
	if err != nil {
		t.Fatal(err)
	}
	c := &chains{bySubject: map[string][]rules.Entry{}}
	var index uint64
	for _, name := range files {
		fh, err := os.Open(filepath.Join(testdataDir, format, name))
		if err != nil {
			t.Fatal(err)
		}
		err = f.Read(name, fh, system, func(_ source.Record, evs []*pb.Event) error {
			for _, ev := range evs {
				s := ev.GetSubject().GetId()
				c.bySubject[s] = append(c.bySubject[s], rules.Entry{Index: index, Event: ev})
				index++
			}
			return nil
		})
		fh.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// findings evaluates the built-in catalog with params (YAML) and returns,
// per subject, the rules that fired.
func findings(t *testing.T, c *chains, params string, now time.Time, subjects ...string) map[string][]string {
	t.Helper()
	builtin, err := rules.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	p, err := rules.ParseParams("params.yaml", []byte(params))
	if err != nil {
		t.Fatal(err)
	}
	set, err := rules.NewSet(builtin, p)
	if err != nil {
		t.Fatal(err)
	}
	c.now = now
	res, err := set.Evaluate(t.Context(), subjects, c, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Errors) > 0 {
		t.Fatalf("rule errors: %v", res.Errors)
	}
	got := map[string][]string{}
	for _, f := range res.Findings {
		got[f.Subject] = append(got[f.Subject], f.Rule)
	}
	return got
}

const (
	pimAdmin  = "03ee6546-f113-4ec5-ba9d-e57381b0c928" // activates User Administrator through PIM
	directGA  = "8e3b6c21-4d7a-4f0e-b2c9-1a5d7e9f0b33" // made Global Administrator outside PIM
	entraProd = "entra-prod"
)

// TestStoryEntraPIM runs the Entra records of testdata/sources/entra
// through the rules: a PIM activation requested, approved, activated and
// expired on time is clean; a role added outside PIM is standing privilege.
func TestStoryEntraPIM(t *testing.T) {
	c := loadChains(t, "entra", entraProd, "pim-page.json", "pim-deactivate.jsonl")
	now := time.Date(2026, 9, 20, 0, 0, 0, 0, time.UTC)
	got := findings(t, c, "", now, pimAdmin, directGA)
	// Both activations ended on time. The first was requested and approved
	// first; the second (pim-deactivate.jsonl) was self-activated with no
	// approval and no eligibility record in the export, which
	// grant-without-approval reports (docs/rules.md, rule 22): an auditor
	// asks for the approval of that role's eligibility.
	if want := []string{"grant-without-approval"}; !slices.Equal(got[pimAdmin], want) {
		t.Errorf("PIM activations that ended on time: findings %v, want %v", got[pimAdmin], want)
	}
	// The same user's account was disabled and, three minutes later, added
	// to a group: activity after offboarding, in the same export. The role
	// added outside PIM had no approval either.
	if want := []string{"activity-after-offboarding", "grant-without-approval", "standing-privilege"}; !slices.Equal(got[directGA], want) {
		t.Errorf("Global Administrator added outside PIM: findings %v, want %v", got[directGA], want)
	}
}

// TestStoryEnforcedExpiry: an activation whose end PIM did not log (the
// expiry record is missing from the export) is flagged by
// grant-overstayed-expiry, unless the params declare that the source
// enforces expires_at itself. The declaration is read by that rule only:
// the approval the activation ran under still has no closing event, so
// approval-without-revocation stands (docs/rules.md).
func TestStoryEnforcedExpiry(t *testing.T) {
	c := loadChains(t, "entra", entraProd, "pim-page.json")
	var kept []rules.Entry
	for _, e := range c.bySubject[pimAdmin] {
		if e.Event.GetType() != "grant.expired" {
			kept = append(kept, e)
		}
	}
	c.bySubject[pimAdmin] = kept
	now := time.Date(2026, 9, 20, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		params string
		want   []string
	}{
		{"", []string{"approval-without-revocation", "grant-overstayed-expiry"}},
		{"expiry_enforced_by: [other-system]\n", []string{"approval-without-revocation", "grant-overstayed-expiry"}},
		{"expiry_enforced_by: [" + entraProd + "]\n", []string{"approval-without-revocation"}},
	} {
		got := findings(t, c, tc.params, now, pimAdmin)[pimAdmin]
		if !slices.Equal(got, tc.want) {
			t.Errorf("params %q: findings %v, want %v", tc.params, got, tc.want)
		}
	}
}

// TestStoryTeleport: an approved access request, the elevated certificate
// it produced and a root session: the certificate expired on its own
// (Teleport logs no end), which the params declare.
func TestStoryTeleport(t *testing.T) {
	c := loadChains(t, "teleport", "teleport-prod", "audit.jsonl")
	now := time.Date(2026, 9, 20, 0, 0, 0, 0, time.UTC)
	got := findings(t, c, "expiry_enforced_by: [teleport-prod]\n", now, "alice@example.com")
	// The root session names the access request it ran under, which was
	// approved before it started. Teleport's session.start records no MFA,
	// so the session counts against MFA coverage
	// (privileged-session-mfa-unrecorded, docs/rules.md rule 31) and
	// nothing else fires.
	if want := []string{"privileged-session-mfa-unrecorded"}; !slices.Equal(got["alice@example.com"], want) {
		t.Errorf("findings %v, want %v", got["alice@example.com"], want)
	}
	// Without the declaration, the elevated certificate (which expired on
	// its own) is flagged as never ended.
	got = findings(t, c, "", now, "alice@example.com")
	if want := []string{"grant-overstayed-expiry", "privileged-session-mfa-unrecorded"}; !slices.Equal(got["alice@example.com"], want) {
		t.Errorf("without expiry_enforced_by: findings %v, want %v", got["alice@example.com"], want)
	}
}

// TestTrustedSourcesAreRecorded: the sources declared to enforce expiry are
// part of grant-overstayed-expiry's effective params, which the evidence
// package records with every rule (findings.json), so an auditor sees
// which sources were trusted to end grants themselves.
func TestTrustedSourcesAreRecorded(t *testing.T) {
	builtin, err := rules.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	p, err := rules.ParseParams("params.yaml", []byte("expiry_enforced_by: [entra-prod, teleport-prod]\n"))
	if err != nil {
		t.Fatal(err)
	}
	set, err := rules.NewSet(builtin, p)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range set.Rules() {
		got, ok := r.Params["expiry_enforced_by"]
		switch {
		case r.ID == "grant-overstayed-expiry" && got != "[entra-prod, teleport-prod]":
			t.Errorf("%s params = %v, want expiry_enforced_by [entra-prod, teleport-prod]", r.ID, r.Params)
		case r.ID != "grant-overstayed-expiry" && ok:
			t.Errorf("%s records expiry_enforced_by but does not read it", r.ID)
		}
	}
}
