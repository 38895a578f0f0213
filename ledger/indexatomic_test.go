package ledger

import (
	"errors"
	"strings"
	"testing"
)

// bareStore has only the Store methods of the store it holds: no
// CommitAtomic, no TearableCommits.
type bareStore struct{ Store }

// sayingStore is bareStore with a TearableCommits answering tearable.
type sayingStore struct {
	Store
	tearable bool
}

func (s sayingStore) TearableCommits() bool { return s.tearable }

// TestIndexAtomicRequired: Open refuses, before writing anything, a log
// with a subject map whose separate index store can tear a commit (it
// says so, or does not say) and has no CommitAtomic, saying what is
// missing and what to do; it accepts an index store with CommitAtomic, one
// that says its commits cannot tear, and any index store without the
// subject map.
func TestIndexAtomicRequired(t *testing.T) {
	for _, tc := range []struct {
		name     string
		index    func() Store
		smap     bool
		wantErr  bool
		wantSays string // in the error, besides what to do
	}{
		{"tearable without CommitAtomic", func() Store { return sayingStore{Store: lazy(), tearable: true} }, true, true, "says a crash can tear its commits"},
		{"silent without CommitAtomic", func() Store { return bareStore{lazy()} }, true, true, "does not say whether a crash can tear its commits"},
		{"atomic commits without CommitAtomic", func() Store { return sayingStore{Store: newFakeStore(), tearable: false} }, true, false, ""},
		{"tearable with CommitAtomic", func() Store { return lazy() }, true, false, ""},
		{"tearable without CommitAtomic, no subject map", func() Store { return sayingStore{Store: lazy(), tearable: true} }, false, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, ix := newFakeStore(), tc.index()
			o := testOptions()
			o.SubjectMap, o.Index = tc.smap, ix
			l, err := Open(t.Context(), st, o)
			if !tc.wantErr {
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				if err := l.Close(); err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				l.Close()
				t.Fatal("Open accepted the index store")
			}
			checkIndexAtomicErr(t, err, tc.wantSays)
			if n := len(st.clone().keys); n != 0 {
				t.Errorf("the refused Open left %d keys in the main store", n)
			}
			ix.Close()
		})
	}

	// A log created with a subject map, reopened with an index store
	// that can tear its commits and has no CommitAtomic (and options
	// that no longer ask for the map: the log keeps its own).
	t.Run("existing log with a subject map", func(t *testing.T) {
		st, ix := newFakeStore(), lazy()
		o := testOptions()
		o.SubjectMap, o.Index = true, ix
		l, err := Open(t.Context(), st, o)
		if err != nil {
			t.Fatal(err)
		}
		mustAppend(t, l, testEvents(0, 10))
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		o.SubjectMap, o.Index = false, sayingStore{Store: ix.clone(), tearable: true}
		if l, err := Open(t.Context(), st.clone(), o); err == nil {
			l.Close()
			t.Fatal("Open accepted a tearable index store without CommitAtomic for a log with a subject map")
		} else {
			checkIndexAtomicErr(t, err, "says a crash can tear its commits")
		}
	})
}

func checkIndexAtomicErr(t *testing.T, err error, says string) {
	t.Helper()
	if !errors.Is(err, ErrIndexNotAtomic) {
		t.Fatalf("Open: %v, want ErrIndexNotAtomic", err)
	}
	for _, want := range []string{says, "subject map", "CommitAtomic(keys, values [][]byte) error", "pass no Options.Index", "docs/design.md"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}
