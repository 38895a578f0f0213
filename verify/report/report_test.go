package report

import (
	"bytes"
	"encoding/csv"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/grantline/grantline/internal/textsafe"
	"github.com/grantline/grantline/verify/format"
)

func scope() *format.Scope {
	root := bytes.Repeat([]byte{0x5a}, 32)
	return &format.Scope{
		Findings: &format.Findings{
			Origin: "grantline.example/log", CheckpointSize: 4242, CheckpointRoot: root,
			AsOf: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC),
			Rules: []format.Rule{
				{ID: "approval-without-revocation", Title: "Approvals with no matching revocation", Severity: "high", SHA256: strings.Repeat("ab", 32), Controls: []string{"PR.AA-05", "AC-2"}},
				{ID: "activity-after-offboarding", Title: "Activity after offboarding", Severity: "critical", SHA256: strings.Repeat("cd", 32)},
			},
			Findings: []format.Finding{
				{Rule: "approval-without-revocation", Severity: "high", Subject: "<script>alert(1)</script>", Entries: []format.EntryRef{{Index: 3, EventID: "ev-3"}}, Message: `=HYPERLINK("http://evil.example","x")`, ExposureSeconds: 90061},
				{Rule: "approval-without-revocation", Severity: "high", Subject: "+bob", Entries: []format.EntryRef{{Index: 5, EventID: "-ev-5"}, {Index: 8, EventID: "@ev-8"}}, Message: "\tTab first", ExposureSeconds: 3600},
				{Rule: "activity-after-offboarding", Severity: "critical", Subject: "carol", Entries: []format.EntryRef{{Index: 9, EventID: "ev-9"}}, Message: "session after termination"},
			},
		},
		Files:     []format.FileDigest{{Name: format.FileCheckpoint, SHA256: strings.Repeat("0f", 32), Size: 99}},
		Entries:   20,
		Subjects:  3,
		SourceOf:  map[uint64]string{3: "okta", 5: "\rcyberark", 9: "cyberark"},
		DisplayOf: map[string]string{"carol": "Carol <Admin>"},
	}
}

