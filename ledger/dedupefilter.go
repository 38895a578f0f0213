package ledger

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/bits"
	"sync/atomic"

	"github.com/grantline/grantline/ledger/runindex"
)

// DefaultDedupeFilterBytes is the memory the dedupe filter may take unless
// Options.DedupeFilterBytes says otherwise: at filterBitsPerKey bits per
// key, enough for about 27 million events at about 1% false positives.
const DefaultDedupeFilterBytes = 32 << 20

// filterSyncMax is the largest tree size for which Open fills the dedupe
// filter before it returns; a larger log fills it in the background (see
// startDedupeFilter). A variable so that a test can take the background
// path on a small log.
var filterSyncMax uint64 = 1 << 20

// Filter geometry: a blocked Bloom filter, each key's bits in one 512-bit
// block (one cache line), so that a lookup costs one cache miss per
// segment. With 10 bits per key and 6 bits set per key, about 1% of the
// keys it was not given are reported as maybe present.
const (
	filterBitsPerKey = 10
	filterBlockWords = 8 // 512 bits
	filterK          = 6
	filterMinKeys    = 1 << 16 // the smallest segment, in keys
)

// dedupeFilter holds every dedupe key (its first indexKeyLen bytes, as the
// index keys keep them) that the log's index holds or that a built batch
// is about to commit, and answers "certainly absent" for most others: the
// sequencer's dedupe stage skips the index lookup of such keys, which for
// new events (nearly all of them) is a lookup in every memtable and level
// of the index store that finds nothing. It has no false negatives: it is
// filled from the index store's dedupe records, or the dedupe runs
// (Options.RunsDir), after Open has made them complete up to the tree size
// (see docs/design.md, "Indexes off the durable commit"), and the sequencer adds each new event's key when it
// builds the batch, before the batch commits. Being in memory only, it
// needs no recovery after a crash: the next Open fills it again.
//
// Memory: segments of filterBitsPerKey bits per key (1.25 MB per million
// events), each new one sized for as many keys as all before it, until
// the bound (Options.DedupeFilterBytes) is reached; from then on the last
// segment takes every new key and its false-positive rate rises (more
// lookups reach the store, none is ever skipped wrongly).
//
// Until filled (ready), mayContain answers true for every key. segs and
// the counts are owned by the sequencer; the first segment's bits are also
// set by the goroutine that fills the filter in the background, hence the
// atomic words.
type dedupeFilter struct {
	segs  []*filterSeg
	ready atomic.Bool
	max   int64 // bytes the segments may take
	used  int64 // bytes they take
}

// filterSeg is one segment: blocks of filterBlockWords words.
type filterSeg struct {
	words  []atomic.Uint64
	blocks uint64
	cap, n int64 // keys it is sized for, keys counted in it
}

// newDedupeFilter makes a filter whose first segment has room for size
// keys and as many again (at least filterMinKeys), within maxBytes; size
// is the tree size, at least the number of dedupe records the index holds.
// It returns nil when maxBytes leaves no room for the smallest segment.
func newDedupeFilter(size uint64, maxBytes int64) *dedupeFilter {
	f := &dedupeFilter{max: maxBytes}
	keys := max(2*int64(min(size, 1<<40)), filterMinKeys)
	if !f.grow(keys) {
		return nil
	}
	f.segs[0].n = int64(min(size, 1<<40)) // what the fill will add, at most
	return f
}

// grow adds a segment for keys keys, or fewer within the bound; false if
// the bound leaves room for fewer than filterMinKeys.
func (f *dedupeFilter) grow(keys int64) bool {
	keys = min(keys, (f.max-f.used)*8/filterBitsPerKey)
	if keys < filterMinKeys {
		return false
	}
	blocks := uint64((keys*filterBitsPerKey + 511) / 512)
	s := &filterSeg{words: make([]atomic.Uint64, blocks*filterBlockWords), blocks: blocks, cap: keys}
	f.segs = append(f.segs, s)
	f.used += int64(blocks) * filterBlockWords * 8
	return true
}

// bytes is the memory the filter's segments take.
func (f *dedupeFilter) bytes() int64 {
	if f == nil {
		return 0
	}
	return f.used
}

// filterHash splits a key prefix into the block selector and the bits
// within the block. Dedupe keys are SHA-256 outputs, so their bytes are
// already uniform and independent.
func filterHash(k []byte) (block, bitsOf uint64) {
	return binary.LittleEndian.Uint64(k[0:8]), binary.LittleEndian.Uint64(k[8:16])
}

// set sets k's bits in s.
func (s *filterSeg) set(k []byte) {
	h1, h2 := filterHash(k)
	b, _ := bits.Mul64(h1, s.blocks)
	w := s.words[b*filterBlockWords : (b+1)*filterBlockWords]
	for i := range filterK {
		p := (h2 >> (9 * i)) & 511
		if m := uint64(1) << (p & 63); w[p>>6].Load()&m == 0 {
			w[p>>6].Or(m)
		}
	}
}

