// Package pgtest starts throwaway PostgreSQL clusters for tests: initdb in a
// temporary folder, then the postgres server on a free loopback port, with
// fsync on, so that tests run against the real database rather than a
// stand-in. When the process runs as root, the cluster is created and run as
// the unprivileged "postgres" system user (PostgreSQL refuses to run as root).
// The binaries are looked up in $GRANTLINE_PG_BIN, then
// /usr/lib/postgresql/*/bin (Debian's layout, newest version first), then
// PATH; ErrNoPostgres says none was found, and tests should then skip with a
// message that names .ci/install-postgres.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrNoPostgres means no PostgreSQL server binaries (initdb, postgres) were
// found. Install them with .ci/install-postgres (Debian's postgresql
// package) or point GRANTLINE_PG_BIN at their folder.
var ErrNoPostgres = errors.New("PostgreSQL server binaries (initdb, postgres) not found; run .ci/install-postgres or set GRANTLINE_PG_BIN")

// Cluster is a running throwaway PostgreSQL server. Its superuser is
// "postgres" and loopback connections are trusted (no password).
type Cluster struct {
	Bin  string // folder of initdb and postgres
	Dir  string // the folder holding the data directory and the log
	Port int

	data string
	opts Options
	cmd  *exec.Cmd
	cred *syscall.Credential
	exit chan error
	seq  atomic.Int64
}

// Options tunes Start.
type Options struct {
	// Settings are extra server settings (postgres -c name=value), for
	// example shared_buffers for a benchmark. fsync and synchronous_commit
	// stay on unless overridden here.
	Settings map[string]string
}

// FindBin returns the folder of the PostgreSQL server binaries, or
// ErrNoPostgres.
func FindBin() (string, error) {
	has := func(dir string) bool {
		for _, b := range []string{"initdb", "postgres"} {
			if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.IsDir() {
				return false
			}
		}
		return true
	}
	if d := os.Getenv("GRANTLINE_PG_BIN"); d != "" {
		if has(d) {
			return d, nil
		}
		return "", fmt.Errorf("GRANTLINE_PG_BIN=%s has no initdb and postgres: %w", d, ErrNoPostgres)
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgVersion(dirs[i]) > pgVersion(dirs[j]) })
	for _, d := range dirs {
		if has(d) {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil && has(filepath.Dir(p)) {
		return filepath.Dir(p), nil
	}
	return "", ErrNoPostgres
}

func pgVersion(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// Start creates a cluster in a new temporary folder and starts it. Stop
// removes it again.
func Start(ctx context.Context, o Options) (*Cluster, error) {
	bin, err := FindBin()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "grantline-pg-")
	if err != nil {
		return nil, fmt.Errorf("creating the cluster folder: %w", err)
	}
	c := &Cluster{Bin: bin, Dir: dir, data: filepath.Join(dir, "data"), opts: o, exit: make(chan error, 1)}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("running as root, the cluster must run as an unprivileged user, but there is no postgres user (%v); install Debian's postgresql package, which creates it", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("handing %s to the postgres user: %w", dir, err)
		}
	}
	init := c.command(ctx, "initdb", "-D", c.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-instructions")
	if out, err := init.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb in %s: %w\n%s", c.data, err, out)
	}
	for attempt := 0; ; attempt++ {
		err := c.start(ctx, 0)
		if err == nil {
			return c, nil
		}
		if attempt == 4 || ctx.Err() != nil {
			c.Stop()
			return nil, err
		}
	}
}

// start starts the server on port, or on a free port when port is 0; it
// fails if the port was taken in between.
func (c *Cluster) start(ctx context.Context, port int) error {
	if port == 0 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fmt.Errorf("finding a free port: %w", err)
		}
		port = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	c.Port = port
	settings := map[string]string{
		"listen_addresses":        "127.0.0.1",
		"port":                    strconv.Itoa(c.Port),
		"unix_socket_directories": "",
		"fsync":                   "on",
		"synchronous_commit":      "on",
		"max_connections":         "200",
		"logging_collector":       "off",
	}
	for k, v := range c.opts.Settings {
		settings[k] = v
	}
	args := []string{"-D", c.data}
	for k, v := range settings {
		args = append(args, "-c", k+"="+v)
	}
	logf, err := os.OpenFile(filepath.Join(c.Dir, "postgres.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("creating the server log: %w", err)
	}
	defer logf.Close()
	cmd := c.command(context.Background(), "postgres", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting postgres: %w", err)
	}
	c.cmd = cmd
	c.exit = make(chan error, 1)
	go func() { c.exit <- cmd.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		conn, err := pgx.Connect(ctx, c.URL("postgres"))
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		select {
		case werr := <-c.exit:
			c.cmd = nil
			return fmt.Errorf("postgres exited at start (%v); its log: %s", werr, c.tail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres did not accept connections on port %d within 60 s: %v; its log: %s", c.Port, err, c.tail())
		}
	}
}

func (c *Cluster) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(c.Bin, name), args...)
	cmd.Dir = c.Dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	return cmd
}

func (c *Cluster) tail() string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, "postgres.log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// URL is the connection URL of database db as the superuser, with extra
// query parameters (for example "search_path=s1").
func (c *Cluster) URL(db string, params ...string) string {
	u := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.Port, db)
	for _, p := range params {
		u += "&" + p
	}
	return u
}

// NewSchema creates a new empty schema in database postgres and returns a
// URL whose search_path selects it: a fresh, isolated place for one store,
// much cheaper than a new database.
func (c *Cluster) NewSchema(ctx context.Context) (string, error) {
	name := fmt.Sprintf("t%d_%d", os.Getpid(), c.seq.Add(1))
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		return "", fmt.Errorf("connecting to create schema %s: %w", name, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+name); err != nil {
		return "", fmt.Errorf("creating schema %s: %w", name, err)
	}
	return c.URL("postgres", "search_path="+name), nil
}

// Exec runs SQL statements as the superuser in database postgres.
func (c *Cluster) Exec(ctx context.Context, sql string, args ...any) error {
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql, args...)
	return err
}

// Restart stops the server with an immediate shutdown (as a crash would:
// no checkpoint, recovery from the WAL at the next start) and starts it
// again on the same port.
func (c *Cluster) Restart(ctx context.Context) error {
	if err := c.signal(syscall.SIGQUIT); err != nil {
		return err
	}
	deadline := time.Now().Add(2 * time.Minute)
	port := c.Port
	for {
		err := c.start(ctx, port)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || !strings.Contains(err.Error(), "exited at start") {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// signal sends sig to the server and waits for it to exit.
func (c *Cluster) signal(sig syscall.Signal) error {
	if c.cmd == nil {
		return nil
	}
	if err := c.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signalling postgres: %w", err)
	}
	select {
	case <-c.exit:
	case <-time.After(60 * time.Second):
		c.cmd.Process.Kill()
		<-c.exit
	}
	c.cmd = nil
	return nil
}

// Stop shuts the server down (fast shutdown) and removes its folder.
func (c *Cluster) Stop() error {
	err := c.signal(syscall.SIGINT)
	if rerr := os.RemoveAll(c.Dir); err == nil && rerr != nil {
		err = fmt.Errorf("removing %s: %w", c.Dir, rerr)
	}
	return err
}
