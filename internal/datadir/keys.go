package datadir

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"golang.org/x/mod/sumdb/note"

	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/checkpoint"
)

// File names inside DATA/keys.
const (
	LogKeyFile         = "log.key"
	LogVerifierKeyFile = "log.vkey"
	EvidenceKeyFile    = "evidence.key"
	EvidencePubFile    = "evidence.pub"
)

// ErrKeyMismatch is returned when key files in a data directory do not
// belong together, or do not match what was asked for (another origin).
var ErrKeyMismatch = errors.New("key files do not match")

// Keys are a data directory's signing keys, loaded or created by
// LoadOrCreateKeys. All fields are safe for concurrent use.
type Keys struct {
	Origin    string               // checkpoint origin, the log key's name
	Algorithm checkpoint.Algorithm // of the log key

	LogSigner   note.Signer   // signs checkpoints
	LogVerifier note.Verifier // verifies them
	VerifierKey string        // the log.vkey line, without its newline

	Evidence          signature.SignerVerifier // signs evidence statements (DSSE)
	EvidenceAlgorithm checkpoint.Algorithm
	EvidencePublicPEM []byte // contents of evidence.pub

	Dir                                                              string // DATA/keys
	LogKeyPath, VerifierKeyPath, EvidenceKeyPath, EvidencePubKeyPath string
}

// LoadOrCreateKeys loads the keys in dataDir/keys, creating what is missing:
// on first start it writes log.key (a new alg key, default Ed25519; 0600),
// log.vkey (the verifier key line for origin, newline-terminated),
// evidence.key (ECDSA P-256; 0600) and evidence.pub (PEM). Later calls reuse
// them: alg only matters when log.key is created. It fails with
// ErrKeyMismatch if the stored log.vkey names another origin, or if a public
// file does not match its private key. Files are written atomically and never
// overwritten, so concurrent first starts agree on one key.
func LoadOrCreateKeys(dataDir, origin string, alg checkpoint.Algorithm) (*Keys, error) {
	if err := ledger.CheckOrigin(origin); err != nil {
		return nil, err
	}
	if _, err := checkpoint.ParseAlgorithm(string(alg)); err != nil {
		return nil, err
	}
	dir := filepath.Join(dataDir, KeysDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating key directory: %w", err)
	}
	k := &Keys{
		Origin:             origin,
		Dir:                dir,
		LogKeyPath:         filepath.Join(dir, LogKeyFile),
		VerifierKeyPath:    filepath.Join(dir, LogVerifierKeyFile),
		EvidenceKeyPath:    filepath.Join(dir, EvidenceKeyFile),
		EvidencePubKeyPath: filepath.Join(dir, EvidencePubFile),
	}

	logKey, err := loadOrCreatePrivate(k.LogKeyPath, alg)
	if err != nil {
		return nil, err
	}
	if k.Algorithm, err = checkpoint.AlgorithmOf(logKey); err != nil {
		return nil, fmt.Errorf("%s: %w", k.LogKeyPath, err)
	}
	if k.VerifierKey, err = checkpoint.VerifierKey(origin, logKey.Public()); err != nil {
		return nil, err
	}
	if err := loadOrCreateVerifierKey(k.VerifierKeyPath, k.VerifierKey, origin, logKey.Public()); err != nil {
		return nil, err
	}
	if k.LogSigner, err = checkpoint.NewNoteSigner(origin, logKey); err != nil {
		return nil, err
	}
	if k.LogVerifier, err = checkpoint.NewNoteVerifier(k.VerifierKey); err != nil {
		return nil, err
	}

	evKey, err := loadOrCreatePrivate(k.EvidenceKeyPath, checkpoint.ECDSAP256)
	if err != nil {
		return nil, err
	}
	if k.EvidenceAlgorithm, err = checkpoint.AlgorithmOf(evKey); err != nil {
		return nil, fmt.Errorf("%s: %w", k.EvidenceKeyPath, err)
	}
	if k.EvidencePublicPEM, err = loadOrCreatePublic(k.EvidencePubKeyPath, evKey.Public()); err != nil {
		return nil, err
	}
	if k.Evidence, err = signature.LoadSignerVerifier(evKey, crypto.SHA256); err != nil {
		return nil, fmt.Errorf("loading evidence signer: %w", err)
	}
	return k, nil
}

func loadOrCreatePrivate(path string, alg checkpoint.Algorithm) (crypto.Signer, error) {
	key, err := checkpoint.ReadPrivateKeyFile(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	if key, err = checkpoint.GenerateKey(alg); err != nil {
		return nil, err
	}
	if err := checkpoint.WritePrivateKeyFile(path, key); err != nil {
		if errors.Is(err, fs.ErrExist) { // another process won the race
			return checkpoint.ReadPrivateKeyFile(path)
		}
		return nil, err
	}
	return key, nil
}

func loadOrCreateVerifierKey(path, want, origin string, pub crypto.PublicKey) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		err = checkpoint.WriteVerifierKeyFile(path, want)
		if !errors.Is(err, fs.ErrExist) {
			return err
		}
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return fmt.Errorf("reading verifier key: %w", err)
	}
	got := strings.TrimSuffix(string(data), "\n")
	if got == want {
		return nil
	}
	gotOrigin, gotPub, err := checkpoint.ParseVerifierKey(got)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if gotOrigin != origin {
		return fmt.Errorf("%w: %s is for origin %q but origin %q was asked for: use --origin %q, or a new data directory for a new log",
			ErrKeyMismatch, path, gotOrigin, origin, gotOrigin)
	}
	if err := cryptoutils.EqualKeys(gotPub, pub); err != nil {
		return fmt.Errorf("%w: %s does not hold the public key of %s", ErrKeyMismatch, path, LogKeyFile)
	}
	return fmt.Errorf("%w: %s is not in canonical form; expected %q", ErrKeyMismatch, path, want)
}

func loadOrCreatePublic(path string, pub crypto.PublicKey) ([]byte, error) {
	want, err := checkpoint.MarshalPublicKeyPEM(pub)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		err = checkpoint.WritePublicKeyFile(path, pub)
		if err == nil {
			return want, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return nil, err
		}
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("reading public key: %w", err)
	}
	if bytes.Equal(data, want) {
		return data, nil
	}
	got, err := checkpoint.ParsePublicKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := cryptoutils.EqualKeys(got, pub); err != nil {
		return nil, fmt.Errorf("%w: %s does not hold the public key of the private key beside it", ErrKeyMismatch, path)
	}
	return data, nil
}