func TestSafeCell(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"=1+2", "'=1+2"}, {"+1", "'+1"}, {"-1", "'-1"}, {"@SUM(A1)", "'@SUM(A1)"},
		{"\tx", `'\u0009x`}, {"\rx", `'\u000dx`}, {"plain", "plain"}, {"", ""}, {"a=b", "a=b"},
		{" =1+2", "' =1+2"}, {"\n=1+2", `'\u000a=1+2`}, {"\u00a0=1", "'\u00a0=1"},
		{"alice\u202egnp.exe", `alice\u202egnp.exe`}, {"alice\u200b", `alice\u200b`},
		{"a\u2028b", `a\u2028b`}, {"a\u0085b", `a\u0085b`}, {"line 1\nline 2", `line 1\u000aline 2`},
		{"\u202e=1", `'\u202e=1`}, {"\x1b[31mred", `'\u001b[31mred`}, {"Zoë", "Zoë"},
	} {
		if got := SafeCell(tc.in); got != tc.want {
			t.Errorf("SafeCell(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestCSVSafeAgainstFormulaInjection(t *testing.T) {
	var b bytes.Buffer
	if err := WriteCSV(&b, scope()); err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(&b).ReadAll()
	if err != nil {
		t.Fatalf("findings.csv does not parse as CSV: %v", err)
	}
	if len(recs) != 4 || strings.Join(recs[0], ",") != strings.Join(CSVHeader, ",") {
		t.Fatalf("findings.csv has %d rows (header %v), want header + 3", len(recs), recs[0])
	}
	for i, r := range recs {
		for j, c := range r {
			if c != "" && strings.ContainsRune("=+-@\t\r", rune(c[0])) {
				t.Errorf("row %d column %s = %q starts with a formula character", i, recs[0][j], c)
			}
		}
	}
	if got := recs[1][12]; got != `'=HYPERLINK("http://evil.example","x")` {
		t.Errorf("message cell = %q, want it quoted with a leading '", got)
	}
	if got := recs[2][3]; got != "'+bob" {
		t.Errorf("subject cell = %q, want '+bob", got)
	}
}

func TestHTMLSelfContainedAndEscaped(t *testing.T) {
	var b bytes.Buffer
	if err := WriteHTML(&b, scope(), Options{PackageName: "pkg dir"}); err != nil {
		t.Fatal(err)
	}
	h := b.String()
	for _, bad := range []string{"<script", "<link", "@import", `src="http`, `href="http`, "url(http"} {
		if strings.Contains(strings.ToLower(h), bad) {
			t.Errorf("report contains %q: it must be self-contained and escaped", bad)
		}
	}
	for _, want := range []string{
		"&lt;script&gt;alert(1)&lt;/script&gt;",
		"Carol &lt;Admin&gt;",
		"grantline.example/log",
		hex.EncodeToString(bytes.Repeat([]byte{0x5a}, 32)),
		strings.Repeat("ab", 32),
		"grantline verify &#39;pkg dir&#39; --log-key log.vkey --evidence-key evidence.pub",
		"<svg", "1d 1h", // exposure of 90061 s
		"3 findings", "3 identities",
	} {
		if !strings.Contains(h, want) {
			t.Errorf("report lacks %q", want)
		}
	}
}

func TestHTMLNoFindings(t *testing.T) {
	s := scope()
	s.Findings.Findings = nil
	var b bytes.Buffer
	if err := WriteHTML(&b, s, Options{}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "No findings.") {
		t.Error("an empty report should say there are no findings")
	}
}

// periodScope is the JIT story of testdata/feeds/jit-never-revoked.jsonl
// over May 10 to June 1: three findings, two on the same grant event, each
// clipped to 22 days, 22 days once for the identity.
func periodScope() *format.Scope {
	at := func(s string) time.Time { t, _ := time.Parse(time.RFC3339, s); return t }
	from := at("2026-05-10T00:00:00Z")
	const d22 = 22 * 86400
	return &format.Scope{
		Findings: &format.Findings{
			Origin: "grantline.example/log", CheckpointSize: 5, CheckpointRoot: bytes.Repeat([]byte{1}, 32),
			AsOf: at("2026-06-01T00:00:00Z"), From: &from,
			Rules: []format.Rule{
				{ID: "approval-without-revocation", Title: "Approvals with no matching revocation", Severity: "high", Params: map[string]string{"revoke_grace": "15m0s"}},
				{ID: "grant-overstayed-expiry", Title: "Grant outlived its expiry", Severity: "high", Params: map[string]string{"revoke_grace": "15m0s"}},
				{ID: "jit-outlived-session", Title: "JIT grant outlived its session", Severity: "high", Params: map[string]string{"jit_grace": "15m0s"}},
				{ID: "sod-conflict", Title: "Separation-of-duties conflict", Severity: "high", Params: map[string]string{"sod_pairs": "[]"}},
			},
			SubjectsEvaluated: 1,
			Findings: []format.Finding{
				{Rule: "approval-without-revocation", Severity: "high", Subject: "marco.bianchi", Entries: []format.EntryRef{{Index: 1, EventID: "jnr-2"}},
					Message: "privileged approval not revoked", ExposureSeconds: d22, OpenedAt: at("2026-05-05T17:22:00Z")},
				{Rule: "self-approval", Severity: "high", Subject: "marco.bianchi", Entries: []format.EntryRef{{Index: 1, EventID: "jnr-2"}},
					Message: "approved by its own subject", OpenedAt: at("2026-05-05T09:07:00Z"), ClosedAt: ptr(at("2026-05-05T09:07:00Z")), SharesPrimaryWith: "approval-without-revocation"},
				{Rule: "grant-overstayed-expiry", Severity: "high", Subject: "marco.bianchi", Entries: []format.EntryRef{{Index: 2, EventID: "jnr-3"}},
					Message: "grant expired but was not ended", ExposureSeconds: d22, OpenedAt: at("2026-05-05T11:27:00Z"), SharesPrimaryWith: "jit-outlived-session"},
				{Rule: "jit-outlived-session", Severity: "high", Subject: "marco.bianchi", Entries: []format.EntryRef{{Index: 2, EventID: "jnr-3"}, {Index: 4, EventID: "jnr-5"}},
					Message: "JIT grant not ended after its session", ExposureSeconds: d22, OpenedAt: at("2026-05-05T10:17:00Z")},
			},
			ExposureBySubject: map[string]int64{"marco.bianchi": d22},
		},
		Entries: 5, Subjects: 1,
		SourceOf:  map[uint64]string{1: "sailpoint-iga", 2: "cyberark-pam"},
		DisplayOf: map[string]string{"marco.bianchi": "Marco Bianchi"},
		Events: map[uint64]format.EventRow{
			1: {Index: 1, EventID: "jnr-2", Type: "access.approved", Time: at("2026-05-05T09:07:00Z"), ObservedTime: at("2026-05-05T09:07:02Z"), Source: "sailpoint-iga", Actor: "harper.dubois", Request: "REQ-jnr"},
			2: {Index: 2, EventID: "jnr-3", Type: "grant.activated", Time: at("2026-05-05T09:12:00Z"), ObservedTime: at("2026-05-05T09:12:01Z"), Source: "cyberark-pam", Actor: "cyberark-pam", Request: "REQ-jnr"},
			4: {Index: 4, EventID: "jnr-5", Type: "session.ended", Time: at("2026-05-05T10:02:00Z"), ObservedTime: at("2026-05-05T10:02:01Z"), Source: "cyberark-pam"},
		},
		ApproverOf:  map[string]string{format.ApprovalKey("marco.bianchi", "REQ-jnr"): "harper.dubois"},
		GeneratedAt: at("2026-06-01T08:00:00Z"), Version: "grantline test",
		LogKey: "grantline.example/log+abcd1234+AAAA", EvidenceKeyID: strings.Repeat("e", 64),
	}
}

// TestHTMLPeriodReport checks what an auditor needs from a period report:
// the period, open/closed and since when, cited events as rows with the
// approver, params, union exposure counted once, grouping, keys, version,
// generation time, controls not tested with why, and the limits of proof.
func TestHTMLPeriodReport(t *testing.T) {
	var b bytes.Buffer
	if err := WriteHTML(&b, periodScope(), Options{PackageName: "evidence-2026-05"}); err != nil {
		t.Fatal(err)
	}
	h := b.String()
	for _, want := range []string{
		"period <strong>2026-05-10 00:00:00 UTC to 2026-06-01 00:00:00 UTC</strong>",
		"<span class=\"open\">open</span> since 2026-05-05 10:17:00 UTC",
		"4 findings</strong> open at some time in the period",
		"2 distinct, and 2 that cite the same entry as a more specific finding",
		"<span class=\"closed\">occurred</span> 2026-05-05 09:07:00 UTC",
		"<strong>22d</strong> in total within the period", // once, not 66d
		"Same entry, also:",
		"jnr-2", "access.approved", "2026-05-05 09:07:02 UTC", "harper.dubois",
		"decided by jit_grace = 15m0s",
		"grantline.example/log&#43;abcd1234&#43;AAAA", strings.Repeat("e", 64),
		"Generated 2026-06-01 08:00:00 UTC by grantline test",
		"sod_pairs is empty",
		"It does not prove",
		"that the chains included are complete",
	} {
		if !strings.Contains(h, want) {
			t.Errorf("period report lacks %q", want)
		}
	}
	if strings.Contains(h, "66d") {
		t.Error("period report sums exposure over rules (66d): one grant must count once")
	}
	if strings.Contains(strings.ToLower(h), "<script") {
		t.Error("report has a script")
	}
	s := periodScope()
	s.Findings.All = true
	b.Reset()
	if err := WriteHTML(&b, s, Options{}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "carries every entry of the tree") {
		t.Error("a package with every entry should say so")
	}
}

func ptr[T any](v T) *T { return &v }

// TestHiddenCharactersVisible: invisible and reordering characters in the
// data are shown as escapes in report.html and findings.csv.
func TestHiddenCharactersVisible(t *testing.T) {
	s := scope()
	f := &s.Findings.Findings[2]
	f.Subject = "carol\u200b"
	f.Message = "session \u202eafter\u202c termination\u2028at \u0085night\x1b[2J"
	s.DisplayOf["carol\u200b"] = "Carol\u2029Admin"
	s.SourceOf[9] = "cyber\tark"
	var h bytes.Buffer
	if err := WriteHTML(&h, s, Options{}); err != nil {
		t.Fatal(err)
	}
	var c bytes.Buffer
	if err := WriteCSV(&c, s); err != nil {
		t.Fatal(err)
	}
	for name, out := range map[string]string{"report.html": h.String(), "findings.csv": c.String()} {
		if i := strings.IndexFunc(out, func(r rune) bool { return textsafe.Hidden(r) && r != '\n' && r != '\r' }); i >= 0 {
			t.Errorf("%s holds a raw hidden character %q at byte %d", name, out[i:i+4], i)
		}
		for _, want := range []string{`carol\u200b`, `session \u202eafter\u202c termination\u2028at \u0085night\u001b[2J`} {
			if !strings.Contains(out, want) {
				t.Errorf("%s lacks %q", name, want)
			}
		}
	}
	if !strings.Contains(h.String(), `Carol\u2029Admin`) {
		t.Errorf("report.html lacks the escaped display name")
	}
	if !strings.Contains(c.String(), `cyber\u0009ark`) {
		t.Errorf("findings.csv lacks the escaped source")
	}
}

// TestNoFindingsClaimsOnlyWhatThePackageProves: a clean package never
// claims "every identity's chain" unless it holds every entry, and says so
// when it does not.
func TestNoFindingsClaimsOnlyWhatThePackageProves(t *testing.T) {
	for _, all := range []bool{false, true} {
		s := scope()
		s.Findings.Findings, s.Findings.All = nil, all
		var b bytes.Buffer
		if err := WriteHTML(&b, s, Options{}); err != nil {
			t.Fatal(err)
		}
		h := strings.ReplaceAll(b.String(), "&#39;", "'")
		if !all && strings.Contains(h, "every identity's chain") {
			t.Errorf("all=false: the report claims every identity's chain")
		}
		if got := strings.Contains(h, "does not prove that no identity's chain is missing"); got == all {
			t.Errorf("all=%v: the report says the chains are unproven: %v, want %v", all, got, !all)
		}
	}
}

// TestHTMLPopulations: the report's population table has one row per
// (control, rule) with its size, passes, exceptions and rate, the controls
// table the totals per control, and the page says how complete the
// population is and how to sample it.
func TestHTMLPopulations(t *testing.T) {
	s := periodScope()
	row := func(control, rule, subject string, index uint64, fail bool) format.PopulationRow {
		r := format.PopulationRow{Control: control, Rule: rule, Subject: subject, Index: index, EventID: "e", Result: format.Pass}
		if fail {
			r.Result = format.Fail
		}
		return r
	}
	for _, c := range []string{"AC-2(2)", "AC-6"} {
		s.Population = append(s.Population,
			row(c, "jit-outlived-session", "marco.bianchi", 2, true),
			row(c, "jit-outlived-session", "ana", 20, false),
			row(c, "jit-outlived-session", "ana", 21, false))
	}
	s.Population = append(s.Population,
		row("AC-2(2)", "grant-overstayed-expiry", "marco.bianchi", 2, true),
		row("AC-2(2)", "grant-overstayed-expiry", "ana", 20, false))
	var b bytes.Buffer
	if err := WriteHTML(&b, s, Options{PackageName: "evidence 2026-05"}); err != nil {
		t.Fatal(err)
	}
	h := b.String()
	for _, want := range []string{
		"<h2>Populations</h2>",
		"8 rows in 3 populations, 3 exceptions",
		// AC-2(2): grant-overstayed-expiry 2 items (1 exception, 50%), jit 3 (1, 33.3%).
		`<td rowspan="2"><strong>AC-2(2)</strong>`,
		`<code>grant-overstayed-expiry</code></td><td class="n">2</td><td class="n">1</td><td class="n">1</td><td class="n">50%</td><td class="n">2</td>`,
		`<code>jit-outlived-session</code></td><td class="n">3</td><td class="n">2</td><td class="n">1</td><td class="n">33.3%</td><td class="n">2</td>`,
		`<td rowspan="1"><strong>AC-6</strong>`,
		"5 items, 2 exceptions", // AC-2(2) in the controls table
		"3 items, 1 exception<", // AC-6
		"complete for those identities only",
		"grantline sample &#39;evidence 2026-05&#39; --seed SEED --size N",
	} {
		if !strings.Contains(h, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	s.Population = nil
	b.Reset()
	if err := WriteHTML(&b, s, Options{}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "No population:") {
		t.Error("a package without a population should say so")
	}
}

// TestHTMLBreakglassIncident: one break-glass incident (invoked, the
// firecall grant, its session: one request) that fires four findings shows
// as one, the others under it; another incident of the same identity (its
// own request) stays apart.
func TestHTMLBreakglassIncident(t *testing.T) {
	at := func(s string) time.Time { t, _ := time.Parse(time.RFC3339, s); return t }
	bu := func(index uint64, id, shares string) format.Finding {
		return format.Finding{Rule: "breakglass-unreviewed", Severity: "high", Subject: "omar", Entries: []format.EntryRef{{Index: index, EventID: id}},
			Message: "break-glass " + id + " not reviewed", OpenedAt: at("2026-05-12T02:14:00Z"), SharesPrimaryWith: shares}
	}
	s := &format.Scope{
		Findings: &format.Findings{Origin: "grantline.example/log", CheckpointSize: 9, CheckpointRoot: bytes.Repeat([]byte{2}, 32), AsOf: at("2026-06-01T00:00:00Z"),
			Rules: []format.Rule{{ID: "breakglass-unreviewed", Title: "Break-glass use not reviewed", Severity: "high"},
				{ID: "breakglass-access-retained", Title: "Break-glass access retained", Severity: "high"}},
			Findings: []format.Finding{
				{Rule: "breakglass-access-retained", Severity: "high", Subject: "omar", Entries: []format.EntryRef{{Index: 2, EventID: "bg-grant"}},
					Message: "break-glass grant not ended", ExposureSeconds: 3600, OpenedAt: at("2026-05-10T02:16:00Z")},
				bu(1, "bg-invoked", ""),
				bu(2, "bg-grant", "breakglass-access-retained"),
				bu(3, "bg-session", ""),
				bu(7, "bg-other", ""),
			},
		},
		Events: map[uint64]format.EventRow{
			1: {Index: 1, EventID: "bg-invoked", Type: "breakglass.invoked", Request: "BG-1"},
			2: {Index: 2, EventID: "bg-grant", Type: "grant.activated", Request: "BG-1", Breakglass: true},
			3: {Index: 3, EventID: "bg-session", Type: "session.started", Request: "BG-1", Breakglass: true},
			7: {Index: 7, EventID: "bg-other", Type: "breakglass.invoked", Request: "BG-2"},
		},
	}
	var b bytes.Buffer
	if err := WriteHTML(&b, s, Options{}); err != nil {
		t.Fatal(err)
	}
	h := b.String()
	for _, want := range []string{
		"5 findings</strong> across <strong>1 identity</strong>: 2 distinct, and 3 that cite the same entry as a more specific finding or belong to the same break-glass incident",
		"break-glass incident, request <code>BG-1</code>",
		"Same break-glass incident (request BG-1), also:",
		"Same entry, also:",
	} {
		if !strings.Contains(h, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if n := strings.Count(h, `<div class="finding">`); n != 2 {
		t.Errorf("%d findings shown on their own, want 2 (the incident, led by the grant retained, and BG-2)", n)
	}
	if n := strings.Count(h, "Same break-glass incident (request BG-1)"); n != 2 {
		t.Errorf("%d findings shown under the incident as other entries of it, want 2 (invoked, session)", n)
	}
	// The finding that leads the incident is the one with exposure.
	lead := h[strings.Index(h, "request <code>BG-1</code>")-300:]
	if !strings.Contains(lead[:300], "break-glass grant not ended") {
		t.Errorf("the incident is led by %q, want the retained grant (it has exposure)", lead[:300])
	}
}
