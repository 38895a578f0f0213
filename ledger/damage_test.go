package ledger

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4"
	"golang.org/x/mod/sumdb/note"

	"github.com/grantline/grantline/ledger/badgerstore"
	"github.com/grantline/grantline/ledger/event"
)

// TestDamagedLeafServedAsError: a leaf the store answers altered or empty is
// ErrCorrupt on every read path, never served; Fsck names the leaf and the
// kind of damage. Before the reads checked leaves against the tile, an
// empty leaf was served with success.
func TestDamagedLeafServedAsError(t *testing.T) {
	tests := []struct {
		name   string
		damage func(leaf []byte) []byte
		want   string
	}{
		{"empty", func([]byte) []byte { return []byte{} }, "leaf 300 is empty"},
		{"altered", func(l []byte) []byte { l = bytes.Clone(l); l[len(l)/2] ^= 1; return l }, "leaf 300 ("},
		{"truncated", func(l []byte) []byte { return bytes.Clone(l[:len(l)-1]) }, "leaf 300 ("},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			st := newFakeStore()
			l := openFake(t, st)
			mustAppend(t, l, testEvents(0, 600))
			v, _ := st.Get(leafKey(300))
			st.corrupt(leafKey(300), tt.damage(v[0]))
			check := func(what string, err error) {
				t.Helper()
				if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("%s = %v, want ErrCorrupt with %q", what, err, tt.want)
				}
			}
			_, err := l.Entries(ctx, 290, 20)
			check("Entries", err)
			check("ScanEntries", l.ScanEntries(ctx, 0, 600, func(Entry) error { return nil }))
			_, err = l.ReadEntryBundle(ctx, 1, tileWidth)
			check("ReadEntryBundle", err)
			en, _ := event.DecodeLeaf(v[0])
			_, err = l.SubjectEntries(ctx, en.GetEvent().GetSubject().GetId(), 600, 0, 0)
			check("SubjectEntries", err)
			check("Fsck", l.Fsck(ctx, nil))
			// Reads elsewhere still work.
			if _, err := l.Entries(ctx, 0, 256); err != nil {
				t.Errorf("Entries of an intact range: %v", err)
			}
			l.Close()
		})
	}
}

// TestValueLogChecksumIsCorrupt: with badger, a leaf whose value-log record
// (its bundle's) fails its checksum is ErrCorrupt (Connect data_loss)
// naming the leaves and the checksum, from reads and from Fsck.
func TestValueLogChecksumIsCorrupt(t *testing.T) {
	ctx := t.Context()
	dir := filepath.Join(t.TempDir(), "ledger")
	// 1 MiB value logs, so that the damaged one is not the newest (badger
	// cuts the newest at its first bad record when it opens).
	bo := badgerstore.Options{BadgerOptions: func(o badger.Options) badger.Options { return o.WithValueLogFileSize(1 << 20) }}
	l, err := openBadgerLog(t, dir, bo, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 6000; i += 1000 {
		mustAppend(t, l, testEvents(i, 1000))
	}
	es, err := l.Entries(ctx, 7, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "000001.vlog")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, es[0].Leaf)
	if i < 0 {
		t.Fatal("leaf 7 not found in the first value log")
	}
	b[i+len(es[0].Leaf)/2] ^= 1
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	// The store keeps leaves in bundles of 16 (ledger/badgerstore,
	// bundles.go): the damaged record is leaf 7's bundle.
	want := []string{"leaves 0-15", "checksum mismatch"}
	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s = %v, want ErrCorrupt", what, err)
			return
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s = %v, want it to name %q", what, err, w)
			}
		}
	}
	l, err = openBadgerLog(t, dir, bo, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	_, err = l.Entries(ctx, 0, 20)
	check("Entries", err)
	check("ScanEntries", l.ScanEntries(ctx, 0, 20, func(Entry) error { return nil }))
	_, err = l.ReadEntryBundle(ctx, 0, tileWidth)
	check("ReadEntryBundle", err)
	l.Close()
	check("Fsck", fsckBadger(t, dir))
}

// TestMustExist: Open with MustExist refuses an empty store instead of
// starting a new log in it.
func TestMustExist(t *testing.T) {
	o := testOptions()
	o.MustExist = true
	st := newFakeStore()
	if _, err := Open(t.Context(), st, o); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Open(empty, MustExist) = %v, want ErrNotFound", err)
	}
	if got, _ := st.Get(keyLatest); got[0] != nil {
		t.Fatal("Open with MustExist wrote a checkpoint")
	}
	l := openFake(t, st)
	mustAppend(t, l, testEvents(0, 3))
	l.Close()
	l, err := Open(t.Context(), st.clone(), o)
	if err != nil {
		t.Fatalf("Open(existing, MustExist) = %v", err)
	}
	l.Close()
}

// TestFsckWithoutVerifier: without keys, Fsck checks the structure (roots
// against leaves, one origin) and says that signatures were not checked.
func TestFsckWithoutVerifier(t *testing.T) {
	st := newFakeStore()
	l := openFake(t, st)
	mustAppend(t, l, testEvents(0, 300))
	mustAppend(t, l, testEvents(300, 10))
	l.Close()
	st = st.clone()
	var lines []string
	report := func(f string, a ...any) { lines = append(lines, fmt.Sprintf(f, a...)) }
	if err := Fsck(t.Context(), st, nil, report); err != nil {
		t.Fatalf("Fsck(no verifier) = %v", err)
	}
	if !strings.Contains(strings.Join(lines, "\n"), "signatures are NOT checked") {
		t.Fatalf("report:\n%s\nwant it to say signatures were not checked", strings.Join(lines, "\n"))
	}
	// A checkpoint whose root does not match the leaves, signed by anyone.
	skey, _, _ := note.GenerateKey(nil, testOrigin) // same origin, another key
	other, _ := note.NewSigner(skey)
	cp, err := SignCheckpoint(other, 300, [32]byte{1})
	if err != nil {
		t.Fatal(err)
	}
	bad := st.clone()
	bad.corrupt(checkpointKey(300), cp.Note)
	if err := Fsck(t.Context(), bad, nil, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Fsck(no verifier) of a forged checkpoint = %v, want ErrCorrupt", err)
	}
	bad = st.clone()
	bad.corrupt(checkpointKey(300), []byte("garbage"))
	if err := Fsck(t.Context(), bad, nil, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Fsck(no verifier) of a malformed checkpoint = %v, want ErrCorrupt", err)
	}
}
