package runindex

import (
	"encoding/binary"
	"math/bits"
	"sync/atomic"
)

// buffer holds the keys of leaves [base, base+len(keys)) in append order,
// with an open-addressing hash table over them (docs/design.md, "The
// leaf-hash runs": memory, lookup). Once full (or flushed) it is immutable
// until dropped: snapshots read it without the lock, so a buffer is never
// reused.
//
// The table: slots[i] is 0 (empty) or position+1 of a key in keys; its
// length is a power of two at least twice the most keys the buffer will
// hold, so it is never more than half full and a probe always ends at an
// empty slot. A key's home slot comes from a seeded mix of all 16 bytes
// (keys are random, but a caller's hand-picked keys sharing a prefix must
// not pile up in one cluster); collisions probe linearly. The table is
// sized at creation and allocated with the first key (under the lock, so
// every snapshot that holds keys holds the table), and never moved.
//
// Concurrency: one goroutine (Append's, holding the index's lock) adds keys;
// readers probe without the lock. A reader takes the buffer (its keys slice
// header, so n = len(keys)) under the lock; the writer stores keys first
// and then publishes each slot with an atomic store, and readers load slots
// atomically, skip positions >= n (keys appended after their snapshot, which
// they must not read) while probing on past them, and stop at an empty slot.
// A key at a position below n was stored before the reader's snapshot, and
// its slot was published then too, so every snapshot finds all its keys.
type buffer struct {
	base  uint64
	keys  []Key
	slots []atomic.Uint32 // nil until the first key: Open and Close allocate none
	size  int             // the table's length (a power of two)
	seed  hashSeed
}

// hashSeed mixes keys into home slots; random per index, so that the slots
// of hand-picked keys cannot be predicted.
type hashSeed struct{ a, b uint64 }

// tableSlots is the table's size for a buffer of at most flush keys.
func tableSlots(flush int) int {
	return 1 << bits.Len(uint(2*flush-1))
}

// home returns k's hash: the 128-bit product of its seeded halves, folded
// (the mix of wyhash). Every bit of the key moves every bit of the result.
func (s hashSeed) home(k *Key) uint64 {
	hi, lo := bits.Mul64(binary.LittleEndian.Uint64(k[:8])^s.a, binary.LittleEndian.Uint64(k[8:])^s.b)
	return hi ^ lo
}

// add appends keys and publishes them in the table. The caller holds the
// index's lock and keeps len(b.keys)+len(keys) within the table's bound.
func (b *buffer) add(keys []Key) {
	if b.slots == nil {
		b.slots = make([]atomic.Uint32, b.size)
	}
	start := len(b.keys)
	b.keys = append(b.keys, keys...) // stored before any slot names them
	mask := uint64(len(b.slots) - 1)
	for p := start; p < len(b.keys); p++ {
		i := b.seed.home(&b.keys[p]) & mask
		for b.slots[i].Load() != 0 {
			i = (i + 1) & mask
		}
		b.slots[i].Store(uint32(p + 1))
	}
}

// lookup calls fn with the leaf of every position whose key is k, in
// position order, until fn returns false (then lookup returns false). b is
// a snapshot: positions at or beyond len(b.keys) are skipped.
func (b *buffer) lookup(k *Key, fn func(index uint64) bool) bool {
	n := uint32(len(b.keys))
	if n == 0 {
		return true
	}
	mask := uint64(len(b.slots) - 1)
	// Later duplicates of a key were inserted further along its probe
	// sequence (nothing is ever removed), so they come in position order.
	for i := b.seed.home(k) & mask; ; i = (i + 1) & mask {
		v := b.slots[i].Load()
		if v == 0 {
			return true
		}
		if p := v - 1; p < n && b.keys[p] == *k && !fn(b.base+uint64(p)) {
			return false
		}
	}
}
