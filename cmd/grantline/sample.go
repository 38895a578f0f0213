package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/grantline/grantline/internal/textsafe"
	"github.com/grantline/grantline/verify"
	"github.com/grantline/grantline/verify/format"
	"github.com/grantline/grantline/verify/oscal"
)

func init() {
	register(&command{
		name:    "sample",
		usage:   "DIR|FILE.tar.gz --seed SEED --size N [--framework F] [--out sample.json]",
		summary: "draw an auditor's reproducible sample of a package's population, stratified by control (check it with verify --sample)",
		run:     runSampleCmd,
	})
}

func runSampleCmd(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, commands["sample"])
	var (
		seed      = fs.String("seed", "", "the seed the auditor picks (any text); required")
		size      = fs.Int("size", 0, "how many rows to draw (at least one per control with a population); required")
		framework = fs.String("framework", "", "the package's control framework, checked against findings.json (optional)")
		out       = fs.String("out", "sample.json", "where to write the sample")
	)
	rest, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	switch {
	case len(rest) != 1:
		return &exitError{code: 2, msg: "want one package: a folder or a .tar.gz, e.g. 'grantline sample evidence --seed 'my seed' --size 25'"}
	case *seed == "":
		return &exitError{code: 2, msg: "--seed is required: the auditor picks it (any text, e.g. the day's lottery numbers), so the operator cannot choose the sample"}
	case *size < 1:
		return &exitError{code: 2, msg: fmt.Sprintf("--size %d: want the number of rows to draw, at least 1", *size)}
	}
	pkg := rest[0]
	if _, err := os.Stat(pkg); err != nil {
		return &exitError{code: 2, msg: fmt.Sprintf("%s: %v", textsafe.Quote(pkg), err)}
	}
	// A .tar.gz is unpacked as verify unpacks it (same refusals and
	// limits) into a private temporary folder, removed afterwards.
	dir, cleanup, err := verify.OpenPackage(pkg, verify.Limits{})
	if err != nil {
		return &exitError{code: 1, msg: fmt.Sprintf("reading the package: %s", textsafe.Escape(err.Error()))}
	}
	defer cleanup()
	fb, err := os.ReadFile(filepath.Join(dir, format.FileFindings))
	if err != nil {
		return &exitError{code: 1, msg: fmt.Sprintf("reading the package: %v", err)}
	}
	doc, err := verify.ParseFindings(fb)
	if err != nil {
		return &exitError{code: 1, msg: fmt.Sprintf("%s: %s", format.FileFindings, textsafe.Escape(err.Error()))}
	}
	pkgFramework := doc.Framework
	if *framework != "" {
		if _, err := oscal.LoadCatalog(*framework); err != nil {
			return &exitError{code: 2, msg: fmt.Sprintf("--framework: %v", err)}
		}
		want := *framework
		if want == oscal.DefaultFramework {
			want = ""
		}
		if want != pkgFramework {
			have := pkgFramework
			if have == "" {
				have = oscal.DefaultFramework
			}
			return &exitError{code: 2, msg: fmt.Sprintf("--framework %s: the package's population is in %s; export the package with --framework %s to sample in its controls", *framework, have, *framework)}
		}
	}
	pop, err := os.ReadFile(filepath.Join(dir, format.FilePopulation))
	if errors.Is(err, os.ErrNotExist) {
		return &exitError{code: 1, msg: fmt.Sprintf("%s has no %s: export it again with this version of grantline", textsafe.Quote(pkg), format.FilePopulation)}
	}
	if err != nil {
		return &exitError{code: 1, msg: fmt.Sprintf("reading the package: %v", err)}
	}
	rows, err := verify.ParsePopulation(pop)
	if err != nil {
		return &exitError{code: 1, msg: textsafe.Escape(err.Error())}
	}
	if len(rows) == 0 {
		return &exitError{code: 1, msg: fmt.Sprintf("%s: the population is empty (no rule of the package declares one, or no subject has an item): nothing to sample", textsafe.Quote(pkg))}
	}
	s, err := verify.NewSample(pop, pkgFramework, *seed, *size)
	if err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(*out, append(b, '\n'), 0o644); err != nil {
		return &exitError{code: 1, msg: fmt.Sprintf("--out: %v", err)}
	}
	byKey := make(map[format.RowKey]format.PopulationRow, len(rows))
	for _, r := range rows {
		byKey[r.Key()] = r
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CONTROL\tRULE\tSUBJECT\tENTRY\tEVENT\tTIME\tRESULT")
	for _, k := range s.Rows {
		r := byKey[k]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", textsafe.Escape(r.Control), textsafe.Escape(r.Rule), textsafe.Quote(r.Subject),
			r.Index, textsafe.Quote(r.EventID), r.Time.Format(time.RFC3339), r.Result)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "drew %d of %d rows with seed %s into %s; check it with: %s verify %s --log-key log.vkey --evidence-key evidence.pub --sample %s\n",
		len(s.Rows), len(rows), textsafe.Quote(*seed), textsafe.Quote(*out), env.prog(), shellQuote(pkg), shellQuote(*out))
	return nil
}
