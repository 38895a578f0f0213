package verify

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/grantline/grantline/verify/format"
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

// TestSinkModes: package files hold personal data, so a new package folder
// is 0700, its files 0600, and the members of a .tar.gz 0600.
func TestSinkModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "pkg")
	for _, name := range []string{format.FileCheckpoint, format.FileEntries} {
		w, err := DirSink{Dir: dir}.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte("x"))
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, %v; want 0600", name, fi.Mode(), err)
		}
	}
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: mode %v, %v; want 0700", d, fi.Mode(), err)
		}
	}

	var buf bytes.Buffer
	ts := NewTarGzSink(&buf, time.Unix(0, 0))
	for _, name := range []string{format.FileCheckpoint, format.FileEntries} {
		w, _ := ts.Create(name)
		w.Write([]byte("x"))
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if err := ts.Close(); err != nil {
		t.Fatal(err)
	}
	gz, err := gzip.NewReader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Mode != 0o600 {
			t.Errorf("tar member %s: mode %o, want 0600", hdr.Name, hdr.Mode)
		}
	}
}
