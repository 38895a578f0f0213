package checkpoint_test

import (
	"fmt"

	"github.com/grantline/grantline/ledger/checkpoint"
)

func ExampleBody() {
	root := make([]byte, 32)
	fmt.Printf("%s", checkpoint.Body("example.com/log", 0, root))
	// Output:
	// example.com/log
	// 0
	// AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
}

func ExampleOpen() {
	key, _ := checkpoint.GenerateKey(checkpoint.Ed25519)
	signer, _ := checkpoint.NewNoteSigner("example.com/log", key)
	vkey, _ := checkpoint.VerifierKey("example.com/log", key.Public())
	verifier, _ := checkpoint.NewNoteVerifier(vkey)

	msg, _ := checkpoint.Sign(signer, 3, make([]byte, 32))
	c, err := checkpoint.Open(msg, verifier)
	fmt.Println(c.Origin, c.Size, err)
	// Output: example.com/log 3 <nil>
}
