package main

// End-to-end tests against the real binary (built once by TestMain): the CLI
// contract as testscript scripts, an independent C2SP tlog-tiles client
// written with golang.org/x/mod/sumdb/{tlog,note}, and a kill -9 crash test.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// requireBinary skips end-to-end tests while the binary cannot serve.
func requireBinary(t *testing.T) {
	t.Helper()
	if grantlineBin == "" {
		t.Fatalf("building grantline: %v", buildErr)
	}
	out, _ := exec.Command(grantlineBin, "help").Output()
	if !bytes.Contains(out, []byte("\n  serve ")) {
		t.Skip("the binary has no serve command yet")
	}
}

// freeAddr returns a loopback address with a port free at the moment.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// waitReady waits until dir/admin.token exists and addr serves
// /checkpoint, for at most 30 s, polling (the server announces nothing a
// test can block on). exited, if not nil, aborts the wait when the server
// died.
func waitReady(ctx context.Context, addr, dir string, exited <-chan struct{}) (token string, err error) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return "", errors.New("the server exited while starting")
		case <-ctx.Done():
			return "", ctx.Err()
		default:
		}
		if b, err := os.ReadFile(filepath.Join(dir, "admin.token")); err == nil && len(bytes.TrimSpace(b)) > 0 {
			token = string(bytes.TrimSpace(b))
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/checkpoint", nil)
			req.Header.Set("Authorization", "Bearer "+token)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return token, nil
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return "", fmt.Errorf("server at %s not ready after 30s", addr)
}

func TestScripts(t *testing.T) {
	requireBinary(t)
	testscript.Run(t, testscript.Params{
		Dir:                 "testdata/script",
		RequireExplicitExec: true,
		Setup: func(env *testscript.Env) error {
			env.Setenv("PATH", filepath.Dir(grantlineBin)+string(os.PathListSeparator)+env.Getenv("PATH"))
			addr := freeAddr(env.T().(testing.TB))
			env.Setenv("ADDR", addr)
			env.Setenv("SERVER", "http://"+addr)
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			// waitserver DATA: wait for the server on $ADDR, then set $TOKEN
			// to DATA/admin.token.
			"waitserver": func(ts *testscript.TestScript, neg bool, args []string) {
				if neg || len(args) != 1 {
					ts.Fatalf("usage: waitserver DATA")
				}
				tok, err := waitReady(context.Background(), ts.Getenv("ADDR"), ts.MkAbs(args[0]), nil)
				ts.Check(err)
				ts.Setenv("TOKEN", tok)
			},
			// setenvout NAME: set $NAME to the last command's stdout, trimmed.
			"setenvout": func(ts *testscript.TestScript, neg bool, args []string) {
				if neg || len(args) != 1 {
					ts.Fatalf("usage: setenvout NAME")
				}
				ts.Setenv(args[0], strings.TrimSpace(ts.ReadFile("stdout")))
			},
		},
	})
}

// e2eServer is a `grantline serve` process.
type e2eServer struct {
	cmd    *exec.Cmd
	addr   string
	url    string
	dir    string
	token  string
	exited chan struct{}
	logs   *bytes.Buffer
}

func startE2EServer(t *testing.T, dir string) *e2eServer {
	t.Helper()
	return startE2EServerAt(t, dir, freeAddr(t))
}

func startE2EServerAt(t *testing.T, dir, addr string, flags ...string) *e2eServer {
	t.Helper()
	s := &e2eServer{addr: addr, dir: dir, exited: make(chan struct{}), logs: &bytes.Buffer{}}
	s.url = "http://" + s.addr
	// With a subject map, so that these tests hold with it: sizes count
	// map leaves (checkSize, checkExactlyOnce).
	s.cmd = exec.Command(grantlineBin, append([]string{"serve", "--data", dir, "--listen", s.addr, "--subject-map"}, flags...)...)
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.cmd.Wait(); close(s.exited) }()
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		<-s.exited
		if t.Failed() {
			t.Logf("server log:\n%s", s.logs)
		}
	})
	tok, err := waitReady(t.Context(), s.addr, dir, s.exited)
	if err != nil {
		t.Fatalf("%v; server log:\n%s", err, s.logs)
	}
	s.token = tok
	return s
}

