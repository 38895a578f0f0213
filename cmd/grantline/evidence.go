package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/internal/textsafe"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/verify"
	"github.com/grantline/grantline/verify/format"
)

func init() {
	register(&command{
		name:    "evidence",
		usage:   "export --out DIR [--as-of RFC3339 | --from RFC3339 --to RFC3339] [--framework NAME] [--size N] [--all | --subject ID ...] [--tar]",
		summary: "export a signed evidence package (checkpoint, entries with proofs, findings, OSCAL, report)",
		run:     runEvidenceCmd,
	})
}

func runEvidenceCmd(ctx context.Context, env *cmdEnv, args []string) error {
	if len(args) == 0 || args[0] != "export" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			fmt.Fprintf(env.stderr, "usage: grantline evidence %s\n", commands["evidence"].usage)
			return errFlagHelp
		}
		return &exitError{code: 2, msg: "want 'evidence export'; run 'grantline evidence export -h' for flags"}
	}
	ec := *commands["evidence"]
	ec.name = "evidence export"
	ec.usage = "--out DIR [--as-of RFC3339 | --from RFC3339 --to RFC3339] [--framework NAME] [--size N] [--all | --subject ID ...] [--tar] [--since OLD_CHECKPOINT ...]"
	fs := newFlagSet(env, &ec)
	var cf clientFlags
	cf.register(fs, env)
	var (
		out   = fs.String("out", "", "folder to write the package to (with --tar: the .tar.gz file); required")
		asOf  = fs.String("as-of", "", "evaluate the rules as of this RFC 3339 time (default: the server's now)")
		from  = fs.String("from", "", "start of an audit period (RFC 3339): the package covers [--from, --to]")
		to    = fs.String("to", "", "end of the audit period (RFC 3339; default: the server's now)")
		fw    = fs.String("framework", "", "control framework of the report and OSCAL (default: the default view)")
		size  = fs.Uint64("size", 0, "anchor to the published checkpoint of this tree size (default: the latest)")
		all   = fs.Bool("all", false, "include every entry of the tree, not only the chains the findings need")
		tgz   = fs.Bool("tar", false, "write one .tar.gz file instead of a folder")
		since sinceFlag
		subs  subjectsFlag
	)
	fs.Var(&subs, "subject", "prove this subject's chain complete (repeatable): the package holds the chains of these subjects (and of those their findings cite or their rules read), each with a proof in the log's subject map (docs/completeness.md); not with --all")
	fs.Var(&since, "since", "an older checkpoint file you kept (repeatable): the package proves the log grew from it consistently")
	rest, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return &exitError{code: 2, msg: fmt.Sprintf("unexpected argument %q", rest[0])}
	}
	if *out == "" {
		return &exitError{code: 2, msg: "--out is required: the folder (or with --tar the .tar.gz file) to write the package to"}
	}
	if *all && len(subs) > 0 {
		return &exitError{code: 2, msg: "--all and --subject exclude each other: --all exports every entry, --subject the chains of chosen subjects with completeness proofs"}
	}
	req := &pb.ExportEvidenceRequest{TreeSize: *size, All: *all, SinceSizes: since.sizes, Subjects: subs}
	if *asOf != "" {
		t, err := time.Parse(time.RFC3339, *asOf)
		if err != nil {
			return &exitError{code: 2, msg: fmt.Sprintf("--as-of %q: want an RFC 3339 time such as 2026-06-30T00:00:00Z", *asOf)}
		}
		req.AsOf = timestamppb.New(t)
	}
	if req.From, req.To, err = periodFlags(*asOf, *from, *to); err != nil {
		return err
	}
	req.Framework = *fw
	c, err := cf.dial()
	if err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}

	target := *out
	var sink verify.Sink
	var finish func() error
	var abort func()
	if *tgz {
		if !strings.HasSuffix(target, ".tar.gz") && !strings.HasSuffix(target, ".tgz") {
			target += ".tar.gz"
		}
		if _, err := os.Stat(target); err == nil {
			return &exitError{code: 1, msg: fmt.Sprintf("%s already exists: choose a new file name or remove it", target)}
		}
		f, err := os.CreateTemp(filepath.Dir(target), "."+filepath.Base(target)+".*")
		if err != nil {
			return err
		}
		ts := verify.NewTarGzSink(f, time.Unix(0, 0).UTC())
		sink = ts
		finish = func() error {
			err := ts.Close()
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err == nil {
				err = os.Rename(f.Name(), target)
			}
			return err
		}
		abort = func() { f.Close(); os.Remove(f.Name()) }
	} else {
		if ents, err := os.ReadDir(target); err == nil && len(ents) > 0 {
			// A package folder holds the package only: anything else in it
			// would make verify refuse the package ("no unlisted files").
			for _, e := range ents {
				if format.Known(e.Name()) {
					return &exitError{code: 1, msg: fmt.Sprintf("%s already holds an evidence package (%s): choose a new folder or remove it", target, e.Name())}
				}
			}
			held := textsafe.Quote(ents[0].Name())
			if len(ents) > 1 {
				held += fmt.Sprintf(" and %d more", len(ents)-1)
			}
			return &exitError{code: 1, msg: fmt.Sprintf("%s is not empty (it holds %s): export into a new or empty folder, since verify refuses a package folder holding other files", target, held)}
		} else if err != nil && !os.IsNotExist(err) {
			return &exitError{code: 1, msg: fmt.Sprintf("--out %s: %v", target, err)}
		}
		_, statErr := os.Stat(target)
		ds := &trackingSink{sink: verify.DirSink{Dir: target}}
		sink = ds
		finish = func() error { return nil }
		abort = func() {
			// Remove what this export wrote, so no partial package is left.
			for _, n := range ds.names {
				os.Remove(filepath.Join(target, n))
			}
			if os.IsNotExist(statErr) {
				os.Remove(target) // only if empty
			}
		}
	}

	stream, err := c.Evidence().ExportEvidence(ctx, connect.NewRequest(req))
	if err != nil {
		abort()
		return fmt.Errorf("export: %w", err)
	}
	defer stream.Close()
	files, err := receivePackage(stream, sink)
	if err != nil {
		abort()
		return fmt.Errorf("export: %s", describeRPCError(err))
	}
	if err := finish(); err != nil {
		abort()
		return fmt.Errorf("export: finishing %s: %w", target, err)
	}
	var total int64
	for _, f := range files {
		total += f.n
	}
	fmt.Fprintf(env.stdout, "wrote evidence package %s: %d files, %d bytes\n", target, len(files), total)
	for _, f := range files {
		fmt.Fprintf(env.stdout, "  %-24s %12d bytes\n", f.name, f.n)
	}
	fmt.Fprintf(env.stdout, "verify it offline with:\n")
	hint := fmt.Sprintf("  grantline verify %s --log-key DATA/keys/log.vkey --evidence-key DATA/keys/evidence.pub", shellQuote(target))
	if len(since.paths) == 0 {
		fmt.Fprintln(env.stdout, hint)
	}
	for _, p := range since.paths { // verify takes one --since at a time
		fmt.Fprintf(env.stdout, "%s --since %s\n", hint, shellQuote(p))
	}
	return nil
}

