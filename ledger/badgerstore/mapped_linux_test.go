//go:build linux

package badgerstore

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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
// nears the high watermark or grows fast, and is the shortest right after
// a reclaim that worked.
func TestMappedNext(t *testing.T) {
	const mib = 1 << 20
	m := newMappedBound(t.TempDir(), 1280*mib, 2*time.Second, nil) // high watermark 1024 MiB, low 768 MiB
	if m.high != 1024*mib || m.low != 768*mib {
		t.Fatalf("watermarks of a 1280 MiB bound: %d and %d MiB, want 1024 and 768", m.high/mib, m.low/mib)
	}
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
		{"near the high watermark", 920 * mib, 1020 * mib, time.Second, false, minMappedCheck},
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

// TestStoreMappings reads the store's mappings and their resident bytes
// from a file in the format of /proc/self/smaps: table and value-log files
// in the directory or below it, with resident pages; not memtable logs,
// not other directories' files, not mappings without pages.
func TestStoreMappings(t *testing.T) {
	dir := t.TempDir()
	const smaps = `55d0c0000000-55d0c0400000 r-xp 00000000 fd:00 123 /usr/bin/grantline
Size:               4096 kB
Rss:                2048 kB
VmFlags: rd ex mr mw me
7f0000000000-7f0010000000 r--s 00000000 fd:00 11 DIR/000001.vlog
Size:             262144 kB
KernelPageSize:        4 kB
Rss:               30720 kB
Pss:               30720 kB
VmFlags: rd sh mr mw me ms
7f0010000000-7f0010200000 r--s 00000000 fd:00 12 DIR/000007.sst
Size:               2048 kB
Rss:                 512 kB
7f0010200000-7f0010400000 r--s 00000000 fd:00 13 DIR/000008.sst
Size:               2048 kB
Rss:                   0 kB
7f0010400000-7f0014400000 rw-s 00000000 fd:00 14 DIR/00001.mem
Size:              65536 kB
Rss:               65536 kB
7f0014400000-7f0014600000 r--s 00000000 fd:00 15 DIR/index/000002.sst
Size:               2048 kB
Rss:                1024 kB
7f0014600000-7f0014800000 r--s 00000000 fd:00 16 DIRX/000003.sst
Size:               2048 kB
Rss:                2048 kB
7f0014800000-7f0014a00000 rw-p 00000000 00:00 0
Size:               2048 kB
Rss:                2048 kB
7f0014a00000-7f0014c00000 r--s 00000000 fd:00 17 DIR/sub dir/000004.vlog
Size:               2048 kB
Rss:                   8 kB
`
	p := filepath.Join(t.TempDir(), "smaps")
	if err := os.WriteFile(p, []byte(strings.ReplaceAll(smaps, "DIR", dir)), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := storeMappings(p, dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []storeMapping{
		{0x7f0000000000, 0x7f0010000000, 30720 << 10, dir + "/000001.vlog"},
		{0x7f0010000000, 0x7f0010200000, 512 << 10, dir + "/000007.sst"},
		{0x7f0014400000, 0x7f0014600000, 1024 << 10, dir + "/index/000002.sst"},
		{0x7f0014a00000, 0x7f0014c00000, 8 << 10, dir + "/sub dir/000004.vlog"},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("storeMappings =\n%+v\nwant\n%+v", got, want)
	}
}

// TestByResident: the mappings holding the most resident bytes first,
// ties in the order of /proc/self/smaps.
func TestByResident(t *testing.T) {
	for _, tc := range []struct {
		name string
		rss  []int64
		want []uint64 // starts, in order
	}{
		{"none", nil, nil},
		{"one", []int64{5}, []uint64{0}},
		{"largest first", []int64{5, 30, 9}, []uint64{1, 2, 0}},
		{"ties keep their order", []int64{9, 30, 9}, []uint64{1, 0, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ms []storeMapping
			for i, r := range tc.rss {
				ms = append(ms, storeMapping{start: uint64(i), rss: r})
			}
			byResident(ms)
			var got []uint64
			for _, m := range ms {
				got = append(got, m.start)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("byResident(%v) = %v, want %v", tc.rss, got, tc.want)
			}
		})
	}
}

// TestPageOutLargestFirst maps two store files, touches all their pages,
// and has enough after the first chunk: the larger file's pages go, the
// smaller file's stay mapped; without enough, both go, a chunk at a time.
//
// It runs on one CPU (pinOneCPU): a page the kernel has just brought in
// waits in a per-CPU batch before it joins the LRU lists, and
// MADV_PAGEOUT drains the batch of the CPU it runs on only, skipping
// pages still in another CPU's batch. Unpinned, the test thread moved
// between CPUs after reading the value-log file back in left a few of its
// pages resident, now and then with -count=1 and in one run of three to
// five with -count=5 under load: more threads, more moves.
func TestPageOutLargestFirst(t *testing.T) {
	pinOneCPU(t)
	dir := t.TempDir()
	mapFile := func(name string, size int) []byte {
		t.Helper()
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.Write(bytes.Repeat([]byte{7}, size)); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil { // clean pages: reclaimable at once
			t.Fatal(err)
		}
		b, err := syscall.Mmap(int(f.Fd()), 0, size, syscall.PROT_READ, syscall.MAP_SHARED)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { syscall.Munmap(b) })
		sum := 0
		for i := 0; i < size; i += 4096 {
			sum += int(b[i])
		}
		if sum != 7*size/4096 {
			t.Fatalf("%s read back %d", name, sum)
		}
		return b
	}
	big := mapFile("000001.vlog", 16<<20)
	small := mapFile("000002.sst", 2<<20)
	resident := func() map[string]int64 {
		t.Helper()
		ms, err := storeMappings("/proc/self/smaps", dir)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]int64{}
		for _, m := range ms {
			out[filepath.Base(m.path)] = m.rss
		}
		return out
	}
	before := resident()
	if before["000001.vlog"] < 16<<20 || before["000002.sst"] < 2<<20 {
		t.Fatalf("resident before reclaiming: %v, want all of both files", before)
	}
	calls := 0
	n, err := pageOutStoreFiles(dir, func() bool { calls++; return true })
	if err != nil {
		t.Fatal(err)
	}
	after := resident()
	if n != 1 || calls != 1 || after["000001.vlog"] > 8<<20 || after["000002.sst"] < 2<<20 {
		t.Fatalf("reclaiming until the first chunk is enough: %d chunks advised, enough called %d times, resident %v; want 1 and 1, the value-log file's pages gone and the table's kept", n, calls, after)
	}
	if big[12345] != 7 || small[4097] != 7 {
		t.Fatal("a reclaimed page reads back changed")
	}
	for i := 0; i < len(big); i += 4096 { // all resident again
		calls += int(big[i])
	}
	n, err = pageOutStoreFiles(dir, func() bool { return false })
	if err != nil {
		t.Fatal(err)
	}
	if after := resident(); n != 2 || len(after) != 0 {
		t.Fatalf("reclaiming without enough: %d chunks advised, resident %v; want 2 (16 MiB and 2 MiB) and nothing", n, after)
	}
}

// pinOneCPU keeps the calling goroutine on its OS thread and that thread
// on one CPU until the test ends. The thread is never unlocked: Go ends it
// with the goroutine, so no other goroutine inherits its affinity.
func pinOneCPU(t *testing.T) {
	t.Helper()
	runtime.LockOSThread()
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Skipf("reading the CPU affinity: %v", err)
	}
	cpu := -1
	for i := 0; i < len(set)*64 && cpu < 0; i++ {
		if set.IsSet(i) {
			cpu = i
		}
	}
	if cpu < 0 {
		t.Skip("no CPU in the affinity mask")
	}
	var one unix.CPUSet
	one.Set(cpu)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		t.Skipf("pinning the test thread to CPU %d: %v", cpu, err)
	}
}

