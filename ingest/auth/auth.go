// Package auth keeps Grantline's principals: named bearer tokens with a role
// (source, auditor or admin), stored in a tokens file (a server's is
// DATA/tokens.json, see internal/datadir) as SHA-256 hashes
// only. The file is written atomically (temporary file, fsync, rename) under
// an advisory lock file, so `grantline token add` and `revoke` can run while a
// server runs, and a Store re-reads the file whenever it changes, so a new or
// revoked token takes effect on the server's next call. Tokens are "glt_"
// followed by 32 random bytes in unpadded base64url; they are never logged or
// put in error messages.
package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/grantline/grantline/internal/atomicfile"
)

// Role is what a principal may do.
type Role string

const (
	// RoleSource may append events whose source.system is its own name.
	RoleSource Role = "source"
	// RoleAuditor may read the log, evaluate rules and export evidence.
	RoleAuditor Role = "auditor"
	// RoleAdmin may do everything.
	RoleAdmin Role = "admin"
)

// ParseRole parses a role name.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RoleSource, RoleAuditor, RoleAdmin:
		return r, nil
	}
	return "", fmt.Errorf("unknown role %q: want source, auditor or admin", s)
}

// Principal is one named token holder. It holds one token, or several
// while a token is being rotated (Rotate): each is accepted until it is
// revoked or expires.
type Principal struct {
	Name    string
	Role    Role
	Created time.Time
	Revoked time.Time // zero while the principal is valid; revoking it revokes all its tokens
	Tokens  []Token   // in the order they were issued
}

// Active reports whether the principal is still valid (some of its tokens
// may have expired or been revoked; see Token.Active).
func (p Principal) Active() bool { return p.Revoked.IsZero() }

// Token is one of a principal's tokens, as listed: never the token itself.
type Token struct {
	// ID names the token in `grantline token list` and `token revoke
	// --token-id`: the first 12 hex digits of its SHA-256.
	ID      string
	Created time.Time
	Expires time.Time // zero: no expiry
	Revoked time.Time // zero: not revoked
}

// Active reports whether the token is accepted at now (its principal must
// be active too).
func (t Token) Active(now time.Time) bool {
	return t.Revoked.IsZero() && (t.Expires.IsZero() || now.Before(t.Expires))
}

// Sentinel errors, checked with errors.Is.
var (
	// ErrUnauthenticated: the token is missing, unknown or revoked. The
	// message never contains the token.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrUnknownPrincipal: no principal has that name.
	ErrUnknownPrincipal = errors.New("unknown principal")
	// ErrExists: an active principal already has that name.
	ErrExists = errors.New("principal already exists")
	// ErrInvalidName: the name breaks the naming rule.
	ErrInvalidName = errors.New("invalid principal name")
	// ErrUnknownToken: no token has that id.
	ErrUnknownToken = errors.New("unknown token id")
)

// TokenPrefix starts every token.
const TokenPrefix = "glt_"

// lockSuffix names the advisory lock file beside the tokens file.
const lockSuffix = ".lock"

// ValidateName checks a principal name: 1 to 64 characters from
// [A-Za-z0-9._-]. A source's name is the source.system it may append.
func ValidateName(name string) error {
	if len(name) == 0 || len(name) > 64 {
		return fmt.Errorf("%w: %q is %d characters; use 1 to 64 of A-Z a-z 0-9 . _ -", ErrInvalidName, name, len(name))
	}
	for i, c := range name {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			// %U, not the character: it may be invisible (U+200B) or not
			// valid UTF-8 (U+FFFD).
			return fmt.Errorf("%w: %q has %U at offset %d; use only A-Z a-z 0-9 . _ -", ErrInvalidName, name, c, i)
		}
	}
	return nil
}

