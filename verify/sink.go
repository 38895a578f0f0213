package verify

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/grantline/grantline/verify/format"
)

// DirSink writes package files into a folder, which it creates (0700) if
// missing; the files are 0600, since entries and findings hold personal data.
// The mode of a folder that already exists is left as it is. Each file is
// written to a temporary name and renamed when closed, so a file that exists
// is complete. Not safe for concurrent use.
type DirSink struct {
	Dir string
}

// Create implements Sink. It refuses names that are not package file names.
func (d DirSink) Create(name string) (io.WriteCloser, error) {
	if !format.Known(name) {
		return nil, fmt.Errorf("%q is not a package file name", name)
	}
	if err := os.MkdirAll(d.Dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(d.Dir, "."+name+".*")
	if err != nil {
		return nil, err
	}
	return &dirFile{f: f, final: filepath.Join(d.Dir, name)}, nil
}

type dirFile struct {
	f     *os.File
	final string
}

func (d *dirFile) Write(p []byte) (int, error) { return d.f.Write(p) }

func (d *dirFile) Close() error {
	err := d.f.Close()
	if err == nil {
		err = os.Chmod(d.f.Name(), 0o600)
	}
	if err == nil {
		err = os.Rename(d.f.Name(), d.final)
	}
	if err != nil {
		os.Remove(d.f.Name())
	}
	return err
}

// TarGzSink writes the package as a gzip-compressed tar stream with the files
// at its root, in the order they are created, each with mode 0600 (the
// caller creates the .tar.gz itself 0600). Because a tar header needs the
// file size first, each file is buffered in memory until closed, except
// entries.jsonl, which is spooled to a temporary file. Close finishes the
// archive (it does not close the underlying writer). Not safe for concurrent use.
type TarGzSink struct {
	gz    *gzip.Writer
	tw    *tar.Writer
	mtime time.Time
	open  bool
	err   error
}

// NewTarGzSink returns a sink writing to w; mtime is stamped on every file
// (use the as-of time for reproducible archives).
func NewTarGzSink(w io.Writer, mtime time.Time) *TarGzSink {
	gz := gzip.NewWriter(w)
	return &TarGzSink{gz: gz, tw: tar.NewWriter(gz), mtime: mtime}
}

// Create implements Sink.
func (t *TarGzSink) Create(name string) (io.WriteCloser, error) {
	if t.err != nil {
		return nil, t.err
	}
	if t.open {
		return nil, errors.New("tar sink: previous file not closed")
	}
	if !format.Known(name) {
		return nil, fmt.Errorf("%q is not a package file name", name)
	}
	t.open = true
	if name == format.FileEntries {
		f, err := os.CreateTemp("", "grantline-entries-*")
		if err != nil {
			return nil, err
		}
		return &tarSpool{t: t, name: name, f: f}, nil
	}
	return &tarBuf{t: t, name: name}, nil
}

// Close writes the tar and gzip trailers.
func (t *TarGzSink) Close() error {
	if t.err != nil {
		return t.err
	}
	if err := t.tw.Close(); err != nil {
		return err
	}
	return t.gz.Close()
}

func (t *TarGzSink) add(name string, size int64, r io.Reader) error {
	t.open = false
	hdr := &tar.Header{Name: name, Mode: 0o600, Size: size, ModTime: t.mtime, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
	if err := t.tw.WriteHeader(hdr); err != nil {
		t.err = err
		return err
	}
	if _, err := io.Copy(t.tw, r); err != nil {
		t.err = err
		return err
	}
	return nil
}

type tarBuf struct {
	t    *TarGzSink
	name string
	buf  bytes.Buffer
}

func (b *tarBuf) Write(p []byte) (int, error) { return b.buf.Write(p) }
func (b *tarBuf) Close() error {
	return b.t.add(b.name, int64(b.buf.Len()), &b.buf)
}

type tarSpool struct {
	t    *TarGzSink
	name string
	f    *os.File
	n    int64
}

func (s *tarSpool) Write(p []byte) (int, error) {
	n, err := s.f.Write(p)
	s.n += int64(n)
	return n, err
}

func (s *tarSpool) Close() error {
	defer os.Remove(s.f.Name())
	defer s.f.Close()
	if _, err := s.f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	return s.t.add(s.name, s.n, s.f)
}

// DefaultChunkSize is ChunkSink's chunk size when Size is 0.
const DefaultChunkSize = 1 << 20

// ChunkSink streams each file as chunks of at most Size bytes through Send,
// in order, the file's last chunk with eof set (an empty file is one empty
// chunk with eof). It is how the server streams a package over
// EvidenceService.ExportEvidence: Send builds one ExportEvidenceResponse{path,
// data, eof}. Send must not retain data after it returns. Not safe for
// concurrent use.
type ChunkSink struct {
	Send func(path string, data []byte, eof bool) error
	Size int
}

// Create implements Sink.
func (c ChunkSink) Create(name string) (io.WriteCloser, error) {
	if !format.Known(name) {
		return nil, fmt.Errorf("%q is not a package file name", name)
	}
	size := c.Size
	if size <= 0 {
		size = DefaultChunkSize
	}
	return &chunkWriter{send: c.Send, name: name, buf: make([]byte, 0, size)}, nil
}

type chunkWriter struct {
	send func(string, []byte, bool) error
	name string
	buf  []byte
	err  error
}

func (w *chunkWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n := 0
	for len(p) > 0 {
		k := copy(w.buf[len(w.buf):cap(w.buf)], p)
		w.buf = w.buf[:len(w.buf)+k]
		p, n = p[k:], n+k
		if len(w.buf) == cap(w.buf) && len(p) > 0 {
			if w.err = w.send(w.name, w.buf, false); w.err != nil {
				return n, w.err
			}
			w.buf = w.buf[:0]
		}
	}
	return n, nil
}

func (w *chunkWriter) Close() error {
	if w.err != nil {
		return w.err
	}
	w.err = w.send(w.name, w.buf, true)
	if w.err == nil {
		w.err = errors.New("closed")
		return nil
	}
	return w.err
}
