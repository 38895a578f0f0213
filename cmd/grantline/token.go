package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/grantline/grantline/ingest/auth"
	"github.com/grantline/grantline/internal/datadir"
)

const defaultDataDir = datadir.Default

const tokenHelp = `usage: grantline token add|list|revoke --data DIR [flags]

Manage the bearer tokens in DIR/tokens.json (only their SHA-256 is stored).
A running server sees every change at once.

  token add --data DIR --name NAME --role source|auditor|admin
        prints the new token alone on stdout; it cannot be shown again.
        A source principal's NAME is the source.system it may append.
  token list --data DIR [--json]
        name, role, created, revoked
  token revoke --data DIR --name NAME
        the token stops working at once

Run 'grantline token add -h' for a sub-command's flags.
`

func init() {
	register(&command{
		name:    "token",
		usage:   "add|list|revoke --data DIR [--name NAME] [--role source|auditor|admin]",
		summary: "add, list or revoke bearer tokens in DIR/tokens.json (a running server sees changes at once)",
		run:     runToken,
	})
}

func runToken(ctx context.Context, env *cmdEnv, args []string) error {
	c := commands["token"]
	if len(args) == 0 {
		return &exitError{code: 2, msg: "want a sub-command: add, list or revoke (see grantline token -h)"}
	}
	verb, args := args[0], args[1:]
	if verb == "-h" || verb == "--help" || verb == "help" {
		fmt.Fprint(env.stderr, tokenHelp)
		return errFlagHelp
	}
	flags := newFlagSet(env, c)
	flags.Init("grantline token "+verb, flag.ContinueOnError)
	data := flags.String("data", defaultDataDir, "data directory of the server")
	var name, role *string
	var asJSON *bool
	switch verb {
	case "add":
		name = flags.String("name", "", "principal name: 1-64 of A-Z a-z 0-9 . _ - (a source's source.system)")
		role = flags.String("role", "", "source, auditor or admin")
	case "revoke":
		name = flags.String("name", "", "principal to revoke")
	case "list":
		asJSON = flags.Bool("json", false, "print JSON lines instead of a table")
	default:
		return &exitError{code: 2, msg: fmt.Sprintf("unknown sub-command %q: want add, list or revoke", verb)}
	}
	if err := parseFlags(flags, args); err != nil {
		return err
	}
	if flags.NArg() > 0 {
		return &exitError{code: 2, msg: fmt.Sprintf("token %s: unexpected argument %q; all options are flags", verb, flags.Arg(0))}
	}
	if fi, err := os.Stat(*data); err != nil || !fi.IsDir() {
		return fmt.Errorf("--data %s: not a data directory (start `grantline serve --data %s` once, or create the directory)", *data, *data)
	}
	if name != nil && *name == "" {
		return &exitError{code: 2, msg: fmt.Sprintf("token %s: --name is required", verb)}
	}
	store, err := datadir.OpenTokens(*data)
	if err != nil {
		return err
	}
	switch verb {
	case "add":
		r, err := auth.ParseRole(*role)
		if err != nil {
			return &exitError{code: 2, msg: "--role: " + err.Error()}
		}
		tok, err := store.Add(*name, r)
		if err != nil {
			return err
		}
		fmt.Fprintln(env.stdout, tok)
	case "revoke":
		if err := store.Revoke(*name); err != nil {
			if errors.Is(err, auth.ErrUnknownPrincipal) {
				return &exitError{code: 1, msg: err.Error()}
			}
			return err
		}
		fmt.Fprintf(env.stderr, "revoked %s\n", *name)
	case "list":
		return printPrincipals(env, store.List(), *asJSON)
	}
	return nil
}

func printPrincipals(env *cmdEnv, ps []auth.Principal, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(env.stdout)
		for _, p := range ps {
			type row struct {
				Name    string     `json:"name"`
				Role    auth.Role  `json:"role"`
				Created time.Time  `json:"created"`
				Revoked *time.Time `json:"revoked,omitempty"`
			}
			r := row{Name: p.Name, Role: p.Role, Created: p.Created}
			if !p.Active() {
				r.Revoked = &p.Revoked
			}
			if err := enc.Encode(r); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tROLE\tCREATED\tREVOKED")
	for _, p := range ps {
		rev := "-"
		if !p.Active() {
			rev = p.Revoked.Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Name, p.Role, p.Created.Format(time.RFC3339), rev)
	}
	return tw.Flush()
}
