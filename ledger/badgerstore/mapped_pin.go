package badgerstore

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/table"
)

// This file is what lets a reclaim of mapped pages (mapped_linux.go) use
// MADV_DONTNEED instead of MADV_PAGEOUT on most of the store's files.
//
// Both take the pages out of the process (RssFile goes down). PAGEOUT also
// takes them out of the page cache, so every page read again is read from
// the disk; DONTNEED on a shared file mapping only drops the process's page
// table entries and leaves the pages in the page cache (a dirty page's
// state goes to the page cache, nothing is lost), so reading one again is a
// minor fault. But DONTNEED on a range that is no longer the file's (the
// file unmapped since /proc/self/smaps was read, and the addresses reused,
// by the Go runtime's memory for instance) would zero that memory; PAGEOUT
// never changes what memory holds. So DONTNEED goes only to a mapping the
// reclaim can prove stays mapped, at the same addresses, from before it
// reads /proc/self/smaps until its last madvise returns. pinStores proves
// it per file, with badger v4.9.6's own references:
//
// Tables (.sst). A table is mapped once, when it is created or opened,
// and unmapped when its reference count drops to zero (table.DecrRef calls
// MmapFile.Delete: munmap, then remove) or when the database closes
// (levelHandler.close calls Table.Close(-1), whatever the count). A
// table's mapping never moves: no Truncate or remap of a table exists.
// txn.NewIterator with no prefix and SinceTs 0 (IteratorOptions{})
// calls levelsController.appendIterators, which visits every level under
// that level's read lock: level 0 through table.NewIterator (IncrRef) of
// each table, the others through table.NewConcatIterator (IncrRef of each
// table picked, and pickTables picks all of them without a prefix); the
// references are dropped by Iterator.Close. A compaction or DropPrefix
// removes a table from its level under the level's write lock and only
// then calls DecrRef, so a table the iterator saw in its level cannot
// reach zero before the iterator closes. Which tables did it see? Every
// table in its level at the moment appendIterators visited that level. A
// table listed by db.Tables() (per level, under the same lock) both
// before and after the iterator was made was in the tree throughout:
// tables are never moved between levels (levels.go: "Table should never
// be moved directly between levels, always be rewritten") and a table
// that leaves the tree is deleted, never added again; table ids are never
// reused while the database is open, except by DropAll
// (lc.nextFileID.Store(1)), which pins exclude. So a table in both
// listings was in its level when the iterator visited it, and stays
// mapped until the iterator closes.
//
// Value-log files (.vlog). A value-log file is mapped when created or
// opened and unmapped only by valueLog.Close (the database closing), by
// DropAll (valueLog.dropAll, without regard to iterators) and by value-log
// GC (rewrite, then deleteLogFile). Grantline never runs value-log GC:
// nothing calls RunValueLogGC (TestNoValueLogGC holds this), and badger
// never starts it by itself. Close and DropAll take the store's pin lock
// to write, so neither runs while a pin is held. One file's mapping moves
// while it is written: the file being written (the highest id) grows
// through mremap, which may move it, and is shrunk by doneWriting when the
// writer rotates to a new one (valueLog.write: curlf.doneWriting, then
// createVlogFile of the next id). A file is only created after the one
// below it was done, and only once that one was the current file: so if
// file N is on disk, file N-1 was created (and became the current file)
// and everything below N-1 was done before N-1 was created; N-1 itself may
// still be written if creating N failed half-way (its mapping failed
// after the file was made, and the writer keeps writing N-1). Hence only
// files at least two below the highest id on disk, read after the pin
// lock is taken and before /proc/self/smaps, are pinned.
//
// Everything else of the store (memtable logs, which are written through
// their mapping; tables made after the first listing; the two newest
// value-log files; any store not open through this package) is reclaimed
// with MADV_PAGEOUT as before.

// storeHandle is an open store as pins see it. A reclaim holds mu to read
// while it pins the store's files and advises them; Close and DropAll take
// it to write, so they wait for that reclaim and none starts on a closed
// store.
type storeHandle struct {
	dir    string // the store's directory, symbolic links resolved (as /proc/self/smaps shows it)
	db     *badger.DB
	mu     sync.RWMutex
	closed bool // under mu
}

// openStores are the stores open in the process: a reclaim pins those in
// its directory or below (the ledger's index store in DIR/ledger/index is
// open without a bound of its own).
var openStores struct {
	mu sync.Mutex
	m  map[*storeHandle]struct{}
}

