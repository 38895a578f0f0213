package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"

	"github.com/grantline/grantline/internal/datadir"
	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/checkpoint"
)

func TestKeygenLogKey(t *testing.T) {
	out := filepath.Join(t.TempDir(), "keys")
	const origin = "example.com/grantline"
	code, stdout, stderr := runCmd(t, "", "keygen", "--out", out, "--origin", origin)
	if code != 0 {
		t.Fatalf("keygen = %d, %q", code, stderr)
	}
	for _, f := range []string{"log.key", "log.pub", "log.vkey"} {
		if !strings.Contains(stdout, filepath.Join(out, f)) {
			t.Errorf("keygen output %q does not name %s", stdout, f)
		}
	}
	fi, err := os.Stat(filepath.Join(out, "log.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("log.key: %v, mode %v; want 0600", err, fi.Mode())
	}
	key, err := checkpoint.ReadPrivateKeyFile(filepath.Join(out, "log.key"))
	if err != nil {
		t.Fatal(err)
	}
	if alg, _ := checkpoint.AlgorithmOf(key); alg != checkpoint.Ed25519 {
		t.Errorf("default algorithm = %s, want ed25519", alg)
	}
	vkey, err := os.ReadFile(filepath.Join(out, "log.vkey"))
	if err != nil {
		t.Fatal(err)
	}
	// The vkey verifies, with x/mod's own verifier, a checkpoint signed by log.key.
	v, err := note.NewVerifier(strings.TrimSuffix(string(vkey), "\n"))
	if err != nil {
		t.Fatalf("note.NewVerifier(log.vkey %q) = %v", vkey, err)
	}
	s, err := checkpoint.NewNoteSigner(origin, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ledger.SignCheckpoint(s, 0, [32]byte{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := note.Open(c.Note, note.VerifierList(v)); err != nil {
		t.Errorf("checkpoint signed with log.key does not verify with log.vkey: %v", err)
	}

	// Never overwrites.
	before, _ := os.ReadFile(filepath.Join(out, "log.key"))
	code, _, stderr = runCmd(t, "", "keygen", "--out", out, "--origin", origin)
	after, _ := os.ReadFile(filepath.Join(out, "log.key"))
	if code == 0 || !strings.Contains(stderr, "already exists") || string(before) != string(after) {
		t.Errorf("second keygen = %d, %q; want a refusal and log.key unchanged", code, stderr)
	}
}

// Keys made by keygen in DATA/keys are the ones the server then uses.
func TestKeygenIntoDataDir(t *testing.T) {
	data := t.TempDir()
	keys := filepath.Join(data, "keys")
	const origin = "example.com/log"
	if code, _, stderr := runCmd(t, "", "keygen", "--out", keys, "--origin", origin, "--alg", "ecdsa-p256"); code != 0 {
		t.Fatalf("keygen log = %d, %s", code, stderr)
	}
	if code, _, stderr := runCmd(t, "", "keygen", "--out", keys, "--name", "evidence", "--alg", "ecdsa-p256"); code != 0 {
		t.Fatalf("keygen evidence = %d, %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(keys, "evidence.vkey")); !os.IsNotExist(err) {
		t.Errorf("keygen without --origin wrote evidence.vkey (stat err %v)", err)
	}
	vkey, _ := os.ReadFile(filepath.Join(keys, "log.vkey"))
	evPub, _ := os.ReadFile(filepath.Join(keys, "evidence.pub"))
	k, err := datadir.LoadOrCreateKeys(data, origin, "")
	if err != nil {
		t.Fatal(err)
	}
	if k.VerifierKey+"\n" != string(vkey) || string(k.EvidencePublicPEM) != string(evPub) || k.Algorithm != checkpoint.ECDSAP256 {
		t.Errorf("LoadOrCreateKeys did not reuse keygen's keys: %s vs %s", k.VerifierKey, vkey)
	}
}

func TestKeygenErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"keygen"}, "--out DIR is required"},
		{[]string{"keygen", "--out", dir}, "--origin is required for the log key"},
		{[]string{"keygen", "--out", dir, "--origin", "o", "--alg", "rsa"}, `unknown key algorithm "rsa"`},
		{[]string{"keygen", "--out", dir, "--origin", "has space"}, "white space"},
		{[]string{"keygen", "--out", dir, "--name", "../x"}, "--name"},
		{[]string{"keygen", "--out", dir, "stray"}, "unexpected argument"},
	}
	for _, tt := range tests {
		code, stdout, stderr := runCmd(t, "", tt.args...)
		if code != 2 || !strings.Contains(stderr, tt.want) || stdout != "" {
			t.Errorf("grantline %q = %d, %q, %q; want 2 and stderr containing %q", tt.args, code, stdout, stderr, tt.want)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("failed keygen calls left files: %v", entries)
	}
}
