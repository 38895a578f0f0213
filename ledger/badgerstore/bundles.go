package badgerstore

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/dgraph-io/badger/v4"
)

// Leaf bundles (docs/design.md, "Leaf bundles in the badger store").
//
// The ledger stores each leaf under its own key, 'l' be64(index) (the key
// layout of ledger/store.go). A synced store made by this version keeps
// those keys in bundles instead: one badger value per 16 consecutive
// indexes (16 divides a tlog-tiles entry bundle's 256), so that a commit of
// ~2,000 leaves is ~130 badger entries instead of ~2,000, each of which
// badger would write into its value log, its memtable's write-ahead log
// and its skiplist. Why 16 and not 256: badger checks a value-log record's
// checksum over the whole record at every read, so a point read of one
// leaf (a subject's chain) reads its whole bundle: 256 leaves of ~560
// bytes made chain reads 2-3x slower, 16 made them no slower, and appends
// cost the same CPU with either (docs/BENCHMARKS.md, "Round 6").
// Callers still see one key per leaf: Commit splits a batch's leaf keys
// into their bundles (rewriting the bundle at the batch's edge, which the
// batch before left partial), and Get and Scan answer leaf keys from the
// bundles. Everything else is stored as given.
//
// A store's layout is fixed when it is created and recorded under
// layoutKey: a store that already holds leaves under their own keys when
// this version opens it (made before bundles) keeps that layout and is read
// and written as before. A store opened with NoSync (the ledger's index
// store, which holds no leaves) does not bundle.

const (
	bundleWidth = 16  // leaves per bundle (see the comment above)
	leafKind    = 'l' // the first byte of a ledger leaf key
	leafKeyLen  = 9   // 'l' be64(index)

	// bundleFormat is the first byte of every bundle value.
	bundleFormat = 1
	// bundleHeader is the bytes before the end offsets: the format byte
	// and the number of slots (big-endian uint16, 1..bundleWidth).
	bundleHeader = 3
	// present marks a slot's end offset as holding a value: a slot without
	// it is a leaf never written (a leaf's value may be empty).
	present = 1 << 31
)

// reservedPrefix starts every key the store keeps for itself; Commit
// refuses callers' keys with it, Get answers them as missing and Scan
// skips them.
var reservedPrefix = []byte{0xff, 0xfe}

// reservedEnd is the first key after every reserved one.
var reservedEnd = []byte{0xff, 0xff}

var (
	// layoutKey holds the store's layout, layoutBundles, when it keeps its
	// leaves in bundles; absent, a store keeps each under its own key.
	layoutKey     = append(bytes.Clone(reservedPrefix), "layout"...)
	layoutBundles = []byte("leaf-bundles-16-v1") // bundles of bundleWidth leaves
	bundleKind    = byte('b')                    // reservedPrefix 'b' be64(index/bundleWidth) -> bundle
)

// ErrReservedKey is returned by Commit for a key starting with the bytes
// 0xff 0xfe, which the store keeps for itself.
var ErrReservedKey = errors.New("key in the store's reserved range (starting 0xff 0xfe)")

func isLeafKey(k []byte) bool { return len(k) == leafKeyLen && k[0] == leafKind }

func leafIndex(k []byte) uint64 { return binary.BigEndian.Uint64(k[1:]) }

func appendLeafKey(b []byte, i uint64) []byte {
	return binary.BigEndian.AppendUint64(append(b, leafKind), i)
}

func bundleKey(n uint64) []byte {
	return binary.BigEndian.AppendUint64(append(bytes.Clone(reservedPrefix), bundleKind), n)
}

func isReserved(k []byte) bool { return bytes.HasPrefix(k, reservedPrefix) }

// bundle is a decoded bundle value: slot j holds leaf n*bundleWidth+j when
// has[j].
type bundle struct {
	n    int // slots covered, 0..bundleWidth
	has  [bundleWidth]bool
	slot [bundleWidth][]byte // alias the decoded value
}

