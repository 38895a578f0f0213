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
type mappedBound struct {
	dir    string
	limit  int64
	logger *slog.Logger
	done   chan struct{}
	once   sync.Once
	wg     sync.WaitGroup
	trims  int // how often it reclaimed; read after stop (tests)
}

func startMappedBound(dir string, limit int64, every time.Duration, logger *slog.Logger) *mappedBound {
	abs, err := filepath.Abs(dir)
	if err == nil {
		dir = abs
	}
	m := &mappedBound{dir: dir, limit: limit, logger: logger, done: make(chan struct{})}
	m.wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-m.done:
				return
			case <-t.C:
				m.check()
			}
		}
	})
	return m
}

func (m *mappedBound) stop() {
	if m == nil {
		return
	}
	m.once.Do(func() { close(m.done) })
	m.wg.Wait()
}

// check reclaims the store's mapped pages when RssFile is above the bound.
func (m *mappedBound) check() {
	rss, err := rssFile()
	if err != nil || rss <= m.limit {
		return
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
// value-log file in dir, and returns how many ranges it advised. Memtable
// logs (.mem), which badger writes through their mapping, are left alone.
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
		if filepath.Dir(path) != dir || !(strings.HasSuffix(path, ".sst") || strings.HasSuffix(path, ".vlog")) {
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
