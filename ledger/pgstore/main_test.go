package pgstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/grantline/grantline/ledger/pgstore/pgtest"
)

// cluster is the throwaway PostgreSQL server every test of the package
// shares (each test works in its own schema); nil when the binaries are
// missing, and noPG says why.
var (
	cluster *pgtest.Cluster
	noPG    error
)

func TestMain(m *testing.M) {
	if url := os.Getenv(childEnv); url != "" {
		os.Exit(childMain(url))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	c, err := pgtest.Start(ctx, pgtest.Options{Settings: map[string]string{
		// Sized for the benchmarks; durability settings stay at their
		// defaults (fsync, synchronous_commit and full_page_writes on).
		"shared_buffers": "256MB",
		"max_wal_size":   "4GB",
	}})
	cancel()
	switch {
	case errors.Is(err, pgtest.ErrNoPostgres):
		noPG = err
	case err != nil:
		fmt.Fprintln(os.Stderr, "starting the test PostgreSQL cluster:", err)
		os.Exit(1)
	default:
		cluster = c
	}
	code := m.Run()
	if cluster != nil {
		if err := cluster.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping the test PostgreSQL cluster:", err)
		}
	}
	os.Exit(code)
}

// needPG skips the test when there is no PostgreSQL to test against.
func needPG(t testing.TB) {
	t.Helper()
	if cluster == nil {
		t.Skipf("no PostgreSQL to test against: %v", noPG)
	}
}

// newURL is the URL of a new, empty schema.
func newURL(t testing.TB) string {
	t.Helper()
	needPG(t)
	url, err := cluster.NewSchema(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return url
}

// openStore opens a store on url, closed at the end of the test.
func openStore(t testing.TB, url string, o Options) *Store {
	t.Helper()
	if o.LeaseTTL == 0 {
		o.LeaseTTL = 2 * time.Second
	}
	s, err := Open(context.Background(), url, o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// leader opens a store on url, acquires the lease and reads the tree size,
// as ledger.Open would: ready to Commit.
func leader(t testing.TB, url string, o Options) *Store {
	t.Helper()
	s := openStore(t, url, o)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Acquire(ctx); err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if _, err := s.Get([]byte(TreeSizeKey), []byte(IntegratedSizeKey)); err != nil {
		t.Fatalf("reading the tree sizes: %v", err)
	}
	return s
}
