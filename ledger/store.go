package ledger

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/grantline/grantline/ledger/runindex"
)

// Store is the key-value storage the log needs: the seam between the log and
// a storage engine. ledger/badgerstore implements it; tests use an in-memory
// fake with injected faults. The caller opens a Store and passes it to Open.
// Optional upgrades: Backup(ctx, io.Writer) error for Log.Backup, and
// Restorer for Restore. A store that finds stored data damaged (a record
// failing its checksum) returns an error with a method Corrupt() bool
// returning true; the log answers it as ErrCorrupt. The log checks what it
// reads anyway (leaves against their tile hashes, sizes of tiles and index
// records), so a store without checksums still never serves altered data.
type Store interface {
	// Get reads the values of keys from one consistent snapshot. A missing
	// key is a nil entry in the result (a present empty value is non-nil),
	// never an error. Returned slices belong to the caller. Safe for
	// concurrent use.
	Get(keys ...[]byte) ([][]byte, error)
	// Scan calls fn for each key in [start, end) in ascending byte order (end
	// nil: no upper bound), from one consistent snapshot; key and value are
	// valid only during the call. An error from fn stops the scan and is
	// returned unchanged. Safe for concurrent use.
	Scan(start, end []byte, fn func(key, value []byte) error) error
	// Commit writes keys[i] = values[i] for all i atomically: when it returns
	// nil all of it is durable (fsynced); after a crash either all or none of
	// it is present. After an error the batch may or may not have been
	// persisted. Batches beyond Limits fail without writing anything. The
	// log calls Commit from one goroutine at a time.
	Commit(keys, values [][]byte) error
	// Limits is the largest batch Commit accepts: its number of entries,
	// and its size counted as the sum over its entries of
	// len(key) + len(value) + EntryOverhead. A store whose own accounting
	// differs states limits in these terms that its accounting never
	// exceeds. The log keeps every batch within 90% of both.
	Limits() (count int, bytes int64)
	// Close releases the store; it is not used afterwards.
	Close() error
}

// atomicCommitter is the optional method of a store whose Commit a crash
// can tear (badgerstore opened with NoSync, used as Options.Index):
// CommitAtomic writes keys[i] = values[i] in one transaction, of which a
// crash keeps all or nothing, within the same Limits; like that store's
// Commit it need not be durable when it returns.
type atomicCommitter interface {
	CommitAtomic(keys, values [][]byte) error
}

// tearableStore is the optional method by which a store says whether a
// crash can tear its Commit (keep part of a commit): badgerstore's
// TearableCommits returns true when it was opened with NoSync, false
// otherwise. Options.Index allows an index store whose commits a crash
// tears, so an index store that does not say is taken to be one
// (checkIndexAtomic); the main store's Commit is atomic by the Store
// contract.
type tearableStore interface {
	TearableCommits() bool
}

// ErrIndexNotAtomic is Open's refusal, for a log with a subject map, of a
// separate index store (Options.Index) whose commits a crash can tear (it
// says so, or does not say otherwise) and which has no CommitAtomic.
var ErrIndexNotAtomic = errors.New("the index store can tear a commit and has no CommitAtomic")

// checkIndexAtomic refuses, for a log with a subject map, a separate index
// store that has no CommitAtomic unless it says a crash cannot tear its
// commits (TearableCommits false): the subject map's records, overwritten
// in place, must be committed all or nothing (docs/design.md "Indexes off
// the durable commit"), and through a tearable Commit a crash could keep
// half of them, which the leaves cannot redo. Without the subject map, or
// without a separate index store, there is nothing to refuse.
func checkIndexAtomic(ix Store, split, subjectMap bool) error {
	if !split || !subjectMap {
		return nil
	}
	if _, ok := ix.(atomicCommitter); ok {
		return nil
	}
	says := "does not say whether a crash can tear its commits (no TearableCommits() bool method), so it is taken to be one that can, as Options.Index allows"
	if t, ok := ix.(tearableStore); ok {
		if !t.TearableCommits() {
			return nil
		}
		says = "says a crash can tear its commits (TearableCommits)"
	}
	return fmt.Errorf("%w: the log has a subject map, whose records a crash must keep all or none of, and its index store (Options.Index, %T) %s but has no CommitAtomic(keys, values [][]byte) error method; give the index store that method (badgerstore has it), or open it so that its Commit is atomic and have TearableCommits report false, or pass no Options.Index to keep the indexes in the main store (docs/design.md, \"Indexes off the durable commit\")", ErrIndexNotAtomic, ix, says)
}