// record is a principal as stored in tokens.json. Version 1 files held one
// token hash per principal (TokenSHA256); version 2 files hold Tokens.
type record struct {
	Name        string         `json:"name"`
	Role        Role           `json:"role"`
	TokenSHA256 string         `json:"token_sha256,omitempty"` // version 1 only
	Tokens      []*tokenRecord `json:"tokens,omitempty"`
	Created     time.Time      `json:"created"`
	Revoked     time.Time      `json:"revoked,omitzero"`
}

// tokenRecord is one token hash of a principal.
type tokenRecord struct {
	ID      string    `json:"id"`
	SHA256  string    `json:"sha256"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires,omitzero"`
	Revoked time.Time `json:"revoked,omitzero"`

	hash [sha256.Size]byte
}

func (t *tokenRecord) token() Token {
	return Token{ID: t.ID, Created: t.Created, Expires: t.Expires, Revoked: t.Revoked}
}

type fileFormat struct {
	Version    int       `json:"version"`
	Principals []*record `json:"principals"`
}

// fileVersion is the version written; version 1 files are read too.
const fileVersion = 2

// tokenIDLen is the length of a token id in hex digits.
const tokenIDLen = 12

func tokenID(hash [sha256.Size]byte) string { return hex.EncodeToString(hash[:])[:tokenIDLen] }

func newTokenRecord(hash [sha256.Size]byte, now time.Time) *tokenRecord {
	return &tokenRecord{ID: tokenID(hash), SHA256: hex.EncodeToString(hash[:]), Created: now, hash: hash}
}

// Store is the principal store of one data directory. It is safe for
// concurrent use, and several Stores (in several processes) may share a
// directory: writes are serialised by a lock file, and every read checks
// whether the file changed since it was last loaded.
type Store struct {
	path, lockPath string
	now            func() time.Time

	mu      sync.Mutex
	fi      fs.FileInfo // of the loaded file; nil when it did not exist
	records []*record
	byHash  map[[sha256.Size]byte]heldToken // every token hash of records
}

// heldToken is a token hash's record and its token entry.
type heldToken struct {
	rec *record
	tok *tokenRecord
}

