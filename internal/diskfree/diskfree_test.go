package diskfree

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
)

// TestReserve: a reservation is granted while the free bytes less what the
// others reserved and have not written cover it; what a reservation has
// written no longer counts (the free figure holds it); a released one
// counts no more; an unknown free figure grants everything.
func TestReserve(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir() // one filesystem
	var free atomic.Int64
	s := NewSpace(func(string) int64 { return free.Load() })
	free.Store(100)

	a, err := s.Reserve(dir, 60)
	if err != nil {
		t.Fatalf("first reservation of 60 of 100 free: %v", err)
	}
	_, err = s.Reserve(other, 50)
	var short *ShortError
	if !errors.As(err, &short) {
		t.Fatalf("second reservation of 50 with 100 free and 60 reserved: %v, want a *ShortError", err)
	}
	if want := (ShortError{Dir: other, Need: 50, Free: 100, Reserved: 60, Others: 1}); *short != want {
		t.Fatalf("refusal = %+v, want %+v", *short, want)
	}
	if got, n := s.Reserved(other); got != 60 || n != 1 {
		t.Fatalf("Reserved = %d by %d, want 60 by 1", got, n)
	}

	// a wrote 40 of its 60: the disk holds them (free 60), 20 still reserved.
	a.Wrote(40)
	free.Store(60)
	if got, _ := s.Reserved(dir); got != 20 {
		t.Fatalf("Reserved after writing 40 of 60 = %d, want 20", got)
	}
	if _, err := s.Reserve(dir, 41); err == nil {
		t.Fatal("41 granted with 60 free and 20 reserved")
	}
	b, err := s.Reserve(dir, 40)
	if err != nil {
		t.Fatalf("40 with 60 free and 20 reserved: %v", err)
	}
	// Writing past the need reserves nothing more; writing less again
	// (removed to be written again) reserves again.
	a.Wrote(90)
	if got, _ := s.Reserved(dir); got != 40 {
		t.Fatalf("Reserved with a past its need = %d, want b's 40", got)
	}
	a.Wrote(0)
	if got, _ := s.Reserved(dir); got != 100 {
		t.Fatalf("Reserved after a started over = %d, want 100", got)
	}

	a.Release()
	a.Release() // twice: once
	b.Release()
	if got, n := s.Reserved(dir); got != 0 || n != 0 {
		t.Fatalf("Reserved after releasing all = %d by %d, want none", got, n)
	}
	if c, err := s.Reserve(dir, 60); err != nil {
		t.Fatalf("60 of 60 free after the others ended: %v", err)
	} else {
		c.Release()
	}

	free.Store(-1) // unknown: the guard is off
	if c, err := s.Reserve(dir, 1<<60); err != nil {
		t.Fatalf("reservation with the free space unknown: %v", err)
	} else {
		c.Release()
	}
	var nilR *Reservation
	nilR.Wrote(1)
	nilR.Release()
}

// TestReserveConcurrent: of many reservations asked for at once, exactly
// as many as fit are granted.
func TestReserveConcurrent(t *testing.T) {
	dir := t.TempDir()
	s := NewSpace(func(string) int64 { return 10 * 7 })
	var granted atomic.Int32
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			if _, err := s.Reserve(dir, 7); err == nil {
				granted.Add(1)
			}
		})
	}
	wg.Wait()
	if granted.Load() != 10 {
		t.Fatalf("%d reservations of 7 granted with 70 free, want 10", granted.Load())
	}
}

// TestFsKey: two directories of one filesystem share a key; a directory
// that does not exist still gets one.
func TestFsKey(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	if fsKey(a) != fsKey(b) {
		t.Fatalf("fsKey(%s) = %s, fsKey(%s) = %s: one filesystem, two keys", a, fsKey(a), b, fsKey(b))
	}
	if k := fsKey(a + "/missing"); k == "" {
		t.Fatal("no key for a missing directory")
	}
}
