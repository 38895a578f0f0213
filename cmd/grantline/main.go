// Command grantline is the one binary of Grantline: the ledger service, its
// clients, the evidence exporter and the offline verifier. Run
// `grantline help` for the list of commands.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := runMain(ctx, defaultEnv(), os.Args[1:])
	stop()
	os.Exit(code)
}
