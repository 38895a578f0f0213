package client

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/proto/gen/grantline/v1/grantlinev1connect"
)

func TestDialRefuses(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, url, ca string
		is            error
		want          string
	}{
		{"no scheme", "127.0.0.1:7800", "", ErrBadURL, `server "127.0.0.1:7800": want a URL such as`},
		{"other scheme", "grpc://x", "", ErrBadURL, "want a URL"},
		{"missing CA file", "https://x", filepath.Join(dir, "none.pem"), os.ErrNotExist, "reading CA file"},
		{"CA file without PEM", "https://x", notPEM, nil, "no PEM certificates found"},
	}
	for _, tt := range tests {
		_, err := Dial(tt.url, Options{Token: "t", CAFile: tt.ca})
		if err == nil || !strings.Contains(err.Error(), tt.want) || (tt.is != nil && !errors.Is(err, tt.is)) {
			t.Errorf("%s: Dial = %v, want an error containing %q (is %v)", tt.name, err, tt.want, tt.is)
		}
	}
	for _, u := range []string{"http://127.0.0.1:1/", "https://example.test"} {
		cl, err := Dial(u, Options{Token: "t"})
		if err != nil || strings.HasSuffix(cl.URL(), "/") {
			t.Errorf("Dial(%s) = %v, %v; want a client, URL without trailing slash", u, cl, err)
		}
	}
}