// decodeBundle splits a bundle value into its slots, which alias v.
func decodeBundle(v []byte, b *bundle) error {
	*b = bundle{}
	n, data, err := bundleSlots(v)
	if err != nil {
		return err
	}
	prev := uint32(0)
	for j := range n {
		e := binary.BigEndian.Uint32(v[bundleHeader+4*j:])
		end := e &^ present
		if end < prev || int64(end) > int64(len(data)) {
			return fmt.Errorf("leaf bundle of %d bytes: slot %d ends at %d, outside %d..%d", len(v), j, end, prev, len(data))
		}
		if e&present != 0 {
			b.has[j] = true
			b.slot[j] = data[prev:end:end]
		} else if end != prev {
			return fmt.Errorf("leaf bundle of %d bytes: empty slot %d has %d bytes", len(v), j, end-prev)
		}
		prev = end
	}
	if int(prev) != len(data) {
		return fmt.Errorf("leaf bundle of %d bytes: %d bytes after the last slot", len(v), len(data)-int(prev))
	}
	b.n = n
	return nil
}

// bundleSlots checks a bundle value's header and returns its number of
// slots and the bytes after its end offsets.
func bundleSlots(v []byte) (n int, data []byte, err error) {
	if len(v) < bundleHeader || v[0] != bundleFormat {
		return 0, nil, fmt.Errorf("leaf bundle of %d bytes: bad header (format byte %#x, want %d)", len(v), firstByte(v), bundleFormat)
	}
	n = int(binary.BigEndian.Uint16(v[1:]))
	if n < 1 || n > bundleWidth || len(v) < bundleHeader+4*n {
		return 0, nil, fmt.Errorf("leaf bundle of %d bytes: %d slots (want 1..%d, with room for their offsets)", len(v), n, bundleWidth)
	}
	return n, v[bundleHeader+4*n:], nil
}

func firstByte(v []byte) byte {
	if len(v) == 0 {
		return 0
	}
	return v[0]
}

// slotOf returns the leaf at slot j of the bundle value v without decoding
// the others; ok is false if the bundle does not hold it.
func slotOf(v []byte, j int) (leaf []byte, ok bool, err error) {
	n, data, err := bundleSlots(v)
	if err != nil {
		return nil, false, err
	}
	if j >= n {
		return nil, false, nil
	}
	start := uint32(0)
	if j > 0 {
		start = binary.BigEndian.Uint32(v[bundleHeader+4*(j-1):]) &^ present
	}
	e := binary.BigEndian.Uint32(v[bundleHeader+4*j:])
	end := e &^ present
	if end < start || int64(end) > int64(len(data)) {
		return nil, false, fmt.Errorf("leaf bundle of %d bytes: slot %d spans %d..%d of %d", len(v), j, start, end, len(data))
	}
	if e&present == 0 {
		return nil, false, nil
	}
	return data[start:end:end], true, nil
}

// encode appends the bundle's value to dst.
func (b *bundle) encode(dst []byte) []byte {
	size := bundleHeader + 4*b.n
	for j := range b.n {
		size += len(b.slot[j])
	}
	dst = slices.Grow(dst, size)
	dst = append(dst, bundleFormat)
	dst = binary.BigEndian.AppendUint16(dst, uint16(b.n))
	end := uint32(0)
	for j := range b.n {
		end += uint32(len(b.slot[j]))
		e := end
		if b.has[j] {
			e |= present
		}
		dst = binary.BigEndian.AppendUint32(dst, e)
	}
	for j := range b.n {
		dst = append(dst, b.slot[j]...)
	}
	return dst
}

// tailBundle is the last bundle a commit wrote, kept so that the next
// commit, which usually continues it, need not read it back.
type tailBundle struct {
	n     uint64 // bundle number
	value []byte // as committed; nil: none kept
}

