// Package witnesstest runs a real witness for tests: litewitness from
// filippo.io/torchwood v0.6.1 (https://github.com/FiloSottile/torchwood),
// with its Ed25519 key in a dedicated ssh-agent, on a free loopback port.
// It also holds a cosignature/v1 verifier written from the specs
// (https://c2sp.org/tlog-cosignature, https://c2sp.org/signed-note) with
// crypto/ed25519 only, independent of the code under test. Tests that use
// Start are skipped when litewitness is not installed (.ci/install-witness).
package witnesstest

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Log is a log a witness follows: its origin and signed-note verifier key.
type Log struct {
	Origin string
	VKey   string
}

// VKey returns the cosignature/v1 verifier key of pub under name, computed
// from the signed-note and tlog-cosignature specs: the key id is
// SHA-256(name "\n" 0x04 pub)[:4].
func VKey(name string, pub ed25519.PublicKey) string {
	kb := append([]byte{0x04}, pub...)
	h := sha256.Sum256(append([]byte(name+"\n"), kb...))
	return fmt.Sprintf("%s+%08x+%s", name, binary.BigEndian.Uint32(h[:4]), base64.StdEncoding.EncodeToString(kb))
}

// AddLog registers a log with the witness (witnessctl add-log and add-key);
// litewitness need not be stopped.
func (lw *Litewitness) AddLog(t testing.TB, l Log) {
	t.Helper()
	ctl, err := tool("witnessctl")
	if err != nil {
		t.Fatal(err)
	}
	run(t, "", ctl, "add-log", "-db", lw.db, "-origin", l.Origin)
	run(t, "", ctl, "add-key", "-db", lw.db, "-origin", l.Origin, "-key", l.VKey)
}

// tool finds a command on PATH or in ~/go/bin.
func tool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	home, _ := os.UserHomeDir()
	p := filepath.Join(home, "go", "bin", name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s is neither on PATH nor in ~/go/bin", name)
	}
	return p, nil
}

// Litewitness is a real litewitness (filippo.io/torchwood v0.6.1) run by a
// test, with its key in a dedicated ssh-agent.
type Litewitness struct {
	Name string
	URL  string
	VKey string // as litewitness printed it at start-up
	Pub  ed25519.PublicKey

	bin, addr, db, sock, keyHex, logPath string
	cmd                                  *exec.Cmd
	done                                 chan error
}

// Start starts litewitness on a free loopback port with a new
// Ed25519 key and registers each log's origin and key with witnessctl. The
// test is skipped when litewitness is not installed (.ci/install-witness
// installs it); it fails when the OpenSSH client tools are missing.
func Start(t testing.TB, name string, logs ...Log) *Litewitness {
	t.Helper()
	lwBin, err := tool("litewitness")
	if err != nil {
		t.Skipf("skipping: no real witness to test against: %v (run .ci/install-witness)", err)
	}
	if _, err := tool("witnessctl"); err != nil {
		t.Skipf("skipping: %v (run .ci/install-witness)", err)
	}
	for _, c := range []string{"ssh-keygen", "ssh-agent", "ssh-add"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Fatalf("%s not found: install openssh-client (.ci/install-witness does)", c)
		}
	}
	// A short directory: unix socket paths are limited to about 100 bytes.
	dir, err := os.MkdirTemp("", "lw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	lw := &Litewitness{Name: name, bin: lwBin, db: filepath.Join(dir, "w.db"), sock: filepath.Join(dir, "a.sock"),
		logPath: filepath.Join(dir, "litewitness.log")}

	key := filepath.Join(dir, "key")
	run(t, "", "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", key)
	lw.Pub = readSSHEd25519(t, key+".pub")
	sum := sha256.Sum256(lw.Pub)
	lw.keyHex = hex.EncodeToString(sum[:])

	agent := exec.Command("ssh-agent", "-D", "-a", lw.sock)
	var agentOut bytes.Buffer
	agent.Stdout, agent.Stderr = &agentOut, &agentOut
	if err := agent.Start(); err != nil {
		t.Fatalf("starting ssh-agent: %v", err)
	}
	t.Cleanup(func() { agent.Process.Kill(); agent.Wait() })
	WaitFor(t, func() bool { _, err := os.Stat(lw.sock); return err == nil }, "ssh-agent socket "+lw.sock, func() string { return agentOut.String() })
	// The socket file can appear a moment before the agent accepts on it.
	var addErr error
	WaitFor(t, func() bool {
		out, err := exec.Command("env", "SSH_AUTH_SOCK="+lw.sock, "ssh-add", "-q", key).CombinedOutput()
		addErr = fmt.Errorf("%v: %s", err, out)
		return err == nil
	}, "ssh-add", func() string { return addErr.Error() })

	for _, l := range logs {
		lw.AddLog(t, l)
	}
	lw.addr = FreeAddr(t)
	lw.URL = "http://" + lw.addr
	lw.Restart(t)
	t.Cleanup(lw.Stop)

	// The key litewitness announces must be the one computed from the spec.
	m := regexp.MustCompile(`vkey=(\S+)`).FindStringSubmatch(lw.Log())
	if m == nil {
		t.Fatalf("litewitness did not log its verifier key:\n%s", lw.Log())
	}
	lw.VKey = m[1]
	if want := VKey(name, lw.Pub); lw.VKey != want {
		t.Fatalf("litewitness verifier key = %s, want %s (computed from the spec)", lw.VKey, want)
	}
	return lw
}