type receivedFile struct {
	name string
	n    int64
}

// chunkStream is the part of a Connect server stream receivePackage reads.
type chunkStream interface {
	Receive() bool
	Msg() *pb.ExportEvidenceResponse
	Err() error
}

// receivePackage writes the files of an ExportEvidence stream to sink, one
// after another; it checks the names, that no file repeats and that every
// file was finished and the package is complete.
func receivePackage(stream chunkStream, sink verify.Sink) ([]receivedFile, error) {
	var (
		files []receivedFile
		cur   io.WriteCloser
		name  string
		n     int64
		seen  = map[string]bool{}
	)
	for stream.Receive() {
		m := stream.Msg()
		if cur == nil {
			name = m.GetPath()
			if !format.Known(name) {
				return nil, fmt.Errorf("the server sent %q, which is not a file of an evidence package", name)
			}
			if seen[name] {
				return nil, fmt.Errorf("the server sent %s twice", name)
			}
			seen[name] = true
			var err error
			if cur, err = sink.Create(name); err != nil {
				return nil, fmt.Errorf("creating %s: %w", name, err)
			}
			n = 0
		} else if m.GetPath() != "" && m.GetPath() != name {
			cur.Close()
			return nil, fmt.Errorf("the server started %s before finishing %s", m.GetPath(), name)
		}
		if _, err := cur.Write(m.GetData()); err != nil {
			cur.Close()
			return nil, fmt.Errorf("writing %s: %w", name, err)
		}
		n += int64(len(m.GetData()))
		if m.GetEof() {
			if err := cur.Close(); err != nil {
				return nil, fmt.Errorf("writing %s: %w", name, err)
			}
			files = append(files, receivedFile{name, n})
			cur = nil
		}
	}
	if err := stream.Err(); err != nil {
		if cur != nil {
			cur.Close()
		}
		return nil, err
	}
	if cur != nil {
		cur.Close()
		return nil, fmt.Errorf("the stream ended in the middle of %s: the package is incomplete, export again", name)
	}
	for _, f := range format.RequiredFiles {
		if !seen[f] {
			return nil, fmt.Errorf("the server sent no %s: the package is incomplete", f)
		}
	}
	return files, nil
}

// trackingSink remembers the files it created, so a failed export can remove them.
type trackingSink struct {
	sink  verify.Sink
	names []string
}

func (t *trackingSink) Create(name string) (io.WriteCloser, error) {
	w, err := t.sink.Create(name)
	if err == nil {
		t.names = append(t.names, name)
	}
	return w, err
}

// sinceFlag collects --since checkpoint files and reads the tree size from
// each (the second line of a C2SP checkpoint). Its signature is checked by
// `grantline verify --since`, which is where trust is decided.
type sinceFlag struct {
	sizes []uint64
	paths []string
}

func (f *sinceFlag) String() string { return fmt.Sprint(f.sizes) }

func (f *sinceFlag) Set(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading checkpoint: %w", err)
	}
	lines := strings.SplitN(string(data), "\n", 3)
	if len(lines) < 3 {
		return fmt.Errorf("%s: not a checkpoint: want origin, size and root hash lines", path)
	}
	n, err := strconv.ParseUint(lines[1], 10, 64)
	if err != nil {
		return fmt.Errorf("%s:2: tree size %q is not a decimal number", path, lines[1])
	}
	f.sizes = append(f.sizes, n)
	f.paths = append(f.paths, path)
	return nil
}

// shellQuote quotes s for a POSIX shell when it holds anything but letters,
// digits and -_./+:=@, so a printed command can be pasted as is.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./+:=@", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(textsafe.Escape(s), "'", `'\''`) + "'"
}

// subjectsFlag is the repeatable --subject ID.
type subjectsFlag []string

func (f *subjectsFlag) String() string { return strings.Join(*f, ",") }

func (f *subjectsFlag) Set(id string) error {
	if id == "" {
		return fmt.Errorf("empty subject id: name the subject whose chain to prove complete")
	}
	*f = append(*f, id)
	return nil
}
