package verify

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

func TestChunkSink(t *testing.T) {
	for _, tc := range []struct {
		name   string
		size   int
		writes []string
		want   string // chunks as data|eof
	}{
		{"empty file", 4, nil, "|eof"},
		{"one small write", 4, []string{"ab"}, "ab|eof"},
		{"exact chunk", 4, []string{"abcd"}, "abcd|eof"},
		{"spans chunks", 4, []string{"abcdefghij"}, "abcd| efgh| ij|eof"},
		{"many writes", 3, []string{"a", "bc", "de", "f", "g"}, "abc| def| g|eof"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			sink := ChunkSink{Size: tc.size, Send: func(path string, data []byte, eof bool) error {
				if path != "findings.json" {
					t.Fatalf("path %q", path)
				}
				s := string(data)
				if eof {
					s += "|eof"
				} else {
					s += "|"
				}
				got = append(got, s)
				return nil
			}}
			w, err := sink.Create("findings.json")
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range tc.writes {
				if n, err := w.Write([]byte(s)); n != len(s) || err != nil {
					t.Fatalf("Write(%q) = %d, %v", s, n, err)
				}
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if g := strings.Join(got, " "); g != tc.want {
				t.Errorf("chunks = %q, want %q", g, tc.want)
			}
		})
	}
	if _, err := (ChunkSink{}).Create("../etc/passwd"); err == nil {
		t.Error("ChunkSink accepted a name outside the package")
	}
	failing := ChunkSink{Size: 2, Send: func(string, []byte, bool) error { return fmt.Errorf("stream closed") }}
	w, _ := failing.Create("findings.csv")
	if _, err := w.Write(bytes.Repeat([]byte("x"), 5)); err == nil {
		t.Error("Write did not report the Send error")
	}
}
