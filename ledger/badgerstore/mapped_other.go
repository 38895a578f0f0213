//go:build !linux

package badgerstore

import (
	"log/slog"
	"time"
)

// mappedBound is a no-op outside Linux: Options.MaxMappedBytes is not
// enforced there (docs/operations.md, "Memory").
type mappedBound struct{ trims int }

func startMappedBound(string, int64, time.Duration, *slog.Logger) *mappedBound { return nil }

func (m *mappedBound) stop() {}
