package badgerstore

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4"
)

// filled returns a closed store in a new directory holding n values of 1000
// bytes (in the value log) and n small ones (in the tables), flushed to a
// table by Close.
func filled(t *testing.T, n int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ledger")
	// Value logs of 1 MiB (badger's least), so that n > 1000 spreads over
	// several: badger truncates the newest one at its first bad record when
	// it opens, which is a different failure (values beyond it are gone).
	s := open(t, dir, Options{BadgerOptions: func(o badger.Options) badger.Options { return o.WithValueLogFileSize(1 << 20) }})
	var ks, vs [][]byte
	for i := range n {
		ks = append(ks, []byte(fmt.Sprintf("big-%04d", i)), []byte(fmt.Sprintf("small-%04d", i)))
		vs = append(vs, bytes.Repeat(ks[len(ks)-2], 125), []byte("s"))
	}
	if err := s.Commit(ks, vs); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

func only(t *testing.T, dir, pattern string) string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, pattern))
	if len(m) != 1 {
		t.Fatalf("%s in %s: %v, want one file", pattern, dir, m)
	}
	return m[0]
}

// TestOpenDamaged: a store whose MANIFEST or table is damaged is refused with
// ErrDamaged, never opened as a new empty store and never a panic.
func TestOpenDamaged(t *testing.T) {
	tests := []struct {
		name   string
		damage func(t *testing.T, dir string)
		want   string
	}{
		{"MANIFEST deleted", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "MANIFEST")) }, "MANIFEST is missing"},
		{"MANIFEST empty", func(t *testing.T, dir string) { os.Truncate(filepath.Join(dir, "MANIFEST"), 0) }, "MANIFEST is empty"},
		{"table truncated", func(t *testing.T, dir string) {
			p := only(t, dir, "*.sst")
			fi, _ := os.Stat(p)
			os.Truncate(p, fi.Size()/2)
		}, "truncated"},
		{"table cut where its bytes are zeros", func(t *testing.T, dir string) {
			// The footer then reads as an empty checksum of an empty index.
			p := only(t, dir, "*.sst")
			b, _ := os.ReadFile(p)
			os.WriteFile(p, append(b[:len(b)/2:len(b)/2], make([]byte, 16)...), 0o600)
		}, "empty index checksum"},
		{"table index flipped", func(t *testing.T, dir string) {
			p := only(t, dir, "*.sst")
			b, _ := os.ReadFile(p)
			b[len(b)-60] ^= 0xff
			os.WriteFile(p, b, 0o600)
		}, "table"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filled(t, 200)
			tt.damage(t, dir)
			s, err := Open(dir, Options{})
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded on a damaged store")
			}
			if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Open = %v, want ErrDamaged mentioning %q", err, tt.want)
			}
			var c interface{ Corrupt() bool }
			if !errors.As(err, &c) || !c.Corrupt() {
				t.Fatalf("Open error %v has no Corrupt() true", err)
			}
			// Nothing was deleted: the tables are still there for a forensic look.
			if m, _ := filepath.Glob(filepath.Join(dir, "*.sst")); len(m) == 0 {
				t.Fatal("the tables were deleted")
			}
		})
	}
}

// TestValueLogChecksum: a value-log record that fails its checksum is an
// error naming the key and the checksum, for Get and Scan; badger itself
// answers it with an empty value.
func TestValueLogChecksum(t *testing.T) {
	dir := filled(t, 3000)
	p := filepath.Join(dir, "000001.vlog")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	// Flip a byte in the middle of the value of big-0007.
	i := bytes.Index(b, bytes.Repeat([]byte("big-0007"), 125))
	if i < 0 {
		t.Fatal("value not found in the value log")
	}
	b[i+500] ^= 1
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	s := open(t, dir, Options{})
	defer s.Close()
	if got, err := s.Get([]byte("big-0008")); err != nil || len(got[0]) != 1000 {
		t.Fatalf("Get(big-0008) = %v; want the intact value", err)
	}
	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "checksum mismatch") || !strings.Contains(err.Error(), fmt.Sprintf("%x", "big-0007")) {
			t.Fatalf("%s = %v, want ErrDamaged naming key big-0007 and a checksum mismatch", what, err)
		}
	}
	_, err = s.Get([]byte("big-0007"))
	check("Get(big-0007)", err)
	err = s.Scan([]byte("big-0005"), []byte("big-0010"), func(k, v []byte) error { return nil })
	check("Scan", err)
}
