package ledger

import (
	"crypto/sha256"
	"encoding/binary"
	"strconv"
	"testing"

	"github.com/grantline/grantline/internal/cputime"
)

// BenchmarkSubjectMapApply measures the subject map's update of one seal
// alone (subjectMap.apply: states, the batched prefix-tree update, the
// records' encoding), without a store: the map of 10,000 subjects is built
// first and stays cached, and the records are counted, not committed. b.N
// counts events; a seal takes batch of them. It reports what a seal costs
// in records and bytes for the index store and in SHA-256 calls, to split
// the map's cost in BenchmarkAppend (docs/BENCHMARKS.md, "The subject
// map"). spread=roundrobin gives every event of a batch another subject
// (the worst case); burst=6 gives six events in a row to one subject, as a
// grant's lifecycle does.
func BenchmarkSubjectMapApply(b *testing.B) {
	for _, tc := range []struct {
		name            string
		subjects, burst int
		batch           int
		format          mapFormat
	}{
		{"subjects=10000/batch=1850/spread=roundrobin", 10000, 1, 1850, mapCompact},
		{"subjects=10000/batch=1850/burst=6", 10000, 6, 1850, mapCompact},
	} {
		b.Run(tc.name, func(b *testing.B) {
			m := newSubjectMap(newFakeStore(), tc.format)
			labels := make([][32]byte, tc.subjects)
			for i := range labels {
				labels[i] = SubjectLabel("user-" + strconv.Itoa(i))
			}
			var index, next uint64
			var hbuf [8]byte
			seal := func(n int) *writes {
				items := make([]mapItem, 0, n)
				for range n {
					binary.BigEndian.PutUint64(hbuf[:], index)
					items = append(items, mapItem{labels[next/uint64(tc.burst)%uint64(tc.subjects)], index, sha256.Sum256(hbuf[:])})
					index++
					next++
				}
				index++ // the map leaf
				w := newWrites(0)
				if _, err := m.apply(items, index, w); err != nil {
					b.Fatal(err)
				}
				return w
			}
			for range tc.subjects / tc.batch * tc.burst * 2 { // every subject in the map, twice over
				seal(tc.batch)
			}
			var keys, bytes, nodes, leaves, tiles int
			b.ResetTimer()
			cpu0 := cputime.Process()
			seals := 0
			for done := 0; done < b.N; done += tc.batch {
				w := seal(min(tc.batch, b.N-done))
				seals++
				keys += len(w.keys)
				for i := range w.keys {
					bytes += len(w.keys[i]) + len(w.vals[i])
				}
				seen := map[[33]byte]bool{}
				for _, n := range m.changed {
					nodes++
					if n.Label.IsLeaf() {
						leaves++
						continue
					}
					// The tile of 8 levels holding n: its row and the
					// label's first 8*row bits.
					var t [33]byte
					t[0] = byte(n.Label.BitLen() / 8)
					copy(t[1:], n.Label.Bytes()[:t[0]])
					if !seen[t] {
						seen[t] = true
						tiles++
					}
				}
			}
			cpu := cputime.Process() - cpu0
			b.StopTimer()
			b.ReportMetric(float64(cpu.Nanoseconds())/1e3/float64(b.N), "cpu-µs/event")
			// SHA-256 calls: ChainNext per event; three per changed node (a
			// leaf's value and node hash, an internal node's children and
			// node hash).
			shas := b.N + 3*nodes
			b.ReportMetric(float64(keys)/float64(seals), "records/seal")
			b.ReportMetric(float64(bytes)/float64(seals), "bytes/seal")
			b.ReportMetric(float64(leaves)/float64(seals), "subjects/seal")
			b.ReportMetric(float64(nodes-leaves)/float64(seals), "internal/seal")
			b.ReportMetric(float64(shas)/float64(b.N), "sha256/event")
			// What a format storing the internal nodes as tiles of 8
			// levels (one record per tile) would write instead.
			b.ReportMetric(float64(tiles)/float64(seals), "tiles8/seal")
		})
	}
}

// BenchmarkSubjectMapBurst is BenchmarkAppend's subjects=10000 pair with
// the events in bursts of six on one subject (subject (i/6) mod 10,000),
// as a grant's lifecycle (requested, approved, activated, session started
// and ended, deactivated) gives them: a realistic case beside
// BenchmarkAppend's round robin, the worst. Map off and on in one run.
func BenchmarkSubjectMapBurst(b *testing.B) {
	for _, smap := range []bool{false, true} {
		name := "callers=64/chunk=100/subjects=10000/burst=6/map=off"
		if smap {
			name = "callers=64/chunk=100/subjects=10000/burst=6/map=on"
		}
		b.Run(name, func(b *testing.B) {
			appendBench(b, 64, 100, 10000, 6, false, true, smap)
		})
	}
}