// detectLayout decides whether s keeps its leaves in bundles, and records
// that in a new store: a store with layoutKey does; one with leaves under
// their own keys does not; an empty one (no leaf key) is made to.
func (s *Store) detectLayout() error {
	var marked, plain bool
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(layoutKey)
		switch {
		case errors.Is(err, badger.ErrKeyNotFound):
		case err != nil:
			return err
		default:
			v, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			if !bytes.Equal(v, layoutBundles) {
				return fmt.Errorf("the store's layout is %q, which this version of grantline does not know (it knows %q): open it with the version that made it", v, layoutBundles)
			}
			marked = true
		}
		opt := badger.DefaultIteratorOptions
		opt.PrefetchValues = false
		opt.Prefix = []byte{leafKind}
		it := txn.NewIterator(opt)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if isLeafKey(it.Item().Key()) {
				plain = true
				break
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("reading the store's layout: %w", err)
	}
	switch {
	case plain && marked:
		// Only a restore of a backup of an older store into a new one
		// gives this (Restore): the backup's layout wins.
		if err := s.db.Update(func(txn *badger.Txn) error { return txn.Delete(layoutKey) }); err != nil {
			return fmt.Errorf("recording the store's layout: %w", err)
		}
		s.bundles = false
	case plain:
		s.bundles = false
	case marked:
		s.bundles = true
	default:
		if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(layoutKey, layoutBundles) }); err != nil {
			return fmt.Errorf("recording the store's layout: %w", err)
		}
		s.bundles = true
	}
	s.tail = tailBundle{}
	return nil
}

// bundleBatch returns the batch to give badger for keys and values: the
// entries that are not leaves as they are, in their order, then one entry
// per bundle the batch's leaves fall into, holding what the store has in
// that bundle with the batch's leaves applied (a later value of a repeated
// key wins). It also returns the last of those bundles, for s.tail once
// the batch is committed. The caller holds s.commitMu.
func (s *Store) bundleBatch(keys, values [][]byte) (k2, v2 [][]byte, last tailBundle, err error) {
	leaves := 0
	for _, k := range keys {
		if isLeafKey(k) {
			leaves++
		}
	}
	if leaves == 0 {
		return keys, values, s.tail, nil
	}
	type leaf struct {
		i   uint64
		pos int
	}
	ls := make([]leaf, 0, leaves)
	k2 = make([][]byte, 0, len(keys)-leaves+leaves/bundleWidth+2)
	v2 = make([][]byte, 0, cap(k2))
	sorted := true // strictly ascending: no index repeated
	for p, k := range keys {
		if !isLeafKey(k) {
			k2, v2 = append(k2, k), append(v2, values[p])
			continue
		}
		i := leafIndex(k)
		if n := len(ls); n > 0 && ls[n-1].i >= i {
			sorted = false
		}
		ls = append(ls, leaf{i, p})
	}
	if !sorted {
		// A stable sort keeps repeats in batch order; the last one wins.
		slices.SortStableFunc(ls, func(a, b leaf) int { return cmp.Compare(a.i, b.i) })
	}
	var b bundle
	for from := 0; from < len(ls); {
		n := ls[from].i / bundleWidth
		to := from
		for to < len(ls) && ls[to].i/bundleWidth == n {
			to++
		}
		// What the store holds in bundle n, unless the batch fills every
		// slot of it (bundleWidth distinct indexes from its first).
		b = bundle{}
		if !(sorted && ls[from].i%bundleWidth == 0 && to-from == bundleWidth) {
			old, err := s.storedBundle(n)
			if err != nil {
				return nil, nil, tailBundle{}, err
			}
			if old != nil {
				if err := decodeBundle(old, &b); err != nil {
					return nil, nil, tailBundle{}, s.bundleDamaged(n, appendLeafKey(nil, n*bundleWidth), err.Error())
				}
			}
		}
		for _, l := range ls[from:to] {
			j := int(l.i % bundleWidth)
			b.has[j], b.slot[j] = true, values[l.pos]
			b.n = max(b.n, j+1)
		}
		v := b.encode(nil)
		k2, v2 = append(k2, bundleKey(n)), append(v2, v)
		last = tailBundle{n: n, value: v}
		from = to
	}
	return k2, v2, last, nil
}

