// Package atomicfile writes small files so that a crash leaves either the
// old content or the new, never a torn file: the bytes go to a synced
// temporary file in the same directory, which then replaces the target
// (WriteFile, by rename) or is linked into place only if the target does not
// exist (WriteNew), and the directory is synced. Grantline keeps its keys,
// tokens, data-directory marker and witnessed checkpoint this way. The
// functions are safe for concurrent use on different paths; on one path,
// the last WriteFile wins and at most one WriteNew succeeds.
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// WriteFile replaces path with data, with the given mode. When it returns
// nil the new content is durable (file and directory synced).
func WriteFile(path string, data []byte, mode fs.FileMode) error {
	tmp, err := writeTemp(path, data, mode)
	if err != nil {
		return err
	}
	defer os.Remove(tmp) // after a successful rename: nothing to remove
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return SyncDir(filepath.Dir(path))
}

// WriteNew creates path holding data, with the given mode, and never
// clobbers: if path exists it returns an error matching fs.ErrExist and
// leaves it untouched, so that of two processes racing to create the same
// file exactly one succeeds. A reader sees no file or the whole file.
func WriteNew(path string, data []byte, mode fs.FileMode) error {
	tmp, err := writeTemp(path, data, mode)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s already exists; remove it or choose another location: %w", path, fs.ErrExist)
		}
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return SyncDir(filepath.Dir(path))
}

// writeTemp writes data to a synced temporary file beside path and returns
// its name; on error nothing is left behind.
func writeTemp(path string, data []byte, mode fs.FileMode) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return "", fmt.Errorf("writing %s: %w", path, err)
	}
	tmp := f.Name()
	err = f.Chmod(mode)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("writing %s: %w", path, err)
	}
	return tmp, nil
}

// SyncDir fsyncs the directory dir, so that the names created, renamed or
// removed in it survive a crash. Other crash-safe writers (ledger/runindex's
// run files) call it after their own rename or remove.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}