func TestReadEventsPositionsErrors(t *testing.T) {
	good := `{"id":"e%d","type":"access.approved","time":"2026-01-02T03:04:05Z","source":{"system":"okta"},"subject":{"id":"alice"}}`
	input := strings.Join([]string{
		strings.Replace(good, "%d", "1", 1),
		"",
		strings.Replace(good, `"subject":{"id":"alice"}`, `"subject":{}`, 1),
		"   ",
		strings.Replace(good, "%d", "5", 1),
	}, "\n")
	var lines []int
	var errs []string
	err := ReadEvents("in.jsonl", strings.NewReader(input), func(line int, ev *pb.Event, lerr error) error {
		if lerr != nil {
			errs = append(errs, lerr.Error())
			return nil
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != 2 || lines[0] != 1 || lines[1] != 5 {
		t.Errorf("good lines = %v, want [1 5] (blank lines counted, not reported)", lines)
	}
	if len(errs) != 1 || errs[0] != "in.jsonl:3: field subject.id: required" {
		t.Errorf("errors = %q, want [in.jsonl:3: field subject.id: required]", errs)
	}

	stop := errors.New("stop")
	if err := ReadEvents("in.jsonl", strings.NewReader(input), func(int, *pb.Event, error) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("ReadEvents with fn failing = %v, want fn's error", err)
	}
	long := strings.Repeat("x", MaxLineBytes+1)
	if err := ReadEvents("big.jsonl", strings.NewReader("\n"+long), func(int, *pb.Event, error) error { return nil }); err == nil || !strings.HasPrefix(err.Error(), "big.jsonl:2: line longer than") {
		t.Errorf("ReadEvents(long line) = %v, want big.jsonl:2: line longer than ...", err)
	}
}

func TestPacker(t *testing.T) {
	ev := func(id string, pad int) *pb.Event {
		return &pb.Event{Id: id, Type: "grant.activated", Time: timestamppb.Now(), Source: &pb.Source{System: "s"},
			Subject: &pb.Identity{Id: "u"}, Reason: strings.Repeat("r", pad)}
	}
	tests := []struct {
		name  string
		n     int
		pads  []int
		sizes []int // events per batch sent
	}{
		{"by count", 2, []int{0, 0, 0, 0, 0}, []int{2, 2, 1}},
		{"exact", 3, []int{0, 0, 0}, []int{3}},
		{"by bytes", 1000, []int{3 << 20, 3 << 20, 0}, []int{2, 1}},
		{"nothing", 5, nil, nil},
	}
	for _, tt := range tests {
		out := make(chan *Batch, 10)
		p := NewPacker(tt.n, out)
		for i, pad := range tt.pads {
			if err := p.Add(t.Context(), "line "+string(rune('1'+i)), ev(string(rune('a'+i)), pad)); err != nil {
				t.Fatal(err)
			}
		}
		if err := p.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
		close(out)
		var got []int
		seq, first := uint64(0), 0
		for b := range out {
			if b.Seq != seq || b.Where != "line "+string(rune('1'+first)) {
				t.Errorf("%s: batch %d has seq %d, where %q; want seq %d, where line %d", tt.name, seq, b.Seq, b.Where, seq, first+1)
			}
			got = append(got, len(b.Events))
			seq++
			first += len(b.Events)
		}
		if !slices.Equal(got, tt.sizes) {
			t.Errorf("%s: batches of %v events, want %v", tt.name, got, tt.sizes)
		}
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	p := NewPacker(1, make(chan *Batch)) // nobody receives
	if err := p.Add(ctx, "x", ev("a", 0)); !errors.Is(err, context.Canceled) {
		t.Errorf("Add on a cancelled context with nobody receiving = %v, want context.Canceled", err)
	}
}

// TestNoGzipAsksForPlainResponses: a client with NoGzip neither compresses
// its stream messages nor offers gzip for the server's, so acknowledgements
// on loopback are not gzipped by the server and inflated here; without it,
// it does both.
func TestNoGzipAsksForPlainResponses(t *testing.T) {
	headers := make(chan http.Header, 1)
	mux := http.NewServeMux()
	mux.Handle(grantlinev1connect.NewIngestServiceHandler(grantlinev1connect.UnimplementedIngestServiceHandler{}))
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != grantlinev1connect.IngestServiceAppendStreamProcedure {
			mux.ServeHTTP(w, r) // the health check before the first stream
			return
		}
		select {
		case headers <- r.Header.Clone():
		default:
		}
		mux.ServeHTTP(w, r)
	}))
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	for _, tt := range []struct {
		noGzip bool
		want   string // the stream's Connect-Content-Encoding and Connect-Accept-Encoding
	}{{false, "gzip gzip"}, {true, " "}} {
		cl, err := Dial(srv.URL, Options{Token: "t", NoGzip: tt.noGzip})
		if err != nil {
			t.Fatal(err)
		}
		st := cl.Ingest().AppendStream(t.Context())
		_ = st.Send(&pb.AppendStreamRequest{Seq: 1, Events: []*pb.Event{{Id: strings.Repeat("x", 2000)}}})
		_ = st.CloseRequest()
		_, _ = st.Receive()
		_ = st.CloseResponse()
		h := <-headers
		if got := h.Get("Connect-Content-Encoding") + " " + h.Get("Connect-Accept-Encoding"); got != tt.want {
			t.Errorf("NoGzip %v: stream encodings %q, want %q", tt.noGzip, got, tt.want)
		}
	}
}

// TestAppendStreamSettlesTheConnectionFirst: a Client's first AppendStream
// is preceded by one health check on the connection (so that the stream
// is sent in large HTTP/2 frames: settledIngest), later streams are not,
// and a server that does not serve the health check (an error answer)
// still gets its streams, with no second check.
func TestAppendStreamSettlesTheConnectionFirst(t *testing.T) {
	for _, withHealth := range []bool{true, false} {
		var (
			mu    sync.Mutex
			paths []string
		)
		mux := http.NewServeMux()
		mux.Handle(grantlinev1connect.NewIngestServiceHandler(grantlinev1connect.UnimplementedIngestServiceHandler{}))
		if withHealth {
			mux.Handle(grpchealth.NewHandler(grpchealth.NewStaticChecker()))
		}
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			paths = append(paths, r.URL.Path)
			mu.Unlock()
			mux.ServeHTTP(w, r)
		}))
		srv.Config.Protocols = new(http.Protocols)
		srv.Config.Protocols.SetUnencryptedHTTP2(true)
		srv.Start()
		cl, err := Dial(srv.URL, Options{Token: "t", NoGzip: true})
		if err != nil {
			t.Fatal(err)
		}
		for range 2 {
			st := cl.Ingest().AppendStream(t.Context())
			_ = st.Send(&pb.AppendStreamRequest{Seq: 1})
			_ = st.CloseRequest()
			if _, err := st.Receive(); connect.CodeOf(err) != connect.CodeUnimplemented {
				t.Errorf("health %v: stream answered %v, want the server's Unimplemented", withHealth, err)
			}
			_ = st.CloseResponse()
		}
		srv.Close()
		check, stream := "/grpc.health.v1.Health/Check", grantlinev1connect.IngestServiceAppendStreamProcedure
		if want := []string{check, stream, stream}; !slices.Equal(paths, want) {
			t.Errorf("health %v: requests %q, want %q", withHealth, paths, want)
		}
	}
}
