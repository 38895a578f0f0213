//go:build linux

package badgerstore

import (
	"bufio"
	"bytes"
	"cmp"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// madvPageout is MADV_PAGEOUT (Linux 5.4): reclaim the pages of a range,
// out of the page cache too (clean file pages are dropped, so reading them
// again reads the disk). Unlike MADV_DONTNEED it never changes what the
// memory holds, so it is harmless even if the range was unmapped and
// reused meanwhile: it is the advice for every mapping a reclaim cannot
// prove pinned (mapped_pin.go).
const madvPageout = 21

// madvDontneed is MADV_DONTNEED: drop the process's page-table entries of
// a range. On a shared file mapping the pages stay in the page cache
// (reading them again is a minor fault, and it is the kernel's to evict
// them under memory pressure); on anything else it would discard memory,
// so it goes only to mappings pinned for the whole reclaim (mapped_pin.go).
const madvDontneed = syscall.MADV_DONTNEED

// mappedBound keeps the file-backed resident memory of the process under a
// bound by asking the kernel to reclaim pages of the store's mapped tables
// and value-log files: with MADV_DONTNEED, which leaves them in the page
// cache, where the reclaim can prove the mapping stays put while it runs
// (the files pinStores pins: the tables of the stores open in the process,
// their value-log files but the two newest), with MADV_PAGEOUT, which
// drops them from the page cache too, elsewhere. Reading them again faults
// the pages back in from the page cache (a minor fault) or the disk.
//
// It works between two watermarks below the bound, so that what a scan
// maps between two checks, or while a reclaim runs, still fits under it:
// above the high watermark (reclaimHigh of the bound) it reclaims until
// RssFile is at the low watermark (reclaimLow of the bound): first the
// pinned files, the largest mappings first, a mapping at a time (listed
// from /proc/self/maps: cheap); then, if that was not enough, the others,
// those holding the most resident pages first (per mapping Rss in
// /proc/self/smaps), a chunk at a time. The small mappings, the tables'
// blocks every lookup touches, mostly stay.
//
// Should RssFile be above reclaimHold of the bound when a reclaim starts
// giving pages up, or pass it while one runs (a scan faulting pages in
// faster than they are given up), the reads of every store of the process
// (Get, and each entry of a Scan) wait until the reclaim is done: RssFile
// is the process's, and the ledger's index store, opened without a bound
// of its own, is read as much as the main one. Reads in flight finish;
// writes never wait.
//
// It checks adaptively (see next): every interval while RssFile is far
// below the high watermark and steady, more often as it nears it or grows
// fast, and at the shortest interval right after a reclaim, because a
// read-heavy scan (evaluate, export, fsck) faults pages in faster than a
// fixed 2-second check gives them up. Should its goroutine be late (a
// loaded machine), the reads check for it (see pace).
type mappedBound struct {
	dir       string
	limit     int64         // the bound
	high      int64         // reclaim above this
	low       int64         // down to this
	hold      int64         // above this, reads wait for the reclaim
	every     time.Duration // the longest interval between two checks
	fruitless int           // reclaims in a row that left RssFile above high
	mu        sync.Mutex    // held by the check running, the reclaimer's or a read's
	due       atomic.Int64  // when the reclaimer means to check next (monoNow)
	stopped   bool          // under mu: pace checks no more
	unpace    func()        // takes pace out of the reads' pacers
	logger    *slog.Logger
	done      chan struct{}
	once      sync.Once
	wg        sync.WaitGroup
	trims     int // how often it reclaimed; under mu
	checks    int // how often it read RssFile; under mu
	paced     int // how many of the checks reads made (pace); under mu
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
	return &mappedBound{
		dir: realDir(dir), limit: limit,
		high:  int64(float64(limit) * reclaimHigh),
		low:   int64(float64(limit) * reclaimLow),
		hold:  int64(float64(limit) * reclaimHold),
		every: every, logger: logger, done: make(chan struct{}),
	}
}

func startMappedBound(dir string, limit int64, every time.Duration, logger *slog.Logger) *mappedBound {
	m := newMappedBound(dir, limit, every, logger)
	first := min(every, minMappedCheck)
	m.due.Store(int64(monoNow() + first))
	m.wg.Go(func() {
		t := time.NewTimer(first)
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
			m.mu.Lock()
			rss, trimmed := m.check()
			m.mu.Unlock()
			d := m.next(last, rss, now.Sub(lastAt), trimmed)
			m.setDue(rss, trimmed, d)
			t.Reset(d)
			last, lastAt = rss, now
		}
	})
	m.unpace = addPacer(m.pace)
	return m
}

