//go:build linux

package badgerstore

import (
	"bytes"
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

// TestMappedBound fills a store's value log through its mapping, reads it
// back, and checks that the bounded store brings the process's file-backed
// resident memory back under Options.MaxMappedBytes: when the pages are its
// own, and when they are those of a store without a bound in a
// subdirectory of its own (the ledger's index store in DIR/ledger/index).
func TestMappedBound(t *testing.T) {
	for _, tc := range []struct {
		name   string
		subdir string // where the filled store lives, below the bounded one ("": the bounded store itself)
	}{
		{name: "own files"},
		{name: "store in a subdirectory", subdir: "index"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base, err := rssFile()
			if err != nil {
				t.Skipf("no RssFile: %v", err)
			}
			const fill = 48 << 20
			bound := base + 16<<20
			dir := t.TempDir()
			s := open(t, dir, Options{MaxMappedBytes: bound, MappedCheckInterval: 20 * time.Millisecond})
			defer s.Close()
			filled := s
			if tc.subdir != "" {
				filled = open(t, filepath.Join(dir, tc.subdir), Options{NoSync: true})
				defer filled.Close()
			}
			val := bytes.Repeat([]byte("grantline "), 400) // 4000 bytes: into the value log
			for b := 0; b < fill/(len(val)*256); b++ {
				keys, vals := make([][]byte, 256), make([][]byte, 256)
				for i := range keys {
					keys[i], vals[i] = fmt.Appendf(nil, "k%08d", b*256+i), val
				}
				if err := filled.Commit(keys, vals); err != nil {
					t.Fatal(err)
				}
			}
			n := 0
			if err := filled.Scan(nil, nil, func(k, v []byte) error {
				if !bytes.Equal(v, val) {
					return fmt.Errorf("value of %s: %d bytes", k, len(v))
				}
				n++
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(5 * time.Second)
			for {
				rss, err := rssFile()
				if err != nil {
					t.Fatal(err)
				}
				if rss <= bound {
					t.Logf("RssFile %d MiB (started at %d MiB, bound %d MiB) after reading %d values", rss>>20, base>>20, bound>>20, n)
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("RssFile %d MiB stays above the %d MiB bound (started at %d MiB)", rss>>20, bound>>20, base>>20)
				}
				time.Sleep(20 * time.Millisecond)
			}
			s.mapped.stop()
			if s.mapped.trims == 0 {
				t.Fatalf("the store never reclaimed its mapped files: the test did not reach the bound")
			}
			// The values read back intact after their pages were reclaimed.
			got, err := filled.Get([]byte("k00000007"))
			if err != nil || !bytes.Equal(got[0], val) {
				t.Fatalf("Get after reclaiming = %d bytes, %v", len(got[0]), err)
			}
		})
	}
}

// TestMappedNext: the interval to the next check shortens as RssFile
// nears the bound or grows fast, and is the shortest right after a reclaim
// that worked.
func TestMappedNext(t *testing.T) {
	const mib = 1 << 20
	m := &mappedBound{limit: 1024 * mib, every: 2 * time.Second}
	for _, tc := range []struct {
		name      string
		prev, rss int64
		dt        time.Duration
		trimmed   bool
		want      time.Duration
	}{
		{"first check", 0, 100 * mib, time.Second, false, 2 * time.Second},
		{"steady", 500 * mib, 500 * mib, time.Second, false, 2 * time.Second},
		{"shrinking", 600 * mib, 500 * mib, time.Second, false, 2 * time.Second},
		{"slow growth", 500 * mib, 510 * mib, time.Second, false, 2 * time.Second},
		// 514 MiB of headroom at 200 MiB/s: the bound in 2.57 s, checked again in half.
		{"fast growth", 310 * mib, 510 * mib, time.Second, false, 1285 * time.Millisecond},
		{"faster growth", 310 * mib, 510 * mib, 500 * time.Millisecond, false, 642500 * time.Microsecond},
		{"near the bound", 920 * mib, 1020 * mib, time.Second, false, minMappedCheck},
		{"above, reclaimed under", 1100 * mib, 200 * mib, time.Second, true, minMappedCheck},
		{"above, could not reclaim", 1100 * mib, 1090 * mib, time.Second, true, 2 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := m.next(tc.prev, tc.rss, tc.dt, tc.trimmed); got != tc.want {
				t.Errorf("next(%d MiB, %d MiB, %s, %v) = %s, want %s", tc.prev/mib, tc.rss/mib, tc.dt, tc.trimmed, got, tc.want)
			}
		})
	}
}

// TestMappedBoundOff: without MaxMappedBytes nothing watches the mappings.
func TestMappedBoundOff(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	defer s.Close()
	if s.mapped != nil {
		t.Fatal("a mapped-file bound runs without MaxMappedBytes")
	}
}
