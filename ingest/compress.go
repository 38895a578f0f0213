package ingest

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"

	"connectrpc.com/connect"

	"github.com/grantline/grantline/ledger/event"
)

// Limits on compressed messages. Together with event.MaxMessageBytes (which
// connect checks on the wire and again after inflating) they bound what one
// message can cost the server; docs/operations.md lists them.
const (
	// MaxInflatedBytes is the most one message may inflate to.
	MaxInflatedBytes = event.MaxMessageBytes
	// MaxCompressionRatio is the most a compressed message may inflate,
	// relative to its compressed size, once it is past ratioFreeBytes.
	// Event batches compress 5 to 20 times; gzip's own maximum is about
	// 1030, which only crafted input reaches.
	MaxCompressionRatio = 256
	// ratioFreeBytes may be inflated whatever the ratio, so that small,
	// very repetitive messages are never refused.
	ratioFreeBytes = 1 << 20
)

// ErrCompressionBomb is the class of decompression refusals (errors.Is):
// a message that inflates past MaxInflatedBytes or MaxCompressionRatio.
var ErrCompressionBomb = errors.New("compressed message refused")

// cappedGzip is connect's gzip decompressor with the limits above: it stops
// with an error as soon as a limit is passed, so a bomb is never inflated
// to the end (connect itself would read a message that is over its limit
// to the end to report its size).
type cappedGzip struct {
	src countingReader
	zr  *gzip.Reader
	out int64
}

func newCappedGzip() connect.Decompressor { return &cappedGzip{} }

func (c *cappedGzip) Reset(r io.Reader) error {
	c.src = countingReader{r: r}
	c.out = 0
	if c.zr == nil {
		zr, err := gzip.NewReader(&c.src)
		if err != nil {
			return err
		}
		c.zr = zr
		return nil
	}
	return c.zr.Reset(&c.src)
}

func (c *cappedGzip) Read(p []byte) (int, error) {
	if c.zr == nil {
		return 0, errors.New("gzip: read before reset")
	}
	n, err := c.zr.Read(p)
	c.out += int64(n)
	if c.out > MaxInflatedBytes {
		return n, fmt.Errorf("%w: it inflates past %d bytes (the limit of one message); split the batch", ErrCompressionBomb, MaxInflatedBytes)
	}
	if c.out > ratioFreeBytes && c.out > MaxCompressionRatio*c.src.n {
		return n, fmt.Errorf("%w: %d compressed bytes inflate to more than %d, over the ratio limit of %d", ErrCompressionBomb, c.src.n, c.out, MaxCompressionRatio)
	}
	return n, err
}

func (c *cappedGzip) Close() error {
	if c.zr == nil {
		return nil
	}
	return c.zr.Close()
}

// countingReader counts the compressed bytes the inflater consumed. It
// passes ReadByte through so that flate reads exactly what it needs (it
// would otherwise read ahead through a bufio.Reader and the count would run
// up to 4 KiB early).
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func (c *countingReader) ReadByte() (byte, error) {
	if br, ok := c.r.(io.ByteReader); ok {
		b, err := br.ReadByte()
		if err == nil {
			c.n++
		}
		return b, err
	}
	var b [1]byte
	n, err := io.ReadFull(c.r, b[:])
	c.n += int64(n)
	return b[0], err
}

func newGzipCompressor() connect.Compressor { return gzip.NewWriter(io.Discard) }
