package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"

	"connectrpc.com/connect"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

func init() {
	register(&command{
		name:    "proof",
		usage:   "inclusion (--index N | --leaf-hash HEX) [--size N] --log-key FILE | consistency --from N [--to M] --log-key FILE",
		summary: "fetch an inclusion or consistency proof and verify it locally against the signed checkpoint",
		run:     runProofCmd,
	})
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
	pc := *commands["proof"]
	pc.name = "proof " + verb
	fs := newFlagSet(env, &pc)
	var cf clientFlags
	cf.register(fs, env)
	keyFile := fs.String("log-key", "", "verifier key file (DATA/keys/log.vkey); required")
	var (
		index    = fs.Int64("index", -1, "inclusion: the entry's index")
		leafHash = fs.String("leaf-hash", "", "inclusion: the entry's RFC 6962 leaf hash, hex")
		size     = fs.Uint64("size", 0, "inclusion: prove against the tree of this size (0: the latest checkpoint)")
		from     = fs.Uint64("from", 0, "consistency: the older tree size")
		to       = fs.Uint64("to", 0, "consistency: the newer tree size (0: the latest checkpoint)")
	)
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
		c2, err := openCheckpoint("checkpoint at --to", m.GetToCheckpoint(), v, m.GetToSize())
		if err != nil {
			return err
		}
		if err := proof.VerifyConsistency(rfc6962.DefaultHasher, c1.Size, c2.Size, m.GetHashes(), c1.Root[:], c2.Root[:]); err != nil {
			return &exitError{code: 1, msg: fmt.Sprintf("consistency proof %d -> %d does not verify: %v", c1.Size, c2.Size, err)}
		}
		fmt.Fprintf(env.stdout, "verified: the tree of size %d (root %x) is a prefix of the tree of size %d (root %x); %d proof hashes; checkpoints signed by %s\n",
			c1.Size, c1.Root, c2.Size, c2.Root, len(m.GetHashes()), c2.Origin)
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
