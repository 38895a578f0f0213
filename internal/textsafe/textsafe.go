// Package textsafe makes untrusted text safe to show: on a terminal, in a
// spreadsheet cell or in an HTML page. Control characters (Unicode Cc, such as
// ESC or U+0085), format characters (Cf, such as the bidi override U+202E or
// the zero-width space U+200B) and line and paragraph separators (Zl U+2028,
// Zp U+2029) can fake output, hide text or reorder it on screen; Escape shows
// each of them as a visible escape such as `\u202e`, and Quote quotes a name
// that holds anything but plain printable ASCII. The functions are pure and
// safe for concurrent use.
package textsafe

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/grantline/grantline/ledger/event"
)

// Hidden reports whether r is a character that must not reach a reader raw:
// a control (Cc), format (Cf), line separator (Zl) or paragraph separator
// (Zp) character. It is event.Hidden, the set ids may not contain, so what
// the ledger refuses on input and what is escaped on output stay one set.
func Hidden(r rune) bool { return event.Hidden(r) }

// Escape returns s with every Hidden character replaced by `\uXXXX` (or
// `\UXXXXXXXX` above U+FFFF) and every byte that is not valid UTF-8 by
// `\xNN`; keep lists characters that stay raw (e.g. "\n\t" for text laid out
// by its own line breaks). Everything else is kept, so readable non-ASCII
// text stays readable. A backslash is not escaped: the result is for
// reading, not for parsing back.
func Escape(s string, keep ...rune) string {
	i := strings.IndexFunc(s, func(r rune) bool { return r == utf8.RuneError || Hidden(r) })
	if i < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	b.WriteString(s[:i])
	for s = s[i:]; s != ""; {
		r, n := utf8.DecodeRuneInString(s)
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[0])
		case Hidden(r) && !containsRune(keep, r):
			if r > 0xffff {
				fmt.Fprintf(&b, `\U%08x`, r)
			} else {
				fmt.Fprintf(&b, `\u%04x`, r)
			}
		default:
			b.WriteString(s[:n])
		}
		s = s[n:]
	}
	return b.String()
}

func containsRune(rs []rune, r rune) bool {
	for _, x := range rs {
		if x == r {
			return true
		}
	}
	return false
}

// Quote returns name unchanged when it is non-empty printable ASCII without
// spaces or quotes, and strconv.Quote(name) otherwise, so a file name or id
// read from an untrusted source can be printed without faking output.
func Quote(name string) string {
	if name == "" {
		return `""`
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c >= 0x7f || c == '"' || c == '\'' || c == '\\' || c == '`' {
			return strconv.Quote(name)
		}
	}
	return name
}
