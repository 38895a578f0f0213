package main

import (
	"context"
	"fmt"
	"runtime/debug"
)

func init() {
	register(&command{
		name:    "version",
		usage:   "",
		summary: "print the module version, the VCS revision it was built from and the Go version (also --version)",
		run:     runVersionCmd,
	})
}

func runVersionCmd(_ context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, commands["version"])
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &exitError{code: 2, msg: fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return fmt.Errorf("no build information in this binary (built without module support)")
	}
	fmt.Fprintln(env.stdout, versionLine(bi))
	return nil
}

// versionLine renders build information as one line, e.g.
// "grantline v1.2.0 (revision 0123abcd, 2026-12-01T10:00:00Z) go1.26.8"; a
// build from a work tree with changes says "modified", one outside version
// control "revision unknown".
func versionLine(bi *debug.BuildInfo) string {
	version := bi.Main.Version
	if version == "" {
		version = "(devel)"
	}
	var rev, when string
	modified := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			when = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	vcs := "revision unknown"
	if rev != "" {
		vcs = "revision " + rev
		if when != "" {
			vcs += ", " + when
		}
		if modified {
			vcs += ", modified"
		}
	}
	return fmt.Sprintf("grantline %s (%s) %s", version, vcs, bi.GoVersion)
}
