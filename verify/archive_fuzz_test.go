package verify

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/grantline/grantline/verify/format"
)

// FuzzExtractTarGz: reading any byte string as a .tar.gz package never
// panics, writes nothing outside its folder, writes only regular package
// files, and stays within the limits, whatever it returns.
func FuzzExtractTarGz(f *testing.F) {
	f.Add(tarGz(f, member{name: "checkpoint", body: []byte("origin\n1\nroot\n")}, member{name: "entries.jsonl", body: []byte("{}\n")}))
	f.Add(tarGz(f, member{name: "pkg/", typ: tar.TypeDir}, member{name: "pkg/findings.csv", body: []byte("rule\n")}))
	f.Add(tarGz(f, member{name: "checkpoint", typ: tar.TypeSymlink, link: "../../etc/passwd"}))
	f.Add(tarGz(f, member{name: "../checkpoint", body: []byte("x")}))
	f.Add(tarGz(f, member{name: "checkpoint", body: []byte("x")}, member{name: "checkpoint", body: []byte("y")}))
	f.Add(tarGz(f, member{name: "report.html", zeros: 300 << 10}))
	f.Add(gzipBomb(f, format.FileEntries, 2))
	f.Add([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff})
	lim := Limits{Members: 12, EntriesSize: 1 << 20, FileSize: 256 << 10, TotalSize: 1200 << 10, Ratio: 20, RatioAfter: 128 << 10}
	f.Fuzz(func(t *testing.T, data []byte) {
		root := t.TempDir()
		dst := filepath.Join(root, "out")
		if err := os.Mkdir(dst, 0o700); err != nil {
			t.Fatal(err)
		}
		err := extractTarGzFrom(bytes.NewReader(data), "fuzz.tar.gz", dst, lim)
		var ce *CheckError
		if err != nil && !errors.As(err, &ce) {
			t.Fatalf("extract = %v, want nil or a *CheckError", err)
		}
		if ents, _ := os.ReadDir(root); len(ents) != 1 {
			t.Fatalf("%d entries beside the extraction folder, want none", len(ents)-1)
		}
		ents, err := os.ReadDir(dst)
		if err != nil {
			t.Fatal(err)
		}
		var total int64
		for _, e := range ents {
			fi, err := os.Lstat(filepath.Join(dst, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			if !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 || !format.Known(e.Name()) {
				t.Fatalf("extracted %q with mode %v; want only package files, regular, 0600", e.Name(), fi.Mode())
			}
			limit := lim.FileSize
			if e.Name() == format.FileEntries {
				limit = lim.EntriesSize
			}
			if fi.Size() > limit {
				t.Fatalf("%s: %d bytes, over the %d-byte member limit", e.Name(), fi.Size(), limit)
			}
			total += fi.Size()
		}
		if total > lim.TotalSize || total > lim.RatioAfter+lim.Ratio*int64(len(data))+64<<10 {
			t.Fatalf("%d bytes extracted from %d compressed bytes, beyond the limits", total, len(data))
		}
	})
}
