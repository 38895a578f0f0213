package verify

// An independent reader of evidence packages, written from the specs with
// the standard library only and sharing no code with the package under test:
// DSSE v1 PAE + ECDSA/Ed25519, the in-toto subject digests, the signed-note
// checkpoint signature (Ed25519) and RFC 9162 inclusion proofs.

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func indepPAE(typ string, body []byte) []byte {
	return []byte(fmt.Sprintf("DSSEv1 %d %s %d %s", len(typ), typ, len(body), body))
}

// indepVerifyEnvelope returns the payload when a signature verifies.
func indepVerifyEnvelope(t *testing.T, envJSON, pubPEM []byte) ([]byte, error) {
	t.Helper()
	var env struct {
		PayloadType string `json:"payloadType"`
		Payload     string `json:"payload"`
		Signatures  []struct {
			Sig string `json:"sig"`
		} `json:"signatures"`
	}
	if err := json.Unmarshal(envJSON, &env); err != nil {
		return nil, err
	}
	payload, err := base64.StdEncoding.DecodeString(env.Payload)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(pubPEM)
	if blk == nil {
		return nil, fmt.Errorf("no PEM")
	}
	pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	msg := indepPAE(env.PayloadType, payload)
	for _, s := range env.Signatures {
		sig, err := base64.StdEncoding.DecodeString(s.Sig)
		if err != nil {
			continue
		}
		switch k := pub.(type) {
		case *ecdsa.PublicKey:
			d := sha256.Sum256(msg)
			if ecdsa.VerifyASN1(k, d[:], sig) {
				return payload, nil
			}
		case ed25519.PublicKey:
			if ed25519.Verify(k, msg, sig) {
				return payload, nil
			}
		}
	}
	return nil, fmt.Errorf("no signature verifies")
}

// indepOpenNote verifies an Ed25519 signed note with a vkey
// "name+hexhash+base64(0x01||key)" and returns the text.
func indepOpenNote(t *testing.T, note []byte, vkey string) (string, error) {
	t.Helper()
	parts := strings.SplitN(vkey, "+", 3)
	kb, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil || len(kb) != 33 || kb[0] != 1 {
		return "", fmt.Errorf("not an Ed25519 vkey")
	}
	hash, _ := hex.DecodeString(parts[1])
	text, sigs, ok := strings.Cut(string(note), "\n\n")
	if !ok {
		return "", fmt.Errorf("no signature block")
	}
	text += "\n"
	for _, line := range strings.Split(strings.TrimSuffix(sigs, "\n"), "\n") {
		name, b64, _ := strings.Cut(strings.TrimPrefix(line, "— "), " ")
		sig, err := base64.StdEncoding.DecodeString(b64)
		if err != nil || name != parts[0] || len(sig) < 4 || !bytes.Equal(sig[:4], hash) {
			continue
		}
		if ed25519.Verify(ed25519.PublicKey(kb[1:]), []byte(text), sig[4:]) {
			return text, nil
		}
	}
	return "", fmt.Errorf("no valid signature by %s", parts[0])
}

// indepInclusion verifies an RFC 9162 §2.1.3.2 inclusion proof.
func indepInclusion(index, size uint64, leaf []byte, proof [][]byte, root []byte) bool {
	if index >= size {
		return false
	}
	node := func(l, r []byte) []byte {
		h := sha256.New()
		h.Write([]byte{1})
		h.Write(l)
		h.Write(r)
		return h.Sum(nil)
	}
	lh := sha256.Sum256(append([]byte{0}, leaf...))
	fn, sn := index, size-1
	r := lh[:]
	for _, p := range proof {
		if sn == 0 {
			return false
		}
		if fn&1 == 1 || fn == sn {
			r = node(p, r)
			for fn&1 == 0 && fn != 0 {
				fn >>= 1
				sn >>= 1
			}
		} else {
			r = node(r, p)
		}
		fn >>= 1
		sn >>= 1
	}
	return sn == 0 && bytes.Equal(r, root)
}

func TestIndependentVerifier(t *testing.T) {
	for _, alg := range []string{"ecdsa", "ed25519"} {
		t.Run(alg, func(t *testing.T) {
			fx := exportFixture(t, alg, ExportOptions{})
			envJSON, _ := os.ReadFile(filepath.Join(fx.dir, "statement.dsse.json"))
			payload, err := indepVerifyEnvelope(t, envJSON, fx.pub)
			if err != nil {
				t.Fatalf("independent DSSE verifier: %v", err)
			}
			_, otherPub, _ := evidenceKey(t, alg)
			if _, err := indepVerifyEnvelope(t, envJSON, otherPub); err == nil {
				t.Fatal("independent DSSE verifier accepted another key: the test verifier is broken")
			}
			var st struct {
				Type    string `json:"_type"`
				Subject []struct {
					Name   string            `json:"name"`
					Digest map[string]string `json:"digest"`
				} `json:"subject"`
			}
			if err := json.Unmarshal(payload, &st); err != nil || st.Type != "https://in-toto.io/Statement/v1" {
				t.Fatalf("statement: %v, _type %q", err, st.Type)
			}
			ents, _ := os.ReadDir(fx.dir)
			if len(st.Subject) != len(ents)-1 {
				t.Errorf("statement lists %d subjects, package has %d other files", len(st.Subject), len(ents)-1)
			}
			for _, s := range st.Subject {
				b, err := os.ReadFile(filepath.Join(fx.dir, s.Name))
				if err != nil {
					t.Fatalf("subject %s: %v", s.Name, err)
				}
				sum := sha256.Sum256(b)
				if hex.EncodeToString(sum[:]) != s.Digest["sha256"] {
					t.Errorf("subject %s: digest mismatch", s.Name)
				}
			}

			note, _ := os.ReadFile(filepath.Join(fx.dir, "checkpoint"))
			text, err := indepOpenNote(t, note, fx.l.vkey())
			if err != nil {
				t.Fatalf("independent note verifier: %v", err)
			}
			lines := strings.Split(text, "\n")
			size, _ := strconv.ParseUint(lines[1], 10, 64)
			root, _ := base64.StdEncoding.DecodeString(lines[2])

			f, _ := os.Open(filepath.Join(fx.dir, "entries.jsonl"))
			defer f.Close()
			sc := bufio.NewScanner(f)
			sc.Buffer(nil, 1<<22)
			n := 0
			for sc.Scan() {
				var e struct {
					Index uint64   `json:"index"`
					Leaf  string   `json:"leaf"`
					Proof []string `json:"inclusion_proof"`
				}
				if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
					t.Fatal(err)
				}
				leaf, _ := base64.StdEncoding.DecodeString(e.Leaf)
				var proof [][]byte
				for _, p := range e.Proof {
					b, _ := base64.StdEncoding.DecodeString(p)
					proof = append(proof, b)
				}
				if !indepInclusion(e.Index, size, leaf, proof, root) {
					t.Fatalf("entry %d: independent inclusion check failed", e.Index)
				}
				leaf[0] ^= 1
				if indepInclusion(e.Index, size, leaf, proof, root) {
					t.Fatalf("entry %d: independent inclusion check accepted an altered leaf", e.Index)
				}
				n++
			}
			if n == 0 {
				t.Fatal("no entries checked")
			}
		})
	}
}
