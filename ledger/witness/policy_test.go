package witness

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/grantline/grantline/internal/witnesstest"
)

// testVKey is the cosignature/v1 verifier key of pub under name, computed
// from the specs (not with this package's or torchwood's code).
var testVKey = witnesstest.VKey

// seededKey returns a deterministic Ed25519 key.
func seededKey(seed byte) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(bytesOf(seed, ed25519.SeedSize))
}

func bytesOf(b byte, n int) []byte {
	out := make([]byte, n)
	for i := range out {
		out[i] = b
	}
	return out
}

func TestParsePolicy(t *testing.T) {
	k1 := testVKey("w1.example", seededKey(1).Public().(ed25519.PublicKey))
	k2 := testVKey("w2.example", seededKey(2).Public().(ed25519.PublicKey))
	plain := func() string { // an Ed25519 (0x01) note key, not a cosignature key
		pub := seededKey(3).Public().(ed25519.PublicKey)
		kb := append([]byte{0x01}, pub...)
		h := sha256.Sum256(append([]byte("w3.example\n"), kb...))
		return fmt.Sprintf("w3.example+%08x+%s", binary.BigEndian.Uint32(h[:4]), base64.StdEncoding.EncodeToString(kb))
	}()
	badHash := "w1.example+00000000+" + strings.SplitN(k1, "+", 3)[2]
	short := strings.TrimSuffix(k1, strings.SplitN(k1, "+", 3)[2]) + base64.StdEncoding.EncodeToString([]byte{4, 1, 2, 3})

	tests := []struct {
		name      string
		in        string
		quorum    int
		witnesses []string // names, in order
		urls      []string
		errs      []string // each a substring of one joined error, in order
	}{
		{
			name:      "one witness",
			in:        "# our witnesses\nwitness alpha " + k1 + " https://w1.example/\n\nquorum 1  # one is enough\n",
			quorum:    1,
			witnesses: []string{"alpha"},
			urls:      []string{"https://w1.example"},
		},
		{
			name:      "two of two, quorum first",
			in:        "quorum 2\nwitness a " + k1 + " http://127.0.0.1:7380\n\twitness  b  " + k2 + "  https://w2.example/prefix\n",
			quorum:    2,
			witnesses: []string{"a", "b"},
			urls:      []string{"http://127.0.0.1:7380", "https://w2.example/prefix"},
		},
		{name: "empty", in: "# nothing\n", errs: []string{"policy: no witness lines"}},
		{name: "missing quorum", in: "witness a " + k1 + " https://w1.example\n", errs: []string{"policy: no quorum line; add \"quorum N\""}},
		{name: "unknown keyword", in: "witnes a " + k1 + " https://w1.example\nquorum 1\n", errs: []string{`policy:1: unknown keyword "witnes"`}},
		{name: "too few fields", in: "witness a " + k1 + "\nquorum 1\n", errs: []string{"policy:1: a witness line has 2 field(s) after \"witness\", want 3"}},
		{name: "quorum too large", in: "witness a " + k1 + " https://w1.example\nquorum 2\n", errs: []string{"policy:2: quorum 2 is more than the 1 witness(es) named"}},
		{name: "quorum zero", in: "witness a " + k1 + " https://w1.example\nquorum 0\n", errs: []string{`policy:2: quorum "0" is not a whole number of at least 1`}},
		{name: "quorum text", in: "witness a " + k1 + " https://w1.example\nquorum all\n", errs: []string{`policy:2: quorum "all"`}},
		{name: "quorum twice", in: "witness a " + k1 + " https://w1.example\nquorum 1\nquorum 1\n", errs: []string{"policy:3: a second quorum line (the first is line 2)"}},
		{name: "duplicate name", in: "witness a " + k1 + " https://w1.example\nwitness a " + k2 + " https://w2.example\nquorum 1\n", errs: []string{`policy:2: witness name "a" is already used on line 1`}},
		{name: "duplicate key", in: "witness a " + k1 + " https://w1.example\nwitness b " + k1 + " https://w2.example\nquorum 1\n", errs: []string{`policy:2: witness "b" has the same key as the witness on line 1`}},
		{name: "plain ed25519 key", in: "witness c " + plain + " https://w3.example\nquorum 1\n", errs: []string{"policy:1: witness \"c\": bad witness verifier key: \"w3.example\" is a plain Ed25519 signed-note key"}},
		{name: "key id mismatch", in: "witness a " + badHash + " https://w1.example\nquorum 1\n", errs: []string{"policy:1: witness \"a\": bad witness verifier key: key id 00000000 of \"w1.example\" does not match its key"}},
		{name: "short key", in: "witness a " + short + " https://w1.example\nquorum 1\n", errs: []string{"policy:1: witness \"a\": bad witness verifier key: the Ed25519 key of \"w1.example\" is 3 bytes"}},
		{name: "not a key", in: "witness a notakey https://w1.example\nquorum 1\n", errs: []string{"policy:1: witness \"a\": bad witness verifier key: \"notakey\" is not name+keyid+base64key"}},
		{name: "bad url scheme", in: "witness a " + k1 + " ftp://w1.example\nquorum 1\n", errs: []string{`policy:1: witness "a": URL "ftp://w1.example" is not http:// or https://`}},
		{name: "url with endpoint", in: "witness a " + k1 + " https://w1.example/add-checkpoint\nquorum 1\n", errs: []string{"already ends in /add-checkpoint"}},
		{name: "url without host", in: "witness a " + k1 + " https:///x\nquorum 1\n", errs: []string{"has no host"}},
		{
			name: "several mistakes, all reported",
			in:   "witness a " + k1 + " https://w1.example\nfoo\nwitness b bad https://w2.example\nquorum x\n",
			errs: []string{`policy:2: unknown keyword "foo"`, `policy:3: witness "b": bad witness verifier key`, `policy:4: quorum "x"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParsePolicy("policy", []byte(tt.in))
			if len(tt.errs) > 0 {
				if err == nil {
					t.Fatalf("ParsePolicy(%q) = nil error, want %q", tt.in, tt.errs)
				}
				if !errors.Is(err, ErrPolicy) {
					t.Errorf("ParsePolicy error %v is not ErrPolicy", err)
				}
				lines := strings.Split(err.Error(), "\n")
				if len(lines) != len(tt.errs) {
					t.Fatalf("ParsePolicy(%q) = %d error(s):\n%v\nwant %d: %q", tt.in, len(lines), err, len(tt.errs), tt.errs)
				}
				for i, want := range tt.errs {
					if !strings.Contains(lines[i], want) {
						t.Errorf("ParsePolicy error %d = %q, want it to contain %q", i, lines[i], want)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("ParsePolicy(%q) = %v", tt.in, err)
			}
			if p.Quorum != tt.quorum {
				t.Errorf("Quorum = %d, want %d", p.Quorum, tt.quorum)
			}
			var names, urls []string
			for _, w := range p.Witnesses {
				names = append(names, w.Name)
				urls = append(urls, w.URL)
				if w.Verifier() == nil {
					t.Errorf("witness %q has no verifier", w.Name)
				}
			}
			if fmt.Sprint(names) != fmt.Sprint(tt.witnesses) || fmt.Sprint(urls) != fmt.Sprint(tt.urls) {
				t.Errorf("witnesses = %v %v, want %v %v", names, urls, tt.witnesses, tt.urls)
			}
		})
	}
}

func TestLoadPolicy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "witnesses.policy")
	k := testVKey("w1.example", seededKey(1).Public().(ed25519.PublicKey))
	if err := os.WriteFile(path, []byte("witness a "+k+" https://w1.example\nquorum 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := LoadPolicy(path)
	if err == nil || !strings.HasPrefix(err.Error(), path+":2: quorum 3") {
		t.Errorf("LoadPolicy = %v, want an error starting %q", err, path+":2: quorum 3")
	}
	if _, err := LoadPolicy(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("LoadPolicy(missing) = %v, want ErrNotExist", err)
	}
}
