package badgerstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/dgraph-io/badger/v4/pb"
	"github.com/dgraph-io/badger/v4/y"
	"google.golang.org/protobuf/proto"
)

// manifestFile is badger's list of tables; without it badger starts an
// empty database and deletes every table it finds.
const manifestFile = "MANIFEST"

// checkFiles looks at the files of the badger database in dir before badger
// opens it, and refuses a damaged one with ErrDamaged: data files (tables,
// value logs, memtable logs) without a MANIFEST or with an empty one, and
// tables whose footer or index does not check out (badger reads those in
// goroutines of its own and panics on them). It reads each table's footer
// and index only, not its blocks. A missing or empty dir is fine.
func checkFiles(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading the store directory: %w", err)
	}
	var data []string
	manifest := int64(-1)
	for _, e := range ents {
		name := e.Name()
		switch {
		case name == manifestFile:
			fi, err := e.Info()
			if err != nil {
				return fmt.Errorf("reading the store directory: %w", err)
			}
			manifest = fi.Size()
		case strings.HasSuffix(name, ".sst"), strings.HasSuffix(name, ".vlog"), strings.HasSuffix(name, ".mem"):
			data = append(data, name)
		}
	}
	if len(data) > 0 && manifest <= 0 {
		what := "is missing"
		if manifest == 0 {
			what = "is empty"
		}
		return damaged("%s %s although the directory holds %d data files (%s, ...)",
			filepath.Join(dir, manifestFile), what, len(data), data[0])
	}
	for _, name := range data {
		if strings.HasSuffix(name, ".sst") {
			if err := checkTable(filepath.Join(dir, name)); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkTable checks a badger table's footer: from the end, the checksum
// length (4 bytes), the checksum of the index (a badger pb.Checksum), the
// index length (4 bytes) and the index, which must match its checksum.
func checkTable(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("opening table: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("opening table: %w", err)
	}
	size := fi.Size()
	read := func(off, n int64) ([]byte, error) {
		b := make([]byte, n)
		if _, err := f.ReadAt(b, off); err != nil && !(errors.Is(err, io.EOF) && off+n == size) {
			return nil, err
		}
		return b, nil
	}
	bad := func(f string, a ...any) error {
		return damaged("table %s (%d bytes): %s", path, size, fmt.Sprintf(f, a...))
	}
	if size < 8 {
		return bad("too short to hold a footer (truncated?)")
	}
	pos := size - 4
	b, err := read(pos, 4)
	if err != nil {
		return bad("reading the footer: %v", err)
	}
	ckLen := int64(binary.BigEndian.Uint32(b))
	if ckLen == 0 {
		// Badger always writes a checksum; a table cut where its bytes are
		// zeros would otherwise pass as an empty checksum of an empty
		// index, and badger panics on it in a goroutine of its own.
		return bad("the footer declares an empty index checksum (truncated?)")
	}
	if ckLen > pos-4 {
		return bad("the footer declares a %d-byte checksum, more than the file holds (truncated?)", ckLen)
	}
	pos -= ckLen
	b, err = read(pos, ckLen)
	if err != nil {
		return bad("reading the index checksum: %v", err)
	}
	var ck pb.Checksum
	if err := proto.Unmarshal(b, &ck); err != nil {
		return bad("the index checksum does not decode: %v", err)
	}
	if ck.Algo != pb.Checksum_CRC32C && ck.Algo != pb.Checksum_XXHash64 {
		return bad("unknown index checksum algorithm %d", ck.Algo)
	}
	pos -= 4
	b, err = read(pos, 4)
	if err != nil {
		return bad("reading the index length: %v", err)
	}
	idxLen := int64(binary.BigEndian.Uint32(b))
	if idxLen == 0 {
		return bad("the footer declares an empty index (truncated?)")
	}
	if idxLen > pos {
		return bad("the footer declares a %d-byte index, more than the file holds (truncated?)", idxLen)
	}
	idx, err := read(pos-idxLen, idxLen)
	if err != nil {
		return bad("reading the index: %v", err)
	}
	if err := y.VerifyChecksum(idx, &ck); err != nil {
		return bad("the index fails its checksum: %v", err)
	}
	return nil
}
