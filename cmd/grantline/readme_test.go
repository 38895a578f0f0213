package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/grantline/grantline/ingest/client"
	"github.com/grantline/grantline/internal/server"
	"github.com/grantline/grantline/rules"
)

// The README's fenced blocks, by info string:
//   - ```sh   shell commands, run by TestREADMEShell in order, in one bash
//     session, as written (see readmeScript for the few rewrites);
//   - ```json event examples, each decoded and validated as `grantline append` would;
//   - ```yaml a rule file (it has "expression:") compiled with the built-in
//     catalog, or a params file parsed;
//   - ```go   a complete program, built against this module.

const readmePath = "../../README.md"

type readmeBlock struct {
	lang  string
	start int // 1-based line number of the first line inside the block
	lines []string
}

func readmeBlocks(t *testing.T) ([]string, []readmeBlock) {
	t.Helper()
	data, err := os.ReadFile(readmePath)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	var blocks []readmeBlock
	var cur *readmeBlock
	for i, l := range lines {
		switch {
		case cur == nil && strings.HasPrefix(l, "```"):
			cur = &readmeBlock{lang: strings.TrimSpace(strings.TrimPrefix(l, "```")), start: i + 2}
		case cur != nil && strings.TrimSpace(l) == "```":
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			cur.lines = append(cur.lines, l)
		}
	}
	if cur != nil {
		t.Fatalf("README.md:%d: unterminated ``` block", cur.start-1)
	}
	return lines, blocks
}

// readmeSkip is a README shell line the test does not run, and why.
type readmeSkip struct {
	line int
	text string
	why  string
}

