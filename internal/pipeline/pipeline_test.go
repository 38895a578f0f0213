package pipeline

import (
	"context"
	"errors"
	"math/rand/v2"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// count emits 0..n-1, stopping at the first emit error.
func count(n int) func(context.Context, func(int) error) error {
	return func(_ context.Context, emit func(int) error) error {
		for i := range n {
			if err := emit(i); err != nil {
				return err
			}
		}
		return nil
	}
}

func TestOrderedKeepsOrderAndBounds(t *testing.T) {
	for _, tt := range []struct{ n, workers, depth int }{
		{0, 4, 8}, {1, 1, 1}, {1000, 4, 8}, {500, 1, 1}, {300, 8, 3}, // depth below workers is raised to workers
	} {
		var running, maxRunning, inFlight, maxInFlight atomic.Int64
		var consumed []int
		err := Ordered(t.Context(), tt.workers, tt.depth, func(_ context.Context, emit func(int) error) error {
			for i := range tt.n {
				if v := inFlight.Add(1); v > maxInFlight.Load() {
					maxInFlight.Store(v)
				}
				if err := emit(i); err != nil {
					return err
				}
			}
			return nil
		}, func(_ context.Context, i int) int {
			if v := running.Add(1); v > maxRunning.Load() {
				maxRunning.Store(v)
			}
			time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
			running.Add(-1)
			return i * i
		}, func(sq int) error {
			consumed = append(consumed, sq)
			inFlight.Add(-1)
			return nil
		})
		if err != nil {
			t.Fatalf("%+v: Ordered = %v", tt, err)
		}
		if len(consumed) != tt.n {
			t.Fatalf("%+v: consumed %d results, want %d", tt, len(consumed), tt.n)
		}
		for i, sq := range consumed {
			if sq != i*i {
				t.Fatalf("%+v: result %d is %d, want %d: out of order", tt, i, sq, i*i)
			}
		}
		if m := maxRunning.Load(); m > int64(tt.workers) {
			t.Errorf("%+v: %d work calls ran at once, want at most %d", tt, m, tt.workers)
		}
		// One more than depth: the producer counts an input just before
		// its emit blocks.
		if m, d := maxInFlight.Load(), int64(max(tt.depth, tt.workers)); m > d+1 {
			t.Errorf("%+v: %d inputs emitted and not consumed, want at most %d", tt, m, d+1)
		}
	}
}

func TestOrderedErrors(t *testing.T) {
	errConsume := errors.New("consume failed")
	errProduce := errors.New("produce failed")
	tests := []struct {
		name        string
		produce     func(ctx context.Context, emit func(int) error) error
		consumeFail int // consume fails on this input; -1 never
		want        error
		wantN       int  // inputs consumed successfully
		emitFails   bool // the producer's emit must return the error
	}{
		{"consume error stops the producer", count(1 << 30), 10, errConsume, 10, true},
		{"produce error after its inputs", func(ctx context.Context, emit func(int) error) error {
			if err := count(7)(ctx, emit); err != nil {
				return err
			}
			return errProduce
		}, -1, errProduce, 7, false},
		{"the earlier consume error wins", func(ctx context.Context, emit func(int) error) error {
			if err := count(7)(ctx, emit); err != nil {
				return err
			}
			return errProduce
		}, 3, errConsume, 3, false},
	}
	for _, tt := range tests {
		before := runtime.NumGoroutine()
		var emitErr error
		n := 0
		err := Ordered(t.Context(), 3, 6, func(ctx context.Context, emit func(int) error) error {
			err := tt.produce(ctx, emit)
			emitErr = err
			return err
		}, func(_ context.Context, i int) int { return i }, func(i int) error {
			if i == tt.consumeFail {
				return errConsume
			}
			n++
			return nil
		})
		if !errors.Is(err, tt.want) || n != tt.wantN {
			t.Errorf("%s: Ordered = %v after %d results, want %v after %d", tt.name, err, n, tt.want, tt.wantN)
		}
		if tt.emitFails && !errors.Is(emitErr, errConsume) {
			t.Errorf("%s: the producer's emit returned %v, want the consume error", tt.name, emitErr)
		}
		waitGoroutines(t, before)
	}
}

func TestOrderedCancellation(t *testing.T) {
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithCancelCause(t.Context())
	stop := errors.New("stopped by the caller")
	var started atomic.Int64
	err := Ordered(ctx, 2, 4, count(1<<30), func(ctx context.Context, i int) int {
		started.Add(1)
		if i == 50 {
			cancel(stop)
		}
		return i
	}, func(int) error { return nil })
	if !errors.Is(err, stop) {
		t.Fatalf("Ordered after cancel = %v, want the cancel cause", err)
	}
	if s := started.Load(); s > 50+8 {
		t.Errorf("%d inputs started after cancelling at 50, want a few at most", s)
	}
	waitGoroutines(t, before)

	// A work function blocked on ctx is released by the cancel.
	ctx, cancel2 := context.WithCancel(t.Context())
	go func() { time.Sleep(10 * time.Millisecond); cancel2() }()
	err = Ordered(ctx, 2, 2, count(10), func(ctx context.Context, i int) int { <-ctx.Done(); return i }, func(int) error { return nil })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Ordered with blocked work after cancel = %v, want context.Canceled", err)
	}
}

// waitGoroutines fails unless the goroutine count falls back to before:
// Ordered must leave nothing running.
func waitGoroutines(t *testing.T, before int) {
	t.Helper()
	for range 200 {
		if runtime.NumGoroutine() <= before {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Errorf("%d goroutines left running, want %d", runtime.NumGoroutine(), before)
}
