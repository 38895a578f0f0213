package ledger

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/grantline/grantline/ledger/badgerstore"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// BenchmarkReadEntryBundle measures warm reads of full 256-leaf entry
// bundles (the tlog-tiles entries endpoint, and what Entries does per 256
// leaves) of a 50,000-leaf badger log, at random bundles; each leaf is
// checked against its hash in the level-0 tile (checked) or not
// (unchecked, the read before that check).
func BenchmarkReadEntryBundle(b *testing.B) {
	const n = 50_000
	l, err := Open(context.Background(), openBadgerStore(b, filepath.Join(b.TempDir(), "ledger"), badgerstore.Options{}), testOptions())
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	tmpl := testEvent(0)
	for i := 0; i < n; i += 5000 {
		evs := make([]*pb.Event, 5000)
		for j := range evs {
			evs[j] = benchEvent(tmpl, "r-"+strconv.Itoa(i+j))
		}
		mustAppend(b, l, evs)
	}
	ctx := context.Background()
	bundles := l.Latest().Size / tileWidth
	r := rand.New(rand.NewPCG(1, 2))
	for i := range bundles { // warm caches
		if _, err := l.ReadEntryBundle(ctx, i, tileWidth); err != nil {
			b.Fatal(err)
		}
	}
	// unchecked is the read as it was before leaves were checked against
	// their tile hashes; checked is what Entries and ReadEntryBundle do.
	reads := []struct {
		name string
		read func(start, end uint64) ([]Entry, error)
	}{
		{"unchecked", l.entries},
		{"checked", l.checkedEntries},
	}
	// check is the added work alone: a full bundle's leaves against their
	// (cached) tile.
	es, err := l.entries(0, tileWidth)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("check-only", func(b *testing.B) {
		for b.Loop() {
			if err := l.checkLeaves(es); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, rd := range reads {
		b.Run(rd.name, func(b *testing.B) {
			for b.Loop() {
				i := r.Uint64N(bundles) * tileWidth
				if _, err := rd.read(i, i+tileWidth); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
