package runindex

import (
	"math/rand/v2"
	"testing"

	"github.com/grantline/grantline/internal/cputime"
)

// benchKeys are random keys; appends cycle through them.
func benchKeys(n int) []Key {
	rng := rand.New(rand.NewPCG(1, 2))
	ks := make([]Key, n)
	for i := range ks {
		ks[i] = randKey(rng)
	}
	return ks
}

// benchLookups runs the sub-benchmarks "present" (random keys of present,
// each must be found) and "absent" (random keys of absent, none may be
// found) of Lookup in x.
func benchLookups(b *testing.B, x *Index, present, absent []Key) {
	b.Helper()
	for _, tc := range []struct {
		name string
		keys []Key
	}{{"present", present}, {"absent", absent}} {
		b.Run(tc.name, func(b *testing.B) {
			rng := rand.New(rand.NewPCG(3, 4))
			found := 0
			cpu0 := cputime.Process()
			i := 0
			for b.Loop() {
				k := tc.keys[rng.IntN(len(tc.keys))]
				if err := x.Lookup(k, func(uint64) bool { found++; return true }); err != nil {
					b.Fatal(err)
				}
				i++
			}
			b.ReportMetric(float64((cputime.Process()-cpu0).Nanoseconds())/float64(i), "cpu-ns/lookup")
			if tc.name == "present" && found < i {
				b.Fatalf("%d of %d present keys found", found, i)
			}
			if tc.name == "absent" && found != 0 {
				b.Fatalf("%d absent keys found", found)
			}
		})
	}
}

// BenchmarkAppend appends b.N random keys in batches of 2,000 with the
// default options, then waits for the last flush and every merge it set
// off: ns/op is ns per key, cpu-ns/key is the process's CPU (the
// background writer and merger included) per key.
//
//	go test -run '^$' -bench 'Append$' -benchtime 4000000x -count 5 ./ledger/runindex
func BenchmarkAppend(b *testing.B) {
	keys := benchKeys(1 << 20)
	x := openT(b, b.TempDir(), 0, Options{})
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cputime.Process()
	for c := 0; c < b.N; {
		n := min(2000, b.N-c)
		off := c % len(keys)
		n = min(n, len(keys)-off)
		if err := x.Append(uint64(c), keys[off:off+n]); err != nil {
			b.Fatal(err)
		}
		c += n
	}
	if err := x.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := x.quiesce(); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64((cputime.Process()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/key")
	s := x.Stats()
	b.ReportMetric(float64(s.Merges), "merges")
	b.ReportMetric(float64(s.Bytes)/float64(b.N), "bytes/key")
}

// BenchmarkLookup looks up keys in an index of 1,000,000 random keys (15
// runs of 65,536 and a buffer, as after ~1M appends with the defaults),
// keys present and absent.
//
//	go test -run '^$' -bench 'Lookup' -count 5 ./ledger/runindex
func BenchmarkLookup(b *testing.B) {
	const n = 1_000_000
	keys := benchKeys(n)
	dir := b.TempDir()
	x := openT(b, dir, 0, Options{})
	if err := x.Append(0, keys); err != nil {
		b.Fatal(err)
	}
	if err := x.quiesce(); err != nil {
		b.Fatal(err)
	}
	b.Logf("%+v", x.Stats())
	absent := benchKeys(n + 4096)[n:] // the same stream, beyond the appended ones
	benchLookups(b, x, keys, absent)
	b.Run("open", func(b *testing.B) {
		if err := x.Close(); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			y, err := Open(dir, n, Options{})
			if err != nil {
				b.Fatal(err)
			}
			if y.Covered() != n {
				b.Fatalf("Covered() = %d, want %d", y.Covered(), n)
			}
			y.Close()
		}
	})
}

// BenchmarkLookupBuffered looks up keys held in the active memory buffer
// (65,535 random keys with the default options: one short of a flush, so
// the buffer is as full as it gets), keys present and absent. This is the
// dedupe index's case: a key appended moments ago, or one never appended.
//
//	go test -run '^$' -bench 'LookupBuffered' -count 5 ./ledger/runindex
func BenchmarkLookupBuffered(b *testing.B) {
	const n = DefaultFlushEntries - 1
	keys := benchKeys(n + 4096)
	absent := keys[n:] // the same stream, beyond the appended ones
	keys = keys[:n]
	x := openT(b, b.TempDir(), 0, Options{})
	if err := x.Append(0, keys); err != nil {
		b.Fatal(err)
	}
	if s := x.Stats(); s.Buffered != n || s.Flushes != 0 {
		b.Fatalf("stats %+v, want all %d keys in the buffer", s, n)
	}
	benchLookups(b, x, keys, absent)
}

// BenchmarkBufferAdd is Append's own share of the work, in batches of
// 2,000: copying keys into a memory buffer and inserting them in its hash
// table (a fresh buffer of the default size every 65,536 keys, as Append
// makes). ns/op is per key.
//
//	go test -run '^$' -bench 'BufferAdd' -count 5 ./ledger/runindex
func BenchmarkBufferAdd(b *testing.B) {
	keys := benchKeys(DefaultFlushEntries)
	x := &Index{flush: DefaultFlushEntries, seed: hashSeed{1, 2}}
	buf := x.newBuffer(0)
	b.ResetTimer()
	for c := 0; c < b.N; {
		if len(buf.keys) == DefaultFlushEntries {
			buf = x.newBuffer(0)
		}
		n := min(2000, b.N-c, DefaultFlushEntries-len(buf.keys))
		buf.add(keys[len(buf.keys) : len(buf.keys)+n])
		c += n
	}
}
