//go:build linux

package badgerstore

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/table"
)

// TestReclaimAdvice runs a reclaim over a made-up /proc/self/smaps with
// madvise recording instead of advising: MADV_DONTNEED goes to the shared
// mappings of pinned tables and of value-log files below the pinned
// bound, and nowhere else: not to a table missing from the pinned set, a
// table of the same id in another store, the two newest value-log files,
// a value-log file of a store not pinned, a private mapping of a pinned
// file, or a file not named as badger names them; with nothing pinned,
// everything is paged out.
func TestReclaimAdvice(t *testing.T) {
	dir := t.TempDir()
	const smaps = `7f0000000000-7f0001000000 rw-s 00000000 fd:00 11 DIR/000001.vlog
Rss:               16384 kB
7f0001000000-7f0002000000 rw-s 00000000 fd:00 12 DIR/000003.vlog
Rss:                4096 kB
7f0002000000-7f0003000000 rw-s 00000000 fd:00 13 DIR/000004.vlog
Rss:                4096 kB
7f0003000000-7f0004000000 rw-s 00000000 fd:00 14 DIR/000005.vlog
Rss:                4096 kB
7f0004000000-7f0004200000 rw-s 00000000 fd:00 15 DIR/000007.sst
Rss:                2048 kB
7f0004200000-7f0004400000 rw-s 00000000 fd:00 16 DIR/000008.sst
Rss:                2048 kB
7f0004400000-7f0004600000 rw-s 00000000 fd:00 17 DIR/index/000007.sst
Rss:                2048 kB
7f0004600000-7f0004800000 rw-s 00000000 fd:00 18 DIR/index/000001.vlog
Rss:                2048 kB
7f0004800000-7f0004a00000 r--p 00000000 fd:00 19 DIR/000009.sst
Rss:                2048 kB
7f0004a00000-7f0004c00000 rw-s 00000000 fd:00 20 DIR/2.vlog
Rss:                2048 kB
7f0004c00000-7f0004e00000 rw-s 00000000 fd:00 21 DIR/0000002.vlog
Rss:                2048 kB
`
	p := filepath.Join(t.TempDir(), "smaps")
	if err := os.WriteFile(p, []byte(strings.ReplaceAll(smaps, "DIR", dir)), 0o600); err != nil {
		t.Fatal(err)
	}
	// The store in dir: tables 7 and 9 pinned, value-log files up to 5 on
	// disk (so 1-3 pinned); its index store in dir/index is not pinned.
	pins := &pinnedFiles{
		tables:    map[string]bool{table.NewFilename(7, dir): true, table.NewFilename(9, dir): true},
		vlogBelow: map[string]uint64{dir: 4},
	}
	type call struct {
		path   string
		advice int
		bytes  uintptr
	}
	for _, tc := range []struct {
		name string
		pins *pinnedFiles
		want map[string]int // file (relative to dir) -> advice
	}{
		{"pinned", pins, map[string]int{
			"000001.vlog": madvDontneed, "000003.vlog": madvDontneed,
			"000004.vlog": madvPageout, "000005.vlog": madvPageout,
			"000007.sst": madvDontneed, "000008.sst": madvPageout,
			"index/000007.sst": madvPageout, "index/000001.vlog": madvPageout,
			"000009.sst": madvPageout, "2.vlog": madvPageout, "0000002.vlog": madvPageout,
		}},
		{"nothing pinned", nil, map[string]int{
			"000001.vlog": madvPageout, "000003.vlog": madvPageout,
			"000004.vlog": madvPageout, "000005.vlog": madvPageout,
			"000007.sst": madvPageout, "000008.sst": madvPageout,
			"index/000007.sst": madvPageout, "index/000001.vlog": madvPageout,
			"000009.sst": madvPageout, "2.vlog": madvPageout, "0000002.vlog": madvPageout,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ms, err := storeMappings(p, dir, false)
			if err != nil {
				t.Fatal(err)
			}
			var calls []call
			defer func(f func(uintptr, uintptr, int) syscall.Errno) { madvise = f }(madvise)
			madvise = func(addr, n uintptr, advice int) syscall.Errno {
				for _, m := range ms {
					if uint64(addr) >= m.start && uint64(addr+n) <= m.end {
						rel, _ := filepath.Rel(dir, m.path)
						calls = append(calls, call{rel, advice, n})
						return 0
					}
				}
				t.Errorf("madvise of %#x+%d, in no mapping listed", addr, n)
				return 0
			}
			r, err := reclaimMappings(p, p, dir, tc.pins, nil, func() bool { return false }, reclaimed{})
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]int{}
			var dontneed, pageout int64
			for _, c := range calls {
				if a, ok := got[c.path]; ok && a != c.advice {
					t.Errorf("%s advised with both %d and %d", c.path, a, c.advice)
				}
				got[c.path] = c.advice
				if c.advice == madvDontneed {
					dontneed += int64(c.bytes)
				} else {
					pageout += int64(c.bytes)
				}
			}
			if !maps.Equal(got, tc.want) {
				t.Errorf("advice per file = %v\nwant %v (%d is MADV_DONTNEED, %d MADV_PAGEOUT)", got, tc.want, madvDontneed, madvPageout)
			}
			if r.dontneed != dontneed || r.pageout != pageout || r.chunks != len(calls) {
				t.Errorf("reclaimed %+v, but the calls advised %d bytes DONTNEED, %d PAGEOUT in %d calls", r, dontneed, pageout, len(calls))
			}
		})
	}
}

