package ingest

import (
	"errors"
	"net/http"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/grantline/grantline/ledger"
)

// tileHeight is the tlog-tiles height: 8 bits, 256 hashes or entries a tile.
const tileHeight = 8

// parseTilePath parses a C2SP tlog-tiles path (without the leading slash):
// "tile/<L>/<N>[.p/<W>]" or "tile/entries/<N>[.p/<W>]". It reuses the Go
// checksum database's parser, whose paths carry the height after "tile/" and
// call entry bundles "data"; level -1 is an entry bundle.
func parseTilePath(p string) (tlog.Tile, error) {
	rest, ok := strings.CutPrefix(p, "tile/")
	if !ok {
		return tlog.Tile{}, errors.New("not a tile path")
	}
	if r, ok := strings.CutPrefix(rest, "entries/"); ok {
		rest = "data/" + r
	} else if strings.HasPrefix(rest, "data/") {
		return tlog.Tile{}, errors.New("not a tile path")
	}
	return tlog.ParseTilePath("tile/8/" + rest)
}

// tileCovered reports whether the tree of size holds every hash (or entry)
// of tile t at its width.
func tileCovered(t tlog.Tile, size uint64) bool {
	level := t.L
	if level < 0 {
		level = 0
	}
	shift := uint(tileHeight * level)
	if shift >= 64 {
		return false
	}
	have := size >> shift // hashes at this level
	need := uint64(t.N)*256 + uint64(t.W)
	return uint64(t.N) < 1<<48 && have >= need
}

// serveTiles serves GET /checkpoint and the tlog-tiles paths.
func (s *Server) serveTiles(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed: the tlog-tiles read path is GET only", http.StatusMethodNotAllowed)
		return
	}
	path := strings.TrimPrefix(r.URL.Path, "/")
	if path == "checkpoint" {
		cp := s.cfg.Ledger.Latest()
		if s.cfg.Witnessed != nil {
			var ok bool
			if cp, ok = s.cfg.Witnessed(); !ok {
				w.Header().Set("Retry-After", "1")
				http.Error(w, "no checkpoint has reached the witnesses' quorum yet; retry shortly (see docs/witnessing.md)", http.StatusServiceUnavailable)
				return
			}
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache")
		w.Write(cp.Note)
		return
	}
	t, err := parseTilePath(path)
	if err != nil {
		http.Error(w, "not found: want /checkpoint, /tile/<L>/<N>[.p/<W>] or /tile/entries/<N>[.p/<W>] (C2SP tlog-tiles path encoding)", http.StatusNotFound)
		return
	}
	size := s.cfg.Ledger.Latest().Size
	if !tileCovered(t, size) {
		http.Error(w, "not found: the tree (size "+strconv.FormatUint(size, 10)+") does not cover this tile", http.StatusNotFound)
		return
	}
	var data []byte
	if t.L < 0 {
		data, err = s.cfg.Ledger.ReadEntryBundle(r.Context(), uint64(t.N), t.W)
	} else {
		data, err = s.cfg.Ledger.ReadTile(r.Context(), uint64(t.L), uint64(t.N), t.W)
	}
	switch {
	case errors.Is(err, ledger.ErrNotFound), errors.Is(err, ledger.ErrOutOfRange):
		http.Error(w, "not found", http.StatusNotFound)
		return
	case err != nil:
		s.log.ErrorContext(r.Context(), "reading tile", "path", path, "err", err)
		http.Error(w, "unavailable: reading the tile failed; retry later", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	if t.W == 256 {
		// Full tiles never change. Responses to requests with Authorization
		// are not stored by shared caches unless marked public (RFC 9111).
		w.Header().Set("Cache-Control", "max-age=31536000, immutable")
	} else {
		w.Header().Set("Cache-Control", "no-cache")
	}
	w.Write(data)
}