// storedBundle returns bundle n's value as committed, or nil if there is
// none. The caller holds s.commitMu.
func (s *Store) storedBundle(n uint64) ([]byte, error) {
	if s.tail.value != nil && s.tail.n == n {
		return s.tail.value, nil
	}
	var out []byte
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(bundleKey(n))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if out, err = item.ValueCopy(nil); err != nil {
			return err
		}
		if len(out) == 0 {
			// Damage, never a bundle to start afresh (which would drop
			// the leaves it held without a sign).
			return s.checkBundle(item, out, n, appendLeafKey(nil, n*bundleWidth))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading leaf bundle %d to extend it: %w", n, err)
	}
	return out, nil
}

// bundleDamaged is the error for a bundle that cannot be read: it names
// the bundle, its leaves, what to do and, as its Key, the leaf asked for
// (Get), the first of the bundle's leaves in the range (Scan) or its first
// leaf (Commit extending it).
func (s *Store) bundleDamaged(n uint64, asked []byte, cause string) error {
	err := damaged("leaf bundle %d (the values of leaves %d-%d) cannot be read: %s; restore the store from a backup (docs/operations.md, \"Backup and restore\")", n, n*bundleWidth, n*bundleWidth+bundleWidth-1, cause)
	if asked != nil {
		err.(*damagedError).key = bytes.Clone(asked)
	}
	return err
}

// checkBundle is checkValue for a bundle, stricter: an empty bundle value
// is damage whatever badger recorded, named by the bundle, because every
// bundle written holds at least its header. Get, Scan and Commit (reading
// the bundle it extends) all answer it so: none skips it or reads it as a
// missing bundle.
func (s *Store) checkBundle(item *badger.Item, v []byte, n uint64, asked []byte) error {
	if len(v) > 0 {
		return nil
	}
	var cause string
	if item.ValueSize() > 0 {
		cause = s.unreadableCause(item.Key())
	} else {
		cause = fmt.Sprintf("its value is empty, and every bundle written holds at least its %d-byte header", bundleHeader)
	}
	return s.bundleDamaged(n, asked, cause)
}

