package badgerstore

import (
	"testing"

	"github.com/grantline/grantline/ledger/storetest"
)

func TestContract(t *testing.T) {
	storetest.Run(t, storetest.Driver{
		Open: func(t *testing.T) storetest.Store { return open(t, t.TempDir(), Options{}) },
		Reopen: func(t *testing.T, s storetest.Store) storetest.Store {
			dir := s.(*Store).dir
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			return open(t, dir, Options{})
		},
	})
}
