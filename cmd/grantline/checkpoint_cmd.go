package main

import (
	"context"
	"encoding/base64"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/mod/sumdb/note"

	"github.com/grantline/grantline/internal/textsafe"
	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/checkpoint"
	"github.com/grantline/grantline/ledger/witness"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

func init() {
	register(&command{
		name:    "checkpoint",
		usage:   "[--server URL --token T] [--size N] [--witnessed] [--log-key FILE [--witness-policy FILE]]",
		summary: "print the latest signed checkpoint (or the one at --size, or the newest witnessed one), verified with --log-key",
		run:     runCheckpointCmd,
	})
}

func runCheckpointCmd(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, commands["checkpoint"])
	var cf clientFlags
	cf.register(fs, env)
	size := fs.Uint64("size", 0, "the checkpoint published at this tree size (0: the latest)")
	keyFile := fs.String("log-key", "", "verify the checkpoint with this verifier key file (DATA/keys/log.vkey)")
	witnessed := fs.Bool("witnessed", false, "the newest checkpoint that reached the server's witness quorum, with the cosignatures (docs/witnessing.md)")
	policyFile := fs.String("witness-policy", "", "require a quorum of this witness policy's cosignatures (implies --witnessed; needs --log-key)")
	rest, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return &exitError{code: 2, msg: fmt.Sprintf("unexpected argument %q", rest[0])}
	}
	var v note.Verifier
	if *keyFile != "" {
		if v, err = loadLogVerifier(*keyFile); err != nil {
			return &exitError{code: 2, msg: err.Error()}
		}
	}
	var policy *witness.Policy
	if *policyFile != "" {
		if v == nil {
			return &exitError{code: 2, msg: "--witness-policy needs --log-key DATA/keys/log.vkey: the quorum is checked on a checkpoint the log signed"}
		}
		if policy, err = witness.LoadPolicy(*policyFile); err != nil {
			return &exitError{code: 2, msg: fmt.Sprintf("--witness-policy: %v", err)}
		}
		*witnessed = true
	}
	cl, err := cf.dial()
	if err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	resp, err := cl.Log().GetCheckpoint(ctx, connect.NewRequest(&pb.GetCheckpointRequest{TreeSize: *size, Witnessed: *witnessed}))
	if err != nil {
		return fmt.Errorf("getting checkpoint: %s", describeRPCError(err))
	}
	fmt.Fprint(env.stdout, resp.Msg.GetCheckpoint())
	if v == nil {
		// The note carries the root in base64, as C2SP fixes; people read
		// hashes in hex everywhere else (proofs, verify, fsck).
		fmt.Fprintf(env.stderr, "not verified: %s; pass --log-key DATA/keys/log.vkey to check the signature\n", noteSummary(resp.Msg.GetCheckpoint()))
		return nil
	}
	c, err := openCheckpoint("checkpoint", resp.Msg.GetCheckpoint(), v, resp.Msg.GetTreeSize())
	if err != nil {
		return err
	}
	if *size != 0 && c.Size != *size {
		return fmt.Errorf("asked for the checkpoint at size %d, got size %d", *size, c.Size)
	}
	if policy != nil {
		wv, err := witness.VerifyQuorum([]byte(resp.Msg.GetCheckpoint()), v, policy)
		if err != nil {
			return &exitError{code: 1, msg: fmt.Sprintf("checkpoint of size %d: %v", c.Size, err)}
		}
		var names []string
		for _, cs := range wv.Cosignatures {
			names = append(names, cs.Witness+" at "+cs.Time.UTC().Format(time.RFC3339))
		}
		fmt.Fprintf(env.stderr, "verified: checkpoint of %s, size %d, root %x, cosigned by %d of %d witnesses (quorum %d): %s\n",
			c.Origin, c.Size, c.Root, len(wv.Cosignatures), len(policy.Witnesses), policy.Quorum, strings.Join(names, ", "))
		return nil
	}
	fmt.Fprintf(env.stderr, "verified: checkpoint of %s, size %d, root %x\n", c.Origin, c.Size, c.Root)
	return nil
}

// loadLogVerifier reads a signed-note verifier key file (DATA/keys/log.vkey).
func loadLogVerifier(file string) (note.Verifier, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("--log-key: %w", err)
	}
	v, err := checkpoint.NewNoteVerifier(strings.TrimSpace(string(data)))
	if err != nil {
		return nil, fmt.Errorf("--log-key %s: %w (want the one line of DATA/keys/log.vkey)", file, err)
	}
	return v, nil
}

// openCheckpoint verifies a signed checkpoint note with v and checks that it
// is of the size the server claimed. what names it in errors.
func openCheckpoint(what, text string, v note.Verifier, wantSize uint64) (ledger.Checkpoint, error) {
	c, err := ledger.OpenCheckpoint([]byte(text), v)
	if err != nil {
		return c, &exitError{code: 1, msg: fmt.Sprintf("%s does not verify: %v", what, err)}
	}
	if c.Size != wantSize {
		return c, &exitError{code: 1, msg: fmt.Sprintf("%s is for tree size %d but the server said %d", what, c.Size, wantSize)}
	}
	return c, nil
}

// parseInterspersed parses flags that may come before, between or after
// positional arguments, and returns the positional ones. Everything after
// "--" is positional.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := parseFlags(fs, args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		consumed := len(args) - len(rest)
		if consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// noteSummary reads origin, size and root (in hex) from a checkpoint note
// without verifying it, for a human.
func noteSummary(text string) string {
	lines := strings.SplitN(text, "\n", 4)
	if len(lines) < 4 {
		return "the server sent no checkpoint note"
	}
	root, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil {
		return fmt.Sprintf("checkpoint of %s, size %s, root not base64", textsafe.Quote(lines[0]), textsafe.Quote(lines[1]))
	}
	return fmt.Sprintf("checkpoint of %s, size %s, root %x", textsafe.Quote(lines[0]), textsafe.Quote(lines[1]), root)
}