// getBundled is Get for a store that keeps its leaves in bundles. Leaf
// keys that follow one another in one bundle read it once.
func (s *Store) getBundled(txn *badger.Txn, keys [][]byte, out [][]byte) error {
	for i := 0; i < len(keys); i++ {
		k := keys[i]
		if isReserved(k) {
			continue
		}
		if !isLeafKey(k) {
			v, err := s.getOne(txn, k)
			if err != nil {
				return err
			}
			out[i] = v
			continue
		}
		n := leafIndex(k) / bundleWidth
		to := i + 1
		for to < len(keys) && isLeafKey(keys[to]) && leafIndex(keys[to])/bundleWidth == n {
			to++
		}
		readGate.wait()
		item, err := txn.Get(bundleKey(n))
		if errors.Is(err, badger.ErrKeyNotFound) {
			i = to - 1
			continue
		}
		if err != nil {
			return err
		}
		err = item.Value(func(v []byte) error {
			if err := s.checkBundle(item, v, n, k); err != nil {
				return err
			}
			for ; i < to; i++ {
				leaf, ok, err := slotOf(v, int(leafIndex(keys[i])%bundleWidth))
				if err != nil {
					return s.bundleDamaged(n, keys[i], err.Error())
				}
				if ok {
					out[i] = append(make([]byte, 0, len(leaf)), leaf...)
				}
			}
			i = to - 1
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// leafRange is the range of leaf indexes [lo, hi) whose keys lie in the key
// range [start, end) (end nil: unbounded); all is true when hi is 2^64,
// and ok false when no leaf key lies in the range.
func leafRange(start, end []byte) (lo, hi uint64, all, ok bool) {
	lo, past := firstLeafAtOrAfter(start)
	if past {
		return 0, 0, false, false
	}
	if end == nil {
		return lo, 0, true, true
	}
	hi, past = firstLeafAtOrAfter(end)
	if past {
		return lo, 0, true, true
	}
	if hi <= lo {
		return 0, 0, false, false
	}
	return lo, hi, false, true
}

// firstLeafAtOrAfter returns the first leaf index whose key is >= k; past
// is true when there is none (k is beyond every leaf key).
func firstLeafAtOrAfter(k []byte) (i uint64, past bool) {
	switch {
	case len(k) == 0 || k[0] < leafKind:
		return 0, false
	case k[0] > leafKind:
		return 0, true
	}
	var b [8]byte
	copy(b[:], k[1:])
	i = binary.BigEndian.Uint64(b[:])
	if len(k) > leafKeyLen {
		// k extends leafKey(i), so leafKey(i) < k.
		if i == 1<<64-1 {
			return 0, true
		}
		i++
	}
	return i, false
}

// scanBundled is Scan for a store that keeps its leaves in bundles: it
// merges the stored keys of [start, end) (the reserved ones skipped) with
// the leaf keys its bundles hold there, in key order.
func (s *Store) scanBundled(txn *badger.Txn, start, end []byte, fn func(key, value []byte) error) error {
	lo, hi, all, ok := leafRange(start, end)
	opt := badger.DefaultIteratorOptions
	opt.PrefetchSize = 64
	// A range with leaves holds few stored keys, if any, and usually ends
	// in the leaves: prefetching would read the values of the 64 keys after
	// them (the tiles) at every call only to stop before them. Values are
	// read as they are emitted instead.
	opt.PrefetchValues = !ok
	it := txn.NewIterator(opt)
	defer it.Close()
	// next advances it past reserved keys to the next stored key before
	// end; ok is false when there is none.
	next := func() bool {
		for it.Valid() {
			k := it.Item().Key()
			if end != nil && bytes.Compare(k, end) >= 0 {
				return false
			}
			if !isReserved(k) {
				return true
			}
			it.Seek(reservedEnd)
		}
		return false
	}
	// emit calls fn with the stored key it is at, and moves past it. An
	// error of fn comes back unchanged (badger's Item.Value returns its
	// callback's error as is), and so from scanBundled.
	emit := func() error {
		item := it.Item()
		readGate.wait()
		err := item.Value(func(v []byte) error {
			if err := s.checkValue(item, v); err != nil {
				return err
			}
			return fn(item.Key(), v)
		})
		if err != nil {
			return err
		}
		it.Next()
		return nil
	}
	it.Seek(start)
	if ok {
		bo := badger.DefaultIteratorOptions
		bo.PrefetchValues = false // one bundle at a time, read in place
		bi := txn.NewIterator(bo)
		defer bi.Close()
		first := bundleKey(lo / bundleWidth)
		prefix := append(bytes.Clone(reservedPrefix), bundleKind)
		var kbuf []byte
		for bi.Seek(first); bi.ValidForPrefix(prefix); bi.Next() {
			item := bi.Item()
			bk := item.Key()
			if len(bk) != len(first) {
				continue
			}
			n := binary.BigEndian.Uint64(bk[len(prefix):])
			if !all && n*bundleWidth >= hi {
				break
			}
			readGate.wait()
			err := item.Value(func(v []byte) error {
				var b bundle
				// Damage names the bundle's first leaf in the range.
				if len(v) == 0 {
					return s.checkBundle(item, v, n, appendLeafKey(nil, max(lo, n*bundleWidth)))
				}
				if err := decodeBundle(v, &b); err != nil {
					return s.bundleDamaged(n, appendLeafKey(nil, max(lo, n*bundleWidth)), err.Error())
				}
				for j := range b.n {
					i := n*bundleWidth + uint64(j)
					if i < lo || !b.has[j] {
						continue
					}
					if !all && i >= hi {
						break
					}
					kbuf = appendLeafKey(kbuf[:0], i)
					for next() && bytes.Compare(it.Item().Key(), kbuf) < 0 {
						if err := emit(); err != nil {
							return err
						}
					}
					if err := fn(kbuf, b.slot[j]); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
	}
	for next() {
		if err := emit(); err != nil {
			return err
		}
	}
	return nil
}
