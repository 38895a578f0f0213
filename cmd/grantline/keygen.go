package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/grantline/grantline/ingest/auth"
	"github.com/grantline/grantline/ledger/checkpoint"
)

func init() {
	register(&command{
		name:    "keygen",
		usage:   "--out DIR [--name log|evidence|NAME] [--alg ed25519|ecdsa-p256] [--origin ORIGIN]",
		summary: "generate a key pair: DIR/NAME.key (0600), DIR/NAME.pub, and DIR/NAME.vkey with --origin",
		run:     runKeygen,
	})
}

func runKeygen(ctx context.Context, env *cmdEnv, args []string) error {
	flags := newFlagSet(env, commands["keygen"])
	out := flags.String("out", "", "directory to write the key files to (created if missing); use DATA/keys to prepare a server's keys")
	name := flags.String("name", "log", "base name of the files: log for the checkpoint key, evidence for the evidence key")
	algName := flags.String("alg", string(checkpoint.Ed25519), "key algorithm: ed25519 or ecdsa-p256")
	origin := flags.String("origin", "", "log origin (checkpoint first line); writes NAME.vkey; required for --name log")
	if err := parseFlags(flags, args); err != nil {
		return err
	}
	if flags.NArg() > 0 {
		return &exitError{code: 2, msg: fmt.Sprintf("unexpected argument %q; all options are flags (see -h)", flags.Arg(0))}
	}
	if *out == "" {
		return &exitError{code: 2, msg: "--out DIR is required: the directory to write the key files to"}
	}
	if err := auth.ValidateName(*name); err != nil {
		return &exitError{code: 2, msg: fmt.Sprintf("--name: %v", err)}
	}
	alg, err := checkpoint.ParseAlgorithm(*algName)
	if err != nil {
		return &exitError{code: 2, msg: fmt.Sprintf("--alg: %v", err)}
	}
	if *name == "log" && *origin == "" {
		return &exitError{code: 2, msg: "--origin is required for the log key: it names the log in every checkpoint (e.g. --origin example.com/grantline) and must match serve's origin"}
	}

	key, err := checkpoint.GenerateKey(alg)
	if err != nil {
		return err
	}
	var vkey string
	if *origin != "" {
		if vkey, err = checkpoint.VerifierKey(*origin, key.Public()); err != nil {
			return &exitError{code: 2, msg: fmt.Sprintf("--origin: %v", err)}
		}
	}
	base := filepath.Join(*out, *name)
	paths := []string{base + ".key", base + ".pub"}
	if vkey != "" {
		paths = append(paths, base+".vkey")
	}
	for _, p := range paths { // refuse before writing anything
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%s already exists; keygen never overwrites a key: remove it or choose another --out or --name", p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if err := os.MkdirAll(*out, 0o700); err != nil {
		return fmt.Errorf("creating --out directory: %w", err)
	}
	if err := checkpoint.WritePrivateKeyFile(paths[0], key); err != nil {
		return err
	}
	if err := checkpoint.WritePublicKeyFile(paths[1], key.Public()); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "wrote %s (%s private key, mode 0600: keep it secret)\n", paths[0], alg)
	fmt.Fprintf(env.stdout, "wrote %s (public key)\n", paths[1])
	if vkey != "" {
		if err := os.WriteFile(paths[2], []byte(vkey+"\n"), 0o644); err != nil {
			return fmt.Errorf("writing verifier key: %w", err)
		}
		fmt.Fprintf(env.stdout, "wrote %s (verifier key): %s\n", paths[2], vkey)
	}
	return nil
}
