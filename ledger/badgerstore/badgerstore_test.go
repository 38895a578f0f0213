package badgerstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"testing"

	"github.com/dgraph-io/badger/v4"
)

func open(t *testing.T, dir string, o Options) *Store {
	t.Helper()
	s, err := Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStore(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	big := bytes.Repeat([]byte("v"), 1000) // goes to the value log
	keys := [][]byte{[]byte("a1"), []byte("a2"), []byte("b1"), []byte("empty")}
	vals := [][]byte{[]byte("one"), big, []byte("three"), {}}
	if err := s.Commit(keys, vals); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get([]byte("a2"), []byte("missing"), []byte("empty"), []byte("a1"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[0], big) || got[1] != nil || got[2] == nil || len(got[2]) != 0 || string(got[3]) != "one" {
		t.Fatalf("Get = %q, want [big, nil (miss), empty non-nil, one]", got)
	}
	tests := []struct {
		start, end string
		want       string
	}{
		{"a", "b", "[a1 a2]"},
		{"a2", "", "[a2 b1 empty]"},
		{"", "a2", "[a1]"},
		{"c", "d", "[]"},
	}
	for _, tt := range tests {
		var ks []string
		var end []byte
		if tt.end != "" {
			end = []byte(tt.end)
		}
		if err := s.Scan([]byte(tt.start), end, func(k, v []byte) error { ks = append(ks, string(k)); return nil }); err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(ks) != tt.want {
			t.Errorf("Scan(%q, %q) = %v, want %v", tt.start, tt.end, ks, tt.want)
		}
	}
	stop := errors.New("stop")
	if err := s.Scan(nil, nil, func(k, v []byte) error { return stop }); err != stop {
		t.Fatalf("Scan error = %v, want fn's error", err)
	}
	if err := s.Commit([][]byte{[]byte("x")}, nil); err == nil {
		t.Fatal("Commit with mismatched keys and values succeeded")
	}

	// A batch beyond the limits fails whole with ErrTooBig.
	count, _ := s.Limits()
	ks, vs := make([][]byte, count+1), make([][]byte, count+1)
	for i := range ks {
		ks[i], vs[i] = []byte(fmt.Sprintf("big-%08d", i)), []byte("x")
	}
	if err := s.Commit(ks, vs); !errors.Is(err, ErrTooBig) {
		t.Fatalf("Commit(%d entries) = %v, want ErrTooBig", len(ks), err)
	}
	if got, _ := s.Get(ks[0]); got[0] != nil {
		t.Fatal("part of a refused batch was written")
	}

	var backup bytes.Buffer
	if err := s.Backup(context.Background(), &backup); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Durable across reopen, and restorable elsewhere.
	for _, d := range []string{dir, filepath.Join(t.TempDir(), "restored")} {
		s := open(t, d, Options{})
		if d != dir {
			if err := s.Restore(bytes.NewReader(backup.Bytes())); err != nil {
				t.Fatal(err)
			}
		}
		got, err := s.Get([]byte("a2"))
		if err != nil || !bytes.Equal(got[0], big) {
			t.Fatalf("%s: Get(a2) = %d bytes, %v; want the committed value", d, len(got[0]), err)
		}
		s.Close()
	}
}

func TestScaleMemory(t *testing.T) {
	def := badger.DefaultOptions("")
	tests := []struct {
		limit   int64
		memtbl  int64
		blockMB int64
	}{
		{math.MaxInt64, def.MemTableSize, def.BlockCacheSize >> 20},
		{256 << 20, 8 << 20, 16},
		{1 << 30, 32 << 20, 64},
		{64 << 30, 64 << 20, 256},
		{1 << 20, 8 << 20, 8},
	}
	for _, tt := range tests {
		o := scaleMemory(def, tt.limit)
		if o.MemTableSize != tt.memtbl || o.BlockCacheSize>>20 != tt.blockMB {
			t.Errorf("scaleMemory(limit %d MiB) = memtable %d MiB, block cache %d MiB; want %d MiB, %d MiB",
				tt.limit>>20, o.MemTableSize>>20, o.BlockCacheSize>>20, tt.memtbl>>20, tt.blockMB)
		}
	}
}

func TestBadgerOptionsEscapeHatch(t *testing.T) {
	called := false
	s := open(t, t.TempDir(), Options{BadgerOptions: func(o badger.Options) badger.Options {
		called = true
		if !o.SyncWrites {
			t.Error("SyncWrites is off by default")
		}
		return o.WithMemTableSize(16 << 20)
	}})
	defer s.Close()
	if !called {
		t.Fatal("BadgerOptions was not applied")
	}
	if _, bytes := s.Limits(); bytes != (15*(16<<20))/100-22 {
		t.Fatalf("Limits bytes = %d, want 15%% of the 16 MiB memtable", bytes)
	}
}

// TestTearableCommits: a store opened with NoSync says a crash can tear
// its commits (the ledger then requires its CommitAtomic of it as the
// index store of a log with a subject map); one opened without does not.
func TestTearableCommits(t *testing.T) {
	for _, noSync := range []bool{false, true} {
		s := open(t, t.TempDir(), Options{NoSync: noSync})
		if got := s.TearableCommits(); got != noSync {
			t.Errorf("TearableCommits of a store opened with NoSync %v = %v, want %v", noSync, got, noSync)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
