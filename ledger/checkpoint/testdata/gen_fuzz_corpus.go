//go:build ignore

// gen_fuzz_corpus writes the committed seed corpus of FuzzOpen. It is
// deterministic (Ed25519 signatures are): run from ledger/checkpoint with
//
//	go run testdata/gen_fuzz_corpus.go
package main

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/mod/sumdb/note"

	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/checkpoint"
)

func main() {
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize)) // same as fuzzKey
	const origin = "fuzz.example/log"
	s, err := checkpoint.NewNoteSigner(origin, key)
	if err != nil {
		log.Fatal(err)
	}
	other, _ := checkpoint.NewNoteSigner("witness.example", ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, 32)))
	root := bytes.Repeat([]byte{0xab}, 32)
	good := mustSign(s, 42, root)
	cosigned, _ := note.Sign(&note.Note{Text: string(ledger.CheckpointBody(origin, 42, [32]byte(root)))}, s, other)
	ext, _ := note.Sign(&note.Note{Text: string(ledger.CheckpointBody(origin, 1, [32]byte(root))) + "ext line\n"}, s)
	badSize, _ := note.Sign(&note.Note{Text: origin + "\n007\n" + "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n"}, s)
	seeds := map[string][]byte{
		"valid":           good,
		"cosigned":        cosigned,
		"extension":       ext,
		"leading_zero":    badSize,
		"unsigned":        ledger.CheckpointBody(origin, 42, [32]byte(root)),
		"truncated_sig":   good[:len(good)-10],
		"tampered":        bytes.Replace(good, []byte("\n42\n"), []byte("\n43\n"), 1),
		"wrong_key":       mustSign(other, 42, root),
		"no_dash":         bytes.Replace(good, []byte("— "), []byte("-- "), 1),
		"control_char":    append([]byte("a\x00\n1\n\n"), good...),
		"empty_sig_block": append(ledger.CheckpointBody(origin, 0, [32]byte(root)), '\n'),
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzOpen")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		log.Fatal(err)
	}
	for name, b := range seeds {
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\n", strconv.Quote(string(b)))
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			log.Fatal(err)
		}
	}
}

func mustSign(s note.Signer, size uint64, root []byte) []byte {
	c, err := ledger.SignCheckpoint(s, size, [32]byte(root))
	b := c.Note
	if err != nil {
		log.Fatal(err)
	}
	return b
}
