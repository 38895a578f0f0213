package runindex

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"slices"
)

// errAbandoned is a merge stopped by Close: its inputs stay, its output is
// deleted.
var errAbandoned = errors.New("merge abandoned")

// sortRecs sorts recs by (key, index), returning the sorted records (in
// recs or in a new slice). Keys are uniformly random (prefixes of SHA-256
// leaf hashes), so it scatters the records into about one bucket per
// record by their leading bits, then sorts each bucket: insertion sort for
// the expected handful, the library's pdqsort for a large bucket (keys
// ground to share leading bits cost O(n log n), never O(n²)). Stable for
// equal keys, and the order is the total order cmpRec, so the output is
// the same as slices.SortFunc(recs, cmpRec)'s.
func sortRecs(recs []rec) []rec {
	n := len(recs)
	if n < 1024 {
		slices.SortFunc(recs, cmpRec)
		return recs
	}
	b := bits.Len(uint(n)) // 2^(b-1) <= n < 2^b buckets: one or two records each
	shift := 64 - b
	start := make([]int32, 1<<b+1)
	for _, r := range recs {
		start[r.hi>>shift+1]++
	}
	for i := 1; i < len(start); i++ {
		start[i] += start[i-1]
	}
	out := make([]rec, n)
	next := start[:1<<b]
	for _, r := range recs {
		out[next[r.hi>>shift]] = r
		next[r.hi>>shift]++
	}
	// next[i] is now the end of bucket i, the start of bucket i+1.
	lo := 0
	for _, hi := range next {
		bucket := out[lo:hi]
		lo = int(hi)
		switch {
		case len(bucket) < 2:
		case len(bucket) <= 16:
			for i := 1; i < len(bucket); i++ {
				for j := i; j > 0 && cmpRec(bucket[j], bucket[j-1]) < 0; j-- {
					bucket[j], bucket[j-1] = bucket[j-1], bucket[j]
				}
			}
		default:
			slices.SortFunc(bucket, cmpRec)
		}
	}
	return out
}

// tier is a run's size class: 0 up to FlushEntries records, t up to
// FlushEntries*Fanout^t.
func (x *Index) tier(count uint64) int {
	t, s := 0, uint64(x.flush)
	for count > s {
		if s > math.MaxUint64/uint64(x.fan) {
			return t + 1
		}
		s *= uint64(x.fan)
		t++
	}
	return t
}

// pickLocked returns the oldest Fanout adjacent runs of one tier, or nil.
func (x *Index) pickLocked() []*run {
	n := 0
	for i, r := range x.runs {
		if i > 0 && x.tier(r.count()) == x.tier(x.runs[i-1].count()) {
			n++
		} else {
			n = 1
		}
		if n == x.fan {
			return slices.Clone(x.runs[i+1-n : i+1])
		}
	}
	return nil
}

// merger merges runs in the background until Close or a failure. It is a
// goroutine of its own so that a long merge never holds up the writer (and
// so Append's back-pressure).
func (x *Index) merger() {
	defer x.wg.Done()
	for {
		x.mu.Lock()
		var in []*run
		for {
			if x.stopping || x.err != nil {
				x.mu.Unlock()
				return
			}
			if in = x.pickLocked(); in != nil {
				break
			}
			x.cond.Wait()
		}
		for _, r := range in {
			r.acquire()
		}
		x.merging = true
		x.mu.Unlock()

		out, err := x.merge(in)

		x.mu.Lock()
		x.merging = false
		switch {
		case errors.Is(err, errAbandoned):
		case err != nil:
			x.err = fmt.Errorf("%s: merging leaves [%d, %d): %w", x.name, in[0].from, in[len(in)-1].to, err)
			x.log.Error(x.name+": background merge failed; appends stop until the index is reopened", "err", err)
		default:
			i := slices.Index(x.runs, in[0])
			if i < 0 || len(x.runs) < i+len(in) || !slices.Equal(x.runs[i:i+len(in)], in) {
				panic("runindex: a merge's inputs left the chain") // only the merger replaces runs
			}
			x.adopt(out)
			x.runs = slices.Replace(x.runs, i, i+len(in), out)
			x.merges++
			for _, r := range in {
				r.obsolete.Store(true)
				r.release() // the chain's reference; readers may hold more
			}
		}
		x.cond.Broadcast()
		x.mu.Unlock()
		for _, r := range in {
			r.release() // the merge's own reference
		}
		if err != nil {
			return
		}
	}
}

// cursor reads one input run's records in order.
type cursor struct {
	br  *bufio.Reader
	r   *run
	cur rec
	n   uint64 // records left after cur
	buf [recordSize]byte
}

func (c *cursor) next() error {
	if _, err := io.ReadFull(c.br, c.buf[:]); err != nil {
		return fmt.Errorf("reading run %s: %w", c.r.path, err)
	}
	c.cur = decodeRec(c.buf[:])
	return nil
}

// merge streams the records of the adjacent runs in into one run covering
// their union: a k-way merge over buffered readers, memory O(k) plus the
// output's sparse section. It checks x.abort as it goes.
func (x *Index) merge(in []*run) (*run, error) {
	w, err := createRun(x.dir, in[0].from, in[len(in)-1].to)
	if err != nil {
		return nil, err
	}
	h := make([]*cursor, 0, len(in))
	for _, r := range in {
		c := &cursor{r: r, n: r.count(),
			br: bufio.NewReaderSize(io.NewSectionReader(r.f, headerSize, int64(r.count())*recordSize), 64<<10)}
		if err := c.next(); err != nil {
			w.abort()
			return nil, err
		}
		c.n--
		h = append(h, c)
	}
	less := func(i, j int) bool { return cmpRec(h[i].cur, h[j].cur) < 0 }
	down := func(i int) {
		for {
			l := 2*i + 1
			if l >= len(h) {
				return
			}
			m := l
			if r := l + 1; r < len(h) && less(r, l) {
				m = r
			}
			if !less(m, i) {
				return
			}
			h[i], h[m] = h[m], h[i]
			i = m
		}
	}
	for i := len(h)/2 - 1; i >= 0; i-- {
		down(i)
	}
	var done uint64
	for len(h) > 0 {
		c := h[0]
		w.add(c.cur)
		done++
		if done%4096 == 0 && x.abort.Load() {
			w.abort()
			return nil, errAbandoned
		}
		if c.n == 0 {
			h[0] = h[len(h)-1]
			h = h[:len(h)-1]
		} else {
			if err := c.next(); err != nil {
				w.abort()
				return nil, err
			}
			c.n--
		}
		down(0)
	}
	if x.abort.Load() {
		w.abort()
		return nil, errAbandoned
	}
	return w.finish()
}
