package ssf

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Limits on fetching a transmitter's JWKS from its jwks_uri.
const (
	// DefaultJWKSRefresh is how long fetched keys are used before they are
	// fetched again (jwks_refresh overrides it).
	DefaultJWKSRefresh = time.Hour
	// MinJWKSRefresh is the shortest jwks_refresh accepted.
	MinJWKSRefresh = time.Minute
	// JWKSUnknownKidWait is the least time between two fetches caused by a
	// SET whose kid is not among the keys (a key rotation), or by a refresh
	// that keeps failing: forged kids or a dead endpoint cannot make
	// Grantline hammer the transmitter, or wait on it for every SET.
	JWKSUnknownKidWait = 10 * time.Second
	// MaxJWKSBytes bounds a fetched JWKS document.
	MaxJWKSBytes = 256 << 10
	// JWKSFetchTimeout bounds one fetch, redirects included.
	JWKSFetchTimeout = 10 * time.Second
	// maxJWKSRedirects bounds the redirects followed by one fetch.
	maxJWKSRedirects = 3
)

// ErrKeysUnavailable is returned by Receive when a transmitter's keys are
// fetched from its jwks_uri and none could be fetched yet: the SET is
// neither accepted nor refused, and the transmitter should deliver it again
// later (the HTTP handler answers 503).
var ErrKeysUnavailable = errors.New("the transmitter's keys could not be fetched")

// checkFetchURL requires https, except for loopback hosts (tests, a local
// proxy): keys fetched in the clear could be swapped on the way.
func checkFetchURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%q is not a URL: %w", raw, err)
	}
	switch {
	case u.Host == "":
		return nil, fmt.Errorf("%q has no host; want https://HOST/PATH", raw)
	case u.User != nil:
		return nil, fmt.Errorf("%q carries credentials; give them another way", raw)
	case u.Scheme == "https":
		return u, nil
	case u.Scheme == "http" && isLoopback(u.Hostname()):
		return u, nil
	}
	return nil, fmt.Errorf("%q: want an https URL (http only for a loopback host such as 127.0.0.1)", raw)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// keySet is a transmitter's keys: fixed (jwks, jwks_file) or fetched from
// jwks_uri, cached for refresh and fetched again early for an unknown kid.
// Safe for concurrent use; one fetch at a time.
type keySet struct {
	fixed   *jose.JSONWebKeySet
	uri     string
	refresh time.Duration
	hc      *http.Client
	now     func() time.Time

	mu        sync.Mutex
	keys      *jose.JSONWebKeySet
	fetchedAt time.Time // last successful fetch
	triedAt   time.Time // last attempt
	lastErr   error
}

// get returns the keys to verify a SET with key id kid (may be ""). Fetched
// keys are fetched again when older than refresh, or when kid is not among
// them, each time only if the last attempt is at least JWKSUnknownKidWait
// old. A failed fetch keeps the keys fetched before; with none (retried at
// most once a second), ErrKeysUnavailable.
func (k *keySet) get(ctx context.Context, kid string) (*jose.JSONWebKeySet, error) {
	if k.fixed != nil {
		return k.fixed, nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.now()
	due := k.keys == nil && (k.triedAt.IsZero() || now.Sub(k.triedAt) >= time.Second) ||
		k.keys != nil && now.Sub(k.fetchedAt) >= k.refresh && now.Sub(k.triedAt) >= JWKSUnknownKidWait ||
		k.keys != nil && kid != "" && len(k.keys.Key(kid)) == 0 && now.Sub(k.triedAt) >= JWKSUnknownKidWait
	if due {
		k.triedAt = now
		ks, err := k.fetch(ctx)
		if err != nil {
			k.lastErr = err
		} else {
			k.keys, k.fetchedAt, k.lastErr = ks, now, nil
		}
	}
	if k.keys == nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrKeysUnavailable, k.uri, k.lastErr)
	}
	return k.keys, nil
}

// fetch GETs the JWKS within the size and time limits and checks that it
// holds public keys only.
func (k *keySet) fetch(ctx context.Context) (*jose.JSONWebKeySet, error) {
	ctx, cancel := context.WithTimeout(ctx, JWKSFetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.uri, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := k.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetching the JWKS: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetching the JWKS: %s", resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, MaxJWKSBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading the JWKS: %w", err)
	}
	if len(b) > MaxJWKSBytes {
		return nil, fmt.Errorf("the JWKS is larger than %d bytes", MaxJWKSBytes)
	}
	var ks jose.JSONWebKeySet
	if err := json.Unmarshal(b, &ks); err != nil {
		return nil, fmt.Errorf("the JWKS is not a JSON Web Key Set: %w", err)
	}
	if len(ks.Keys) == 0 {
		return nil, errors.New("the JWKS holds no keys")
	}
	for _, key := range ks.Keys {
		if !key.IsPublic() {
			return nil, fmt.Errorf("the JWKS key %q is not a public key", key.KeyID)
		}
	}
	return &ks, nil
}

// fetchClient is the HTTP client for jwks_uri and poll endpoints: it
// follows at most maxJWKSRedirects redirects, each to a URL checkFetchURL
// accepts (never from https down to http on another host).
func fetchClient(base *http.Client) *http.Client {
	c := *base
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) > maxJWKSRedirects {
			return fmt.Errorf("more than %d redirects", maxJWKSRedirects)
		}
		if _, err := checkFetchURL(req.URL.String()); err != nil {
			return fmt.Errorf("redirected: %w", err)
		}
		return nil
	}
	return &c
}

// Duration is a time.Duration read from a JSON string such as "1h".
type Duration time.Duration

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration such as \"30s\" or \"1h\"")
	}
	v, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("want a duration such as \"30s\" or \"1h\": %w", err)
	}
	*d = Duration(v)
	return nil
}

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }
