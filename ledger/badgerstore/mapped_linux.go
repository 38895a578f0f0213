//go:build linux

package badgerstore

import (
	"bufio"
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
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
// bound by asking the kernel to reclaim the pages of the store's mapped
// tables and value-log files whenever it is above. Reading them again
// faults the pages back in from the page cache or the disk.
//
// It checks adaptively (see next): every interval while RssFile is far
// below the bound and steady, more often as it nears the bound or grows
// fast, and at the shortest interval while it is above, because a
// read-heavy scan (evaluate, export, fsck) faults pages in faster than a
// fixed 2-second check gives them up. A check reads /proc/self/status
// (microseconds), so checking often costs nothing measurable.
type mappedBound struct {
	dir    string
	limit  int64
	every  time.Duration // the longest interval between two checks
	logger *slog.Logger
	done   chan struct{}
	once   sync.Once
	wg     sync.WaitGroup
	trims  int // how often it reclaimed; read after stop (tests)
	checks int // how often it read RssFile; read after stop (tests)
}

// minMappedCheck is the shortest interval between two checks: while
// RssFile is above the bound, or would reach it within twice this.
const minMappedCheck = 50 * time.Millisecond

func startMappedBound(dir string, limit int64, every time.Duration, logger *slog.Logger) *mappedBound {
	abs, err := filepath.Abs(dir)
	if err == nil {
		dir = abs
	}
	m := &mappedBound{dir: dir, limit: limit, every: every, logger: logger, done: make(chan struct{})}
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
// reclaim that brought RssFile under the bound (the scan that pushed it
// above is likely still running), every after one that could not (what is
// left is not the store's: checking again soon would only burn CPU), else
// half the time RssFile would take to reach the bound at its last rate of
// growth, between the shortest interval and every.
func (m *mappedBound) next(prev, rss int64, dt time.Duration, trimmed bool) time.Duration {
	lo := min(minMappedCheck, m.every)
	if trimmed {
		if rss > m.limit {
			return m.every
		}
		return lo
	}
	grew := rss - prev
	if prev <= 0 || grew <= 0 || dt <= 0 {
		return m.every
	}
	// headroom / (grew/dt) / 2, in float64 to keep clear of overflow.
	d := time.Duration(float64(m.limit-rss) / float64(grew) * float64(dt) / 2)
	return max(lo, min(d, m.every))
}

func (m *mappedBound) stop() {
	if m == nil {
		return
	}
	m.once.Do(func() { close(m.done) })
	m.wg.Wait()
}

// check reclaims the store's mapped pages when RssFile is above the bound;
// it returns RssFile (zero on an error), after the reclaim if there was
// one, and whether it reclaimed.
func (m *mappedBound) check() (int64, bool) {
	m.checks++
	rss, err := rssFile()
	if err != nil || rss <= m.limit {
		return rss, false
	}
	n, err := pageOutStoreFiles(m.dir)
	m.trims++
	if m.logger != nil {
		if err != nil {
			m.logger.Warn("badger: reclaiming mapped store files", "rss_file_bytes", rss, "bound", m.limit, "err", err)
		} else {
			m.logger.Debug("badger: reclaimed mapped store files", "rss_file_bytes", rss, "bound", m.limit, "ranges", n)
		}
	}
	after, err := rssFile()
	if err != nil {
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

// pageOutStoreFiles asks the kernel to reclaim every mapping of a table or
// value-log file in dir or below it, and returns how many ranges it advised.
// Below it: the ledger's separate index store lives in DIR/ledger/index and
// is opened without a bound of its own, yet its pages count in the same
// RssFile; leaving them out left the bound unreachable while evaluation
// read subjects through the index. Memtable logs (.mem), which badger
// writes through their mapping, are left alone.
func pageOutStoreFiles(dir string) (int, error) {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// address perms offset dev inode path
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 {
			continue
		}
		path := fields[5]
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
		if _, _, e := syscall.Syscall(syscall.SYS_MADVISE, uintptr(start), uintptr(end-start), madvPageout); e != 0 && e != syscall.ENOMEM {
			return n, fmt.Errorf("madvise(MADV_PAGEOUT) on %s: %w", path, e)
		}
		n++
	}
	return n, sc.Err()
}
