package verify

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/grantline/grantline/internal/textsafe"
	"github.com/grantline/grantline/verify/format"
)

// Limits bound what Verify unpacks from a .tar.gz package before any
// signature is checked (a folder is read in place and only its JSON files
// are bounded, by the 256 MiB read limit). The archive is streamed once into
// a private temporary folder (0700, files 0600) and removed afterwards; each
// limit is enforced while inflating, so a decompression bomb stops at the
// limit, not after it. A zero field means its default in DefaultLimits.
// verify/FORMAT.md and docs/operations.md list the values.
type Limits struct {
	// Members is the most archive members (files and folders).
	Members int
	// EntriesSize is the most bytes entries.jsonl may inflate to.
	EntriesSize int64
	// FileSize is the most bytes any other member may inflate to.
	FileSize int64
	// TotalSize is the most bytes all members together may inflate to.
	TotalSize int64
	// Ratio is the most inflated bytes per compressed byte read, checked
	// once RatioAfter bytes have been inflated.
	Ratio int64
	// RatioAfter is how many inflated bytes may pass before Ratio applies,
	// so small, very compressible packages are not refused.
	RatioAfter int64
}

// DefaultLimits are the limits Verify applies when Options.Limits is zero.
// A package holds 8 files at most; the sample package compresses about 7:1.
var DefaultLimits = Limits{
	Members:     16,
	EntriesSize: 8 << 30,
	FileSize:    maxSmallFile,
	TotalSize:   9 << 30,
	Ratio:       100,
	RatioAfter:  1 << 20,
}

// ErrArchiveLimit is wrapped by the CheckError of a .tar.gz package that
// exceeds a Limits value.
var ErrArchiveLimit = errors.New("archive limit exceeded")

func (l Limits) withDefaults() Limits {
	d := DefaultLimits
	if l.Members > 0 {
		d.Members = l.Members
	}
	if l.EntriesSize > 0 {
		d.EntriesSize = l.EntriesSize
	}
	if l.FileSize > 0 {
		d.FileSize = l.FileSize
	}
	if l.TotalSize > 0 {
		d.TotalSize = l.TotalSize
	}
	if l.Ratio > 0 {
		d.Ratio = l.Ratio
	}
	if l.RatioAfter > 0 {
		d.RatioAfter = l.RatioAfter
	}
	return d
}

// openPackage returns a folder holding the package: p itself, or a private
// temporary folder the .tar.gz at p was extracted to within lim.
func openPackage(p string, lim Limits) (string, func(), error) {
	fi, err := os.Stat(p)
	if err != nil {
		return "", nil, fmt.Errorf("opening package: %w", err)
	}
	if fi.IsDir() {
		return p, func() {}, nil
	}
	tmp, err := os.MkdirTemp("", "grantline-verify-*") // 0700
	if err != nil {
		return "", nil, fmt.Errorf("opening package: %w", err)
	}
	cleanup := func() { os.RemoveAll(tmp) }
	if err := extractTarGz(p, tmp, lim); err != nil {
		cleanup()
		return "", nil, err
	}
	return tmp, cleanup, nil
}

// countingReader counts the compressed bytes gzip consumed.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// extractTarGz writes the regular files of the .tar.gz at src into the
// existing folder dst, flat, refusing anything but package files: links,
// devices, absolute names, "..", nested folders, a second leading folder,
// duplicates and unknown names, and stopping at the first limit of lim
// exceeded. Every error is a *CheckError naming the member.
func extractTarGz(src, dst string, lim Limits) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("opening package: %w", err)
	}
	defer f.Close()
	return extractTarGzFrom(f, filepath.Base(src), dst, lim)
}

