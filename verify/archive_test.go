package verify

import (
	"archive/tar"
	"bytes"
	"compress/flate"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/grantline/grantline/internal/textsafe"
	"github.com/grantline/grantline/verify/format"
)

// member is one tar member for the archive tests.
type member struct {
	name string
	typ  byte
	body []byte
	size int64 // declared size when body is nil and zeros > 0
	// zeros, when > 0, is the body: that many zero bytes, streamed.
	zeros int64
	link  string
}

// tarGz builds a .tar.gz of members.
func tarGz(t testing.TB, members ...member) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	tw := tar.NewWriter(gz)
	for _, m := range members {
		typ := m.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		hdr := &tar.Header{Name: m.name, Typeflag: typ, Mode: 0o644, Linkname: m.link, Format: tar.FormatPAX}
		if typ == tar.TypeReg {
			hdr.Size = int64(len(m.body)) + m.zeros
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(m.body); err != nil {
			t.Fatal(err)
		}
		if m.zeros > 0 {
			if _, err := io.CopyN(tw, zeroReader{}, m.zeros); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// gzipBomb returns a .tar.gz whose one member, name, is mib MiB of zeros,
// built without compressing them: one deflate-compressed MiB of zeros is
// repeated (its back-references stay valid, the data before it being zeros
// too), between a compressed tar header and the compressed tar trailer.
func gzipBomb(t testing.TB, name string, mib int) []byte {
	t.Helper()
	deflate := func(data []byte, final bool) []byte {
		var b bytes.Buffer
		w, _ := flate.NewWriter(&b, flate.BestCompression)
		w.Write(data)
		if final {
			w.Close()
		} else {
			w.Flush() // ends byte-aligned with a non-final empty block
		}
		return b.Bytes()
	}
	var hdr bytes.Buffer
	tw := tar.NewWriter(&hdr)
	if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Size: int64(mib) << 20, Mode: 0o600, Format: tar.FormatUSTAR}); err != nil {
		t.Fatal(err)
	}
	zeros := make([]byte, 1<<20)
	trailer := make([]byte, 1024) // two zero blocks end a tar
	out := []byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff}
	out = append(out, deflate(hdr.Bytes(), false)...)
	chunk := deflate(zeros, false)
	for range mib {
		out = append(out, chunk...)
	}
	out = append(out, deflate(trailer, true)...)
	crc := crc32.ChecksumIEEE(hdr.Bytes())
	for range mib {
		crc = crc32.Update(crc, crc32.IEEETable, zeros)
	}
	crc = crc32.Update(crc, crc32.IEEETable, trailer)
	size := uint32(hdr.Len() + mib<<20 + len(trailer))
	return binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(out, crc), size)
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// sampleMembers are the committed sample package's files, under prefix.
func sampleMembers(t testing.TB, prefix string) []member {
	t.Helper()
	src := filepath.Join(sampleDir, "sample")
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	var ms []member
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, member{name: prefix + e.Name(), body: b})
	}
	return ms
}