// TestMappedHold: while a reclaim holds reads, Get and Scan wait, those
// of a store without a bound of its own too (the ledger's index store: the
// bound is on the process's memory), and go on with the same answers once
// it is done; a reclaim holds them only above the hold watermark, and not
// after two in a row that could not bring RssFile under the high watermark.
func TestMappedHold(t *testing.T) {
	const mib = 1 << 20
	dir := t.TempDir()
	// A bound far above RssFile: the store's own checks never reclaim.
	s := open(t, dir, Options{MaxMappedBytes: 1 << 50, MappedCheckInterval: time.Hour})
	defer s.Close()
	ix := open(t, filepath.Join(dir, "index"), Options{NoSync: true})
	defer ix.Close()
	for _, st := range []*Store{s, ix} {
		if err := st.Commit([][]byte{[]byte("a"), []byte("b")}, [][]byte{[]byte("1"), bytes.Repeat([]byte("2"), 1000)}); err != nil {
			t.Fatal(err)
		}
	}
	get := func(st *Store) func() (string, error) {
		return func() (string, error) {
			v, err := st.Get([]byte("b"))
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("%d bytes", len(v[0])), nil
		}
	}
	scan := func(st *Store) func() (string, error) {
		return func() (string, error) {
			var keys []string
			err := st.Scan(nil, nil, func(k, v []byte) error {
				keys = append(keys, fmt.Sprintf("%s=%d", k, len(v)))
				return nil
			})
			return strings.Join(keys, " "), err
		}
	}
	for _, tc := range []struct {
		name string
		read func() (string, error)
		want string
	}{
		{"Get", get(s), "1000 bytes"},
		{"Scan", scan(s), "a=1 b=1000"},
		{"Get of a store without a bound", get(ix), "1000 bytes"},
		{"Scan of a store without a bound", scan(ix), "a=1 b=1000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			release := s.mapped.pause()
			done := make(chan string, 1)
			go func() {
				got, err := tc.read()
				if err != nil {
					got = err.Error()
				}
				done <- got
			}()
			select {
			case got := <-done:
				release()
				t.Fatalf("returned %q while a reclaim held reads", got)
			case <-time.After(100 * time.Millisecond):
			}
			release()
			select {
			case got := <-done:
				if got != tc.want {
					t.Fatalf("after the hold = %q, want %q", got, tc.want)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("still waits after the reclaim released reads")
			}
		})
	}

	m := newMappedBound(dir, 1000*mib, time.Second, nil) // hold above 900 MiB
	for _, tc := range []struct {
		rss       int64
		fruitless int // reclaims in a row that left RssFile above high
		want      bool
	}{
		{850 * mib, 0, false},
		{900 * mib, 0, false},
		{901 * mib, 0, true},
		{1200 * mib, 0, true},
		{1200 * mib, 1, true},
		{1200 * mib, 2, false},
		{1200 * mib, 5, false},
	} {
		m.fruitless = tc.fruitless
		if got := m.holdReads(tc.rss); got != tc.want {
			t.Errorf("holdReads(%d MiB) after %d fruitless reclaims = %v, want %v", tc.rss/mib, tc.fruitless, got, tc.want)
		}
	}
}

// BenchmarkRssFile is the cost of one check of the bound (reading
// /proc/self/status), which sets how often it can run near the bound.
func BenchmarkRssFile(b *testing.B) {
	for b.Loop() {
		if _, err := rssFile(); err != nil {
			b.Fatal(err)
		}
	}
}

// TestReadGate: reads go on once every reclaim holding them released it,
// and a release called twice counts once.
func TestReadGate(t *testing.T) {
	var g gate
	g.wait() // nothing holds it: returns at once
	r1, r2 := g.hold(), g.hold()
	done := make(chan struct{})
	go func() { g.wait(); close(done) }()
	waiting := func() bool {
		select {
		case <-done:
			return false
		case <-time.After(50 * time.Millisecond):
			return true
		}
	}
	if !waiting() {
		t.Fatal("wait returned while two reclaims held reads")
	}
	r1()
	r1()
	if !waiting() {
		t.Fatal("wait returned while one reclaim still held reads (a release called twice counted twice?)")
	}
	r2()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("wait still blocks after both releases")
	}
	r3 := g.hold() // a new hold after all were released holds again
	if g.holds.Load() != 1 {
		t.Fatalf("holds = %d after a new hold, want 1", g.holds.Load())
	}
	r3()
	g.wait()
}
