package witness

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/grantline/grantline/internal/atomicfile"
)

// maxStateFile bounds the state file read at start: a checkpoint note with
// a few hundred cosignature lines is far below it.
const maxStateFile = 1 << 20

// ErrStateRefused is wrapped by the error restore logs when the stored
// witnessed checkpoint is not served: it does not verify under the policy
// and the log's key, or the log does not hold it.
var ErrStateRefused = errors.New("stored witnessed checkpoint refused")

// restore reads Config.StateFile and, when it holds a checkpoint the log
// signed, a quorum of the policy cosigned and Config.Holds accepts, makes it
// the newest witnessed checkpoint. Anything else is logged and ignored: the
// witnesses cosign the log's current checkpoint again within a round. Called
// by New before the Witnesser is shared.
func (w *Witnesser) restore() {
	path := w.cfg.StateFile
	n, err := readState(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return
	case err != nil:
		w.log.Error("ignoring the stored witnessed checkpoint; serving none until a new one reaches the quorum", "path", path, "err", err)
		return
	}
	v, err := VerifyQuorum(n, w.cfg.Log, w.cfg.Policy)
	if err == nil && w.cfg.Holds != nil {
		if herr := w.cfg.Holds(v.Checkpoint.Size, v.Checkpoint.Root); herr != nil {
			err = fmt.Errorf("the log does not hold it: %w", herr)
		}
	}
	if err != nil {
		w.log.Warn("ignoring the stored witnessed checkpoint; serving none until a new one reaches the quorum (remove the file to silence this)",
			"path", path, "err", fmt.Errorf("%w: %w", ErrStateRefused, err))
		return
	}
	c, err := w.parse(n)
	if err != nil { // VerifyQuorum opened it with the same key: cannot happen
		w.log.Error("ignoring the stored witnessed checkpoint", "path", path, "err", err)
		return
	}
	wd := &Witnessed{Size: c.size, Root: c.root, Note: c.note}
	for _, cs := range v.Cosignatures {
		wd.Cosigners = append(wd.Cosigners, cs.Witness)
	}
	for _, st := range w.ws {
		for _, name := range wd.Cosigners {
			if st.w.Name == name {
				// It held this size when it cosigned; a 409 corrects a
				// witness that moved on since.
				st.cosigned, st.known, st.signedAny = c.size, c.size, true
				w.metrics.cosigned.WithLabelValues(name).Set(float64(c.size))
			}
		}
	}
	w.witnessedCP, w.witnessed = c, wd
	w.metrics.witnessedSize.Set(float64(c.size))
	w.log.Info("serving the stored witnessed checkpoint until a newer one reaches the quorum",
		"path", path, "size", c.size, "cosigners", wd.Cosigners)
}

// readState reads the state file, at most maxStateFile bytes.
func readState(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxStateFile+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if len(b) > maxStateFile {
		return nil, fmt.Errorf("reading %s: larger than %d bytes; it is not a checkpoint note", path, maxStateFile)
	}
	return b, nil
}

// writeState replaces path with data durably, so that a crash leaves
// either the old checkpoint or the new one, never a torn file.
func writeState(path string, data []byte) error {
	return atomicfile.WriteFile(path, data, 0o644)
}