// paceHot is the interval between two checks by reads (pace) while a scan
// refills what reclaims give up: right after a reclaim, and while RssFile
// is above the low watermark. Pages given up with MADV_DONTNEED come back
// as minor faults of ~200 KB each (the kernel maps the page cache's large
// folios whole): one reading goroutine mapped 60-90 MB in 25 ms, 3 GB/s,
// which refills a 128 MiB bound from its low watermark in under 20 ms;
// and on a loaded machine the reclaimer's goroutine ran 100-200 ms late.
// A check costs 0.1-0.3 ms: at this pace, up to 3% of the reads' time.
const paceHot = 5 * time.Millisecond

// setDue sets when reads next check for the reclaimer (pace), after a
// check that left RssFile at rss, reclaimed or not, and planned the next
// one in d: in paceHot while a scan refills (see paceHot), else in d.
func (m *mappedBound) setDue(rss int64, trimmed bool, d time.Duration) {
	if trimmed || rss > m.low {
		d = min(d, paceHot)
	}
	m.due.Store(int64(monoNow() + d))
}

// pace is called by every read of every store (readGate.wait): if a check
// is due (setDue) and none is running, the read checks (and reclaims if
// needed) itself. The reads that fault pages in are then what keeps
// RssFile in check, between the reclaimer's own checks and however late
// its goroutine is scheduled. Costs a clock reading per read.
func (m *mappedBound) pace() {
	if monoNow() < time.Duration(m.due.Load()) || !m.mu.TryLock() {
		return
	}
	defer m.mu.Unlock()
	if m.stopped || monoNow() < time.Duration(m.due.Load()) {
		return
	}
	m.paced++
	rss, trimmed := m.check()
	m.setDue(rss, trimmed, min(minMappedCheck, m.every))
}

// monoStart anchors monoNow.
var monoStart = time.Now()

