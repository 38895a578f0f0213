package client_test

import (
	"context"
	"fmt"
	"log"
	"strings"
	"time"

	"github.com/grantline/grantline/ingest/client"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// Append events read from JSON lines, then check the whole log over the
// tiles endpoints. (Not run: it needs a server at 127.0.0.1:7800.)
func Example() {
	ctx := context.Background()
	cl, err := client.Dial("http://127.0.0.1:7800", client.Options{Token: "TOKEN"})
	if err != nil {
		log.Fatal(err)
	}
	input := `{"id":"evt-1","type":"grant.activated","time":"2026-01-02T03:04:05Z","source":{"system":"pam"},"subject":{"id":"alice"}}`

	batches := make(chan *client.Batch, 4)
	readErr := make(chan error, 1)
	go func() {
		defer close(batches)
		p := client.NewPacker(1000, batches)
		readErr <- client.ReadEvents("events.jsonl", strings.NewReader(input), func(line int, ev *pb.Event, lerr error) error {
			if lerr != nil {
				return lerr // "events.jsonl:LINE: field x.y: problem"
			}
			return p.Add(ctx, fmt.Sprintf("events.jsonl:%d", line), ev)
		})
		if err := p.Flush(ctx); err != nil {
			readErr <- err
		}
	}()
	var st client.Stats
	err = client.AppendStream(ctx, cl.Ingest(), client.StreamOptions{Streams: 2, Window: 8, Retries: 8}, batches,
		func(_ *client.Batch, resp *pb.AppendStreamResponse, _ time.Duration) { st.Add(resp) })
	if err != nil {
		log.Fatal(err)
	}
	if err := <-readErr; err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d new, %d duplicate, tree size %d\n", st.Fresh.Load(), st.Dup.Load(), st.TreeSize.Load())

	r, err := cl.VerifyTiles(ctx, nil, st.TreeSize.Load())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d entries and %d tiles recomputed; root %x\n", r.Size, r.Tiles, r.Root)
}
