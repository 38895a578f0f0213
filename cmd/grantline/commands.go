package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// command is one `grantline` subcommand. Each command lives in its own file
// and registers itself from init.
type command struct {
	name    string // e.g. "serve", or "proof" for a command with its own sub-verbs
	usage   string // one line: arguments after the name
	summary string // one line for `grantline help`
	// run executes the command with the arguments after its name. It returns
	// an error to print; an *exitError carries a specific exit status.
	run func(ctx context.Context, env *cmdEnv, args []string) error
}

// cmdEnv is what a command may use from its surroundings, so tests can run
// commands in-process.
type cmdEnv struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
	// argv0 is how the binary was invoked (os.Args[0]), for commands a
	// command prints for the user to paste; "" means "grantline".
	argv0 string
}

// prog is the program name to print in a command for the user to run.
func (e *cmdEnv) prog() string {
	if e.argv0 == "" {
		return "grantline"
	}
	return shellQuote(e.argv0)
}

// exitError makes the process exit with code after printing msg (if any).
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

var commands = map[string]*command{}

func register(c *command) {
	if _, dup := commands[c.name]; dup {
		panic("duplicate command " + c.name)
	}
	commands[c.name] = c
}

// newFlagSet returns a flag set that reports errors instead of exiting and
// prints usage for the command on -h.
func newFlagSet(env *cmdEnv, c *command) *flag.FlagSet {
	fs := flag.NewFlagSet("grantline "+c.name, flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	fs.Usage = func() {
		fmt.Fprintf(env.stderr, "usage: grantline %s %s\n\n%s\n\n", c.name, c.usage, c.summary)
		fs.PrintDefaults()
	}
	return fs
}

func printHelp(w io.Writer) {
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintln(w, "grantline: a verifiable ledger for privileged-access evidence")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "usage: grantline <command> [flags] [args]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "commands:")
	for _, n := range names {
		fmt.Fprintf(w, "  %-12s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'grantline <command> -h' for a command's flags.")
}

// runMain is main without os.Exit, for tests.
func runMain(ctx context.Context, env *cmdEnv, args []string) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		if len(args) > 1 {
			if c, ok := commands[args[1]]; ok {
				fmt.Fprintf(env.stdout, "usage: grantline %s %s\n\n%s\n", c.name, c.usage, c.summary)
				return 0
			}
		}
		printHelp(env.stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	if args[0] == "--version" || args[0] == "-version" {
		args = append([]string{"version"}, args[1:]...)
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(env.stderr, "grantline: unknown command %q; run 'grantline help' for the list\n", args[0])
		return 2
	}
	if err := c.run(ctx, env, args[1:]); err != nil {
		var ee *exitError
		if ok := asExit(err, &ee); ok {
			if ee.msg != "" {
				fmt.Fprintf(env.stderr, "grantline %s: %s\n", c.name, strings.TrimSpace(ee.msg))
			}
			return ee.code
		}
		if err == errFlagHelp {
			return 0
		}
		fmt.Fprintf(env.stderr, "grantline %s: %s\n", c.name, strings.TrimSpace(err.Error()))
		return 1
	}
	return 0
}

var errFlagHelp = fmt.Errorf("help requested")

func asExit(err error, target **exitError) bool {
	e, ok := err.(*exitError)
	if ok {
		*target = e
	}
	return ok
}

func defaultEnv() *cmdEnv {
	return &cmdEnv{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv, argv0: os.Args[0]}
}