// fillStore writes n values of 4,000 bytes (into the value log) and
// returns them by key.
func fillStore(t *testing.T, s *Store, n int) map[string][]byte {
	t.Helper()
	want := map[string][]byte{}
	for b := 0; b < n; b += 100 {
		var keys, vals [][]byte
		for i := b; i < min(b+100, n); i++ {
			k := fmt.Appendf(nil, "k%08d", i)
			v := bytes.Repeat(fmt.Appendf(nil, "%08d", i), 500)
			keys, vals = append(keys, k), append(vals, v)
			want[string(k)] = v
		}
		if err := s.Commit(keys, vals); err != nil {
			t.Fatal(err)
		}
	}
	return want
}

// readAll reads every value of s back and compares it with want.
func readAll(t *testing.T, s *Store, want map[string][]byte) {
	t.Helper()
	n := 0
	if err := s.Scan(nil, nil, func(k, v []byte) error {
		if !bytes.Equal(v, want[string(k)]) {
			return fmt.Errorf("value of %s: %d bytes, not the %d written", k, len(v), len(want[string(k)]))
		}
		n++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n != len(want) {
		t.Fatalf("read back %d values, want %d", n, len(want))
	}
}

// smallFiles makes badger write 1 MiB value-log files (its smallest), so
// that a test store has several.
func smallFiles(o badger.Options) badger.Options { return o.WithValueLogFileSize(1 << 20) }

// inPageCache is the share of the pages of the file at path in the page
// cache (mincore on a mapping of its own, unmapped before it returns).
func inPageCache(t *testing.T, path string) float64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() == 0 {
		return 0
	}
	b, err := syscall.Mmap(int(f.Fd()), 0, int(fi.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(b)
	vec := make([]byte, (len(b)+4095)/4096)
	if _, _, e := syscall.Syscall(syscall.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatalf("mincore %s: %v", path, e)
	}
	in := 0
	for _, v := range vec {
		in += int(v & 1)
	}
	return float64(in) / float64(len(vec))
}

// TestPinStores opens a real store with tables and several value-log
// files: a pin holds every table badger lists and the value-log files
// but the two newest; Close and DropAll wait for the pin's release; a
// closed store is not pinned.
func TestPinStores(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{NoSync: true, BadgerOptions: smallFiles})
	fillStore(t, s, 1500) // 6 MB: six value-log files
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, Options{NoSync: true, BadgerOptions: smallFiles}) // the memtable is a table now
	defer s.Close()
	ix := open(t, filepath.Join(dir, "index"), Options{NoSync: true})
	defer ix.Close()
	fillStore(t, ix, 10)

	p := pinStores(dir)
	wantTables := map[string]bool{}
	for _, st := range []*Store{s, ix} {
		for _, ti := range st.db.Tables() {
			wantTables[table.NewFilename(ti.ID, realDir(st.dir))] = true
		}
	}
	top, _ := highestVlog(dir)
	p.release()
	if len(wantTables) == 0 || !maps.Equal(p.tables, wantTables) {
		t.Errorf("pinned tables %v, want every table listed: %v", slices.Sorted(maps.Keys(p.tables)), slices.Sorted(maps.Keys(wantTables)))
	}
	if top < 4 || p.vlogBelow[realDir(dir)] != top-1 || p.stores != 2 {
		t.Errorf("pinned %d stores, value-log files below %v; want 2 and below %d (the highest, %d, and the one before it are not)", p.stores, p.vlogBelow, top-1, top)
	}

	for _, tc := range []struct {
		name string
		op   func() error
	}{
		{"DropAll", ix.DropAll},
		{"Close", ix.Close},
	} {
		t.Run(tc.name+" waits for a pin", func(t *testing.T) {
			p := pinStores(dir)
			done := make(chan error, 1)
			go func() { done <- tc.op() }()
			select {
			case err := <-done:
				p.release()
				t.Fatalf("%s returned (%v) while the store's files were pinned", tc.name, err)
			case <-time.After(100 * time.Millisecond):
			}
			p.release()
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("%s still waits after the pin was released", tc.name)
			}
		})
	}
	p = pinStores(dir)
	p.release()
	if p.stores != 1 || len(p.vlogBelow) != 1 {
		t.Errorf("after the index store closed: %d stores pinned, value-log bounds %v; want the main store's alone", p.stores, p.vlogBelow)
	}
}

