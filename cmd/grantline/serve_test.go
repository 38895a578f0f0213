package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/mod/sumdb/note"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/ingest/client"
	"github.com/grantline/grantline/internal/server"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/proto/gen/grantline/v1/grantlinev1connect"
)

func startTestServer(t *testing.T, cfg server.Config) *server.Server {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	srv, err := server.Start(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close(context.Background()) })
	return srv
}

func h2cClient() *http.Client {
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: tr}
}

func serveEvent(id, subject string) *pb.Event {
	return &pb.Event{Id: id, Type: "grant.activated", Time: timestamppb.New(time.Now().Add(-time.Minute)),
		Source: &pb.Source{System: "pam"}, Subject: &pb.Identity{Id: subject, Kind: "human"}}
}

func TestServeFirstStartAndRestart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	srv := startTestServer(t, server.Config{DataDir: dir})
	if !strings.HasPrefix(srv.URL, "http://127.0.0.1:") || !srv.NewAdminToken || srv.AdminToken == "" {
		t.Fatalf("first start: URL %q, new token %v, token set %v", srv.URL, srv.NewAdminToken, srv.AdminToken != "")
	}
	for _, f := range []string{"keys/log.vkey", "keys/evidence.pub", "admin.token"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("first start did not write %s: %v", f, err)
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, "admin.token")); err == nil && fi.Mode().Perm() != 0o600 {
		t.Errorf("admin.token mode %v, want 0600", fi.Mode().Perm())
	}
	vkey, err := os.ReadFile(filepath.Join(dir, "keys/log.vkey"))
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := note.NewVerifier(strings.TrimSpace(string(vkey)))
	if err != nil {
		t.Fatal(err)
	}
	// The empty tree's checkpoint is published at first start.
	hc := h2cClient()
	for _, opts := range [][]connect.ClientOption{nil, {connect.WithGRPC()}} {
		opts = append(opts, connect.WithInterceptors(client.Bearer(srv.AdminToken)))
		lc := grantlinev1connect.NewLogServiceClient(hc, srv.URL, opts...)
		cp, err := lc.GetCheckpoint(t.Context(), connect.NewRequest(&pb.GetCheckpointRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := note.Open([]byte(cp.Msg.GetCheckpoint()), note.VerifierList(verifier)); err != nil {
			t.Fatalf("checkpoint does not verify with keys/log.vkey: %v", err)
		}
	}
	ic := grantlinev1connect.NewIngestServiceClient(hc, srv.URL, connect.WithInterceptors(client.Bearer(srv.AdminToken)))
	resp, err := ic.Append(t.Context(), connect.NewRequest(&pb.AppendRequest{Events: []*pb.Event{serveEvent("1", "alice"), serveEvent("2", "bob")}}))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Msg.GetTreeSize() != 2 {
		t.Fatalf("tree size %d after two appends, want 2", resp.Msg.GetTreeSize())
	}
	// Bad input is refused with the field named.
	bad := serveEvent("3", "")
	_, err = ic.Append(t.Context(), connect.NewRequest(&pb.AppendRequest{Events: []*pb.Event{bad}}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "events[0].subject.id") {
		t.Errorf("append without subject.id = %v, want InvalidArgument naming events[0].subject.id", err)
	}
	if err := srv.Close(t.Context()); err != nil {
		t.Fatal(err)
	}

	again := startTestServer(t, server.Config{DataDir: dir})
	if again.NewAdminToken || again.AdminToken != srv.AdminToken || again.VerifierKey != srv.VerifierKey {
		t.Errorf("restart changed the token or key: new %v, same token %v, same vkey %v",
			again.NewAdminToken, again.AdminToken == srv.AdminToken, again.VerifierKey == srv.VerifierKey)
	}
	lc := grantlinev1connect.NewLogServiceClient(hc, again.URL, connect.WithInterceptors(client.Bearer(again.AdminToken)))
	cp, err := lc.GetCheckpoint(t.Context(), connect.NewRequest(&pb.GetCheckpointRequest{}))
	if err != nil || cp.Msg.GetTreeSize() != 2 {
		t.Fatalf("after restart: %v, %v; want size 2", cp, err)
	}
	_, err = server.Start(t.Context(), server.Config{DataDir: dir, Listen: "127.0.0.1:0", Origin: "other.example/log"})
	if err == nil || !strings.Contains(err.Error(), "origin") {
		t.Errorf("restart with another --origin = %v, want a refusal naming the origin", err)
	}
}

func TestServeRefusesBrokenRule(t *testing.T) {
	dir := t.TempDir()
	rulesDir := filepath.Join(dir, "rules")
	os.Mkdir(rulesDir, 0o755)
	os.WriteFile(filepath.Join(rulesDir, "broken.yaml"), []byte(
		"id: broken\ntitle: Broken\nseverity: high\ncontrols: [PR.AA-05]\nexpression: |\n  subject.nope +\n"), 0o644)
	_, err := server.Start(t.Context(), server.Config{DataDir: filepath.Join(dir, "data"), Listen: "127.0.0.1:0", RulesDir: rulesDir})
	if err == nil || !strings.Contains(err.Error(), "broken.yaml:") {
		t.Fatalf("start with a broken rule = %v, want an error naming broken.yaml:line:col", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); err == nil {
		t.Errorf("a refused start created the data directory")
	}
}

func TestServeTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, pool := selfSigned(t, dir)
	srv := startTestServer(t, server.Config{DataDir: filepath.Join(dir, "data"), TLSCert: certFile, TLSKey: keyFile})
	if !strings.HasPrefix(srv.URL, "https://") {
		t.Fatalf("URL %q, want https", srv.URL)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	for _, opts := range [][]connect.ClientOption{nil, {connect.WithGRPC()}} {
		lc := grantlinev1connect.NewLogServiceClient(hc, srv.URL, append(opts, connect.WithInterceptors(client.Bearer(srv.AdminToken)))...)
		if _, err := lc.GetCheckpoint(t.Context(), connect.NewRequest(&pb.GetCheckpointRequest{})); err != nil {
			t.Fatalf("over TLS: %v", err)
		}
	}
	// Cleartext to a TLS port fails.
	if _, err := h2cClient().Get(strings.Replace(srv.URL, "https", "http", 1) + "/checkpoint"); err == nil {
		t.Errorf("cleartext request to the TLS port succeeded")
	}
	_, err := server.Start(t.Context(), server.Config{DataDir: filepath.Join(dir, "d2"), Listen: "127.0.0.1:0", TLSCert: certFile})
	if err == nil || !strings.Contains(err.Error(), "--tls-key") {
		t.Errorf("--tls-cert alone = %v, want an error naming --tls-key", err)
	}
}

// TestServeCloseDrains closes the server while many appends are in flight:
// every acknowledged event must be in the log after a restart.
func TestServeCloseDrains(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	srv := startTestServer(t, server.Config{DataDir: dir})
	hc := h2cClient()
	ic := grantlinev1connect.NewIngestServiceClient(hc, srv.URL, connect.WithInterceptors(client.Bearer(srv.AdminToken)))
	var mu sync.Mutex
	acked := map[string]uint64{}
	first := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := 0; ; b++ {
				var evs []*pb.Event
				for i := range 50 {
					evs = append(evs, serveEvent(fmt.Sprintf("w%d-b%d-%d", w, b, i), fmt.Sprint("u", i)))
				}
				resp, err := ic.Append(context.Background(), connect.NewRequest(&pb.AppendRequest{Events: evs}))
				if err != nil {
					return // the server is going away
				}
				mu.Lock()
				for i, r := range resp.Msg.GetResults() {
					acked[evs[i].GetId()] = r.GetIndex()
				}
				mu.Unlock()
				once.Do(func() { close(first) })
			}
		}()
	}
	<-first
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := srv.Close(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Wait()

	again := startTestServer(t, server.Config{DataDir: dir})
	lc := grantlinev1connect.NewLogServiceClient(hc, again.URL, connect.WithInterceptors(client.Bearer(again.AdminToken)))
	got := map[string]uint64{}
	for start := uint64(0); ; {
		resp, err := lc.GetEntries(t.Context(), connect.NewRequest(&pb.GetEntriesRequest{Start: start, Count: 1000}))
		if connect.CodeOf(err) == connect.CodeOutOfRange {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range resp.Msg.GetEntries() {
			got[e.GetEvent().GetId()] = e.GetIndex()
			start = e.GetIndex() + 1
		}
	}
	if len(acked) == 0 {
		t.Fatal("nothing was acknowledged")
	}
	for id, idx := range acked {
		if g, ok := got[id]; !ok || g != idx {
			t.Fatalf("acknowledged event %s (index %d) is at %d, present %v after restart", id, idx, g, ok)
		}
	}
}

func TestServeFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--log-format", "xml"},
		{"--log-level", "loud"},
		{"--evaluate-scan", "sometimes"},
		{"--evaluate-cache", "lots"},
		{"--evaluate-cache", "-1"},
		{"extra-arg"},
	} {
		var stderr bytes.Buffer
		env := &cmdEnv{stdout: &bytes.Buffer{}, stderr: &stderr, getenv: func(string) string { return "" }}
		if code := runMain(t.Context(), env, append([]string{"serve"}, args...)); code != 2 {
			t.Errorf("serve %v: exit %d, want 2 (stderr %q)", args, code, stderr.String())
		}
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "grantline test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// BenchmarkServeAppendStream appends b.N batches of 1000 ~500-byte events
// over 4 AppendStream clients to a real server (ledger on disk) on loopback.
// go test -run '^$' -bench ServeAppendStream -benchtime 100x ./cmd/grantline
func BenchmarkServeAppendStream(b *testing.B) {
	srv, err := server.Start(context.Background(), server.Config{DataDir: b.TempDir(), Listen: "127.0.0.1:0"})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close(context.Background())
	hc := h2cClient()
	const streams, per = 4, 1000
	reason := strings.Repeat("r", 300)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for s := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ic := grantlinev1connect.NewIngestServiceClient(hc, srv.URL, connect.WithInterceptors(client.Bearer(srv.AdminToken)))
			stream := ic.AppendStream(context.Background())
			n := b.N / streams
			go func() {
				for i := range n {
					evs := make([]*pb.Event, per)
					for j := range evs {
						evs[j] = serveEvent(fmt.Sprintf("s%d-b%d-%d", s, i, j), fmt.Sprint("u", j%200))
						evs[j].Reason = reason
					}
					stream.Send(&pb.AppendStreamRequest{Seq: uint64(i), Events: evs})
				}
				stream.CloseRequest()
			}()
			for range n {
				if _, err := stream.Receive(); err != nil {
					b.Error(err)
					return
				}
			}
			stream.CloseResponse()
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(b.N/streams*streams*per)/time.Since(start).Seconds(), "events/s")
}
