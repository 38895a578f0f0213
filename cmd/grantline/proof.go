package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"os"

	"connectrpc.com/connect"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"

	"github.com/grantline/grantline/internal/textsafe"
	"github.com/grantline/grantline/ledger"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

func init() {
	register(&command{
		name:    "proof",
		usage:   "inclusion (--index N | --leaf-hash HEX) [--size N] --log-key FILE | consistency (--from N | --from-checkpoint FILE) [--to M] --log-key FILE",
		summary: "fetch an inclusion or consistency proof and verify it locally against the signed checkpoint",
		run:     runProofCmd,
	})
}

// proofVerbs are the usage line and summary of each proof sub-command.
var proofVerbs = map[string]struct{ usage, summary string }{
	"inclusion": {"(--index N | --leaf-hash HEX) [--size N] --log-key FILE [--server URL --token T]",
		"fetch an entry's inclusion proof and verify it locally against the signed checkpoint"},
	"consistency": {"(--from N | --from-checkpoint FILE) [--to M] --log-key FILE [--server URL --token T]",
		"prove that the older tree (a size, or a checkpoint you kept) is a prefix of the newer one, verified locally"},
}

func runProofCmd(ctx context.Context, env *cmdEnv, args []string) error {
	if len(args) == 0 || (args[0] != "inclusion" && args[0] != "consistency") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			fmt.Fprintf(env.stderr, "usage: grantline proof %s\n", commands["proof"].usage)
			return errFlagHelp
		}
		return &exitError{code: 2, msg: "want 'proof inclusion' or 'proof consistency'; run 'grantline proof inclusion -h' for flags"}
	}
	verb := args[0]
	pc := command{name: "proof " + verb, usage: proofVerbs[verb].usage, summary: proofVerbs[verb].summary}
	fs := newFlagSet(env, &pc)
	var cf clientFlags
	cf.register(fs, env)
	keyFile := fs.String("log-key", "", "verifier key file (DATA/keys/log.vkey); required")
	var (
		index, leafHash, size    = new(int64), new(string), new(uint64)
		from, to, fromCheckpoint = new(uint64), new(uint64), new(string)
	)
	if verb == "inclusion" {
		fs.Int64Var(index, "index", -1, "the entry's index")
		fs.StringVar(leafHash, "leaf-hash", "", "the entry's RFC 6962 leaf hash, hex")
		fs.Uint64Var(size, "size", 0, "prove against the tree of this size (0: the latest checkpoint)")
	} else {
		fs.Uint64Var(from, "from", 0, "the older tree size")
		fs.StringVar(fromCheckpoint, "from-checkpoint", "", "a checkpoint you kept (the output of grantline checkpoint): verified with --log-key, then proved a prefix of the newer tree")
		fs.Uint64Var(to, "to", 0, "the newer tree size (0: the latest checkpoint)")
	}
	rest, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return &exitError{code: 2, msg: fmt.Sprintf("unexpected argument %q", rest[0])}
	}
	if *keyFile == "" {
		return &exitError{code: 2, msg: "--log-key is required: a proof means nothing without the log's key (DATA/keys/log.vkey)"}
	}
	v, err := loadLogVerifier(*keyFile)
	if err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	cl, err := cf.dial()
	if err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}

	if verb == "consistency" {
		// kept is the checkpoint the user holds, if any: the proof must end
		// in its root, not only in the server's checkpoint at its size.
		var kept *ledger.Checkpoint
		if *fromCheckpoint != "" {
			if *from != 0 {
				return &exitError{code: 2, msg: "give --from N or --from-checkpoint FILE, not both"}
			}
			c, err := readKeptCheckpoint(*fromCheckpoint, v)
			if err != nil {
				return err
			}
			kept, *from = &c, c.Size
		}
		resp, err := cl.Log().GetConsistencyProof(ctx, connect.NewRequest(&pb.GetConsistencyProofRequest{FromSize: *from, ToSize: *to}))
		if err != nil {
			return fmt.Errorf("getting consistency proof: %s", describeRPCError(err))
		}
		m := resp.Msg
		if m.GetFromSize() != *from || (*to != 0 && m.GetToSize() != *to) {
			return &exitError{code: 1, msg: fmt.Sprintf("asked for sizes %d..%d, the server answered %d..%d", *from, *to, m.GetFromSize(), m.GetToSize())}
		}
		c1, err := openCheckpoint("checkpoint at --from", m.GetFromCheckpoint(), v, m.GetFromSize())
		if err != nil {
			return err
		}
		if kept != nil && kept.Root != c1.Root {
			return &exitError{code: 1, msg: fmt.Sprintf("FORK: %s (size %d, root %x) differs from the server's checkpoint at that size (root %x); both are signed by %s: keep both files as evidence",
				textsafe.Quote(*fromCheckpoint), kept.Size, kept.Root, c1.Root, kept.Origin)}
		}
		c2, err := openCheckpoint("checkpoint at --to", m.GetToCheckpoint(), v, m.GetToSize())
		if err != nil {
			return err
		}
		if err := proof.VerifyConsistency(rfc6962.DefaultHasher, c1.Size, c2.Size, m.GetHashes(), c1.Root[:], c2.Root[:]); err != nil {
			return &exitError{code: 1, msg: fmt.Sprintf("consistency proof %d -> %d does not verify: %v", c1.Size, c2.Size, err)}
		}
		what := "the tree"
		if kept != nil {
			what = "the kept checkpoint " + textsafe.Quote(*fromCheckpoint) + ", tree"
		}
		fmt.Fprintf(env.stdout, "verified: %s of size %d (root %x) is a prefix of the tree of size %d (root %x); %d proof hashes; checkpoints signed by %s\n",
			what, c1.Size, c1.Root, c2.Size, c2.Root, len(m.GetHashes()), c2.Origin)
		return nil
	}

	// Inclusion.
	req := &pb.GetInclusionProofRequest{TreeSize: *size}
	var want []byte // the leaf hash we know independently of the proof
	switch {
	case (*index >= 0) == (*leafHash != ""):
		return &exitError{code: 2, msg: "give exactly one of --index N or --leaf-hash HEX"}
	case *leafHash != "":
		want, err = hex.DecodeString(*leafHash)
		if err != nil || len(want) != 32 {
			return &exitError{code: 2, msg: fmt.Sprintf("--leaf-hash %q: want 64 hex digits (a SHA-256 leaf hash)", *leafHash)}
		}
		req.Leaf = &pb.GetInclusionProofRequest_LeafHash{LeafHash: want}
	default:
		req.Leaf = &pb.GetInclusionProofRequest_Index{Index: uint64(*index)}
		// Hash the leaf bytes ourselves rather than trusting the proof's hash.
		er, err := cl.Log().GetEntries(ctx, connect.NewRequest(&pb.GetEntriesRequest{Start: uint64(*index), Count: 1}))
		if err != nil {
			return fmt.Errorf("getting entry %d: %s", *index, describeRPCError(err))
		}
		if len(er.Msg.GetEntries()) != 1 || er.Msg.GetEntries()[0].GetIndex() != uint64(*index) {
			return &exitError{code: 1, msg: fmt.Sprintf("the server did not return entry %d", *index)}
		}
		want = rfc6962.DefaultHasher.HashLeaf(er.Msg.GetEntries()[0].GetLeaf())
	}
	resp, err := cl.Log().GetInclusionProof(ctx, connect.NewRequest(req))
	if err != nil {
		return fmt.Errorf("getting inclusion proof: %s", describeRPCError(err))
	}
	m := resp.Msg
	if *index >= 0 && m.GetIndex() != uint64(*index) {
		return &exitError{code: 1, msg: fmt.Sprintf("asked for entry %d, the server proved entry %d", *index, m.GetIndex())}
	}
	if *size != 0 && m.GetTreeSize() != *size {
		return &exitError{code: 1, msg: fmt.Sprintf("asked for tree size %d, the server proved against size %d", *size, m.GetTreeSize())}
	}
	if len(m.GetLeafHash()) > 0 && !bytes.Equal(m.GetLeafHash(), want) {
		return &exitError{code: 1, msg: fmt.Sprintf("the server's leaf hash %x differs from the entry's %x", m.GetLeafHash(), want)}
	}
	c, err := openCheckpoint("checkpoint", m.GetCheckpoint(), v, m.GetTreeSize())
	if err != nil {
		return err
	}
	if err := proof.VerifyInclusion(rfc6962.DefaultHasher, m.GetIndex(), c.Size, want, m.GetHashes(), c.Root[:]); err != nil {
		return &exitError{code: 1, msg: fmt.Sprintf("inclusion proof of entry %d in tree size %d does not verify: %v", m.GetIndex(), c.Size, err)}
	}
	fmt.Fprintf(env.stdout, "verified: entry %d (leaf hash %x) is in the tree of size %d (root %x); %d proof hashes; checkpoint signed by %s\n",
		m.GetIndex(), want, c.Size, c.Root, len(m.GetHashes()), c.Origin)
	return nil
}

// readKeptCheckpoint reads a checkpoint note kept in a file (what
// `grantline checkpoint` prints) and verifies its signature with v.
func readKeptCheckpoint(file string, v note.Verifier) (ledger.Checkpoint, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return ledger.Checkpoint{}, &exitError{code: 2, msg: fmt.Sprintf("--from-checkpoint: %v", err)}
	}
	c, err := ledger.OpenCheckpoint(data, v)
	if err != nil {
		return c, &exitError{code: 1, msg: fmt.Sprintf("--from-checkpoint %s does not verify with --log-key: %v (want the note grantline checkpoint prints, unchanged)", file, err)}
	}
	return c, nil
}
