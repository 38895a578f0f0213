// Package diskfree reports the free space of a filesystem, for the guards
// that refuse work a full disk would break (the badger store's writes, a
// partitioned evaluation's spill files), and keeps the process's
// reservations of it (Space), so that work running at once does not count
// the same free bytes twice. Bytes and every method of Space and
// Reservation are safe for concurrent use.
package diskfree

import (
	"fmt"
	"path/filepath"
	"sync"
)

// Space is the free space of filesystems less what the work in progress
// on them reserved and has not written yet. A piece of work reserves what
// it estimates it will write before it starts (Reserve), says how much it
// has written as it goes (Reservation.Wrote: written bytes are on the disk,
// so the free figure counts them already) and releases the rest when it
// ends (Reservation.Release). Reservations are per filesystem: two
// directories on one filesystem share its free space.
type Space struct {
	free func(dir string) int64
	mu   sync.Mutex
	held map[string]map[*Reservation]struct{} // by filesystem (fsKey)
}

// NewSpace returns a Space reading the free bytes of the filesystem
// holding dir from free, which returns -1 when it does not know (then
// every reservation is granted: the guard is off). Tests pass a fake.
func NewSpace(free func(dir string) int64) *Space {
	return &Space{free: free, held: map[string]map[*Reservation]struct{}{}}
}

// Process is the process-wide Space over Bytes: every guard of the
// process that reserves disk uses it, so the reservations of all of them
// count.
var Process = NewSpace(Bytes)

// ShortError is Reserve's refusal: Need bytes asked for in Dir, Free free
// there, of which Reserved are reserved, not yet written, by Others
// pieces of work already running on that filesystem.
type ShortError struct {
	Dir                  string
	Need, Free, Reserved int64
	Others               int
}

func (e *ShortError) Error() string {
	return fmt.Sprintf("%d bytes needed in %s, %d free there, of which %d are reserved by %d other running reservations", e.Need, e.Dir, e.Free, e.Reserved, e.Others)
}

// Reserve reserves need bytes on the filesystem holding dir, which must
// exist. It returns a *ShortError when the free bytes there, less what the
// reservations already held reserve and have not written yet, are fewer
// than need; with the free space unknown it grants the reservation. The
// caller must Release a granted reservation.
func (s *Space) Reserve(dir string, need int64) (*Reservation, error) {
	key := fsKey(dir)
	s.mu.Lock()
	defer s.mu.Unlock()
	if free := s.free(dir); free >= 0 {
		if reserved, others := s.reserved(key); free-reserved < need {
			return nil, &ShortError{Dir: dir, Need: need, Free: free, Reserved: reserved, Others: others}
		}
	}
	r := &Reservation{s: s, key: key, need: need}
	if s.held[key] == nil {
		s.held[key] = map[*Reservation]struct{}{}
	}
	s.held[key][r] = struct{}{}
	return r, nil
}

// Reserved is what the reservations held on the filesystem holding dir
// reserve and have not written yet, and how many there are.
func (s *Space) Reserved(dir string) (bytes int64, held int) {
	key := fsKey(dir)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reserved(key)
}

// reserved is Reserved for the filesystem key. s.mu is held.
func (s *Space) reserved(key string) (bytes int64, held int) {
	for r := range s.held[key] {
		bytes += r.outstanding()
	}
	return bytes, len(s.held[key])
}

// Reservation is a granted Reserve.
type Reservation struct {
	s       *Space
	key     string
	need    int64
	written int64 // guarded by s.mu
}

// outstanding is what r still reserves. s.mu is held.
func (r *Reservation) outstanding() int64 { return max(0, r.need-r.written) }

// Wrote says the work has n bytes of what it reserved on the disk now
// (in total, not since the last call: n goes down when it removes what it
// wrote to write it again). Beyond its need it reserves nothing more. A
// nil r does nothing.
func (r *Reservation) Wrote(n int64) {
	if r == nil {
		return
	}
	r.s.mu.Lock()
	r.written = n
	r.s.mu.Unlock()
}

// Release gives the reservation up; calling it again does nothing, and so
// does a nil r.
func (r *Reservation) Release() {
	if r == nil {
		return
	}
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	if held := r.s.held[r.key]; held != nil {
		delete(held, r)
		if len(held) == 0 {
			delete(r.s.held, r.key)
		}
	}
}

// pathKey is the fallback filesystem key: the directory itself.
func pathKey(dir string) string {
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	return "path:" + filepath.Clean(dir)
}
