package main

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/grantline/grantline/ingest/source"
)

func init() {
	register(&command{
		name:    "adapters",
		usage:   "",
		summary: "list the vendor formats append --format reads, with where their mapping is documented",
		run:     runAdapters,
	})
}

func runAdapters(_ context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, commands["adapters"])
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &exitError{code: 2, msg: "adapters takes no arguments"}
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FORMAT\tREADS\tMAPPING")
	for _, f := range source.Formats() {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", f.Name, f.Title, f.Doc)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(env.stdout, "\nUse: grantline append --format FORMAT --source SYSTEM FILE... (JSON array, JSON lines or the vendor's envelope; gzip accepted)")
	return nil
}
