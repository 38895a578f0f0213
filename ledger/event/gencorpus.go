//go:build ignore

// gencorpus writes the committed seed corpora of the event fuzz targets to
// testdata/fuzz. Run from ledger/event/: go run gencorpus.go
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

func write(target, name, value string) {
	dir := filepath.Join("testdata", "fuzz", target)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		panic(err)
	}
	data := "go test fuzz v1\n" + value + "\n"
	if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
		panic(err)
	}
}

func main() {
	t0 := timestamppb.New(time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC))
	events := map[string]*pb.Event{
		"valid-full": {Id: "evt-1", Type: "access.approved", Time: t0,
			Source:  &pb.Source{System: "sailpoint", Product: "iiq", Tenant: "acme", RawType: "APPROVE", RawId: "9"},
			Subject: &pb.Identity{Id: "alice", Kind: "human", Display: "Alice"}, Actor: &pb.Identity{Id: "bob", Kind: "human"},
			Entitlement: &pb.Entitlement{Id: "aws-admin", Resource: "aws:prod", Privileged: true},
			Refs:        &pb.Refs{Request: "REQ-1", Grant: "G-1", Ticket: "CHG-7"},
			ExpiresAt:   timestamppb.New(time.Date(2026, 11, 2, 12, 0, 0, 0, time.UTC)),
			Reason:      "incident 42", Mfa: proto.Bool(true), Attributes: map[string]string{"region": "eu-west-1"}},
		"unknown-type": {Id: "x", Type: "grant.teleported", Time: t0, Source: &pb.Source{System: "s"}, Subject: &pb.Identity{Id: "a"}},
		"before-1970":  {Id: "x", Type: "session.started", Time: &timestamppb.Timestamp{Seconds: -86400}, Source: &pb.Source{System: "s"}, Subject: &pb.Identity{Id: "a"}},
		"far-future":   {Id: "x", Type: "session.started", Time: &timestamppb.Timestamp{Seconds: 253402300799}, Source: &pb.Source{System: "s"}, Subject: &pb.Identity{Id: "a"}},
		"bad-kind":     {Id: "x", Type: "session.started", Time: t0, Source: &pb.Source{System: "s"}, Subject: &pb.Identity{Id: "a", Kind: "robot"}},
		"oversized":    {Id: "x", Type: "session.started", Time: t0, Source: &pb.Source{System: "s"}, Subject: &pb.Identity{Id: "a"}, Reason: strings.Repeat("r", 8000), Entitlement: &pb.Entitlement{Resource: strings.Repeat("e", 8000)}, Actor: &pb.Identity{Display: strings.Repeat("d", 8000)}, Attributes: map[string]string{"a": strings.Repeat("v", 4000), "b": strings.Repeat("v", 4000)}},
		"no-subject":   {Id: "x", Type: "identity.created", Time: t0, Source: &pb.Source{System: "s"}},
	}
	for name, ev := range events {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(ev)
		if err != nil {
			panic(err)
		}
		write("FuzzValidateEvent", name, fmt.Sprintf("[]byte(%q)", b))
		j, err := protojson.Marshal(ev)
		if err != nil {
			panic(err)
		}
		var compact bytes.Buffer // protojson randomises whitespace
		if err := json.Compact(&compact, j); err != nil {
			panic(err)
		}
		write("FuzzDecodeEventJSON", name, fmt.Sprintf("string(%q)", compact.Bytes()))
	}
	// Hand-written inputs: invalid UTF-8 in a string field, a truncated
	// message, snake_case JSON, malformed JSON.
	write("FuzzValidateEvent", "invalid-utf8", fmt.Sprintf("[]byte(%q)", "\x0a\x02\xff\xfe\x12\x0faccess.approved"))
	write("FuzzValidateEvent", "truncated", fmt.Sprintf("[]byte(%q)", "\x0a\x10abc"))
	write("FuzzDecodeEventJSON", "snake-case", fmt.Sprintf("string(%q)", `{"id":"x","type":"grant.removed","time":"2026-01-01T00:00:00Z","expires_at":"2026-01-02T00:00:00Z","source":{"system":"s","raw_id":"1"},"subject":{"id":"a","owner_id":"o"}}`))
	write("FuzzDecodeEventJSON", "malformed", fmt.Sprintf("string(%q)", `{"id":"x","type":`))
	req, _ := proto.Marshal(&pb.AppendRequest{Events: []*pb.Event{events["valid-full"], events["unknown-type"]}})
	write("FuzzAppendRequest", "two-events", fmt.Sprintf("[]byte(%q)", req))
	write("FuzzAppendRequest", "empty", `[]byte("")`)
}
