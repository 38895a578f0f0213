package textsafe

import (
	"strings"
	"testing"
)

func TestEscape(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
		keep           []rune
	}{
		{"plain", "alice", "alice", nil},
		{"readable non-ASCII", "Zoë Ångström 名前", "Zoë Ångström 名前", nil},
		{"bidi override", "alice\u202egpj.exe", `alice\u202egpj.exe`, nil},
		{"zero-width space", "alice\u200b", `alice\u200b`, nil},
		{"line separator", "a\u2028b", `a\u2028b`, nil},
		{"paragraph separator", "a\u2029b", `a\u2029b`, nil},
		{"next line (C1)", "a\u0085b", `a\u0085b`, nil},
		{"terminal escape", "\x1b[32mverified\x1b[0m", `\u001b[32mverified\u001b[0m`, nil},
		{"newline and tab", "a\nb\tc", `a\u000ab\u0009c`, nil},
		{"newline kept", "a\nb\tc", "a\nb\\u0009c", []rune{'\n'}},
		{"invalid UTF-8", "a\xffb", `a\xffb`, nil},
		{"astral format char", "x\U000E0001y", `x\U000e0001y`, nil},
		{"BOM", "\ufeffid", `\ufeffid`, nil},
		{"replacement char itself", "a\ufffdb", "a\ufffdb", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Escape(tc.in, tc.keep...)
			if got != tc.want {
				t.Errorf("Escape(%q) = %q, want %q", tc.in, got, tc.want)
			}
			if strings.ContainsFunc(got, func(r rune) bool { return Hidden(r) && r != '\n' }) {
				t.Errorf("Escape(%q) = %q still holds a hidden character", tc.in, got)
			}
		})
	}
}

func TestQuote(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"entries.jsonl", "entries.jsonl"},
		{"", `""`},
		{"a b", `"a b"`},
		{"\x1b[32mverified", `"\x1b[32mverified"`},
		{"alice\u202e", `"alice\u202e"`},
		{"Zoë", `"Zoë"`},
		{`a"b`, `"a\"b"`},
	} {
		if got := Quote(tc.in); got != tc.want {
			t.Errorf("Quote(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}