// readmeScript turns the README into a bash script whose line N is README
// line N: lines outside ```sh blocks are blank, so bash's $LINENO names the
// README line that failed. Rewrites: the port 7800 becomes port; `make`
// lines, and curl/grpcurl lines when the tool is absent, become no-ops; a
// `grantline serve ... &` line sends its output to serve.log, records the
// pid in .serve.pid and waits until the server accepts connections.
func readmeScript(lines []string, blocks []readmeBlock, port string) (string, []readmeSkip, int) {
	script := make([]string, len(lines))
	var skips []readmeSkip
	servers := 0
	have := func(tool string) bool { _, err := exec.LookPath(tool); return err == nil }
	for _, b := range blocks {
		if b.lang != "sh" {
			continue
		}
		skipping := false
		for j, l := range b.lines {
			n := b.start + j // 1-based README line
			l = strings.ReplaceAll(l, "127.0.0.1:7800", "127.0.0.1:"+port)
			fields := strings.Fields(l)
			first := ""
			if len(fields) > 0 {
				first = fields[0]
			}
			switch {
			case skipping:
			case first == "make":
				skips = append(skips, readmeSkip{n, lines[n-1], "make targets are not run here: `make test` would recurse, `make demo` is TestDemo, `make build` is TestMain's build"})
				skipping = true
			case (first == "curl" || first == "grpcurl" || first == "jq") && !have(first):
				skips = append(skips, readmeSkip{n, lines[n-1], first + " is not installed on this machine"})
				skipping = true
			case strings.Contains(l, "grantline ") && pendingCommand(l) != "":
				skips = append(skips, readmeSkip{n, lines[n-1], "grantline " + pendingCommand(l) + " is a command of docs/design.md not built yet"})
				skipping = true
			case first == "grantline" && len(fields) > 1 && fields[1] == "serve" && strings.HasSuffix(strings.TrimSpace(l), "&"):
				servers++
				l = strings.TrimSuffix(strings.TrimSpace(l), "&") + ">serve.log 2>&1 & echo $! >.serve.pid; __wait_ready " + port
			}
			if skipping {
				script[n-1] = ":"
				skipping = strings.HasSuffix(strings.TrimSpace(l), `\`)
				continue
			}
			script[n-1] = l
		}
	}
	// Line 1 is the title, never a command: the prelude goes there. A server
	// is ready when it answers HTTP, not when its port accepts connections:
	// serve listens before it writes its data directory (a taken port must
	// leave nothing behind), so admin.token appears only just before it answers.
	script[0] = `set -eE -o pipefail; trap 'echo "README.md:$LINENO: exit $?: $BASH_COMMAND" >&2' ERR; ` +
		`__wait_ready() { for i in $(seq 600); do if (exec 3<>/dev/tcp/127.0.0.1/$1 && printf 'GET /healthz HTTP/1.0\r\n\r\n' >&3 && read -t 2 -r l <&3 && [ -n "$l" ]) 2>/dev/null; then return 0; fi; ` +
		`if ! kill -0 $(cat .serve.pid) 2>/dev/null; then echo "the server exited:" >&2; cat serve.log >&2; return 1; fi; sleep 0.05; done; ` +
		`echo "the server did not listen within 30s" >&2; cat serve.log >&2; return 1; }`
	return strings.Join(script, "\n") + "\n", skips, servers
}

// designCommands are the commands docs/design.md promises. A README line using
// one that this build does not have yet is skipped (and says so) rather
// than failed; any other unknown command fails the test.
var designCommands = strings.Fields("serve append checkpoint proof events evaluate evidence verify fsck keygen demo bench token")

// pendingCommand returns the first docs/design.md command the line runs that is
// not registered in this build, or "".
func pendingCommand(line string) string {
	f := strings.Fields(line)
	for i := 0; i+1 < len(f); i++ {
		if strings.TrimLeft(f[i], "$(") == "grantline" && slices.Contains(designCommands, f[i+1]) && commands[f[i+1]] == nil {
			return f[i+1]
		}
	}
	return ""
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// TestREADMEShell runs every ```sh block of the README, in order, against
// the real binary and a real server the README itself starts.
func TestREADMEShell(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server; skipped in -short")
	}
	if grantlineBin == "" {
		t.Fatalf("no grantline binary: %v", buildErr)
	}
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash is not installed; the README's shell blocks are bash")
	}
	lines, blocks := readmeBlocks(t)
	port := freePort(t)
	script, skips, servers := readmeScript(lines, blocks, port)
	if servers == 0 {
		t.Fatal("README.md starts no server with `grantline serve ... &`; nothing to run the commands against")
	}
	for _, s := range skips {
		t.Run(fmt.Sprintf("README.md:%d", s.line), func(t *testing.T) {
			t.Skipf("not run (%s): %s", s.why, strings.TrimSpace(s.text))
		})
	}

	dir := t.TempDir()
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(repo, "testdata"), filepath.Join(dir, "testdata")); err != nil {
		t.Fatal(err)
	}
	scriptFile := filepath.Join(dir, ".readme.sh")
	if err := os.WriteFile(scriptFile, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // a server left behind by a failed run
		if b, err := os.ReadFile(filepath.Join(dir, ".serve.pid")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})

	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", scriptFile)
	cmd.Dir = dir
	cmd.WaitDelay = 5 * time.Second
	env := []string{"PATH=" + filepath.Dir(grantlineBin) + string(os.PathListSeparator) + os.Getenv("PATH")}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PATH=") && !strings.HasPrefix(kv, "GRANTLINE_") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		serveLog, _ := os.ReadFile(filepath.Join(dir, "serve.log"))
		t.Fatalf("README shell blocks failed: %v\n--- output:\n%s\n--- serve.log:\n%s", err, out.String(), serveLog)
	}
	t.Logf("README shell output:\n%s", out.String())
	if _, err := os.Stat(filepath.Join(dir, "evidence", "report.html")); err != nil {
		t.Errorf("the README's evidence export left no report: %v", err)
	}
	// The walk-through shows separation of duties: the server runs with the
	// feed's policy, so sod-conflict finds something.
	if !strings.Contains(out.String(), "sod-conflict") {
		t.Errorf("the README's evaluate found no sod-conflict: is serve started with the feed's --params?")
	}
	checkIgnored(t, repo, dir)
}

// checkIgnored fails for every file the README's walk-through left in its
// working directory that the repository's .gitignore does not ignore: a
// reader who follows it in a clone must not find them in `git status`.
func checkIgnored(t *testing.T, repo, dir string) {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Log("git is not installed; the README's leftovers are not checked against .gitignore")
		return
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	harness := map[string]bool{".readme.sh": true, "serve.log": true, ".serve.pid": true, "testdata": true}
	for _, e := range ents {
		if harness[e.Name()] {
			continue
		}
		name := e.Name()
		if e.IsDir() {
			name += "/"
		}
		cmd := exec.Command("git", "check-ignore", "-q", "--no-index", name)
		cmd.Dir = repo
		if err := cmd.Run(); err != nil {
			t.Errorf("the README's walk-through leaves %s in the working directory, and .gitignore does not ignore it", name)
		}
	}
}

// TestREADMEEventExamples checks every ```json block is an event that
// `grantline append` accepts.
func TestREADMEEventExamples(t *testing.T) {
	_, blocks := readmeBlocks(t)
	families := map[string]bool{}
	for _, b := range blocks {
		if b.lang != "json" {
			continue
		}
		ev, err := client.DecodeEventLine([]byte(strings.Join(b.lines, "\n")))
		if err != nil {
			t.Errorf("README.md:%d: event example refused: %v", b.start, err)
			continue
		}
		families[strings.SplitN(ev.GetType(), ".", 2)[0]] = true
	}
	for _, f := range []string{"identity", "access", "session", "credential", "breakglass"} {
		if !families[f] {
			t.Errorf("README.md has no example of the %s.* family", f)
		}
	}
}

// TestREADMERuleAndParams compiles the README's example rule with the
// built-in catalog and parses its example params.
func TestREADMERuleAndParams(t *testing.T) {
	_, blocks := readmeBlocks(t)
	builtin, err := rules.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	var ruleSeen, paramsSeen bool
	for _, b := range blocks {
		if b.lang != "yaml" {
			continue
		}
		data := []byte(strings.Join(b.lines, "\n") + "\n")
		name := fmt.Sprintf("README.md:%d", b.start)
		if bytes.Contains(data, []byte("expression:")) {
			ruleSeen = true
			r, err := rules.ParseRule(name, data)
			if err != nil {
				t.Errorf("%s: example rule: %v", name, err)
				continue
			}
			if _, err := rules.NewSet(append(builtin, r), rules.Params{}); err != nil {
				t.Errorf("%s: example rule does not compile: %v", name, err)
			}
			continue
		}
		paramsSeen = true
		p, err := rules.ParseParams(name, data)
		if err != nil {
			t.Errorf("%s: example params: %v", name, err)
			continue
		}
		if _, err := rules.NewSet(builtin, p); err != nil {
			t.Errorf("%s: example params refused by the catalog: %v", name, err)
		}
	}
	if !ruleSeen || !paramsSeen {
		t.Errorf("README.md: example rule present %v, example params present %v; want both", ruleSeen, paramsSeen)
	}
}

// TestREADMEGoClient builds the README's Go client against this module,
// offline, with this module's go.sum.
func TestREADMEGoClient(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go build; skipped in -short")
	}
	_, blocks := readmeBlocks(t)
	var src string
	for _, b := range blocks {
		if b.lang == "go" {
			src = strings.Join(b.lines, "\n") + "\n"
		}
	}
	if src == "" {
		t.Fatal("README.md has no ```go block")
	}
	if n := strings.Count(src, "\n"); n > 45 {
		t.Errorf("the README's Go client is %d lines; keep it short", n)
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sum, err := os.ReadFile(filepath.Join(repo, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	mod := "module readmeclient\n\ngo 1.26.8\n\nrequire github.com/grantline/grantline v0.0.0\n\nreplace github.com/grantline/grantline => " + repo + "\n"
	for name, data := range map[string][]byte{"go.mod": []byte(mod), "go.sum": sum, "main.go": []byte(src)} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.CommandContext(t.Context(), "go", "build", "-o", filepath.Join(dir, "client"), ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the README's Go client: %v\n%s", err, out)
	}

	// Run it, twice, against a real server: the second send is a duplicate.
	srv, err := server.Start(t.Context(), server.Config{DataDir: filepath.Join(dir, "data"), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close(context.WithoutCancel(t.Context()))
	for _, want := range []string{"index 0 duplicate false conflict false", "index 0 duplicate true conflict false"} {
		run := exec.CommandContext(t.Context(), filepath.Join(dir, "client"))
		run.Env = append(os.Environ(), "GRANTLINE_SERVER="+srv.URL, "GRANTLINE_TOKEN="+srv.AdminToken)
		out, err := run.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != want {
			t.Fatalf("the README's Go client printed %q (%v), want %q", out, err, want)
		}
	}
}