// commitAtomic commits keys and values to st so that a crash keeps all or
// none of them: through CommitAtomic when st has it, else through Commit,
// which is then atomic (the Store contract).
func commitAtomic(st Store, keys, values [][]byte) error {
	if a, ok := st.(atomicCommitter); ok {
		return a.CommitAtomic(keys, values)
	}
	return st.Commit(keys, values)
}

// EntryOverhead is what each entry of a batch counts against the byte limit
// of Store.Limits beyond its key and value.
const EntryOverhead = 16

// entrySize is what an entry with a key and value of these lengths counts
// against the byte limit of Store.Limits.
func entrySize(keyLen, valueLen int) int64 { return int64(keyLen + valueLen + EntryOverhead) }

// Key layout. Every key starts with a one-byte kind.
const (
	kLeaf       = 'l' // l be64(index) -> leaf bytes
	kHash       = 'h' // h leafhash[:16] -> be64(index)
	kDedupe     = 'd' // d sha256(system 0x00 id)[:16] -> be64(index)
	kSubject    = 's' // s escaped(subject) 0x00 0x01 be64(index) -> empty
	kTile       = 't' // t level[1] be64(index) -> tile hashes (width*32 bytes)
	kCheckpoint = 'c' // c be64(size) -> signed checkpoint note
	kMeta       = 'm' // m "latest", m "tree" -> be64(size); m "subjectmap" -> 0x01
	// With a subject map (ledger/submap.go, docs/completeness.md):
	// kMapNode 'p' be32(bits) label[32] ^be64(size) -> prefix-tree node
	// (kMapNodeC 'q' in logs made since: ledger/submap.go), and
	// kSubjState 'v' SHA-256(subject) -> be64(count) be64(last) chain[32].
)

var (
	keyLatest = []byte("mlatest") // the size of the latest signed checkpoint
	// keyIndexed, in a separate index store (Options.Index), is the tree
	// size below which every leaf's index entries are in that store; it is
	// written in the same commit as the entries. Open rebuilds the entries
	// of the leaves from it up to the tree size.
	keyIndexed = []byte("mindexed")
	// keySeparateIndex, in the main store, says that the log keeps its
	// indexes in a separate index store: the main store lacks index entries
	// of the leaves appended since, so Open refuses it without one.
	keySeparateIndex = []byte("mindex-separate")
	// keyIndexedRuns is keyIndexed's stand-in in the index store of a log
	// that keeps its leaf-hash and dedupe indexes in runs (Options.RunsDir):
	// such a store holds no kHash or kDedupe entries, and a log opened
	// without runs (or by a binary from before them), finding data without
	// the watermark it reads, empties the store and rebuilds it from the
	// leaves rather than take it as complete. Likewise a log opened with
	// runs empties a store watermarked by keyIndexed.
	keyIndexedRuns = []byte("mindexed-runs")
	// keyTree is the size of the tree as integrated, which is beyond the
	// latest checkpoint while leaves wait for the next one (with a
	// checkpoint interval). Missing: the latest checkpoint's size.
	keyTree = []byte("mtree")
)

// indexKeyLen is how many bytes of a leaf hash or dedupe key the index keys
// keep. Short keys make the random index inserts of every commit cheaper. A
// hit is always confirmed against the leaf it points to, so a truncation
// collision (2^64 work to find one) can at worst hide an entry, never make
// the log answer with the wrong one.
const indexKeyLen = 16

// The runs keep the same prefix of a leaf hash or dedupe key as kHash and
// kDedupe entries.
var _ = runindex.Key([indexKeyLen]byte{})

func be64(b []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(b, v) }

func leafKey(i uint64) []byte       { return be64([]byte{kLeaf}, i) }
func hashKey(h []byte) []byte       { return append([]byte{kHash}, h[:indexKeyLen]...) }
func dedupeKey(d [32]byte) []byte   { return append([]byte{kDedupe}, d[:indexKeyLen]...) }
func checkpointKey(n uint64) []byte { return be64([]byte{kCheckpoint}, n) }
func tileKey(level, index uint64) []byte {
	return be64([]byte{kTile, byte(level)}, index)
}

