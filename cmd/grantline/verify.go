package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/grantline/grantline/internal/textsafe"
	"github.com/grantline/grantline/ledger/witness"
	"github.com/grantline/grantline/verify"
)

func init() {
	register(&command{
		name:    "verify",
		usage:   "DIR|FILE.tar.gz --log-key FILE --evidence-key FILE [--since OLD_CHECKPOINT] [--witness-policy FILE] [--require-complete] [--sample sample.json] [--quiet]",
		summary: "verify an evidence package offline: signatures, digests, inclusion proofs, and the findings re-derived",
		run:     runVerifyCmd,
	})
}

func runVerifyCmd(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, commands["verify"])
	var (
		logKey      = fs.String("log-key", "", "the log's signed-note verifier key (DATA/keys/log.vkey); required")
		evidenceKey = fs.String("evidence-key", "", "the evidence signer's PEM public key (DATA/keys/evidence.pub); required")
		since       = fs.String("since", "", "an older signed checkpoint you kept: check the log only grew since")
		quiet       = fs.Bool("quiet", false, "print only the verdict")
		sampleFile  = fs.String("sample", "", "an auditor's sample (grantline sample): check it is the one its seed draws from the package's population")
		policyFile  = fs.String("witness-policy", "", "witness policy file: require the checkpoint to carry cosignatures from its quorum (docs/witnessing.md)")
		complete    = fs.Bool("require-complete", false, "fail unless the package proves that no entry of the subjects it covers is missing (docs/completeness.md)")
	)
	rest, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	switch {
	case len(rest) != 1:
		return &exitError{code: 2, msg: "want one package: a folder or a .tar.gz, e.g. 'grantline verify evidence --log-key log.vkey --evidence-key evidence.pub'"}
	case *logKey == "":
		return &exitError{code: 2, msg: "--log-key is required: the log's verifier key (DATA/keys/log.vkey)"}
	case *evidenceKey == "":
		return &exitError{code: 2, msg: "--evidence-key is required: the evidence public key (DATA/keys/evidence.pub)"}
	}
	lk, err := os.ReadFile(*logKey)
	if err != nil {
		return &exitError{code: 2, msg: fmt.Sprintf("--log-key: %v", err)}
	}
	ek, err := os.ReadFile(*evidenceKey)
	if err != nil {
		return &exitError{code: 2, msg: fmt.Sprintf("--evidence-key: %v", err)}
	}
	opts := verify.Options{RequireComplete: *complete}
	if *since != "" {
		if opts.Since, err = os.ReadFile(*since); err != nil {
			return &exitError{code: 2, msg: fmt.Sprintf("--since: %v", err)}
		}
	}
	if *sampleFile != "" {
		b, err := os.ReadFile(*sampleFile)
		if err != nil {
			return &exitError{code: 2, msg: fmt.Sprintf("--sample: %v", err)}
		}
		if opts.Sample, err = verify.ParseSample(b); err != nil {
			return &exitError{code: 2, msg: fmt.Sprintf("--sample %s: %s", textsafe.Quote(*sampleFile), textsafe.Escape(err.Error()))}
		}
	}
	if *policyFile != "" {
		policy, err := witness.LoadPolicy(*policyFile)
		if err != nil {
			return &exitError{code: 2, msg: fmt.Sprintf("--witness-policy: %v", err)}
		}
		opts.Witnesses = func(n []byte, logKey note.Verifier) (string, error) {
			v, err := witness.VerifyQuorum(n, logKey, policy)
			if err != nil {
				return "", err
			}
			var who []string
			for _, c := range v.Cosignatures {
				who = append(who, fmt.Sprintf("%s at %s", c.Witness, c.Time.Format(time.RFC3339)))
			}
			return fmt.Sprintf("cosigned by %d of %d witnesses (quorum %d): %s", len(v.Cosignatures), len(policy.Witnesses), policy.Quorum, strings.Join(who, ", ")), nil
		}
	}
	if !*quiet {
		opts.Progress = func(c verify.Check) {
			fmt.Fprintf(env.stdout, "ok    %-24s %-22s %s\n", textsafe.Quote(c.File), c.Name, textsafe.Escape(c.Detail))
		}
	}
	start := time.Now()
	rep, err := verify.Verify(ctx, rest[0], verify.Keys{LogKey: string(lk), EvidenceKey: ek}, opts)
	var ce *verify.CheckError
	if errors.As(err, &ce) {
		// Names and messages come from the package: quoted and escaped so
		// a hostile package cannot fake output with terminal escapes.
		fmt.Fprintf(env.stdout, "FAIL  %-24s %-22s %s\n", textsafe.Quote(ce.File), ce.Check, textsafe.Escape(strings.TrimPrefix(ce.Err.Error(), verify.ErrVerification.Error()+": ")))
		return &exitError{code: 1, msg: fmt.Sprintf("%s does not verify: %s: %s failed", textsafe.Quote(rest[0]), textsafe.Quote(ce.File), ce.Check)}
	}
	if err != nil {
		return &exitError{code: 1, msg: fmt.Sprintf("%s: %s", textsafe.Quote(rest[0]), textsafe.Escape(err.Error()))}
	}
	when := "as of " + rep.AsOf.Format(time.RFC3339)
	if !rep.From.IsZero() {
		when = "over the period " + rep.From.Format(time.RFC3339) + " to " + rep.AsOf.Format(time.RFC3339)
	}
	fmt.Fprintf(env.stdout, "verified %s: %d checks passed in %s; checkpoint %s size %d, %d entries, %d findings reproduced %s; package: %s\n",
		textsafe.Quote(rest[0]), len(rep.Checks), time.Since(start).Round(time.Millisecond), textsafe.Quote(rep.Origin), rep.Size, rep.Entries, rep.Findings, when, rep.Kind)
	return nil
}