// TestReclaimKeepsPageCache reads a real store's values, reclaims all its
// mapped pages, and checks that the pinned files were advised with
// MADV_DONTNEED: out of the process, still in the page cache; and that
// every value reads back as written.
func TestReclaimKeepsPageCache(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{NoSync: true, BadgerOptions: smallFiles})
	want := fillStore(t, s, 1500)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, Options{NoSync: true, BadgerOptions: smallFiles})
	defer s.Close()
	readAll(t, s, want)

	before, err := storeMappings("/proc/self/smaps", realDir(dir), true)
	if err != nil {
		t.Fatal(err)
	}
	r, err := reclaimStoreFiles(dir, nil, func() bool { return false })
	if err != nil {
		t.Fatal(err)
	}
	after, err := storeMappings("/proc/self/smaps", realDir(dir), true)
	if err != nil {
		t.Fatal(err)
	}
	var resident int64
	for _, m := range after {
		resident += m.rss
	}
	if r.dontneed < 3<<20 || resident > 64<<10 {
		t.Fatalf("reclaim %+v left %d bytes resident of %d mappings; want at least 3 MiB advised MADV_DONTNEED and nothing resident", r, resident, len(before))
	}
	top, _ := highestVlog(dir)
	checked := 0
	for id := uint64(1); id+2 <= top; id++ { // the pinned value-log files
		path := filepath.Join(dir, fmt.Sprintf("%06d.vlog", id))
		if share := inPageCache(t, path); share < 0.9 {
			t.Errorf("%s: %.0f%% of its pages in the page cache after the reclaim, want them all (MADV_DONTNEED keeps them; MADV_PAGEOUT drops them)", filepath.Base(path), 100*share)
		}
		checked++
	}
	if checked < 2 {
		t.Fatalf("only %d value-log files below the two newest (highest %d): the test wrote too little", checked, top)
	}
	readAll(t, s, want)
	if _, err := s.Get([]byte("k00000007")); err != nil {
		t.Fatal(err)
	}
}

// TestNoValueLogGC holds what pins rely on for value-log files
// (mapped_pin.go): nothing in the module runs badger's value-log GC or a
// stream writer (whose Prepare drops everything), and this package calls
// badger's DropAll and Close only from Store.DropAll and Store.Close,
// after they took the pin lock.
func TestNoValueLogGC(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("the module root: %v", err)
	}
	forbidden := []string{"RunValueLogGC", "NewStreamWriter"}
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && strings.HasPrefix(d.Name(), ".") && path != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, f := range forbidden {
			if bytes.Contains(b, []byte(f+"(")) {
				t.Errorf("%s uses badger's %s: the pins of mapped_pin.go assume value-log files are unmapped only by Close and DropAll", path, f)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// In this package: every call of DropAll or Close on a *badger.DB is in
	// the Store method of that name, after the pin lock was taken.
	fset := token.NewFileSet()
	pkgFiles, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, name := range pkgFiles {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Body == nil {
				continue
			}
			pinned := false // the pin lock taken earlier in fn
			ast.Inspect(fn.Body, func(n ast.Node) bool {
				call, ok := n.(*ast.CallExpr)
				if !ok {
					return true
				}
				sel, ok := call.Fun.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				if recv, ok := sel.X.(*ast.SelectorExpr); ok && recv.Sel.Name == "pins" && (sel.Sel.Name == "exclusive" || sel.Sel.Name == "close") {
					pinned = true
				}
				db, ok := sel.X.(*ast.SelectorExpr)
				if !ok || db.Sel.Name != "db" || (sel.Sel.Name != "DropAll" && sel.Sel.Name != "Close") {
					return true
				}
				if fn.Name.Name != sel.Sel.Name || fn.Recv == nil || !pinned {
					t.Errorf("%s: %s calls badger's %s outside Store.%s or before taking the pin lock", fset.Position(call.Pos()), fn.Name.Name, sel.Sel.Name, sel.Sel.Name)
				}
				found[sel.Sel.Name] = true
				return true
			})
		}
	}
	if !found["DropAll"] || !found["Close"] {
		t.Errorf("found calls of badger's DropAll and Close: %v; the check reads nothing", found)
	}
}