// leafTileKeys are the keys of level-0 tiles first..last (inclusive): the
// leaf hashes of leaves first*tileWidth up to (last+1)*tileWidth.
func leafTileKeys(first, last uint64) [][]byte {
	keys := make([][]byte, 0, last-first+1)
	for t := first; t <= last; t++ {
		keys = append(keys, tileKey(0, t))
	}
	return keys
}

// subjectPrefix is the key prefix of a subject's index entries. The subject
// is escaped (0x00 -> 0x00 0xff) and terminated by 0x00 0x01 so that prefixes
// of different subjects never overlap and keys sort by subject.
func subjectPrefix(subject string) []byte {
	return appendSubjectPrefix(make([]byte, 0, len(subject)+3+8), subject)
}

func appendSubjectPrefix(b []byte, subject string) []byte {
	b = append(b, kSubject)
	for i := 0; i < len(subject); i++ {
		b = append(b, subject[i])
		if subject[i] == 0 {
			b = append(b, 0xff)
		}
	}
	return append(b, 0, 1)
}

func subjectKey(subject string, index uint64) []byte {
	return be64(subjectPrefix(subject), index)
}

func appendSubjectKey(b []byte, subject string, index uint64) []byte {
	return be64(appendSubjectPrefix(b, subject), index)
}

// parseSubjectKey splits a subject index key.
func parseSubjectKey(k []byte) (subject string, index uint64, ok bool) {
	if len(k) < 1+2+8 || k[0] != kSubject {
		return "", 0, false
	}
	body, idx := k[1:len(k)-8], k[len(k)-8:]
	if body[len(body)-2] != 0 || body[len(body)-1] != 1 {
		return "", 0, false
	}
	body = body[:len(body)-2]
	out := make([]byte, 0, len(body))
	for i := 0; i < len(body); i++ {
		out = append(out, body[i])
		if body[i] == 0 {
			if i+1 >= len(body) || body[i+1] != 0xff {
				return "", 0, false
			}
			i++
		}
	}
	return string(out), binary.BigEndian.Uint64(idx), true
}

// prefixEnd is the first key after every key starting with p.
func prefixEnd(p []byte) []byte {
	e := append([]byte(nil), p...)
	for i := len(e) - 1; i >= 0; i-- {
		if e[i] < 0xff {
			e[i]++
			return e[:i+1]
		}
	}
	return nil
}

// describeKey names what a store key holds, for error messages: "leaf 7",
// "tile 0/3", "checkpoint 12", or the key in hex.
func describeKey(k []byte) string {
	if len(k) == 0 {
		return "empty key"
	}
	switch {
	case k[0] == kLeaf && len(k) == 9:
		return fmt.Sprintf("leaf %d", binary.BigEndian.Uint64(k[1:]))
	case k[0] == kTile && len(k) == 10:
		return fmt.Sprintf("tile %d/%d", k[1], binary.BigEndian.Uint64(k[2:]))
	case k[0] == kCheckpoint && len(k) == 9:
		return fmt.Sprintf("checkpoint %d", binary.BigEndian.Uint64(k[1:]))
	case k[0] == kHash:
		return fmt.Sprintf("leaf-hash index key %x", k)
	case k[0] == kDedupe:
		return fmt.Sprintf("dedupe key %x", k)
	case k[0] == kSubject:
		if s, i, ok := parseSubjectKey(k); ok {
			return fmt.Sprintf("subject index entry %q/%d", s, i)
		}
	case k[0] == kMapNode && len(k) == 1+36+8:
		return fmt.Sprintf("subject map node %x as of checkpoint %d", k[1:37], ^binary.BigEndian.Uint64(k[37:]))
	case k[0] == kMapNodeC && len(k) >= 1+2+8:
		return fmt.Sprintf("subject map node %x as of checkpoint %d", k[1:len(k)-8], ^binary.BigEndian.Uint64(k[len(k)-8:]))
	case k[0] == kSubjState && len(k) == 33:
		return fmt.Sprintf("subject state %x", k[1:])
	case k[0] == kMeta:
		return fmt.Sprintf("record %q", k)
	}
	return fmt.Sprintf("key %x", k)
}
