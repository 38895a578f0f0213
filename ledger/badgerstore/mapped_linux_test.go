//go:build linux

package badgerstore

import (
	"bytes"
	"fmt"
	"testing"
	"time"
)

// TestMappedBound fills a store's value log through its mapping, reads it
// back, and checks that the store brings the process's file-backed
// resident memory back under Options.MaxMappedBytes.
func TestMappedBound(t *testing.T) {
	base, err := rssFile()
	if err != nil {
		t.Skipf("no RssFile: %v", err)
	}
	const fill = 48 << 20
	bound := base + 16<<20
	s := open(t, t.TempDir(), Options{MaxMappedBytes: bound, MappedCheckInterval: 20 * time.Millisecond})
	defer s.Close()
	val := bytes.Repeat([]byte("grantline "), 400) // 4000 bytes: into the value log
	for b := 0; b < fill/(len(val)*256); b++ {
		keys, vals := make([][]byte, 256), make([][]byte, 256)
		for i := range keys {
			keys[i], vals[i] = fmt.Appendf(nil, "k%08d", b*256+i), val
		}
		if err := s.Commit(keys, vals); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	if err := s.Scan(nil, nil, func(k, v []byte) error {
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
	got, err := s.Get([]byte("k00000007"))
	if err != nil || !bytes.Equal(got[0], val) {
		t.Fatalf("Get after reclaiming = %d bytes, %v", len(got[0]), err)
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
