package datadir

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/checkpoint"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// start opens the data directory and its ledger as `grantline serve` does,
// appends n events and closes; it returns the tree size.
func start(t *testing.T, path string, o Options, n int) (uint64, error) {
	t.Helper()
	d, err := OpenWith(path, o)
	if err != nil {
		return 0, err
	}
	l, err := d.OpenLedger(t.Context(), ledger.Options{})
	if err != nil {
		return 0, err
	}
	defer l.Close()
	for i := range n {
		ev := &pb.Event{Id: "ev-" + string(rune('a'+i)), Type: "access.requested", Time: timestamppb.Now(),
			Source: &pb.Source{System: "okta"}, Subject: &pb.Identity{Id: "alice"}}
		if _, _, err := l.Append(t.Context(), []*pb.Event{ev}); err != nil {
			t.Fatal(err)
		}
	}
	return l.Latest().Size, nil
}

// checkAdmin checks that DIR/admin.token authenticates as admin.
func checkAdmin(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(path, AdminTokenFile))
	if err != nil {
		t.Fatalf("admin token: %v", err)
	}
	tokens, err := OpenTokens(path)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := tokens.Authenticate(strings.TrimSpace(string(b))); err != nil || p.Name != "admin" {
		t.Fatalf("admin.token authenticates as %+v, %v; want admin", p, err)
	}
}

// TestCrashWhileCreating: a first start that dies between any two of its
// steps leaves a directory that the next start completes: keys, a working
// admin token, a log, and the log state "created".
func TestCrashWhileCreating(t *testing.T) {
	for _, step := range []string{"state", "keys", "tokens", "ledger"} {
		t.Run(step, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "data")
			crash := errors.New("crash at " + step)
			testHook = func(s string) error {
				if s == step {
					return crash
				}
				return nil
			}
			_, err := start(t, path, Options{}, 0)
			testHook = func(string) error { return nil }
			if !errors.Is(err, crash) {
				t.Fatalf("first start = %v, want the crash", err)
			}
			size, err := start(t, path, Options{}, 2)
			if err != nil {
				t.Fatalf("start after a crash at %s: %v", step, err)
			}
			if size != 2 {
				t.Fatalf("size = %d, want 2", size)
			}
			checkAdmin(t, path)
			if s, _ := readLogState(path); s != stateCreated {
				t.Fatalf("log state = %v, want created", s)
			}
		})
	}
}

// TestStoreMissingOrDamaged: once a log was created, a missing, emptied or
// damaged store is refused, never replaced by a new log at size 0, unless
// --init asks for a new log in an empty store.
func TestStoreMissingOrDamaged(t *testing.T) {
	tests := []struct {
		name    string
		damage  func(t *testing.T, path string)
		init    bool
		wantErr string // "" : opens
		size    uint64
	}{
		{"intact", func(*testing.T, string) {}, false, "", 3},
		{"ledger removed", func(t *testing.T, p string) { os.RemoveAll(filepath.Join(p, LedgerDir)) }, false, "holds no log", 0},
		{"MANIFEST removed", func(t *testing.T, p string) { os.Remove(filepath.Join(p, LedgerDir, "MANIFEST")) }, false, "MANIFEST is missing", 0},
		{"MANIFEST emptied", func(t *testing.T, p string) { os.Truncate(filepath.Join(p, LedgerDir, "MANIFEST"), 0) }, false, "MANIFEST is empty", 0},
		{"table truncated", func(t *testing.T, p string) {
			m, _ := filepath.Glob(filepath.Join(p, LedgerDir, "*.sst"))
			if len(m) == 0 {
				t.Fatal("no table")
			}
			fi, _ := os.Stat(m[0])
			os.Truncate(m[0], fi.Size()/2)
		}, false, "truncated", 0},
		{"ledger removed, --init", func(t *testing.T, p string) { os.RemoveAll(filepath.Join(p, LedgerDir)) }, true, "", 0},
		{"MANIFEST removed, --init", func(t *testing.T, p string) { os.Remove(filepath.Join(p, LedgerDir, "MANIFEST")) }, true, "MANIFEST is missing", 0},
		{"state file removed, ledger removed (keys restored alone)", func(t *testing.T, p string) {
			os.Remove(filepath.Join(p, KeysDir, LogStateFile))
			os.RemoveAll(filepath.Join(p, LedgerDir))
		}, false, "holds no log", 0},
		{"state file removed (an older directory)", func(t *testing.T, p string) { os.Remove(filepath.Join(p, KeysDir, LogStateFile)) }, false, "", 3},
		// The index store is rebuilt from the leaves: losing or damaging it loses nothing.
		{"index store removed", func(t *testing.T, p string) { os.RemoveAll(filepath.Join(p, LedgerDir, IndexDir)) }, false, "", 3},
		{"index store damaged (MANIFEST removed)", func(t *testing.T, p string) {
			if err := os.Remove(filepath.Join(p, LedgerDir, IndexDir, "MANIFEST")); err != nil {
				t.Fatal(err)
			}
		}, false, "", 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "data")
			if _, err := start(t, path, Options{}, 3); err != nil {
				t.Fatal(err)
			}
			tt.damage(t, path)
			size, err := start(t, path, Options{Init: tt.init}, 0)
			if tt.wantErr == "" {
				if err != nil || size != tt.size {
					t.Fatalf("start = size %d, %v; want size %d", size, err, tt.size)
				}
				if s, _ := readLogState(path); s != stateCreated {
					t.Fatalf("log state = %v, want created", s)
				}
				aside, _ := filepath.Glob(filepath.Join(path, LedgerDir, IndexDir+".damaged-*"))
				if want := strings.Contains(tt.name, "index store damaged"); want != (len(aside) == 1) {
					t.Fatalf("index stores moved aside: %v; want one: %v", aside, want)
				}
				return
			}
			if !errors.Is(err, ErrStoreMissing) || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "restore") {
				t.Fatalf("start = %v, want ErrStoreMissing with %q and a hint to restore", err, tt.wantErr)
			}
		})
	}
}

// TestStoreWithoutKeys: store files without keys are refused before any key
// is written.
func TestStoreWithoutKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data")
	if _, err := start(t, path, Options{}, 1); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(filepath.Join(path, KeysDir))
	_, err := OpenWith(path, Options{Algorithm: checkpoint.Ed25519})
	if !errors.Is(err, ErrStoreMissing) || !strings.Contains(err.Error(), "no log key") {
		t.Fatalf("OpenWith = %v, want ErrStoreMissing about the missing key", err)
	}
	if _, err := os.Stat(filepath.Join(path, KeysDir)); err == nil {
		t.Fatal("keys were written")
	}
}
