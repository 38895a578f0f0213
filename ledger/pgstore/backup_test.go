package pgstore

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/badgerstore"
)

// TestBackupRestore: a backup of the log in PostgreSQL, taken while it
// appends, restores into a new schema and into a badger store, and a badger
// store's backup restores into PostgreSQL; each restored log passes fsck
// and opens at a checkpoint the original published.
func TestBackupRestore(t *testing.T) {
	url := newURL(t)
	l := openLedger(t, leader(t, url, Options{Node: "a"}))
	appendAll(t, l, "ev", 0, 600, 50)
	published := map[uint64][32]byte{}
	for s := uint64(0); s <= l.Latest().Size; s++ {
		if cp, err := l.CheckpointAt(t.Context(), s); err == nil {
			published[s] = cp.Root
		}
	}
	done := make(chan struct{})
	go func() { defer close(done); appendAll(t, l, "more", 0, 300, 10) }()
	var pgBackup bytes.Buffer
	if err := l.Backup(t.Context(), &pgBackup); err != nil {
		t.Fatalf("Backup: %v", err)
	}
	<-done
	for s := uint64(0); s <= l.Latest().Size; s++ {
		if cp, err := l.CheckpointAt(t.Context(), s); err == nil {
			published[s] = cp.Root
		}
	}

	check := func(t *testing.T, st ledger.Store) {
		t.Helper()
		if err := ledger.Fsck(t.Context(), st, testVerifier, nil); err != nil {
			t.Fatalf("fsck of the restored log: %v", err)
		}
		o := ledgerOptions()
		o.MustExist = true
		r, err := ledger.Open(context.Background(), st, o)
		if err != nil {
			t.Fatalf("opening the restored log: %v", err)
		}
		defer r.Close()
		cp := r.Latest()
		if root, ok := published[cp.Size]; !ok || root != cp.Root || cp.Size < 600 {
			t.Fatalf("the restored log is at size %d (root %x), not a checkpoint the original published after 600 entries", cp.Size, cp.Root)
		}
	}
	t.Run("postgres to postgres", func(t *testing.T) {
		st := leader(t, newURL(t), Options{Node: "restore"})
		if err := ledger.Restore(t.Context(), st, bytes.NewReader(pgBackup.Bytes())); err != nil {
			t.Fatalf("Restore: %v", err)
		}
		if err := ledger.Restore(t.Context(), st, bytes.NewReader(pgBackup.Bytes())); err == nil || !strings.Contains(err.Error(), "already holds") {
			t.Fatalf("a second restore into the same store = %v, want a refusal", err)
		}
		st.ResetFences()
		check(t, st)
	})
	t.Run("postgres to badger", func(t *testing.T) {
		bs, err := badgerstore.Open(filepath.Join(t.TempDir(), "ledger"), badgerstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := ledger.Restore(t.Context(), bs, bytes.NewReader(pgBackup.Bytes())); err != nil {
			t.Fatalf("Restore into badger: %v", err)
		}
		check(t, bs)
	})
	t.Run("badger to postgres", func(t *testing.T) {
		bs, err := badgerstore.Open(filepath.Join(t.TempDir(), "ledger"), badgerstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := ledger.Restore(t.Context(), bs, bytes.NewReader(pgBackup.Bytes())); err != nil {
			t.Fatal(err)
		}
		bl, err := ledger.Open(context.Background(), bs, ledgerOptions())
		if err != nil {
			t.Fatal(err)
		}
		appendAll(t, bl, "badger", 0, 100, 10) // tiles and tree sizes get newer versions
		var bb bytes.Buffer
		if err := bl.Backup(t.Context(), &bb); err != nil {
			t.Fatal(err)
		}
		want := bl.Latest()
		published[want.Size] = want.Root
		bl.Close()
		st := leader(t, newURL(t), Options{Node: "restore"})
		if err := ledger.Restore(t.Context(), st, &bb); err != nil {
			t.Fatalf("Restore of a badger backup: %v", err)
		}
		st.ResetFences()
		check(t, st)
	})
	t.Run("refusals", func(t *testing.T) {
		st := openStore(t, newURL(t), Options{Node: "nolease"})
		if err := ledger.Restore(t.Context(), st, bytes.NewReader(pgBackup.Bytes())); !errors.Is(err, ErrFenced) {
			t.Fatalf("Restore without the lease = %v, want ErrFenced", err)
		}
		st2 := leader(t, newURL(t), Options{Node: "trunc"})
		if err := ledger.Restore(t.Context(), st2, bytes.NewReader(pgBackup.Bytes()[:pgBackup.Len()-7])); err == nil || !strings.Contains(err.Error(), "truncated") {
			t.Fatalf("Restore of a truncated backup = %v, want an error saying so", err)
		}
		if got, _ := st2.Get([]byte(TreeSizeKey)); got[0] != nil {
			t.Fatal("a failed restore wrote")
		}
	})
}