// realDir is dir as the kernel shows the paths of its files: absolute,
// symbolic links resolved (dir itself when that fails).
func realDir(dir string) string {
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	return dir
}

// registerStore makes an open store's files pinnable.
func registerStore(dir string, db *badger.DB) *storeHandle {
	h := &storeHandle{dir: realDir(dir), db: db}
	openStores.mu.Lock()
	defer openStores.mu.Unlock()
	if openStores.m == nil {
		openStores.m = make(map[*storeHandle]struct{})
	}
	openStores.m[h] = struct{}{}
	return h
}

// close waits for any reclaim pinning the store's files, then takes the
// store out of the pinnable ones; called before badger closes it.
func (h *storeHandle) close() {
	h.mu.Lock()
	h.closed = true
	h.mu.Unlock()
	openStores.mu.Lock()
	delete(openStores.m, h)
	openStores.mu.Unlock()
}

// exclusive waits for any reclaim pinning the store's files and keeps
// new ones from pinning them until release (for DropAll, which deletes
// every table and value-log file).
func (h *storeHandle) exclusive() (release func()) {
	h.mu.Lock()
	return h.mu.Unlock
}

// pinnedFiles are the store files one reclaim may advise with
// MADV_DONTNEED, held until release.
type pinnedFiles struct {
	tables map[string]bool // table paths
	// vlogBelow is, per store directory, the value-log file id below
	// which that store's value-log files are pinned.
	vlogBelow map[string]uint64
	release   func()
	stores    int // how many stores were pinned (for the log)
}

// pinStores pins the table and value-log files of the stores open in the
// process in dir or below it (see the top of this file): it holds each
// store's pin lock to read, lists its tables, makes a read transaction
// and an iterator holding a reference on every table, lists them again,
// and reads the value-log file ids on disk. release closes the iterators
// and lets Close and DropAll go on; call it after the last madvise.
func pinStores(dir string) *pinnedFiles {
	dir = realDir(dir)
	openStores.mu.Lock()
	var hs []*storeHandle
	for h := range openStores.m {
		if h.dir == dir || strings.HasPrefix(h.dir, dir+"/") {
			hs = append(hs, h)
		}
	}
	openStores.mu.Unlock()
	p := &pinnedFiles{tables: map[string]bool{}, vlogBelow: map[string]uint64{}}
	var undo []func()
	p.release = func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		undo = nil
	}
	for _, h := range hs {
		h.mu.RLock()
		if h.closed {
			h.mu.RUnlock()
			continue
		}
		undo = append(undo, h.mu.RUnlock)
		p.stores++
		before := h.db.Tables()
		txn := h.db.NewTransaction(false)
		it := txn.NewIterator(badger.IteratorOptions{})
		undo = append(undo, func() { it.Close(); txn.Discard() })
		after := make(map[uint64]bool)
		for _, t := range h.db.Tables() {
			after[t.ID] = true
		}
		for _, t := range before {
			if after[t.ID] {
				p.tables[table.NewFilename(t.ID, h.dir)] = true
			}
		}
		if top, ok := highestVlog(h.dir); ok && top >= 2 {
			p.vlogBelow[h.dir] = top - 1
		}
	}
	return p
}

// highestVlog is the highest value-log file id in dir, as badger names
// them (vlogFilePath: "%06d.vlog").
func highestVlog(dir string) (uint64, bool) {
	f, err := os.Open(dir)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return 0, false
	}
	var top uint64
	found := false
	for _, n := range names {
		if id, ok := vlogID(n); ok {
			top, found = max(top, id), true
		}
	}
	return top, found
}

// vlogID is the id of a value-log file named as badger names them.
func vlogID(name string) (uint64, bool) {
	s, ok := strings.CutSuffix(name, ".vlog")
	if !ok {
		return 0, false
	}
	id, err := strconv.ParseUint(s, 10, 32)
	if err != nil || fmt.Sprintf("%06d.vlog", id) != name {
		return 0, false
	}
	return id, true
}

// dontNeed says whether a mapping of the file at path may be advised with
// MADV_DONTNEED: a shared mapping of a pinned table, or of a value-log
// file of a pinned store at least two below its highest id. Anything else
// may not.
func (p *pinnedFiles) dontNeed(path string, shared bool) bool {
	if p == nil || !shared {
		return false
	}
	if p.tables[path] {
		return true
	}
	dir, name := filepath.Split(path)
	below, ok := p.vlogBelow[strings.TrimSuffix(dir, "/")]
	if !ok {
		return false
	}
	id, ok := vlogID(name)
	return ok && id < below
}
