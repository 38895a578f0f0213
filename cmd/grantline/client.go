package main

import (
	"errors"
	"flag"
	"fmt"

	"github.com/grantline/grantline/ingest/client"
)

const defaultServer = "http://127.0.0.1:7800"

// clientFlags are the flags every client command shares. Flags not given
// are taken from GRANTLINE_SERVER, GRANTLINE_TOKEN and GRANTLINE_CA, read
// only after parsing (resolve), so that help, usage lines and flag errors
// never print their values: a token must never reach a terminal or a log.
type clientFlags struct {
	server string
	token  string
	caFile string
	grpc   bool
	getenv func(string) string // nil: no environment
}

func (c *clientFlags) register(fs *flag.FlagSet, env *cmdEnv) {
	c.getenv = env.getenv
	fs.StringVar(&c.server, "server", "", "server URL (default $GRANTLINE_SERVER, else "+defaultServer+")")
	fs.StringVar(&c.token, "token", "", "bearer token (default $GRANTLINE_TOKEN)")
	fs.StringVar(&c.caFile, "ca", "", "PEM CA bundle to trust for an https server (default $GRANTLINE_CA)")
	fs.BoolVar(&c.grpc, "grpc", false, "speak gRPC instead of the Connect protocol")
}

// resolve fills the flags that were not given from the environment and the
// defaults. Call it after parsing; dial does.
func (c *clientFlags) resolve() {
	if c.getenv != nil {
		if c.server == "" {
			c.server = c.getenv("GRANTLINE_SERVER")
		}
		if c.token == "" {
			c.token = c.getenv("GRANTLINE_TOKEN")
		}
		if c.caFile == "" {
			c.caFile = c.getenv("GRANTLINE_CA")
		}
	}
	if c.server == "" {
		c.server = defaultServer
	}
}

// dial builds the client the flags describe; it does not contact the server.
func (c *clientFlags) dial() (*client.Client, error) { return c.dialWith(false) }

// dialWith is dial, optionally without request compression (bench: on
// loopback gzip costs more CPU than it saves).
func (c *clientFlags) dialWith(noGzip bool) (*client.Client, error) {
	c.resolve()
	if c.token == "" {
		return nil, fmt.Errorf("no token: pass --token or set GRANTLINE_TOKEN (a new server writes one to DATA/admin.token)")
	}
	cl, err := client.Dial(c.server, client.Options{Token: c.token, CAFile: c.caFile, GRPC: c.grpc, NoGzip: noGzip})
	if errors.Is(err, client.ErrBadURL) {
		return nil, fmt.Errorf("--server %q: %w", c.server, client.ErrBadURL)
	}
	if err != nil {
		return nil, fmt.Errorf("--ca: %w", err)
	}
	return cl, nil
}