// stop ends the server gracefully.
func (s *e2eServer) stop(t *testing.T) {
	t.Helper()
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("server did not stop within 30s of SIGTERM")
	}
}

func (s *e2eServer) get(t *testing.T, path string) []byte {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, s.url+path, nil)
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v: %s", path, resp.Status, err, b)
	}
	return b
}

// writeJSONL writes n deterministic events, ids e2e-<prefix>-<i>.
func writeJSONL(t *testing.T, prefix string, n int) (string, []string) {
	t.Helper()
	var buf bytes.Buffer
	ids := make([]string, n)
	for i := range n {
		ev := testEvent(i, fmt.Sprintf("user-%d", i%97))
		ev.Id = fmt.Sprintf("e2e-%s-%d", prefix, i)
		ev.Source.System = "hr"
		ids[i] = ev.Id
		b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		buf.Write(b)
		buf.WriteByte('\n')
	}
	p := filepath.Join(t.TempDir(), prefix+".jsonl")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p, ids
}

// runBin runs the binary and returns its exit code, stdout and stderr.
func runBin(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(t.Context(), grantlineBin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), out.String(), errb.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, out.String(), errb.String()
}

// c2spTiles reads C2SP tlog-tiles over HTTP for x/mod's tlog, which names
// tiles with their height ("tile/8/L/N"); C2SP drops the height.
type c2spTiles struct {
	t *testing.T
	s *e2eServer
}

func (c2spTiles) Height() int { return 8 }

func (c c2spTiles) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, tile := range tiles {
		out[i] = c.s.get(c.t, "/"+strings.Replace(tile.Path(), "tile/8/", "tile/", 1))
	}
	return out, nil
}

func (c2spTiles) SaveTiles([]tlog.Tile, [][]byte) {}

