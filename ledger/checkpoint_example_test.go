package ledger_test

import (
	"fmt"

	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/checkpoint"
)

func ExampleCheckpointBody() {
	fmt.Printf("%s", ledger.CheckpointBody("example.com/log", 0, [32]byte{}))
	// Output:
	// example.com/log
	// 0
	// AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
}

func ExampleOpenCheckpoint() {
	key, _ := checkpoint.GenerateKey(checkpoint.Ed25519)
	signer, _ := checkpoint.NewNoteSigner("example.com/log", key)
	vkey, _ := checkpoint.VerifierKey("example.com/log", key.Public())
	verifier, _ := checkpoint.NewNoteVerifier(vkey)

	signed, _ := ledger.SignCheckpoint(signer, 3, [32]byte{})
	c, err := ledger.OpenCheckpoint(signed.Note, verifier)
	fmt.Println(c.Origin, c.Size, err)
	// Output: example.com/log 3 <nil>
}
