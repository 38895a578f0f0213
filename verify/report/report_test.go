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

func TestDuration(t *testing.T) {
	for _, tc := range []struct {
		in   int64
		want string
	}{{0, "0"}, {-5, "0"}, {45, "45s"}, {60, "1m"}, {3660, "1h 1m"}, {86400, "1d"}, {90061, "1d 1h"}} {
		if got := Duration(tc.in); got != tc.want {
			t.Errorf("Duration(%d) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

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

// TestNoFindingsClaimsOnlyWhatThePackageProves: a clean package claims
// "every identity's chain" only when it holds every entry.
func TestNoFindingsClaimsOnlyWhatThePackageProves(t *testing.T) {
	for _, all := range []bool{false, true} {
		s := scope()
		s.Findings.Findings, s.Findings.All = nil, all
		var b bytes.Buffer
		if err := WriteHTML(&b, s, Options{}); err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(b.String(), "every identity&#39;s chain") || strings.Contains(b.String(), "every identity's chain"); got != all {
			t.Errorf("all=%v: the report claims every identity's chain: %v, want %v", all, got, all)
		}
	}
}