// monoNow is the time on the monotonic clock since the process started.
func monoNow() time.Duration { return time.Since(monoStart) }

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
	m.once.Do(func() {
		if m.unpace != nil {
			m.unpace()
		}
		close(m.done)
	})
	m.wg.Wait()
	m.mu.Lock() // a read's check in flight ends
	m.stopped = true
	m.mu.Unlock()
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
// there was one, and whether it reclaimed. Called with mu held.
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
	// Reads wait if RssFile is above the hold watermark now, or once the
	// mappings are pinned and listed (before the first madvise). Listing
	// them from /proc/self/maps takes a fraction of a millisecond; when a
	// reclaim read /proc/self/smaps first (15-100 ms on a loaded machine)
	// and held reads through it, reclaim after reclaim, it held them half
	// the time at a tight bound, which is why smaps is now read only when
	// the pinned files were not enough.
	if m.holdReads(rss) {
		hold()
	}
	begin := func() {
		if now, err := rssFile(); err == nil && m.holdReads(max(now, rss)) {
			hold()
		}
	}
	// After each chunk: done once RssFile is at the low watermark; reads
	// wait from the moment it passes the hold watermark (a scan faulting
	// pages in faster than they are given up).
	r, err := reclaimStoreFiles(m.dir, begin, func() bool {
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
			m.logger.Debug("badger: reclaimed mapped store files", "rss_file_bytes", rss, "after_bytes", after, "bound", m.limit, "chunks", r.chunks,
				"dontneed_bytes", r.dontneed, "pageout_bytes", r.pageout, "read_smaps", r.smaps, "pinned_stores", r.stores, "pin_took", r.pinTook, "took", time.Since(t0), "held_reads", held)
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
	rss        int64 // bytes; zero when listed from /proc/self/maps
	path       string
	shared     bool // MAP_SHARED ("s" in its permissions)
}

// storeMappings lists the mappings of table and value-log files in dir or
// below it, from /proc/self/smaps or /proc/self/maps (or a file in their
// format): from smaps those with resident pages and how many, from maps
// (resident false) all of them. Below it: the ledger's separate index
// store lives in DIR/ledger/index and is opened without a bound of its
// own, yet its pages count in the same RssFile; leaving them out left the
// bound unreachable while evaluation read subjects through the index.
// Memtable logs (.mem), which badger writes through their mapping, are
// left out, and so are files deleted while mapped (their path ends in
// " (deleted)").
func storeMappings(file, dir string, resident bool) ([]storeMapping, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []storeMapping
	var cur *storeMapping // the store mapping whose fields follow, if any
	done := func() {
		if cur != nil && (cur.rss > 0 || !resident) {
			out = append(out, *cur)
		}
		cur = nil
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Bytes()
		if v, ok := bytes.CutPrefix(line, []byte("Rss:")); ok {
			if cur != nil {
				if f := strings.Fields(string(v)); len(f) > 0 {
					if kb, err := strconv.ParseInt(f[0], 10, 64); err == nil {
						cur.rss = kb << 10
					}
				}
			}
			continue
		}
		// A mapping's header: "address perms offset dev inode path"; its
		// fields ("Name:   value kB") have a colon in the first word.
		fields := strings.Fields(string(line))
		if len(fields) == 0 || strings.HasSuffix(fields[0], ":") {
			continue
		}
		done()
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
		cur = &storeMapping{start: start, end: end, path: path, shared: len(fields[1]) == 4 && fields[1][3] == 's'}
	}
	done()
	return out, sc.Err()
}

// byResident orders ms by resident bytes, most first.
func byResident(ms []storeMapping) {
	slices.SortStableFunc(ms, func(a, b storeMapping) int { return cmp.Compare(b.rss, a.rss) })
}

// bySize orders ms by size, largest first.
func bySize(ms []storeMapping) {
	slices.SortStableFunc(ms, func(a, b storeMapping) int { return cmp.Compare(b.end-b.start, a.end-a.start) })
}

// pageOutChunk is how much of a mapping one madvise covers. A value-log
// mapping is 512 MiB and paging out what it holds can take a few hundred
// milliseconds on a loaded machine; in chunks, the reclaim stops as soon as
// enough is given up and notices a scan outrunning it. MADV_DONTNEED,
// which only drops page-table entries, takes a mapping at a time, and the
// reclaim asks whether it is enough after each pageOutChunk of them.
const pageOutChunk = 16 << 20

// reclaimed is what one reclaim advised.
type reclaimed struct {
	chunks            int   // madvise calls but MADV_NOHUGEPAGE
	dontneed, pageout int64 // bytes advised with MADV_DONTNEED and MADV_PAGEOUT
	stores            int   // stores whose files were pinned
	smaps             bool  // whether it read /proc/self/smaps (the pinned files were not enough)
	pinTook           time.Duration
}

// madvise is the system call; tests replace it to see what a reclaim of
// made-up mappings would advise.
var madvise = func(addr, n uintptr, advice int) syscall.Errno {
	_, _, e := syscall.Syscall(syscall.SYS_MADVISE, addr, n, uintptr(advice))
	return e
}

// reclaimStoreFiles asks the kernel to reclaim the pages of the store's
// mappings in dir or below it until enough (called after each madvise of
// PAGEOUT, and after each pageOutChunk of DONTNEED) says so. First the
// files pinStores pinned, listed from /proc/self/maps (a tenth of a
// millisecond, where /proc/self/smaps, which walks the page tables of
// every mapping, takes 15-100 ms on a loaded machine), the largest first,
// a mapping at a time with MADV_DONTNEED; then, only if that was not
// enough, the others as before: listed from /proc/self/smaps, those
// holding the most resident pages first, a chunk at a time with
// MADV_PAGEOUT. The pins are held until the last madvise. begin, if not
// nil, is called once the mappings are listed, before the first madvise.
func reclaimStoreFiles(dir string, begin func(), enough func() bool) (reclaimed, error) {
	t0 := time.Now()
	pins := pinStores(dir)
	defer pins.release()
	return reclaimMappings("/proc/self/maps", "/proc/self/smaps", dir, pins, begin, enough, reclaimed{stores: pins.stores, pinTook: time.Since(t0)})
}

// reclaimMappings is reclaimStoreFiles once the files are pinned, listing
// the mappings from maps and smaps; r is what it adds to.
func reclaimMappings(maps, smaps, dir string, pins *pinnedFiles, begin func(), enough func() bool, r reclaimed) (reclaimed, error) {
	all, err := storeMappings(maps, dir, false)
	if err != nil {
		return r, err
	}
	if begin != nil {
		begin()
	}

	var pinned []storeMapping
	for _, m := range all {
		if pins.dontNeed(m.path, m.shared) {
			pinned = append(pinned, m)
		}
	}
	bySize(pinned)
	var since uint64 // bytes advised since enough was last asked
	for i, m := range pinned {
		if e := madvise(uintptr(m.start), uintptr(m.end-m.start), madvDontneed); e != 0 {
			// Even ENOMEM: a range not mapped would be a pin that does not hold.
			return r, fmt.Errorf("madvise(MADV_DONTNEED) on %s: %w", m.path, e)
		}
		r.chunks++
		r.dontneed += int64(m.end - m.start)
		since += m.end - m.start
		if since >= pageOutChunk || i == len(pinned)-1 {
			since = 0
			if enough() {
				return r, nil
			}
		}
	}

	r.smaps = true
	ms, err := storeMappings(smaps, dir, true)
	if err != nil {
		return r, err
	}
	byResident(ms)
	for _, m := range ms {
		if pins.dontNeed(m.path, m.shared) {
			continue // given up above
		}
		for lo := m.start; lo < m.end; lo += pageOutChunk {
			hi := min(lo+pageOutChunk, m.end)
			// ENOMEM: part of the range is not mapped, a mapping gone since
			// smaps was read, which is harmless for PAGEOUT.
			if e := madvise(uintptr(lo), uintptr(hi-lo), madvPageout); e != 0 && e != syscall.ENOMEM {
				return r, fmt.Errorf("madvise(MADV_PAGEOUT) on %s: %w", m.path, e)
			}
			r.chunks++
			r.pageout += int64(hi - lo)
			if enough() {
				return r, nil
			}
		}
	}
	return r, nil
}
