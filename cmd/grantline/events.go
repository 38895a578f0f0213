package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

func init() {
	register(&command{
		name:    "events",
		usage:   "[--server URL --token T] [--json] [--size N] SUBJECT",
		summary: "list one identity's event chain in ledger order (all pages)",
		run:     runEventsCmd,
	})
}

func runEventsCmd(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, commands["events"])
	var cf clientFlags
	cf.register(fs, env)
	asJSON := fs.Bool("json", false, "one JSON object (grantline.v1.LogEntry) a line")
	size := fs.Uint64("size", 0, "only entries below this tree size (0: the latest checkpoint)")
	pageSize := fs.Uint("page-size", 1000, "entries per request")
	rest, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		fs.Usage()
		return &exitError{code: 2, msg: "want exactly one SUBJECT (a subject.id)"}
	}
	cl, err := cf.dial()
	if err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	var tw *tabwriter.Writer
	if !*asJSON {
		tw = tabwriter.NewWriter(env.stdout, 2, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "INDEX\tTIME\tTYPE\tID\tENTITLEMENT\tREFS")
	}
	token, n := "", 0
	for {
		resp, err := cl.Log().ListSubjectEvents(ctx, connect.NewRequest(&pb.ListSubjectEventsRequest{
			SubjectId: rest[0], PageSize: uint32(*pageSize), PageToken: token, TreeSize: *size}))
		if err != nil {
			return fmt.Errorf("listing events of %q: %s", rest[0], describeRPCError(err))
		}
		for _, e := range resp.Msg.GetEntries() {
			n++
			if *asJSON {
				b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(e)
				if err != nil {
					return err
				}
				fmt.Fprintf(env.stdout, "%s\n", b)
				continue
			}
			ev := e.GetEvent()
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", e.GetIndex(), ev.GetTime().AsTime().UTC().Format(time.RFC3339),
				ev.GetType(), ev.GetId(), ev.GetEntitlement().GetId(), refsString(ev.GetRefs()))
		}
		token = resp.Msg.GetNextPageToken()
		if token == "" {
			break
		}
	}
	if tw != nil {
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintf(env.stderr, "%d event(s) of %s\n", n, rest[0])
	}
	return nil
}

func refsString(r *pb.Refs) string {
	var parts []string
	for _, kv := range [][2]string{{"request", r.GetRequest()}, {"grant", r.GetGrant()}, {"session", r.GetSession()},
		{"credential", r.GetCredential()}, {"review", r.GetReview()}, {"ticket", r.GetTicket()}} {
		if kv[1] != "" {
			parts = append(parts, kv[0]+"="+kv[1])
		}
	}
	return strings.Join(parts, " ")
}
