package server

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/ledger/pgstore/pgtest"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// TestServeOnPostgres: with --store the ledger lives in PostgreSQL; a second
// node on the same database and keys stands by until the first one stops,
// then takes over with the whole log.
func TestServeOnPostgres(t *testing.T) {
	c, err := pgtest.Start(t.Context(), pgtest.Options{})
	if errors.Is(err, pgtest.ErrNoPostgres) {
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
	dir := t.TempDir()
	start := func(ctx context.Context) (*Server, error) {
		return Start(ctx, Config{DataDir: dir, Listen: "127.0.0.1:0", Store: url})
	}
	a, err := start(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	evs := make([]*pb.Event, 10)
	for i := range evs {
		evs[i] = &pb.Event{
			Id: fmt.Sprintf("ev-%d", i), Type: "access.approved", Time: timestamppb.Now(),
			Source: &pb.Source{System: "iga"}, Subject: &pb.Identity{Id: "alice"},
		}
	}
	if _, _, err := a.Ledger().Append(t.Context(), evs); err != nil {
		t.Fatal(err)
	}

	type started struct {
		s   *Server
		err error
	}
	standby := make(chan started, 1)
	go func() {
		s, err := start(t.Context())
		standby <- started{s, err}
	}()
	select {
	case r := <-standby:
		t.Fatalf("a second node started sequencing while the first one runs: %v", r.err)
	case <-time.After(1500 * time.Millisecond):
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	var b started
	select {
	case b = <-standby:
	case <-time.After(20 * time.Second):
		t.Fatal("the standby did not take over")
	}
	if b.err != nil {
		t.Fatal(b.err)
	}
	defer b.s.Close(ctx)
	t.Logf("standby took over %v after the first node stopped", time.Since(t0))
	if got := b.s.Ledger().Latest().Size; got != 10 {
		t.Fatalf("the standby serves a log of %d entries, want 10", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "ledger")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a badger ledger was created in the data directory: %v", err)
	}
	if _, err := Start(t.Context(), Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", Store: "mysql://x"}); !errors.Is(err, ErrConfig) {
		t.Fatalf("--store mysql://x = %v, want ErrConfig", err)
	}
}
