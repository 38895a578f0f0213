package datadir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/grantline/grantline/internal/atomicfile"
)

// logState is what DIR/keys/log.state records about the directory's log.
type logState int

const (
	stateNone     logState = iota // no file: a new directory, or one older than the file
	stateCreating                 // the first start began; no checkpoint was served yet
	stateCreated                  // the log exists: its store must hold it
)

var stateNames = map[logState]string{stateCreating: "creating", stateCreated: "created"}

// readLogState reads DIR/keys/log.state: its first line is "creating" or
// "created"; the lines after it (origin, time) are for people.
func readLogState(path string) (logState, error) {
	p := filepath.Join(path, KeysDir, LogStateFile)
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return stateNone, nil
	}
	if err != nil {
		return stateNone, fmt.Errorf("reading %s: %w", p, err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	for s, name := range stateNames {
		if first == name {
			return s, nil
		}
	}
	return stateNone, fmt.Errorf("%s: first line %q: want \"creating\" or \"created\" (written by grantline serve; restore the file from the original DIR/keys)", p, first)
}

// writeLogState records s in DIR/keys/log.state, atomically and durably
// (temporary file, fsync, rename, fsync of the directory).
func writeLogState(path string, s logState, origin string) error {
	dir := filepath.Join(path, KeysDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating key directory: %w", err)
	}
	body := fmt.Sprintf("%s\norigin %s\nsince %s\n", stateNames[s], origin, time.Now().UTC().Format(time.RFC3339))
	return writeFileAtomic(filepath.Join(dir, LogStateFile), []byte(body), 0o644)
}

// writeFileAtomic replaces p with data, durably (internal/atomicfile).
func writeFileAtomic(p string, data []byte, mode fs.FileMode) error {
	return atomicfile.WriteFile(p, data, mode)
}