// verifyC2SP fetches /checkpoint, verifies it with note and DATA/keys/log.vkey,
// reads every entry bundle and checks every record hash against the
// authenticated tree with tlog. It returns the decoded entries in order.
func verifyC2SP(t *testing.T, s *e2eServer) []*pb.Entry {
	t.Helper()
	vkey, err := os.ReadFile(filepath.Join(s.dir, "keys", "log.vkey"))
	if err != nil {
		t.Fatal(err)
	}
	v, err := note.NewVerifier(strings.TrimSpace(string(vkey)))
	if err != nil {
		t.Fatalf("log.vkey: %v", err)
	}
	n, err := note.Open(s.get(t, "/checkpoint"), note.VerifierList(v))
	if err != nil {
		t.Fatalf("checkpoint does not verify with log.vkey: %v", err)
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 4 || lines[0] != v.Name() {
		t.Fatalf("checkpoint text %q: want origin %q, size, root", n.Text, v.Name())
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		t.Fatalf("checkpoint size line %q: %v", lines[1], err)
	}
	rootB, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(rootB) != tlog.HashSize {
		t.Fatalf("checkpoint root line %q: %v", lines[2], err)
	}
	var root tlog.Hash
	copy(root[:], rootB)
	hr := tlog.TileHashReader(tlog.Tree{N: size, Hash: root}, c2spTiles{t, s})
	if got, err := tlog.TreeHash(size, hr); err != nil || got != root {
		t.Fatalf("tlog.TreeHash over the tiles = %x, %v; checkpoint root %x", got, err, root)
	}
	var entries []*pb.Entry
	for b := int64(0); b*256 < size; b++ {
		w := min(256, size-b*256)
		path := fmt.Sprintf("/tile/entries/%s", strings.TrimPrefix(tlog.Tile{H: 8, L: 0, N: b, W: int(w)}.Path(), "tile/8/0/"))
		data := s.get(t, path)
		idx := make([]int64, 0, w)
		var leaves [][]byte
		for off := 0; off < len(data); {
			if len(data)-off < 2 {
				t.Fatalf("%s: truncated at byte %d", path, off)
			}
			l := int(binary.BigEndian.Uint16(data[off:]))
			if len(data)-off-2 < l {
				t.Fatalf("%s: entry at byte %d overruns", path, off)
			}
			leaves = append(leaves, data[off+2:off+2+l])
			idx = append(idx, tlog.StoredHashIndex(0, b*256+int64(len(leaves)-1)))
			off += 2 + l
		}
		if int64(len(leaves)) != w {
			t.Fatalf("%s: %d entries, want %d", path, len(leaves), w)
		}
		hashes, err := hr.ReadHashes(idx)
		if err != nil {
			t.Fatalf("reading record hashes of bundle %d: %v", b, err)
		}
		for i, leaf := range leaves {
			if tlog.RecordHash(leaf) != hashes[i] {
				t.Fatalf("entry %d: record hash differs from the authenticated tree", b*256+int64(i))
			}
			e := &pb.Entry{}
			if err := proto.Unmarshal(leaf, e); err != nil {
				t.Fatalf("entry %d: decoding leaf: %v", b*256+int64(i), err)
			}
			entries = append(entries, e)
		}
	}
	return entries
}

// parseSummary reads append's summary line.
func parseSummary(t *testing.T, out string) (acked, fresh, dup, size int) {
	t.Helper()
	i := strings.Index(out, "appended ")
	if i < 0 {
		t.Fatalf("no summary in %q", out)
	}
	if _, err := fmt.Sscanf(out[i:], "appended %d events: %d new, %d duplicate (tree size %d)", &acked, &fresh, &dup, &size); err != nil {
		t.Fatalf("summary %q: %v", out, err)
	}
	return
}

// checkExactlyOnce fails unless entries hold each id once and nothing else
// but map leaves (a log with a subject map ends each checkpoint with one,
// covering its own index: docs/completeness.md). It returns how many map
// leaves there are.
func checkExactlyOnce(t *testing.T, entries []*pb.Entry, ids []string) (mapLeaves int) {
	t.Helper()
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	seen := make(map[string]bool, len(entries))
	for i, e := range entries {
		if m := e.GetMapRoot(); m != nil {
			if e.GetEvent() != nil || m.GetCovers() != uint64(i) {
				t.Fatalf("entry %d: a map leaf covering %d, with event %v", i, m.GetCovers(), e.GetEvent())
			}
			mapLeaves++
			continue
		}
		id := e.GetEvent().GetId()
		if seen[id] {
			t.Fatalf("entry %d: event %s stored twice", i, id)
		}
		if !want[id] {
			t.Fatalf("entry %d: unexpected event %s", i, id)
		}
		seen[id] = true
	}
	if len(seen) != len(ids) {
		t.Fatalf("log holds %d of the %d events", len(seen), len(ids))
	}
	return mapLeaves
}

// checkSize fails unless the tree size an append reported is the size of
// the published checkpoint, whose leaves are entries (verifyC2SP): the
// events and, with a subject map, one map leaf per checkpoint.
func checkSize(t *testing.T, s *e2eServer, entries []*pb.Entry, size int) {
	t.Helper()
	if size != len(entries) {
		t.Fatalf("append reported tree size %d, the published checkpoint has %d leaves", size, len(entries))
	}
	if ck := s.get(t, "/checkpoint"); !bytes.Contains(ck, []byte(fmt.Sprintf("\n%d\n", size))) {
		t.Fatalf("after the acknowledged append the checkpoint is\n%s\nwant size %d", ck, size)
	}
}

func TestC2SPClient(t *testing.T) {
	requireBinary(t)
	dir := t.TempDir()
	s := startE2EServer(t, dir)
	file, ids := writeJSONL(t, "c2sp", 3000)
	code, out, errs := runBin(t, "append", "--server", s.url, "--token", s.token, "--batch", "250", file)
	if code != 0 {
		t.Fatalf("append: exit %d: %s", code, errs)
	}
	acked, fresh, dup, size := parseSummary(t, out)
	if acked != 3000 || fresh != 3000 || dup != 0 {
		t.Fatalf("summary %q: want 3000 new", out)
	}
	// An acknowledged append is covered by a published checkpoint already.
	entries := verifyC2SP(t, s)
	checkSize(t, s, entries, size)
	// serve --subject-map: a map leaf ends each checkpoint.
	if m := checkExactlyOnce(t, entries, ids); m == 0 || size != 3000+m {
		t.Fatalf("tree of %d leaves with %d map leaves for 3000 events; want a map leaf per checkpoint", size, m)
	}
}

func TestCrashDuringAppend(t *testing.T) {
	requireBinary(t)
	t0 := time.Now()
	step := func(what string) { t.Logf("%6.2fs %s", time.Since(t0).Seconds(), what) }
	defer step("done")
	dir := t.TempDir()
	s := startE2EServer(t, dir)
	step("server started")
	const n = 50000
	file, ids := writeJSONL(t, "crash", n)

	app := exec.CommandContext(t.Context(), grantlineBin, "append", "--server", s.url, "--token", s.token,
		"--batch", "500", "--retries", "0", file)
	var appOut, appErr bytes.Buffer
	app.Stdout, app.Stderr = &appOut, &appErr
	if err := app.Start(); err != nil {
		t.Fatal(err)
	}
	appDone := make(chan error, 1)
	go func() { appDone <- app.Wait() }()

	// Kill the server once part of the file is in the log.
	killedAt := "-"
	deadline := time.Now().Add(30 * time.Second)
poll:
	for time.Now().Before(deadline) {
		select {
		case <-appDone:
			t.Logf("append finished before the kill: %s", appOut.String())
			appDone <- nil
			break poll
		default:
		}
		ck := s.get(t, "/checkpoint")
		if lines := strings.SplitN(string(ck), "\n", 3); len(lines) > 2 {
			if sz, _ := strconv.Atoi(lines[1]); sz >= 2000 {
				killedAt = lines[1]
				break
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	if err := s.cmd.Process.Kill(); err != nil { // SIGKILL: no shutdown, no flush
		t.Fatal(err)
	}
	<-s.exited
	err := <-appDone
	t.Logf("killed the server at checkpoint size %s; first append: %v; %s", killedAt, err, strings.TrimSpace(appErr.String()))

	// Restart on the same data and append the same file again.
	step("killed")
	s2 := startE2EServer(t, dir)
	step("restarted")
	code, out, errs := runBin(t, "append", "--server", s2.url, "--token", s2.token, "--batch", "1000", file)
	if code != 0 {
		t.Fatalf("second append: exit %d: %s", code, errs)
	}
	acked, fresh, dup, size := parseSummary(t, out)
	if acked != n || fresh+dup != n {
		t.Fatalf("second append %q: want all %d acknowledged (new+duplicate)", out, n)
	}
	step(fmt.Sprintf("appended again: %d new, %d duplicate", fresh, dup))
	entries := verifyC2SP(t, s2)
	checkSize(t, s2, entries, size)
	checkExactlyOnce(t, entries, ids)
	step("verified over tiles")

	s2.stop(t)
	step("stopped")
	if code, out, errs := runBin(t, "fsck", "--data", dir, "--quiet"); code != 0 {
		t.Fatalf("fsck after the crash: exit %d\n%s%s", code, out, errs)
	}
}

// TestAppendRidesOutRestart kills the server under a running append and
// restarts it on the same address: the append retries, finishes with exit 0,
// and every event is in the log exactly once.
func TestAppendRidesOutRestart(t *testing.T) {
	requireBinary(t)
	dir := t.TempDir()
	s := startE2EServer(t, dir)
	const n = 20000
	file, ids := writeJSONL(t, "restart", n)
	app := exec.CommandContext(t.Context(), grantlineBin, "append", "--server", s.url, "--token", s.token, "--batch", "200", file)
	var appOut, appErr bytes.Buffer
	app.Stdout, app.Stderr = &appOut, &appErr
	if err := app.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		lines := strings.SplitN(string(s.get(t, "/checkpoint")), "\n", 3)
		if sz, _ := strconv.Atoi(lines[1]); sz >= 1000 {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	s.cmd.Process.Kill()
	<-s.exited
	s2 := startE2EServerAt(t, dir, s.addr)
	if err := app.Wait(); err != nil {
		t.Fatalf("append across a restart: %v\n%s%s", err, appOut.String(), appErr.String())
	}
	if !strings.Contains(appErr.String(), "retrying in") {
		t.Logf("append finished without a retry (the kill came too late?): %s", appErr.String())
	}
	acked, fresh, dup, size := parseSummary(t, appOut.String())
	if acked != n || fresh+dup != n {
		t.Fatalf("append summary %q: want %d acknowledged", appOut.String(), n)
	}
	entries := verifyC2SP(t, s2)
	checkSize(t, s2, entries, size)
	checkExactlyOnce(t, entries, ids)
}