// Open returns the Store of the tokens file at path (a server's is
// DATA/tokens.json; internal/datadir knows the layout). The file need not
// exist yet; a missing file means no principals. Open fails if the file
// exists but cannot be read or parsed.
func Open(path string) (*Store, error) {
	s := &Store{
		path:     path,
		lockPath: path + lockSuffix,
		now:      time.Now,
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.refreshLocked(); err != nil {
		return nil, err
	}
	return s, nil
}

// Path returns the tokens file's path.
func (s *Store) Path() string { return s.path }

// refreshLocked re-reads the file if it changed (inode, size or mtime) since
// it was last loaded. s.mu must be held.
func (s *Store) refreshLocked() error {
	fi, err := os.Stat(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		s.fi, s.records, s.byHash = nil, nil, nil
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading principals: %w", err)
	}
	if s.fi != nil && os.SameFile(s.fi, fi) && s.fi.Size() == fi.Size() && s.fi.ModTime().Equal(fi.ModTime()) {
		return nil
	}
	recs, fi, err := readFile(s.path)
	if err != nil {
		return err
	}
	s.fi, s.records = fi, recs
	s.byHash = make(map[[sha256.Size]byte]heldToken, len(recs))
	for _, r := range recs {
		for _, t := range r.Tokens {
			s.byHash[t.hash] = heldToken{r, t} // a token is unique; should a hash repeat, the later one wins
		}
	}
	return nil
}

// readFile reads and checks tokens.json, returning the FileInfo of the file
// it read (taken from the open file, so it matches the bytes).
func readFile(path string) ([]*record, fs.FileInfo, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("reading principals: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("reading principals: %w", err)
	}
	var ff fileFormat
	dec := json.NewDecoder(f)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ff); err != nil {
		return nil, nil, fmt.Errorf("%s: %w (fix or restore the file; tokens can be re-added with grantline token add)", path, err)
	}
	if ff.Version != 1 && ff.Version != fileVersion {
		return nil, nil, fmt.Errorf("%s: version %d, want 1 or %d", path, ff.Version, fileVersion)
	}
	parseHash := func(s string) ([sha256.Size]byte, bool) {
		var hash [sha256.Size]byte
		h, err := hex.DecodeString(s)
		if err != nil || len(h) != sha256.Size {
			return hash, false
		}
		copy(hash[:], h)
		return hash, true
	}
	for i, r := range ff.Principals {
		if r == nil {
			return nil, nil, fmt.Errorf("%s: principals[%d] is null", path, i)
		}
		if err := ValidateName(r.Name); err != nil {
			return nil, nil, fmt.Errorf("%s: principals[%d].name: %w", path, i, err)
		}
		if _, err := ParseRole(string(r.Role)); err != nil {
			return nil, nil, fmt.Errorf("%s: principals[%d].role: %w", path, i, err)
		}
		if ff.Version == 1 {
			hash, ok := parseHash(r.TokenSHA256)
			if !ok || r.Tokens != nil {
				return nil, nil, fmt.Errorf("%s: principals[%d].token_sha256: want 64 hex digits (and no tokens list in a version 1 file)", path, i)
			}
			t := newTokenRecord(hash, r.Created)
			r.TokenSHA256, r.Tokens = "", []*tokenRecord{t}
			continue
		}
		if r.TokenSHA256 != "" || len(r.Tokens) == 0 {
			return nil, nil, fmt.Errorf("%s: principals[%d]: want a tokens list (and no token_sha256 in a version %d file)", path, i, fileVersion)
		}
		for j, t := range r.Tokens {
			hash, ok := parseHash(t.SHA256)
			if t == nil || !ok {
				return nil, nil, fmt.Errorf("%s: principals[%d].tokens[%d].sha256: want 64 hex digits", path, i, j)
			}
			if t.ID != tokenID(hash) {
				return nil, nil, fmt.Errorf("%s: principals[%d].tokens[%d].id: %q is not the first %d hex digits of its sha256", path, i, j, t.ID, tokenIDLen)
			}
			t.hash = hash
		}
	}
	return ff.Principals, fi, nil
}

// List returns all principals, revoked ones included, in the order they were
// added. It reflects the file as of the call; should the file have become
// unreadable since it was last loaded, it returns what was last loaded (Open
// reports such errors).
func (s *Store) List() []Principal {
	s.mu.Lock()
	defer s.mu.Unlock()
	_ = s.refreshLocked()
	out := make([]Principal, len(s.records))
	for i, r := range s.records {
		out[i] = r.principal()
	}
	return out
}

func (r *record) principal() Principal {
	p := Principal{Name: r.Name, Role: r.Role, Created: r.Created, Revoked: r.Revoked}
	for _, t := range r.Tokens {
		p.Tokens = append(p.Tokens, t.token())
	}
	return p
}

// Authenticate returns the active principal holding token. Unknown,
// revoked, expired and malformed tokens, and tokens of a revoked principal,
// all fail with ErrUnauthenticated. The token is looked up by its SHA-256
// hash in a map: the time taken depends only on the hash, which tells a
// caller nothing about any valid token, and the call is cheap enough to
// repeat for every message of a stream. Changes made by other processes are
// seen at once (the file is stat'ed on each call and re-read if it changed),
// and so is an expiry.
func (s *Store) Authenticate(token string) (Principal, error) {
	h := sha256.Sum256([]byte(token))
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.refreshLocked(); err != nil {
		return Principal{}, fmt.Errorf("%w: %w", ErrUnauthenticated, err)
	}
	var found *record
	var tok *tokenRecord
	if t, ok := s.byHash[h]; ok {
		found, tok = t.rec, t.tok
	}
	now := s.now()
	switch {
	case found == nil:
		return Principal{}, fmt.Errorf("%w: unknown token", ErrUnauthenticated)
	case !found.Revoked.IsZero():
		return Principal{}, fmt.Errorf("%w: the token of %q was revoked at %s", ErrUnauthenticated, found.Name, found.Revoked.Format(time.RFC3339))
	case !tok.Revoked.IsZero():
		return Principal{}, fmt.Errorf("%w: token %s of %q was revoked at %s", ErrUnauthenticated, tok.ID, found.Name, tok.Revoked.Format(time.RFC3339))
	case !tok.Expires.IsZero() && !now.Before(tok.Expires):
		return Principal{}, fmt.Errorf("%w: token %s of %q expired at %s", ErrUnauthenticated, tok.ID, found.Name, tok.Expires.Format(time.RFC3339))
	}
	return found.principal(), nil
}

