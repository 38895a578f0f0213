package atomicfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFileReplaces(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state")
	for _, tc := range []struct {
		data string
		mode fs.FileMode
	}{{"first\n", 0o600}, {"second, longer\n", 0o644}, {"", 0o600}} {
		if err := WriteFile(p, []byte(tc.data), tc.mode); err != nil {
			t.Fatalf("WriteFile(%q): %v", tc.data, err)
		}
		got, err := os.ReadFile(p)
		if err != nil || string(got) != tc.data {
			t.Fatalf("after WriteFile(%q): read %q, %v", tc.data, got, err)
		}
		if fi, _ := os.Stat(p); fi.Mode().Perm() != tc.mode {
			t.Errorf("mode %v, want %v", fi.Mode().Perm(), tc.mode)
		}
	}
	assertOnlyFile(t, dir, "state")
}

func TestWriteNewNeverClobbers(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "key")
	if err := WriteNew(p, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := WriteNew(p, []byte("two"), 0o600)
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second WriteNew = %v, want fs.ErrExist", err)
	}
	if got, _ := os.ReadFile(p); string(got) != "one" {
		t.Fatalf("content %q after a refused WriteNew, want the first", got)
	}
	assertOnlyFile(t, dir, "key")
}

func TestWriteIntoMissingDirectory(t *testing.T) {
	p := filepath.Join(t.TempDir(), "missing", "file")
	if err := WriteFile(p, []byte("x"), 0o600); err == nil {
		t.Fatal("WriteFile into a missing directory succeeded")
	}
	if err := WriteNew(p, []byte("x"), 0o600); err == nil {
		t.Fatal("WriteNew into a missing directory succeeded")
	}
}

// assertOnlyFile checks that no temporary file was left beside name.
func assertOnlyFile(t *testing.T, dir, name string) {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 1 || es[0].Name() != name {
		var names []string
		for _, e := range es {
			names = append(names, e.Name())
		}
		t.Fatalf("directory holds %q, want only %q", names, name)
	}
}
