package pgtest

import (
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestStartRestartStop(t *testing.T) {
	c, err := Start(t.Context(), Options{})
	if errors.Is(err, ErrNoPostgres) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	url, err := c.NewSchema(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	var fsync, schema string
	if err := conn.QueryRow(t.Context(), "SELECT current_setting('fsync'), current_schema()").Scan(&fsync, &schema); err != nil {
		t.Fatal(err)
	}
	if fsync != "on" || schema == "" || schema == "public" {
		t.Fatalf("fsync = %q, schema = %q; want on and the new schema", fsync, schema)
	}
	if _, err := conn.Exec(t.Context(), "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	conn.Close(t.Context())
	if err := c.Restart(t.Context()); err != nil {
		t.Fatal(err)
	}
	conn, err = pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	var x int
	if err := conn.QueryRow(t.Context(), "SELECT x FROM kept").Scan(&x); err != nil || x != 42 {
		t.Fatalf("after a crash restart: x = %d, %v; want 42", x, err)
	}
}
