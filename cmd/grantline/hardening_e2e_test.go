package main

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/grantline/grantline/ingest/client"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/proto/gen/grantline/v1/grantlinev1connect"
)

// peakRSS returns the peak resident set size (VmHWM) of a process, in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("no /proc to measure the server's memory: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("VmHWM %q: %v", rest, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// TestServeHostileInput runs the real binary and sends what used to hurt
// it: compression bombs without a token (refused unread: the server's peak
// memory does not move), an event with a misspelt JSON field (refused by
// name, not dropped), and an AppendStream left idle (closed at
// --stream-idle-timeout).
func TestServeHostileInput(t *testing.T) {
	requireBinary(t)
	s := startE2EServerAt(t, filepath.Join(t.TempDir(), "data"), freeAddr(t), "--stream-idle-timeout", "1s")
	post := func(path string, h http.Header, body []byte) (int, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, s.url+path, bytes.NewReader(body))
		req.Header = h
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	t.Run("bomb without a token", func(t *testing.T) {
		ev := testEvent(1, "alice")
		ev.Reason = strings.Repeat("a", 16<<20-4096)
		raw, _ := proto.Marshal(&pb.AppendRequest{Events: []*pb.Event{ev}})
		var z bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&z, gzip.BestCompression)
		zw.Write(raw)
		zw.Close()
		h := http.Header{"Content-Type": {"application/proto"}, "Content-Encoding": {"gzip"}}
		post(grantlinev1connect.IngestServiceAppendProcedure, h, nil) // warm up
		before := peakRSS(t, s.cmd.Process.Pid)
		for range 3 {
			if status, body := post(grantlinev1connect.IngestServiceAppendProcedure, h, z.Bytes()); status != 401 {
				t.Fatalf("a %d-byte bomb without a token: %d %s; want 401", z.Len(), status, body)
			}
		}
		// Inflating and decoding one bomb costs the server 50 MB or more;
		// refused unread, three cost nothing measurable.
		if grew := peakRSS(t, s.cmd.Process.Pid) - before; grew > 8<<20 {
			t.Errorf("three refused %d-byte bombs grew the server's peak RSS by %d bytes; want < 8 MiB", z.Len(), grew)
		}
	})

	t.Run("misspelt JSON field", func(t *testing.T) {
		h := http.Header{"Content-Type": {"application/json"}, "Authorization": {"Bearer " + s.token}}
		body := `{"events":[{"id":"x1","type":"grant.activated","time":"2026-01-01T00:00:00Z","source":{"system":"hr"},` +
			`"subject":{"id":"alice","kind":"human"},"expire_at":"2026-02-01T00:00:00Z"}]}`
		status, resp := post(grantlinev1connect.IngestServiceAppendProcedure, h, []byte(body))
		if status != 400 || !strings.Contains(resp, `events[0]: unknown field \"expire_at\"`) {
			t.Errorf("expire_at: %d %s; want 400 naming events[0] and expire_at", status, resp)
		}
	})

	t.Run("idle stream", func(t *testing.T) {
		cl, err := client.Dial(s.url, client.Options{Token: s.token})
		if err != nil {
			t.Fatal(err)
		}
		stream := cl.Ingest().AppendStream(t.Context())
		ev := testEvent(2, "bob")
		ev.Source.System = "hr"
		if err := stream.Send(&pb.AppendStreamRequest{Seq: 1, Events: []*pb.Event{ev}}); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Receive(); err != nil {
			t.Fatal(err)
		}
		_, err = stream.Receive()
		if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(fmt.Sprint(err), "stream idle") {
			t.Errorf("idle stream ended with %v; want Unavailable: stream idle", err)
		}
	})
}