func extractTarGzFrom(r io.Reader, name, dst string, lim Limits) error {
	lim = lim.withDefaults()
	cr := &countingReader{r: r}
	gz, err := gzip.NewReader(cr)
	if err != nil {
		return fail(name, "archive", "not a .tar.gz file (%v): pass a package folder or the .tar.gz that export --tar wrote", err)
	}
	defer gz.Close()
	tr := tar.NewReader(gz)
	var (
		prefix  = "" // the one leading folder, with its slash
		members int
		total   int64
		seen    = map[string]bool{}
	)
	limitErr := func(member, what string, args ...any) error {
		return &CheckError{File: name, Check: "archive limits", Err: fmt.Errorf("%w: %w: member %d %s: %s; if the package is genuine, extract it yourself and verify the folder",
			ErrVerification, ErrArchiveLimit, members, textsafe.Quote(member), fmt.Sprintf(what, args...))}
	}
	refuse := func(member, why string, args ...any) error {
		return fail(name, "archive members", "member %d %s: %s", members, textsafe.Quote(member), fmt.Sprintf(why, args...))
	}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		members++
		if err != nil {
			return fail(name, "archive", "reading member %d: %v", members, err)
		}
		if members > lim.Members {
			return limitErr(hdr.Name, "more than %d members (a package has at most %d files)", lim.Members, len(format.RequiredFiles)+1)
		}
		if strings.HasPrefix(hdr.Name, "/") || strings.Contains(hdr.Name, `\`) {
			return refuse(hdr.Name, "an absolute or Windows-style path; members must be package files at the archive root or in one folder")
		}
		for _, el := range strings.Split(hdr.Name, "/") {
			if el == ".." {
				return refuse(hdr.Name, `a ".." path element; members must be package files at the archive root or in one folder`)
			}
		}
		clean := path.Clean(hdr.Name)
		dir, base := path.Split(clean)
		if hdr.Typeflag == tar.TypeDir {
			if clean == "." {
				continue // "./", as tar -C DIR . writes
			}
			if strings.Contains(clean, "/") {
				return refuse(hdr.Name, "a nested folder; a package has at most one leading folder")
			}
			if prefix != "" && prefix != clean+"/" || len(seen) > 0 && prefix == "" {
				return refuse(hdr.Name, "a second folder; a package has at most one leading folder")
			}
			prefix = clean + "/"
			continue
		}
		if hdr.Typeflag != tar.TypeReg && hdr.Typeflag != '\x00' { // '\x00' is the old regular-file flag
			return refuse(hdr.Name, "not a regular file (%s); links, devices and other special members are refused", typeName(hdr.Typeflag))
		}
		if len(seen) == 0 && prefix == "" {
			prefix = dir
		}
		if dir != prefix || strings.Count(dir, "/") > 1 {
			return refuse(hdr.Name, "outside the package folder %s", textsafe.Quote(prefix))
		}
		if !format.Known(base) {
			return refuse(hdr.Name, "%s is not a file of an evidence package (expected %s and optionally %s)", textsafe.Quote(base), strings.Join(format.RequiredFiles, ", "), format.FileConsistency)
		}
		if seen[base] {
			return refuse(hdr.Name, "the archive holds %s twice", base)
		}
		seen[base] = true
		limit := lim.FileSize
		if base == format.FileEntries {
			limit = lim.EntriesSize
		}
		if hdr.Size < 0 || hdr.Size > limit {
			return limitErr(hdr.Name, "declares %d bytes; the limit for %s is %d bytes", hdr.Size, base, limit)
		}
		if total+hdr.Size > lim.TotalSize {
			return limitErr(hdr.Name, "the members so far declare %d bytes; the limit for all members together is %d bytes", total+hdr.Size, lim.TotalSize)
		}
		out, err := os.OpenFile(filepath.Join(dst, base), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return fmt.Errorf("extracting %s: %w", textsafe.Quote(hdr.Name), err)
		}
		n, err := copyRatio(out, tr, cr, total, lim)
		total += n
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if errors.Is(err, errRatio) {
			return limitErr(hdr.Name, "%d bytes inflated from %d compressed bytes exceed the compression ratio limit of %d:1", total, cr.n, lim.Ratio)
		}
		if err != nil {
			return fail(name, "archive", "extracting member %d %s: %v", members, textsafe.Quote(hdr.Name), err)
		}
		if n != hdr.Size {
			return fail(name, "archive", "member %d %s: %d bytes, but its header says %d", members, textsafe.Quote(hdr.Name), n, hdr.Size)
		}
	}
}

var errRatio = errors.New("compression ratio")

// copyRatio copies src to dst in chunks, failing with errRatio as soon as
// the inflated total (done before this member, plus what it copied) exceeds
// lim.Ratio times the compressed bytes read so far.
func copyRatio(dst io.Writer, src io.Reader, compressed *countingReader, done int64, lim Limits) (int64, error) {
	buf := make([]byte, 64<<10)
	var n int64
	for {
		k, err := src.Read(buf)
		if k > 0 {
			n += int64(k)
			if inflated := done + n; inflated > lim.RatioAfter && inflated > lim.Ratio*compressed.n {
				return n, errRatio
			}
			if _, werr := dst.Write(buf[:k]); werr != nil {
				return n, werr
			}
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

func typeName(t byte) string {
	switch t {
	case tar.TypeSymlink:
		return "symbolic link"
	case tar.TypeLink:
		return "hard link"
	case tar.TypeChar:
		return "character device"
	case tar.TypeBlock:
		return "block device"
	case tar.TypeFifo:
		return "named pipe"
	case tar.TypeXGlobalHeader:
		return "global pax header"
	case tar.TypeGNUSparse:
		return "sparse file"
	}
	return fmt.Sprintf("type %q", t)
}

// OpenPackage returns a folder holding the package at p: p itself when it
// is a folder, otherwise a private temporary folder that the .tar.gz at p
// was extracted to within lim (as Verify extracts it: the same refusals and
// limits, errors a *CheckError naming the member). Call cleanup when done;
// it removes the temporary folder.
func OpenPackage(p string, lim Limits) (dir string, cleanup func(), err error) {
	return openPackage(p, lim)
}
