package main

import (
	"archive/tar"
	"bytes"
	"compress/flate"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/grantline/grantline/internal/textsafe"
)

// fakeVerified is what a hostile file name tries to make the terminal show:
// erase the FAIL line and print a green success line instead.
const fakeVerified = "\x1b[1A\x1b[2K\x1b[32mverified evidence: 12 checks passed\x1b[0m"

// bombTarGz returns a .tar.gz (about 1 MiB) whose one member, name, is
// mib MiB of zeros; see verify's gzipBomb for how it is built cheaply.
func bombTarGz(t *testing.T, name string, mib int) []byte {
	t.Helper()
	deflate := func(data []byte, final bool) []byte {
		var b bytes.Buffer
		w, _ := flate.NewWriter(&b, flate.BestCompression)
		w.Write(data)
		if final {
			w.Close()
		} else {
			w.Flush()
		}
		return b.Bytes()
	}
	var hdr bytes.Buffer
	if err := tar.NewWriter(&hdr).WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Size: int64(mib) << 20, Mode: 0o600, Format: tar.FormatUSTAR}); err != nil {
		t.Fatal(err)
	}
	zeros, trailer := make([]byte, 1<<20), make([]byte, 1024)
	out := append([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff}, deflate(hdr.Bytes(), false)...)
	chunk := deflate(zeros, false)
	crc := crc32.ChecksumIEEE(hdr.Bytes())
	for range mib {
		out = append(out, chunk...)
		crc = crc32.Update(crc, crc32.IEEETable, zeros)
	}
	out = append(out, deflate(trailer, true)...)
	crc = crc32.Update(crc, crc32.IEEETable, trailer)
	out = binary.LittleEndian.AppendUint32(out, crc)
	return binary.LittleEndian.AppendUint32(out, uint32(hdr.Len()+mib<<20+len(trailer)))
}

// tarGzOf returns a .tar.gz of the sample package plus extra members.
func tarGzOf(t *testing.T, extra map[string][]byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	add := func(name string, b []byte) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Size: int64(len(b)), Mode: 0o600}); err != nil {
			t.Fatal(err)
		}
		tw.Write(b)
	}
	src := filepath.Join(evidenceTestdata, "sample")
	ents, _ := os.ReadDir(src)
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(src, e.Name()))
		add(e.Name(), b)
	}
	for n, b := range extra {
		add(n, b)
	}
	tw.Close()
	gz.Close()
	return buf.Bytes()
}

// TestVerifyHostilePackages runs the real binary on packages built to
// attack the verifier: its output must carry no raw control character, and
// an archive must be refused within the limits, naming the member and the
// limit, leaving nothing in the temporary folder.
func TestVerifyHostilePackages(t *testing.T) {
	requireBinary(t)
	for _, tc := range []struct {
		name string
		pkg  func(t *testing.T) string
		want []string // in stdout+stderr
	}{
		{"terminal escape in a file name", func(t *testing.T) string {
			dir := copySample(t)
			if err := os.WriteFile(filepath.Join(dir, fakeVerified), []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			return dir
		}, []string{`FAIL  "\x1b[1A\x1b[2K\x1b[32mverified`, "is not a file of an evidence package"}},
		{"bidi override in a file name", func(t *testing.T) string {
			dir := copySample(t)
			if err := os.WriteFile(filepath.Join(dir, "report\u202elmth.exe"), []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			return dir
		}, []string{`"report\u202elmth.exe"`}},
		{"terminal escape in an archive member", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "pkg.tar.gz")
			os.WriteFile(p, tarGzOf(t, map[string][]byte{fakeVerified: []byte("x")}), 0o600)
			return p
		}, []string{`member 9 "\x1b[1A\x1b[2K\x1b[32mverified`, "not a file of an evidence package"}},
		{"escape in the package path", func(t *testing.T) string {
			return filepath.Join(t.TempDir(), "\x1b[32mok")
		}, []string{`\x1b[32mok`, "no such file"}},
		{"1 GiB decompression bomb", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "bomb.tar.gz")
			os.WriteFile(p, bombTarGz(t, "entries.jsonl", 1024), 0o600)
			return p
		}, []string{"archive limits", `member 1 entries.jsonl`, "compression ratio limit of 100:1", "extract it yourself"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			cmd := exec.CommandContext(t.Context(), grantlineBin, sampleArgs(tc.pkg(t))...)
			cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("grantline verify = %v, want exit 1\n%s", err, out.String())
			}
			got := out.String()
			if i := strings.IndexFunc(got, func(r rune) bool { return textsafe.Hidden(r) && r != '\n' }); i >= 0 {
				t.Errorf("output holds a raw control character at byte %d:\n%q", i, got)
			}
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("output lacks %q:\n%s", w, got)
				}
			}
			if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
				t.Errorf("verify left %d entries in TMPDIR", len(ents))
			}
		})
	}
}
