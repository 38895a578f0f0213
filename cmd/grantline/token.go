package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/grantline/grantline/ingest/auth"
	"github.com/grantline/grantline/internal/datadir"
)

const defaultDataDir = datadir.Default

const tokenHelp = `usage: grantline token add|rotate|list|revoke --data DIR [flags]

Manage the bearer tokens in DIR/tokens.json (only their SHA-256 is stored).
A running server sees every change at once.

  token add --data DIR --name NAME --role source|auditor|admin
        prints the new token alone on stdout; it cannot be shown again.
        A source principal's NAME is the source.system it may append.
  token rotate --data DIR --name NAME [--revoke-after DURATION]
        prints a new token for NAME alone on stdout; it works at once, and
        NAME's other tokens keep working until DURATION has passed (e.g.
        24h), or, without --revoke-after, until token revoke --token-id.
  token list --data DIR [--json]
        name, role, created, revoked, and each token's id and expiry
  token revoke --data DIR --name NAME
        the principal and all its tokens stop working at once
  token revoke --data DIR --token-id ID
        that one token (an id from token list) stops working at once

Run 'grantline token add -h' for a sub-command's flags.
`

func init() {
	register(&command{
		name:    "token",
		usage:   "add|rotate|list|revoke --data DIR [--name NAME] [--role source|auditor|admin] [--revoke-after D] [--token-id ID]",
		summary: "add, rotate, list or revoke bearer tokens in DIR/tokens.json (a running server sees changes at once)",
		run:     runToken,
	})
}

// tokenVerbUsage is each token sub-command's usage line: only its flags.
var tokenVerbUsage = map[string]string{
	"add":    "--data DIR --name NAME --role source|auditor|admin",
	"rotate": "--data DIR --name NAME [--revoke-after DURATION]",
	"list":   "--data DIR [--json]",
	"revoke": "--data DIR --name NAME | --token-id ID",
}

func runToken(ctx context.Context, env *cmdEnv, args []string) error {
	c := commands["token"]
	if len(args) == 0 {
		return &exitError{code: 2, msg: "want a sub-command: add, rotate, list or revoke (see grantline token -h)"}
	}
	verb, args := args[0], args[1:]
	if verb == "-h" || verb == "--help" || verb == "help" {
		fmt.Fprint(env.stderr, tokenHelp)
		return errFlagHelp
	}
	usage, ok := tokenVerbUsage[verb]
	if !ok {
		return &exitError{code: 2, msg: fmt.Sprintf("unknown sub-command %q: want add, rotate, list or revoke", verb)}
	}
	flags := newFlagSet(env, &command{name: "token " + verb, usage: usage, summary: c.summary})
	data := flags.String("data", defaultDataDir, "data directory of the server")
	var name, role, tokenID *string
	var asJSON *bool
	var revokeAfter *time.Duration
	switch verb {
	case "add":
		name = flags.String("name", "", "principal name: 1-64 of A-Z a-z 0-9 . _ - (a source's source.system)")
		role = flags.String("role", "", "source, auditor or admin")
	case "rotate":
		name = flags.String("name", "", "principal to issue a new token for")
		revokeAfter = flags.Duration("revoke-after", 0, "the principal's other tokens stop working after this long (e.g. 24h); 0: when revoked with --token-id")
	case "revoke":
		name = flags.String("name", "", "principal to revoke, with all its tokens")
		tokenID = flags.String("token-id", "", "revoke only this token (an id from token list)")
	case "list":
		asJSON = flags.Bool("json", false, "print JSON lines instead of a table")
	default:
		return &exitError{code: 2, msg: fmt.Sprintf("unknown sub-command %q: want add, rotate, list or revoke", verb)}
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
	switch {
	case verb == "revoke" && (*name == "") == (*tokenID == ""):
		return &exitError{code: 2, msg: "token revoke: give --name NAME (the principal and all its tokens) or --token-id ID (one token), not both"}
	case verb != "revoke" && name != nil && *name == "":
		return &exitError{code: 2, msg: fmt.Sprintf("token %s: --name is required", verb)}
	case revokeAfter != nil && *revokeAfter < 0:
		return &exitError{code: 2, msg: fmt.Sprintf("--revoke-after %s: want a positive duration such as 24h, or 0 to keep the old tokens until revoked", *revokeAfter)}
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
	case "rotate":
		tok, id, err := store.Rotate(*name, *revokeAfter)
		if err != nil {
			if errors.Is(err, auth.ErrUnknownPrincipal) {
				return &exitError{code: 1, msg: err.Error()}
			}
			return err
		}
		fmt.Fprintln(env.stdout, tok)
		if *revokeAfter > 0 {
			fmt.Fprintf(env.stderr, "new token %s for %s; its other tokens stop working at %s\n", id, *name, time.Now().Add(*revokeAfter).UTC().Format(time.RFC3339))
		} else {
			fmt.Fprintf(env.stderr, "new token %s for %s; its other tokens keep working until revoked (grantline token list, then token revoke --token-id ID)\n", id, *name)
		}
	case "revoke":
		if *tokenID != "" {
			who, err := store.RevokeToken(*tokenID)
			if err != nil {
				if errors.Is(err, auth.ErrUnknownToken) {
					return &exitError{code: 1, msg: err.Error()}
				}
				return err
			}
			fmt.Fprintf(env.stderr, "revoked token %s of %s\n", *tokenID, who)
			return nil
		}
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
	now := time.Now()
	if asJSON {
		enc := json.NewEncoder(env.stdout)
		type token struct {
			ID      string     `json:"id"`
			Created time.Time  `json:"created"`
			Expires *time.Time `json:"expires,omitempty"`
			Revoked *time.Time `json:"revoked,omitempty"`
			Active  bool       `json:"active"`
		}
		type row struct {
			Name    string     `json:"name"`
			Role    auth.Role  `json:"role"`
			Created time.Time  `json:"created"`
			Revoked *time.Time `json:"revoked,omitempty"`
			Tokens  []token    `json:"tokens"`
		}
		for _, p := range ps {
			r := row{Name: p.Name, Role: p.Role, Created: p.Created, Tokens: []token{}}
			if !p.Active() {
				r.Revoked = &p.Revoked
			}
			for _, t := range p.Tokens {
				tk := token{ID: t.ID, Created: t.Created, Active: p.Active() && t.Active(now)}
				if !t.Expires.IsZero() {
					tk.Expires = &t.Expires
				}
				if !t.Revoked.IsZero() {
					tk.Revoked = &t.Revoked
				}
				r.Tokens = append(r.Tokens, tk)
			}
			if err := enc.Encode(r); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tROLE\tCREATED\tREVOKED\tTOKENS")
	for _, p := range ps {
		rev := "-"
		if !p.Active() {
			rev = p.Revoked.Format(time.RFC3339)
		}
		var toks []string
		for _, t := range p.Tokens {
			s := t.ID
			switch {
			case !t.Revoked.IsZero():
				s += " (revoked)"
			case !t.Expires.IsZero() && !now.Before(t.Expires):
				s += " (expired)"
			case !t.Expires.IsZero():
				s += " (until " + t.Expires.UTC().Format(time.RFC3339) + ")"
			}
			toks = append(toks, s)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", p.Name, p.Role, p.Created.Format(time.RFC3339), rev, strings.Join(toks, ", "))
	}
	return tw.Flush()
}
