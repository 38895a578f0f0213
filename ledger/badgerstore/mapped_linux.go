//go:build linux

package badgerstore

import (
	"bufio"
	"bytes"
	"cmp"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// madvPageout is MADV_PAGEOUT (Linux 5.4): reclaim the pages of a range.
// Unlike MADV_DONTNEED it never changes what the memory holds, so it is
// harmless even if the range was unmapped and reused meanwhile.
const madvPageout = 21

// mappedBound keeps the file-backed resident memory of the process under a
// bound by asking the kernel to reclaim pages of the store's mapped tables
// and value-log files. Reading them again faults the pages back in from
// the page cache or the disk.
//
// It works between two watermarks below the bound, so that what a scan
// maps between two checks, or while a reclaim runs, still fits under it:
// above the high watermark (reclaimHigh of the bound) it reclaims the
// store's mappings holding the most resident pages first (per mapping Rss
// in /proc/self/smaps), a chunk at a time, until RssFile is at the low
// watermark (reclaimLow of the bound). The mappings holding few pages, the
// tables' blocks every lookup touches, mostly stay.
//
// Should RssFile be above reclaimHold of the bound when a reclaim starts,
// or pass it while one runs (a scan faulting pages in faster than they are
// given up, or a machine so loaded that the reclaimer runs late), the
// reads of every store of the process (Get, and each entry of a Scan)
// wait until the reclaim is done: RssFile is the process's, and the
// ledger's index store, opened without a bound of its own, is read as
// much as the main one. Reads in flight finish; writes never wait.
//
// It checks adaptively (see next): every interval while RssFile is far
// below the high watermark and steady, more often as it nears it or grows
// fast, and at the shortest interval right after a reclaim, because a
// read-heavy scan (evaluate, export, fsck) faults pages in faster than a
// fixed 2-second check gives them up.
type mappedBound struct {
	dir       string
	limit     int64         // the bound
	high      int64         // reclaim above this
	low       int64         // down to this
	hold      int64         // above this, reads wait for the reclaim
	every     time.Duration // the longest interval between two checks
	fruitless int           // reclaims in a row that left RssFile above high
	logger    *slog.Logger
	done      chan struct{}
	once      sync.Once
	wg        sync.WaitGroup
	trims     int // how often it reclaimed; read after stop (tests)
	checks    int // how often it read RssFile; read after stop (tests)
}

// The watermarks, in fractions of the bound. Measured on evaluate of a
// 1,000,000-event ledger (docs/BENCHMARKS.md, "Memory (issue 16)"): a
// reclaim that starts at the bound itself leaves the scan that keeps
// faulting pages in above it until the reclaim has walked its mappings,
// and reclaiming everything each time sends the next lookups to the disk.
const (
	reclaimHigh = 0.80
	reclaimLow  = 0.60
	reclaimHold = 0.90
)

// minMappedCheck is the shortest interval between two checks: right after
// a reclaim, or while RssFile would reach the high watermark within twice
// this. A check costs 0.1-0.3 ms on a loaded machine (BenchmarkRssFile),
// so checking at this pace after a reclaim takes at most 1.5% of a core.
const minMappedCheck = 20 * time.Millisecond

func newMappedBound(dir string, limit int64, every time.Duration, logger *slog.Logger) *mappedBound {
	abs, err := filepath.Abs(dir)
	if err == nil {
		dir = abs
	}
	return &mappedBound{
		dir: dir, limit: limit,
		high:  int64(float64(limit) * reclaimHigh),
		low:   int64(float64(limit) * reclaimLow),
		hold:  int64(float64(limit) * reclaimHold),
		every: every, logger: logger, done: make(chan struct{}),
	}
}

func startMappedBound(dir string, limit int64, every time.Duration, logger *slog.Logger) *mappedBound {
	m := newMappedBound(dir, limit, every, logger)
	m.wg.Go(func() {
		t := time.NewTimer(min(every, minMappedCheck))
		defer t.Stop()
		var last int64
		lastAt := time.Now()
		for {
			select {
			case <-m.done:
				return
			case <-t.C:
			}
			now := time.Now()
			rss, trimmed := m.check()
			t.Reset(m.next(last, rss, now.Sub(lastAt), trimmed))
			last, lastAt = rss, now
		}
	})
	return m
}

// next is how long to wait before the next check, given RssFile at the
// last two checks (prev, then rss, dt apart; after a reclaim, rss is what
// it left) and whether this check reclaimed: the shortest interval after a
// reclaim that brought RssFile under the high watermark (the scan that
// pushed it above is likely still running), every after one that could
// not (what is left is not the store's: checking again soon would only
// burn CPU), else half the time RssFile would take to reach the high
// watermark at its last rate of growth, between the shortest interval and
// every.
func (m *mappedBound) next(prev, rss int64, dt time.Duration, trimmed bool) time.Duration {
	lo := min(minMappedCheck, m.every)
	if trimmed {
		if rss > m.high {
			return m.every
		}
		return lo
	}
	grew := rss - prev
	if prev <= 0 || grew <= 0 || dt <= 0 {
		return m.every
	}
	// headroom / (grew/dt) / 2, in float64 to keep clear of overflow.
	d := time.Duration(float64(m.high-rss) / float64(grew) * float64(dt) / 2)
	return max(lo, min(d, m.every))
}

func (m *mappedBound) stop() {
	if m == nil {
		return
	}
	m.once.Do(func() { close(m.done) })
	m.wg.Wait()
}

// pause makes the reads of every store of the process wait until the
// returned release is called.
func (m *mappedBound) pause() (release func()) { return readGate.hold() }

// holdReads says whether a reclaim starting at RssFile rss makes reads wait:
// when rss is above the hold watermark, unless the last two reclaims could
// not bring RssFile under the high watermark (what is left is not the
// store's: holding reads would only slow them, reclaim after reclaim). One
// fruitless reclaim is not enough: under heavy load a scan can refill what
// a reclaim gives up while it runs, and the next reclaim must hold reads.
func (m *mappedBound) holdReads(rss int64) bool {
	return rss > m.hold && m.fruitless < 2
}

// check reclaims the store's mapped pages when RssFile is above the high
// watermark; it returns RssFile (zero on an error), after the reclaim if
// there was one, and whether it reclaimed.
func (m *mappedBound) check() (int64, bool) {
	m.checks++
	rss, err := rssFile()
	if err != nil || rss <= m.high {
		return rss, false
	}
	t0 := time.Now()
	var release func()
	hold := func() {
		if release == nil {
			release = m.pause()
		}
	}
	if m.holdReads(rss) {
		hold()
	}
	// After each chunk: done once RssFile is at the low watermark; reads
	// wait from the moment it passes the hold watermark (a scan faulting
	// pages in faster than they are given up).
	n, err := pageOutStoreFiles(m.dir, func() bool {
		now, err := rssFile()
		if err != nil {
			return true
		}
		if m.holdReads(now) {
			hold()
		}
		return now <= m.low
	})
	m.trims++
	after, aerr := rssFile()
	held := release != nil
	if held {
		release()
	}
	if aerr == nil && after > m.high {
		m.fruitless++
	} else {
		m.fruitless = 0
	}
	if m.logger != nil {
		if err != nil {
			m.logger.Warn("badger: reclaiming mapped store files", "rss_file_bytes", rss, "bound", m.limit, "err", err)
		} else {
			m.logger.Debug("badger: reclaimed mapped store files", "rss_file_bytes", rss, "after_bytes", after, "bound", m.limit, "chunks", n, "took", time.Since(t0), "held_reads", held)
		}
	}
	if aerr != nil {
		return 0, true
	}
	return after, true
}

// rssFile is RssFile of /proc/self/status in bytes.
func rssFile() (int64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for line := range bytes.Lines(b) {
		if v, ok := bytes.CutPrefix(line, []byte("RssFile:")); ok {
			f := strings.Fields(string(v))
			if len(f) == 0 {
				break
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no RssFile in /proc/self/status")
}

// storeMapping is one mapping of a store file and its resident pages.
type storeMapping struct {
	start, end uint64
	rss        int64 // bytes
	path       string
}

// storeMappings lists the mappings of table and value-log files in dir or
// below it with resident pages, from /proc/self/smaps (or a file in its
// format). Below it: the ledger's separate index store lives in
// DIR/ledger/index and is opened without a bound of its own, yet its pages
// count in the same RssFile; leaving them out left the bound unreachable
// while evaluation read subjects through the index. Memtable logs (.mem),
// which badger writes through their mapping, are left out.
func storeMappings(smaps, dir string) ([]storeMapping, error) {
	f, err := os.Open(smaps)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []storeMapping
	var cur *storeMapping // the store mapping whose fields follow, if any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Bytes()
		if v, ok := bytes.CutPrefix(line, []byte("Rss:")); ok {
			if cur != nil {
				if f := strings.Fields(string(v)); len(f) > 0 {
					if kb, err := strconv.ParseInt(f[0], 10, 64); err == nil && kb > 0 {
						cur.rss = kb << 10
						out = append(out, *cur)
					}
				}
				cur = nil
			}
			continue
		}
		// A mapping's header: "address perms offset dev inode path"; its
		// fields ("Name:   value kB") have a colon in the first word.
		fields := strings.Fields(string(line))
		if len(fields) == 0 || strings.HasSuffix(fields[0], ":") {
			continue
		}
		cur = nil
		if len(fields) < 6 {
			continue
		}
		path := strings.Join(fields[5:], " ") // a directory may hold spaces
		if !strings.HasPrefix(path, dir+"/") || !(strings.HasSuffix(path, ".sst") || strings.HasSuffix(path, ".vlog")) {
			continue
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		cur = &storeMapping{start: start, end: end, path: path}
	}
	return out, sc.Err()
}

// byResident orders ms by resident bytes, most first.
func byResident(ms []storeMapping) {
	slices.SortStableFunc(ms, func(a, b storeMapping) int { return cmp.Compare(b.rss, a.rss) })
}

// pageOutChunk is how much of a mapping one madvise covers. A value-log
// mapping is 512 MiB and paging out what it holds can take a few hundred
// milliseconds on a loaded machine; in chunks, the reclaim stops as soon as
// enough is given up and notices a scan outrunning it.
const pageOutChunk = 16 << 20

// pageOutStoreFiles asks the kernel to reclaim the pages of the store's
// mappings in dir or below it, those holding the most resident pages
// first, a chunk at a time, until enough (called after each chunk) says
// so. It returns how many chunks it advised.
func pageOutStoreFiles(dir string, enough func() bool) (int, error) {
	ms, err := storeMappings("/proc/self/smaps", dir)
	if err != nil {
		return 0, err
	}
	byResident(ms)
	n := 0
	for _, m := range ms {
		for lo := m.start; lo < m.end; lo += pageOutChunk {
			hi := min(lo+pageOutChunk, m.end)
			if _, _, e := syscall.Syscall(syscall.SYS_MADVISE, uintptr(lo), uintptr(hi-lo), madvPageout); e != 0 && e != syscall.ENOMEM {
				return n, fmt.Errorf("madvise(MADV_PAGEOUT) on %s: %w", m.path, e)
			}
			n++
			if enough() {
				return n, nil
			}
		}
	}
	return n, nil
}
