package witness_test

import (
	"fmt"

	"github.com/grantline/grantline/ledger/witness"
)

func ExampleParsePolicy() {
	policy := []byte(`# Witnesses of our log
witness alpha witness1.test+c7337637+BCY2sjIYeImoCm/PIcM4uq/K0mGNlhvbG2gHg/Q1Vtdu http://127.0.0.1:7380/
quorum 1
`)
	p, err := witness.ParsePolicy("witnesses.policy", policy)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, w := range p.Witnesses {
		fmt.Println(w.Name, w.Verifier().Name(), w.URL+"/add-checkpoint")
	}
	fmt.Println("quorum", p.Quorum)

	_, err = witness.ParsePolicy("witnesses.policy", []byte("witness alpha\nquorum 2\n"))
	fmt.Println(err)
	// Output:
	// alpha witness1.test http://127.0.0.1:7380/add-checkpoint
	// quorum 1
	// witnesses.policy:1: a witness line has 1 field(s) after "witness", want 3: witness NAME VKEY URL
}