// has reports whether all of k's bits are set in s.
func (s *filterSeg) has(k []byte) bool {
	h1, h2 := filterHash(k)
	b, _ := bits.Mul64(h1, s.blocks)
	w := s.words[b*filterBlockWords : (b+1)*filterBlockWords]
	for i := range filterK {
		p := (h2 >> (9 * i)) & 511
		if w[p>>6].Load()&(uint64(1)<<(p&63)) == 0 {
			return false
		}
	}
	return true
}

// mayContain reports whether the index may hold dedupe key d: false only
// if it certainly does not. A nil or not yet filled filter answers true.
// Sequencer only.
func (f *dedupeFilter) mayContain(d *[32]byte) bool {
	if f == nil || !f.ready.Load() {
		return true
	}
	for _, s := range f.segs {
		if s.has(d[:indexKeyLen]) {
			return true
		}
	}
	return false
}

// add records dedupe key d, adding a segment when the last is full and the
// bound allows. Sequencer only (and before the sequencer starts).
func (f *dedupeFilter) add(d *[32]byte) {
	if f == nil {
		return
	}
	s := f.segs[len(f.segs)-1]
	if s.n >= s.cap {
		total := int64(0)
		for _, s := range f.segs {
			total += s.n
		}
		if f.grow(total) {
			s = f.segs[len(f.segs)-1]
		}
	}
	s.set(d[:indexKeyLen])
	s.n++
}

// fill sets the bits of every dedupe record of st in s, the filter's first
// segment (safe beside the sequencer's adds: the caller takes s from segs
// before the sequencer starts), stopping early with errStop once stop
// reports true.
func fill(st Store, s *filterSeg, stop func() bool) error {
	n := 0
	err := st.Scan([]byte{kDedupe}, []byte{kDedupe + 1}, func(k, _ []byte) error {
		if n++; n%4096 == 0 && stop() {
			return errStop
		}
		if len(k) == 1+indexKeyLen {
			s.set(k[1:])
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%w: reading the dedupe records to fill the dedupe filter: %w", ErrStorage, err)
	}
	return nil
}

// fillRuns sets the bits of every key of the dedupe runs x in s, as fill
// does from an index store (the map leaves' zero key too: one more key
// that may be present, never one fewer), stopping early with errStop once
// stop reports true. It reads the runs as fsck does (Verify), checking
// them as it goes.
func fillRuns(x *runindex.Index, s *filterSeg, stop func() bool) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := 0
	err := x.Verify(ctx, x.Covered(), func(k runindex.Key, _ uint64) {
		if n++; n%4096 == 0 && stop() {
			cancel()
		}
		s.set(k[:])
	})
	switch {
	case err != nil && stop():
		return errStop
	case err != nil:
		return fmt.Errorf("%w: reading the dedupe runs to fill the dedupe filter: %w", ErrStorage, err)
	}
	return nil
}

// startDedupeFilter makes the log's dedupe filter (none when
// Options.DedupeFilterBytes is negative) and fills it from the index
// store or the dedupe runs (fillFilter), which Open has made complete up
// to the tree size: before it
// returns for a log of up to filterSyncMax leaves, else in a goroutine
// that Close waits for. Every record present when the fill's scan starts
// is read by it, and every key of a batch built after this call is added
// by the sequencer, so when the filter turns ready it misses no key the
// index holds. A background fill that fails leaves the filter unready
// (every key is looked up in the store, as without one) and is logged.
func (l *Log) startDedupeFilter() error {
	if l.o.DedupeFilterBytes < 0 {
		return nil
	}
	size := l.seq.rng.End()
	f := newDedupeFilter(size, l.o.DedupeFilterBytes)
	if f == nil {
		return nil
	}
	if size <= filterSyncMax {
		if err := l.fillFilter(f.segs[0], func() bool { return false }); err != nil {
			return err
		}
		f.ready.Store(true)
		l.filter = f
		return nil
	}
	l.filter = f
	l.filterDone = make(chan struct{})
	first := f.segs[0]
	go func() {
		defer close(l.filterDone)
		switch err := l.fillFilter(first, l.filterStop.Load); {
		case err == nil:
			f.ready.Store(true)
			l.logger.Info("ledger dedupe filter ready", "tree_size_at_open", size)
		case l.filterStop.Load():
		default:
			l.logger.Warn("ledger dedupe filter not filled; every dedupe key is looked up in the index", "err", err)
		}
	}()
	return nil
}

// fillFilter fills s from where the log keeps its dedupe keys: the dedupe
// runs, or the index store.
func (l *Log) fillFilter(s *filterSeg, stop func() bool) error {
	if l.dd != nil {
		return fillRuns(l.dd, s, stop)
	}
	return fill(l.ix, s, stop)
}

// stopDedupeFilter stops a background fill and waits for it.
func (l *Log) stopDedupeFilter() {
	l.filterStop.Store(true)
	if l.filterDone != nil {
		<-l.filterDone
	}
}