// dirSize sums the sizes of the files under dir.
func dirSize(t testing.TB, dir string) int64 {
	t.Helper()
	var n int64
	filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

func TestExtractTarGz(t *testing.T) {
	small := Limits{Members: 12, EntriesSize: 4 << 20, FileSize: 1 << 20, TotalSize: 5 << 20, Ratio: 50, RatioAfter: 256 << 10}
	for _, tc := range []struct {
		name    string
		members func(t *testing.T) []member
		limits  Limits
		want    string // "" for success; else in the error
		limit   bool   // the error wraps ErrArchiveLimit
	}{
		{"files at the root", func(t *testing.T) []member { return sampleMembers(t, "") }, small, "", false},
		{"one leading folder", func(t *testing.T) []member {
			return append([]member{{name: "evidence/", typ: tar.TypeDir}}, sampleMembers(t, "evidence/")...)
		}, small, "", false},
		{"dot folder (tar -C DIR .)", func(t *testing.T) []member {
			return append([]member{{name: "./", typ: tar.TypeDir}}, sampleMembers(t, "./")...)
		}, small, "", false},
		{"symbolic link", func(t *testing.T) []member {
			return []member{{name: "checkpoint", typ: tar.TypeSymlink, link: "/etc/passwd"}}
		}, small, `member 1 checkpoint: not a regular file (symbolic link)`, false},
		{"hard link", func(t *testing.T) []member {
			return []member{{name: "findings.csv", body: []byte("x")}, {name: "checkpoint", typ: tar.TypeLink, link: "findings.csv"}}
		}, small, `member 2 checkpoint: not a regular file (hard link)`, false},
		{"named pipe", func(t *testing.T) []member { return []member{{name: "checkpoint", typ: tar.TypeFifo}} }, small, "named pipe", false},
		{"character device", func(t *testing.T) []member { return []member{{name: "checkpoint", typ: tar.TypeChar}} }, small, "character device", false},
		{"absolute path", func(t *testing.T) []member { return []member{{name: "/tmp/checkpoint", body: []byte("x")}} }, small, `member 1 /tmp/checkpoint: an absolute`, false},
		{"dot-dot", func(t *testing.T) []member { return []member{{name: "../checkpoint", body: []byte("x")}} }, small, `member 1 ../checkpoint: a ".." path element`, false},
		{"dot-dot inside", func(t *testing.T) []member { return []member{{name: "pkg/../../checkpoint", body: []byte("x")}} }, small, `".." path element`, false},
		{"nested folder", func(t *testing.T) []member { return []member{{name: "a/b/checkpoint", body: []byte("x")}} }, small, "outside the package folder", false},
		{"two folders", func(t *testing.T) []member {
			return []member{{name: "a/checkpoint", body: []byte("x")}, {name: "b/findings.csv", body: []byte("x")}}
		}, small, `member 2 b/findings.csv: outside the package folder a/`, false},
		{"duplicate", func(t *testing.T) []member {
			return []member{{name: "checkpoint", body: []byte("x")}, {name: "./checkpoint", body: []byte("y")}}
		}, small, `member 2 ./checkpoint: the archive holds checkpoint twice`, false},
		{"unknown file", func(t *testing.T) []member { return []member{{name: "run.sh", body: []byte("x")}} }, small, `run.sh is not a file of an evidence package`, false},
		{"terminal escape in a name", func(t *testing.T) []member {
			return []member{{name: "\x1b[32mverified\x1b[0m", body: []byte("x")}}
		}, small, `"\x1b[32mverified\x1b[0m"`, false},
		{"too many members", func(t *testing.T) []member {
			var ms []member
			for range 13 {
				ms = append(ms, member{name: "./", typ: tar.TypeDir})
			}
			return ms
		}, small, "member 13 ./: more than 12 members", true},
		{"member too large", func(t *testing.T) []member {
			return []member{{name: "report.html", zeros: 1<<20 + 1}}
		}, small, "member 1 report.html: declares 1048577 bytes; the limit for report.html is 1048576 bytes", true},
		{"entries too large", func(t *testing.T) []member {
			return []member{{name: "entries.jsonl", zeros: 4<<20 + 1}}
		}, small, "the limit for entries.jsonl is 4194304 bytes", true},
		{"total too large", func(t *testing.T) []member {
			return []member{{name: "entries.jsonl", zeros: 4 << 20}, {name: "report.html", zeros: 1 << 20}, {name: "findings.csv", zeros: 1}}
		}, Limits{Members: 12, EntriesSize: 4 << 20, FileSize: 1 << 20, TotalSize: 5 << 20, Ratio: 10000, RatioAfter: 1 << 30},
			"member 3 findings.csv: the members so far declare 5242881 bytes; the limit for all members together is 5242880 bytes", true},
		{"decompression bomb", func(t *testing.T) []member {
			return []member{{name: "entries.jsonl", zeros: 4 << 20}}
		}, small, "exceed the compression ratio limit of 50:1", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := t.TempDir()
			archive := tarGz(t, tc.members(t)...)
			err := extractTarGzFrom(bytes.NewReader(archive), "pkg.tar.gz", dst, tc.limits)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("extract = %v, want success", err)
				}
				for _, f := range format.RequiredFiles {
					if fi, err := os.Stat(filepath.Join(dst, f)); err != nil || fi.Mode().Perm() != 0o600 {
						t.Errorf("%s: %v, mode %v; want extracted with mode 0600", f, err, fi.Mode())
					}
				}
				return
			}
			var ce *CheckError
			if !errors.As(err, &ce) || !errors.Is(err, ErrVerification) {
				t.Fatalf("extract = %v, want a *CheckError wrapping ErrVerification", err)
			}
			if ce.File != "pkg.tar.gz" {
				t.Errorf("CheckError.File = %q, want the archive's name", ce.File)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("extract = %v\nwant it to say %q", err, tc.want)
			}
			if errors.Is(err, ErrArchiveLimit) != tc.limit {
				t.Errorf("errors.Is(err, ErrArchiveLimit) = %v, want %v", !tc.limit, tc.limit)
			}
			if strings.ContainsFunc(err.Error(), textsafe.Hidden) {
				t.Errorf("the error holds a raw control character: %q", err.Error())
			}
			lim := tc.limits.withDefaults()
			if got := dirSize(t, dst); got > lim.TotalSize || got > lim.RatioAfter+int64(len(archive))*lim.Ratio+64<<10 {
				t.Errorf("%d bytes written before the refusal, beyond the limits", got)
			}
			ents, _ := os.ReadDir(filepath.Dir(dst))
			if len(ents) != 1 {
				t.Errorf("the extraction wrote beside its folder: %d entries in %s", len(ents), filepath.Dir(dst))
			}
		})
	}
}

// TestGzipBomb checks the bomb helper: a valid .tar.gz of mib MiB of zeros.
func TestGzipBomb(t *testing.T) {
	gz, err := gzip.NewReader(bytes.NewReader(gzipBomb(t, "x", 3)))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	hdr, err := tr.Next()
	if err != nil || hdr.Name != "x" || hdr.Size != 3<<20 {
		t.Fatalf("first member %+v, %v", hdr, err)
	}
	b, err := io.ReadAll(tr)
	if err != nil || len(b) != 3<<20 || bytes.ContainsFunc(b, func(r rune) bool { return r != 0 }) {
		t.Fatalf("member: %d bytes, %v; want 3 MiB of zeros", len(b), err)
	}
	if _, err := tr.Next(); err != io.EOF {
		t.Fatalf("after the member: %v, want EOF", err)
	}
	if _, err := io.Copy(io.Discard, gz); err != nil {
		t.Fatalf("gzip trailer: %v", err)
	}
}

// TestVerifyRefusesBomb runs Verify itself on a 1 GiB-of-zeros bomb (about
// 1 MiB compressed): it must refuse after a few MiB and leave no temporary
// folder behind.
func TestVerifyRefusesBomb(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	p := filepath.Join(t.TempDir(), "bomb.tar.gz")
	bomb := gzipBomb(t, format.FileEntries, 1024)
	if err := os.WriteFile(p, bomb, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Logf("bomb: %d bytes compressed, 1 GiB inflated", len(bomb))
	_, err := Verify(t.Context(), p, Keys{}, Options{})
	if !errors.Is(err, ErrArchiveLimit) || !strings.Contains(err.Error(), "compression ratio") {
		t.Fatalf("Verify(bomb) = %v, want the compression ratio limit", err)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("Verify left %d entries in the temporary folder", len(ents))
	}
}
