package ingest

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"time"
)

// Backuper is implemented by a Ledger that can write a consistent online
// backup of its store. Backup reads one snapshot, may run while appends
// continue, and writes the backup to w; it is safe for concurrent use.
type Backuper interface {
	Backup(ctx context.Context, w io.Writer) error
}

// backupHandler streams an online backup (GET /admin/backup, admin only).
// The body is the store's backup format, for `grantline restore`. A failure
// after the first byte can only be signalled by cutting the response short,
// so the client must check it got a complete file (restore runs fsck).
func backupHandler(b Backuper, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Disposition", `attachment; filename="grantline-`+time.Now().UTC().Format("20060102T150405Z")+`.backup"`)
		w.Header().Set("Cache-Control", "no-store")
		start := time.Now()
		if err := b.Backup(r.Context(), w); err != nil {
			log.ErrorContext(r.Context(), "online backup failed", "err", err, "after", time.Since(start))
			panic(http.ErrAbortHandler) // cut the response so the client sees an incomplete file
		}
		log.InfoContext(r.Context(), "online backup written", "duration", time.Since(start))
	})
}