// Add creates a principal and returns its new token, which is shown only
// this once: only its hash is stored. The name must pass ValidateName and
// must not belong to an active principal (ErrExists); a revoked principal's
// name may be reused. The change is durable (fsynced) when Add returns.
func (s *Store) Add(name string, role Role) (string, error) {
	if err := ValidateName(name); err != nil {
		return "", err
	}
	if _, err := ParseRole(string(role)); err != nil {
		return "", err
	}
	token, hash := newToken()
	err := s.update(func(recs []*record) ([]*record, error) {
		for _, r := range recs {
			if r.Name == name && r.Revoked.IsZero() {
				return nil, fmt.Errorf("%w: %q (role %s); revoke it first to issue a new token", ErrExists, name, r.Role)
			}
		}
		now := s.now().UTC().Truncate(time.Second)
		return append(recs, &record{
			Name: name, Role: role, Tokens: []*tokenRecord{newTokenRecord(hash, now)}, Created: now,
		}), nil
	})
	if err != nil {
		return "", err
	}
	return token, nil
}

// Revoke revokes the active principal called name; its token stops working
// at once in every Store on the directory. It fails with ErrUnknownPrincipal
// if no principal has the name, and does nothing if it is already revoked.
// The change is durable when Revoke returns.
func (s *Store) Revoke(name string) error {
	return s.update(func(recs []*record) ([]*record, error) {
		known, changed := false, false
		for _, r := range recs {
			if r.Name != name {
				continue
			}
			known = true
			if r.Revoked.IsZero() {
				r.Revoked = s.now().UTC().Truncate(time.Second)
				changed = true
			}
		}
		if !known {
			return nil, fmt.Errorf("%w: %q; see grantline token list", ErrUnknownPrincipal, name)
		}
		if !changed {
			return nil, nil
		}
		return recs, nil
	})
}

// Rotate issues a new token for the active principal called name and
// returns it (shown only this once) with its id. The principal's other
// tokens keep working: until revokeAfter has passed when it is positive
// (an earlier expiry is kept), otherwise until RevokeToken. So a source can
// switch to the new token without a gap, and the old one can be retired
// once nothing uses it. ErrUnknownPrincipal if no active principal has the
// name. Durable when Rotate returns.
func (s *Store) Rotate(name string, revokeAfter time.Duration) (token, id string, err error) {
	token, hash := newToken()
	err = s.update(func(recs []*record) ([]*record, error) {
		for _, r := range recs {
			if r.Name != name || !r.Revoked.IsZero() {
				continue
			}
			now := s.now().UTC()
			if revokeAfter > 0 {
				exp := now.Add(revokeAfter)
				for _, t := range r.Tokens {
					if t.Revoked.IsZero() && (t.Expires.IsZero() || exp.Before(t.Expires)) {
						t.Expires = exp
					}
				}
			}
			t := newTokenRecord(hash, now.Truncate(time.Second))
			r.Tokens = append(r.Tokens, t)
			id = t.ID
			return recs, nil
		}
		return nil, fmt.Errorf("%w: no active principal %q; see grantline token list", ErrUnknownPrincipal, name)
	})
	if err != nil {
		return "", "", err
	}
	return token, id, nil
}

