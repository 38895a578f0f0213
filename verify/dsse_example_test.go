package verify_test

import (
	"fmt"

	"github.com/grantline/grantline/verify"
)

// The test vector of the DSSE v1 specification (protocol.md).
func ExamplePAE() {
	fmt.Printf("%s\n", verify.PAE("http://example.com/HelloWorld", []byte("hello world")))
	// Output: DSSEv1 29 http://example.com/HelloWorld 11 hello world
}
