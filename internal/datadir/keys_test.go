package datadir

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/sigstore/sigstore/pkg/signature"
	"golang.org/x/mod/sumdb/note"

	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/checkpoint"
)

const testOrigin = "example.com/grantline/test"

// sign returns the signed checkpoint note of size over the root testRoot(seed).
func sign(s note.Signer, size uint64, root [32]byte) ([]byte, error) {
	c, err := ledger.SignCheckpoint(s, size, root)
	return c.Note, err
}

func testRoot(seed string) [32]byte { return sha256.Sum256([]byte(seed)) }

func checkMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("mode of %s = %v, want %v", path, got, want)
	}
}

func TestLoadOrCreateKeys(t *testing.T) {
	for _, alg := range []checkpoint.Algorithm{checkpoint.Ed25519, checkpoint.ECDSAP256} {
		t.Run(string(alg), func(t *testing.T) {
			data := t.TempDir()
			k1, err := LoadOrCreateKeys(data, testOrigin, alg)
			if err != nil {
				t.Fatal(err)
			}
			if k1.Algorithm != alg || k1.EvidenceAlgorithm != checkpoint.ECDSAP256 {
				t.Errorf("algorithms = %s, %s; want %s, %s", k1.Algorithm, k1.EvidenceAlgorithm, alg, checkpoint.ECDSAP256)
			}
			checkMode(t, k1.LogKeyPath, 0o600)
			checkMode(t, k1.EvidenceKeyPath, 0o600)
			for _, p := range []string{k1.LogKeyPath, k1.VerifierKeyPath, k1.EvidenceKeyPath, k1.EvidencePubKeyPath} {
				if filepath.Dir(p) != filepath.Join(data, "keys") {
					t.Errorf("key file %s not in DATA/keys", p)
				}
			}
			vkeyFile, err := os.ReadFile(filepath.Join(data, "keys", "log.vkey"))
			if err != nil {
				t.Fatal(err)
			}
			if string(vkeyFile) != k1.VerifierKey+"\n" || strings.Count(string(vkeyFile), "\n") != 1 {
				t.Errorf("log.vkey = %q, want %q plus one newline", vkeyFile, k1.VerifierKey)
			}
			// The vkey file alone verifies checkpoints signed by the keys.
			v, err := checkpoint.NewNoteVerifier(strings.TrimSpace(string(vkeyFile)))
			if err != nil {
				t.Fatal(err)
			}
			msg, err := sign(k1.LogSigner, 1, testRoot("k"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ledger.OpenCheckpoint(msg, v); err != nil {
				t.Errorf("Open with log.vkey = %v", err)
			}
			if alg == checkpoint.Ed25519 {
				xv, err := note.NewVerifier(k1.VerifierKey)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := note.Open(msg, note.VerifierList(xv)); err != nil {
					t.Errorf("x/mod note.Open = %v", err)
				}
			}

			// The evidence key signs; evidence.pub alone verifies.
			sig, err := k1.Evidence.SignMessage(bytes.NewReader([]byte("statement")))
			if err != nil {
				t.Fatal(err)
			}
			pub, err := checkpoint.ReadPublicKeyFile(k1.EvidencePubKeyPath)
			if err != nil {
				t.Fatal(err)
			}
			ev, err := signature.LoadVerifier(pub, 5 /* crypto.SHA256 */)
			if err != nil {
				t.Fatal(err)
			}
			if err := ev.VerifySignature(bytes.NewReader(sig), bytes.NewReader([]byte("statement"))); err != nil {
				t.Errorf("evidence signature does not verify with evidence.pub: %v", err)
			}

			// Reuse: same keys on a later start, whatever algorithm is asked.
			k2, err := LoadOrCreateKeys(data, testOrigin, checkpoint.Ed25519)
			if err != nil {
				t.Fatal(err)
			}
			if k2.VerifierKey != k1.VerifierKey || !bytes.Equal(k2.EvidencePublicPEM, k1.EvidencePublicPEM) || k2.Algorithm != alg {
				t.Errorf("second LoadOrCreateKeys made new keys: %s vs %s", k2.VerifierKey, k1.VerifierKey)
			}

			// Another origin is refused, naming the stored one.
			_, err = LoadOrCreateKeys(data, "other.example/log", alg)
			if !errors.Is(err, ErrKeyMismatch) || !strings.Contains(err.Error(), testOrigin) {
				t.Errorf("LoadOrCreateKeys(other origin) = %v, want ErrKeyMismatch naming %q", err, testOrigin)
			}
		})
	}
}

func TestLoadOrCreateKeysMismatch(t *testing.T) {
	data := t.TempDir()
	k, err := LoadOrCreateKeys(data, testOrigin, checkpoint.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	// A vkey of another key with the same origin.
	other, _ := checkpoint.GenerateKey(checkpoint.Ed25519)
	vk, _ := checkpoint.VerifierKey(testOrigin, other.Public())
	if err := os.WriteFile(k.VerifierKeyPath, []byte(vk+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKeys(data, testOrigin, checkpoint.Ed25519); !errors.Is(err, ErrKeyMismatch) {
		t.Errorf("LoadOrCreateKeys with foreign log.vkey = %v, want ErrKeyMismatch", err)
	}
	os.Remove(k.VerifierKeyPath)
	// A foreign evidence.pub.
	other2, _ := checkpoint.GenerateKey(checkpoint.ECDSAP256)
	pemBytes, _ := checkpoint.MarshalPublicKeyPEM(other2.Public())
	if err := os.WriteFile(k.EvidencePubKeyPath, pemBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKeys(data, testOrigin, checkpoint.Ed25519); !errors.Is(err, ErrKeyMismatch) {
		t.Errorf("LoadOrCreateKeys with foreign evidence.pub = %v, want ErrKeyMismatch", err)
	}
	// A corrupt private key is reported with its path.
	if err := os.WriteFile(k.LogKeyPath, []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKeys(data, testOrigin, checkpoint.Ed25519); err == nil || !strings.Contains(err.Error(), k.LogKeyPath) {
		t.Errorf("LoadOrCreateKeys with corrupt log.key = %v, want error naming %s", err, k.LogKeyPath)
	}
	if _, err := LoadOrCreateKeys(t.TempDir(), "bad origin", checkpoint.Ed25519); err == nil {
		t.Error("LoadOrCreateKeys with a space in the origin succeeded")
	}
}

// Concurrent first starts agree on one set of keys.
func TestLoadOrCreateKeysConcurrent(t *testing.T) {
	data := t.TempDir()
	var wg sync.WaitGroup
	vkeys := make([]string, 8)
	errs := make([]error, 8)
	for i := range vkeys {
		wg.Go(func() {
			k, err := LoadOrCreateKeys(data, testOrigin, checkpoint.Ed25519)
			errs[i] = err
			if err == nil {
				vkeys[i] = k.VerifierKey
			}
		})
	}
	wg.Wait()
	for i := range vkeys {
		if errs[i] != nil {
			t.Fatalf("call %d: %v", i, errs[i])
		}
		if vkeys[i] != vkeys[0] {
			t.Errorf("call %d got vkey %s, call 0 got %s", i, vkeys[i], vkeys[0])
		}
	}
}

func TestReadVerifierKeyFile(t *testing.T) {
	data := t.TempDir()
	k, err := LoadOrCreateKeys(data, testOrigin, checkpoint.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	v, vkey, err := checkpoint.ReadVerifierKeyFile(k.VerifierKeyPath)
	if err != nil || vkey != k.VerifierKey || v.Name() != testOrigin {
		t.Fatalf("checkpoint.ReadVerifierKeyFile = %v, %q, %v", v, vkey, err)
	}
	msg, _ := sign(k.LogSigner, 2, testRoot("v"))
	if _, err := ledger.OpenCheckpoint(msg, v); err != nil {
		t.Errorf("Open with verifier from file = %v", err)
	}
	bad := filepath.Join(data, "bad.vkey")
	for _, content := range []string{"", "a+b\nc+d\n", "junk", k.VerifierKey[:len(k.VerifierKey)-4]} {
		os.WriteFile(bad, []byte(content), 0o644)
		if _, _, err := checkpoint.ReadVerifierKeyFile(bad); err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("checkpoint.ReadVerifierKeyFile(%q) = %v, want error naming the file", content, err)
		}
	}
	if _, _, err := checkpoint.ReadVerifierKeyFile(filepath.Join(data, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("checkpoint.ReadVerifierKeyFile(missing) = %v, want ErrNotExist", err)
	}
}
