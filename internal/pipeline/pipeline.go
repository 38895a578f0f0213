// Package pipeline holds the one parallel, ordered pipeline Grantline uses
// wherever independent work on a stream of inputs must be consumed in input
// order: exporting and verifying evidence packages (checking proofs and
// encoding lines in batches) and acknowledging AppendStream batches.
package pipeline

import (
	"context"
	"sync"
)

// Ordered runs produce, which calls emit once per input in order; work, on
// up to workers inputs at a time on other goroutines; and consume, which
// receives work's results one at a time, in emission order, on the calling
// goroutine. At most depth inputs (at least workers) are emitted but not yet
// consumed; emit blocks while that many are. produce runs on its own
// goroutine; emit must be called from it only.
//
// When consume returns an error, or ctx ends, the pipeline stops: the
// context produce and work get is cancelled with that error as its cause,
// emit returns it (context.Cause), workers skip the inputs not yet
// started, and Ordered waits for produce and the workers to return before
// it does, so nothing runs afterwards. When produce returns an error, the
// inputs it emitted before are still consumed, so the first error in input
// order wins. Ordered returns consume's error, else ctx's cause, else
// produce's error.
func Ordered[In, Out any](ctx context.Context, workers, depth int, produce func(ctx context.Context, emit func(In) error) error, work func(ctx context.Context, in In) Out, consume func(Out) error) error {
	workers = max(workers, 1)
	depth = max(depth, workers)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	type slot struct {
		out  Out
		done chan struct{}
	}
	type job struct {
		in In
		s  *slot
	}
	jobs := make(chan job, workers)
	// ordered holds the slots emitted and not yet consumed; its capacity
	// and the one slot the consumer holds make depth.
	ordered := make(chan *slot, depth-1)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for j := range jobs {
				if ctx.Err() == nil {
					j.s.out = work(ctx, j.in)
				}
				close(j.s.done)
			}
		})
	}
	prodErr := make(chan error, 1)
	go func() {
		defer close(ordered)
		defer close(jobs)
		prodErr <- produce(ctx, func(in In) error {
			s := &slot{done: make(chan struct{})}
			select {
			case ordered <- s:
			case <-ctx.Done():
				return context.Cause(ctx)
			}
			select {
			case jobs <- job{in, s}:
			case <-ctx.Done():
				return context.Cause(ctx)
			}
			return nil
		})
	}()

	var err error
	for s := range ordered {
		select {
		case <-s.done:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			err = context.Cause(ctx)
			break
		}
		if err = consume(s.out); err != nil {
			break
		}
	}
	if err != nil {
		cancel(err) // stops produce at its next emit and the workers
	}
	perr := <-prodErr
	wg.Wait()
	if err != nil {
		return err
	}
	return perr
}
