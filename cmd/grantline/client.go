package main

import (
	"errors"
	"flag"
	"fmt"

	"github.com/grantline/grantline/ingest/client"
)

const defaultServer = "http://127.0.0.1:7800"

// clientFlags are the flags every client command shares. Values default to
// GRANTLINE_SERVER and GRANTLINE_TOKEN.
type clientFlags struct {
	server string
	token  string
	caFile string
	grpc   bool
}

func (c *clientFlags) register(fs *flag.FlagSet, env *cmdEnv) {
	server := env.getenv("GRANTLINE_SERVER")
	if server == "" {
		server = defaultServer
	}
	fs.StringVar(&c.server, "server", server, "server URL (env GRANTLINE_SERVER)")
	fs.StringVar(&c.token, "token", env.getenv("GRANTLINE_TOKEN"), "bearer token (env GRANTLINE_TOKEN)")
	fs.StringVar(&c.caFile, "ca", env.getenv("GRANTLINE_CA"), "PEM CA bundle to trust for an https server (env GRANTLINE_CA)")
	fs.BoolVar(&c.grpc, "grpc", false, "speak gRPC instead of the Connect protocol")
}

// dial builds the client the flags describe; it does not contact the server.
func (c *clientFlags) dial() (*client.Client, error) { return c.dialWith(false) }

// dialWith is dial, optionally without request compression (bench: on
// loopback gzip costs more CPU than it saves).
func (c *clientFlags) dialWith(noGzip bool) (*client.Client, error) {
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