// RevokeToken revokes the token with that id (see Token.ID); the
// principal's other tokens keep working. It stops working at once in every
// Store on the directory. ErrUnknownToken if no token has the id; nothing
// changes if it is already revoked. Durable when RevokeToken returns.
func (s *Store) RevokeToken(id string) (principal string, err error) {
	err = s.update(func(recs []*record) ([]*record, error) {
		var hit *tokenRecord
		for _, r := range recs {
			for _, t := range r.Tokens {
				if t.ID == id {
					if hit != nil {
						return nil, fmt.Errorf("%w: %q names several tokens; revoke their principal instead", ErrUnknownToken, id)
					}
					hit, principal = t, r.Name
				}
			}
		}
		if hit == nil {
			return nil, fmt.Errorf("%w: %q; see grantline token list", ErrUnknownToken, id)
		}
		if !hit.Revoked.IsZero() {
			return nil, nil
		}
		hit.Revoked = s.now().UTC().Truncate(time.Second)
		return recs, nil
	})
	return principal, err
}

// update applies fn to the current records under the lock file and writes
// the result atomically. fn returning nil records and nil error means no
// change.
func (s *Store) update(fn func([]*record) ([]*record, error)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	unlock, err := lockFile(s.lockPath)
	if err != nil {
		return fmt.Errorf("locking principals: %w", err)
	}
	defer unlock()
	recs, _, err := readFile(s.path) // fresh: another process may have written
	if err != nil {
		return err
	}
	recs, err = fn(slices.Clone(recs))
	if err != nil || recs == nil {
		return err
	}
	if err := writeFile(s.path, recs); err != nil {
		return err
	}
	s.fi = nil // force a reload on next use
	return s.refreshLocked()
}

func writeFile(path string, recs []*record) error {
	data, err := json.MarshalIndent(fileFormat{Version: fileVersion, Principals: recs}, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding principals: %w", err)
	}
	return writeAtomic(path, append(data, '\n'), 0o600)
}

// writeAtomic replaces path with data durably (internal/atomicfile).
func writeAtomic(path string, data []byte, mode fs.FileMode) error {
	return atomicfile.WriteFile(path, data, mode)
}

// newToken returns a fresh token and its SHA-256.
func newToken() (string, [sha256.Size]byte) {
	var b [32]byte
	rand.Read(b[:]) // never fails (crypto/rand)
	t := TokenPrefix + base64.RawURLEncoding.EncodeToString(b[:])
	return t, sha256.Sum256([]byte(t))
}

// Bootstrap prepares the first admin: if no principals exist at all it adds
// the admin principal "admin" and writes its token, newline-terminated, to
// adminTokenPath (mode 0600), and reports true. If principals already exist
// it changes nothing. Safe against a concurrent Bootstrap or Add in another
// process.
//
// The token file is written (atomically, and synced with its directory)
// before the principal: a crash in between leaves no principal, and the
// next Bootstrap writes a new token over the unused one. So once the
// principal exists, its token is in adminTokenPath (unless an operator
// removed it).
func (s *Store) Bootstrap(adminTokenPath string) (bool, error) {
	created := false
	err := s.update(func(recs []*record) ([]*record, error) {
		if len(recs) > 0 {
			return nil, nil
		}
		token, hash := newToken()
		if err := writeAtomic(adminTokenPath, []byte(token+"\n"), 0o600); err != nil {
			return nil, err
		}
		if err := bootstrapHook(); err != nil {
			return nil, err
		}
		now := s.now().UTC().Truncate(time.Second)
		created = true
		return []*record{{
			Name: "admin", Role: RoleAdmin, Tokens: []*tokenRecord{newTokenRecord(hash, now)}, Created: now,
		}}, nil
	})
	if err != nil {
		return false, err
	}
	return created, nil
}

// bootstrapHook runs between writing the admin token and the principal;
// tests make it fail to stand for a crash there.
var bootstrapHook = func() error { return nil }
