package server

import (
	"container/heap"
	"context"

	"github.com/grantline/grantline/ledger"
)

// mergeMaxHeld bounds the entries mergeSubjects holds at once, over all
// subjects: each subject's cursor reads pages of mergeMaxHeld/len(subjects)
// entries (between mergeMinPage and mergeMaxPage).
const (
	mergeMaxHeld = 64 << 10
	mergeMinPage = 16
	mergeMaxPage = 1000
)

// subjectPage reads up to n entries of subject with index >= start, in
// index order (ledger.Log.SubjectEntries at one tree size); fewer than n
// means the subject has no more.
type subjectPage func(ctx context.Context, subject string, start uint64, n int) ([]ledger.Entry, error)

// mergeSubjects calls fn for every entry of the (distinct) subjects in index
// order, reading each subject's chain a page at a time and merging the
// pages, so that an export of named subjects holds a page per subject, not
// their chains: at most mergeMaxHeld entries while len(subjects) is at most
// mergeMaxHeld/mergeMinPage, mergeMinPage per subject beyond.
func mergeSubjects(ctx context.Context, subjects []string, page subjectPage, fn func(uint64, []byte) error) error {
	seen := make(map[string]bool, len(subjects))
	var h cursorHeap
	n := min(mergeMaxPage, max(mergeMinPage, mergeMaxHeld/max(1, len(subjects))))
	for _, sub := range subjects {
		if seen[sub] {
			continue
		}
		seen[sub] = true
		c := &subjectCursor{subject: sub}
		if err := c.fill(ctx, page, n); err != nil {
			return err
		}
		if len(c.buf) > 0 {
			h = append(h, c)
		}
	}
	heap.Init(&h)
	for len(h) > 0 {
		c := h[0]
		e := c.buf[0]
		c.buf[0] = ledger.Entry{} // let the leaf go once written
		c.buf = c.buf[1:]
		if err := fn(e.Index, e.Leaf); err != nil {
			return err
		}
		if len(c.buf) == 0 && !c.done {
			if err := c.fill(ctx, page, n); err != nil {
				return err
			}
		}
		if len(c.buf) == 0 {
			heap.Pop(&h)
		} else {
			heap.Fix(&h, 0)
		}
	}
	return nil
}

// subjectCursor is one subject's place in its chain.
type subjectCursor struct {
	subject string
	buf     []ledger.Entry // read, not yet passed on
	next    uint64         // the index to read from
	done    bool           // the last page was short: nothing more
}

func (c *subjectCursor) fill(ctx context.Context, page subjectPage, n int) error {
	es, err := page(ctx, c.subject, c.next, n)
	if err != nil {
		return err
	}
	c.buf, c.done = es, len(es) < n
	if len(es) > 0 {
		c.next = es[len(es)-1].Index + 1
	}
	return nil
}

// cursorHeap orders cursors by the index of their next entry.
type cursorHeap []*subjectCursor

func (h cursorHeap) Len() int           { return len(h) }
func (h cursorHeap) Less(i, j int) bool { return h[i].buf[0].Index < h[j].buf[0].Index }
func (h cursorHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *cursorHeap) Push(x any)        { *h = append(*h, x.(*subjectCursor)) }
func (h *cursorHeap) Pop() any {
	old := *h
	c := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return c
}
