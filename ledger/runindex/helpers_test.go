package runindex

import (
	"crypto/sha256"
	"encoding/binary"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// quiesce waits until every buffer is written and no merge is due or
// running (or the index failed or is closing).
func (x *Index) quiesce() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	for (len(x.imm) > 0 || x.merging || x.pickLocked() != nil) && x.err == nil && !x.stopping {
		x.cond.Wait()
	}
	return x.err
}

// keyOf is a deterministic key for leaf i.
func keyOf(i uint64) Key {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], i)
	h := sha256.Sum256(b[:])
	return Key(h[:16])
}

func keysFor(from, to uint64) []Key {
	ks := make([]Key, 0, to-from)
	for i := from; i < to; i++ {
		ks = append(ks, keyOf(i))
	}
	return ks
}

func randKey(rng *rand.Rand) Key {
	var k Key
	binary.BigEndian.PutUint64(k[:8], rng.Uint64())
	binary.BigEndian.PutUint64(k[8:], rng.Uint64())
	return k
}

func openT(t testing.TB, dir string, limit uint64, o Options) *Index {
	t.Helper()
	x, err := Open(dir, limit, o)
	if err != nil {
		t.Fatalf("Open(%s, %d): %v", dir, limit, err)
	}
	t.Cleanup(func() { x.Close() })
	return x
}

func appendT(t testing.TB, x *Index, first uint64, keys []Key) {
	t.Helper()
	if err := x.Append(first, keys); err != nil {
		t.Fatalf("Append(%d, %d keys): %v", first, len(keys), err)
	}
}

// lookupAll returns every candidate Lookup gives for k, sorted.
func lookupAll(t testing.TB, x *Index, k Key) []uint64 {
	t.Helper()
	var got []uint64
	if err := x.Lookup(k, func(i uint64) bool { got = append(got, i); return true }); err != nil {
		t.Fatalf("Lookup(%x): %v", k, err)
	}
	slices.Sort(got)
	return got
}

// writeRun writes a run file of keyOf's keys for [from, to) by hand, the
// way the index does.
func writeRun(t testing.TB, dir string, from, to uint64) string {
	t.Helper()
	recs := make([]rec, 0, to-from)
	for i := from; i < to; i++ {
		k := keyOf(i)
		recs = append(recs, recOf(&k, i))
	}
	recs = sortRecs(recs)
	w, err := createRun(dir, from, to)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		w.add(r)
	}
	r, err := w.finish()
	if err != nil {
		t.Fatal(err)
	}
	r.f.Close()
	return r.path
}

// runFiles returns the names of the files in dir, sorted.
func runFiles(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	return names
}

// rewriteCRC recomputes the trailer's CRC of the run file at path, so that
// a test can plant damage only Verify's other checks see.
func rewriteCRC(t testing.TB, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := len(b) - trailerSize
	binary.BigEndian.PutUint32(b[n:], crc32.Checksum(b[:n], castagnoli))
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func onlyRun(t testing.TB, dir string) string {
	t.Helper()
	names := runFiles(t, dir)
	if len(names) != 1 {
		t.Fatalf("files in %s: %v, want one run", dir, names)
	}
	return filepath.Join(dir, names[0])
}
