package badgerstore

import (
	"sync"
	"sync/atomic"
)

// readGate holds the reads of every store of the process while a reclaim
// of mapped pages runs with RssFile near its bound (mapped_linux.go): the
// bound is on the process's memory, and the ledger's index store is
// opened without a bound of its own, so its reads must wait as well.
// Several reclaims may hold it at once (fsck bounds both of its stores);
// reads go on when the last one releases it.
var readGate gate

type gate struct {
	holds atomic.Int32 // the fast path: zero almost always
	mu    sync.Mutex
	n     int           // holds, under mu
	ch    chan struct{} // closed when n drops to zero
}

// hold makes wait block until every release returned by hold was called.
func (g *gate) hold() (release func()) {
	g.mu.Lock()
	if g.n == 0 {
		g.ch = make(chan struct{})
	}
	g.n++
	g.holds.Store(int32(g.n))
	g.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			g.n--
			g.holds.Store(int32(g.n))
			if g.n == 0 {
				close(g.ch)
				g.ch = nil
			}
			g.mu.Unlock()
		})
	}
}

// wait returns at once unless a reclaim holds reads, then when none does.
func (g *gate) wait() {
	if g.holds.Load() == 0 {
		return
	}
	g.mu.Lock()
	ch := g.ch
	g.mu.Unlock()
	if ch != nil {
		<-ch
	}
}