// Restart starts litewitness again after Stop, on the same address and
// database.
func (lw *Litewitness) Restart(t testing.TB) {
	t.Helper()
	logf, err := os.OpenFile(lw.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	lw.cmd = exec.Command(lw.bin, "-db", lw.db, "-name", lw.Name, "-key", lw.keyHex, "-ssh-agent", lw.sock, "-listen", lw.addr)
	lw.cmd.Stdout, lw.cmd.Stderr = logf, logf
	if err := lw.cmd.Start(); err != nil {
		t.Fatalf("starting litewitness: %v", err)
	}
	logf.Close()
	done := make(chan error, 1)
	lw.done = done
	go func() { done <- lw.cmd.Wait() }()
	WaitFor(t, func() bool {
		select {
		case err := <-done:
			done <- err
			return true
		default:
		}
		c, err := net.Dial("tcp", lw.addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "litewitness on "+lw.addr, lw.Log)
	select {
	case err := <-done:
		t.Fatalf("litewitness exited: %v\n%s", err, lw.Log())
	default:
	}
}

// Stop interrupts litewitness and waits for it to exit.
func (lw *Litewitness) Stop() {
	if lw.cmd == nil {
		return
	}
	lw.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-lw.done:
	case <-time.After(10 * time.Second):
		lw.cmd.Process.Kill()
		<-lw.done
	}
	lw.cmd = nil
}

// Log returns what litewitness wrote to stderr.
func (lw *Litewitness) Log() string {
	b, _ := os.ReadFile(lw.logPath)
	return string(b)
}

// Size returns witnessctl's view of the witness's tree size for origin.
func (lw *Litewitness) Size(t testing.TB, origin string) string {
	t.Helper()
	ctl, _ := tool("witnessctl")
	out := run(t, "", ctl, "list-logs", "-db", lw.db)
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, `"origin":"`+origin+`"`) {
			if m := regexp.MustCompile(`"size":(\d+)`).FindStringSubmatch(line); m != nil {
				return m[1]
			}
		}
	}
	t.Fatalf("witnessctl list-logs does not list %s:\n%s", origin, out)
	return ""
}

func run(t testing.TB, agentSock, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = os.Environ()
	if agentSock != "" {
		cmd.Env = append(cmd.Env, "SSH_AUTH_SOCK="+agentSock)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// readSSHEd25519 reads the Ed25519 key of an OpenSSH public key file.
func readSSHEd25519(t testing.TB, path string) ed25519.PublicKey {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	if len(f) < 2 || f[0] != "ssh-ed25519" {
		t.Fatalf("%s is not an ssh-ed25519 public key: %q", path, b)
	}
	blob, err := base64.StdEncoding.DecodeString(f[1])
	if err != nil {
		t.Fatal(err)
	}
	var parts [][]byte
	for len(blob) >= 4 {
		n := binary.BigEndian.Uint32(blob)
		if int(n) > len(blob)-4 {
			break
		}
		parts = append(parts, blob[4:4+n])
		blob = blob[4+n:]
	}
	if len(parts) != 2 || string(parts[0]) != "ssh-ed25519" || len(parts[1]) != ed25519.PublicKeySize {
		t.Fatalf("%s: unexpected key blob", path)
	}
	return ed25519.PublicKey(parts[1])
}

// FreeAddr returns a loopback address nothing listens on (yet).
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// WaitFor polls ok until it holds, failing the test after 15 s.
func WaitFor(t testing.TB, ok func() bool, what string, diag func() string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s\n%s", what, diag())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Verify checks a cosignature/v1 signature line of a witness with
// public key pub over checkpoint text, written from c2sp.org/tlog-cosignature
// and c2sp.org/signed-note with crypto/ed25519 only: the key id is
// SHA-256(name "\n" 0x04 pub)[:4]; the signature is key id || uint64 time ||
// Ed25519 over "cosignature/v1\ntime T\n" + text.
func Verify(text, line, name string, pub ed25519.PublicKey) (time.Time, error) {
	rest, ok := strings.CutPrefix(line, "— "+name+" ")
	if !ok {
		return time.Time{}, errors.New("not a signature line by " + name)
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSuffix(rest, "\n"))
	if err != nil || len(raw) != 4+8+ed25519.SignatureSize {
		return time.Time{}, fmt.Errorf("signature is %d bytes, want %d", len(raw), 4+8+ed25519.SignatureSize)
	}
	h := sha256.Sum256(append([]byte(name+"\n\x04"), pub...))
	if !bytes.Equal(raw[:4], h[:4]) {
		return time.Time{}, errors.New("key id does not match")
	}
	ts := binary.BigEndian.Uint64(raw[4:12])
	msg := fmt.Sprintf("cosignature/v1\ntime %d\n%s", ts, text)
	if !ed25519.Verify(pub, []byte(msg), raw[12:]) {
		return time.Time{}, errors.New("Ed25519 signature does not verify")
	}
	return time.Unix(int64(ts), 0), nil
}
