package verify

import (
	"fmt"
	"testing"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/merkle/testonly"
	"golang.org/x/mod/sumdb/tlog"
)

// FuzzProofVerification is a differential fuzz of proof checking: inclusion
// and consistency proofs of a real RFC 6962 tree, tampered in one byte or
// truncated as the input says, are judged by transparency-dev/merkle (what
// verify uses) and by x/mod's sumdb/tlog (an independent implementation). The
// two must agree, and an untampered proof must pass both.
func FuzzProofVerification(f *testing.F) {
	f.Add(uint16(1), uint16(0), uint16(1), uint16(0), byte(0), false)
	f.Add(uint16(257), uint16(13), uint16(200), uint16(40), byte(1), false)
	f.Add(uint16(300), uint16(299), uint16(255), uint16(3), byte(0x80), true)
	f.Add(uint16(1024), uint16(511), uint16(512), uint16(0), byte(0), true)
	const maxSize = 1100
	tree := testonly.New(rfc6962.DefaultHasher)
	for i := range maxSize {
		tree.AppendData([]byte(fmt.Sprintf("leaf %d", i)))
	}
	f.Fuzz(func(t *testing.T, size, index, oldSize, at uint16, flip byte, truncate bool) {
		n := uint64(size)%maxSize + 1
		i := uint64(index) % n
		m := uint64(oldSize)%n + 1
		root := tree.HashAt(n)

		// Inclusion of leaf i in the tree of size n.
		p, err := tree.InclusionProof(i, n)
		if err != nil {
			t.Fatal(err)
		}
		p = tamper(p, int(at), flip, truncate)
		leaf := tree.LeafHash(i)
		errA := proof.VerifyInclusion(rfc6962.DefaultHasher, i, n, leaf, p, root)
		errB := tlog.CheckRecord(hashes(p), int64(n), tlog.Hash(root), int64(i), tlog.Hash(leaf))
		if (errA == nil) != (errB == nil) {
			t.Fatalf("inclusion of %d in %d: merkle says %v, tlog says %v", i, n, errA, errB)
		}
		if flip == 0 && !truncate && errA != nil {
			t.Fatalf("untampered inclusion proof of %d in %d rejected: %v", i, n, errA)
		}

		// Consistency from the tree of size m to the tree of size n.
		c, err := tree.ConsistencyProof(m, n)
		if err != nil {
			t.Fatal(err)
		}
		c = tamper(c, int(at), flip, truncate)
		old := tree.HashAt(m)
		errA = proof.VerifyConsistency(rfc6962.DefaultHasher, m, n, c, old, root)
		errB = tlog.CheckTree(hashes(c), int64(n), tlog.Hash(root), int64(m), tlog.Hash(old))
		if (errA == nil) != (errB == nil) {
			t.Fatalf("consistency %d -> %d: merkle says %v, tlog says %v", m, n, errA, errB)
		}
		if flip == 0 && !truncate && errA != nil {
			t.Fatalf("untampered consistency proof %d -> %d rejected: %v", m, n, errA)
		}
	})
}

// tamper flips bits of one byte of the proof (flip != 0) and/or drops its
// last hash; the input slices are not modified.
func tamper(p [][]byte, at int, flip byte, truncate bool) [][]byte {
	out := make([][]byte, len(p))
	for k := range p {
		out[k] = append([]byte(nil), p[k]...)
	}
	if flip != 0 && len(out) > 0 {
		h := out[at%len(out)]
		h[(at/len(out))%len(h)] ^= flip
	}
	if truncate && len(out) > 0 {
		out = out[:len(out)-1]
	}
	return out
}

func hashes(p [][]byte) []tlog.Hash {
	out := make([]tlog.Hash, len(p))
	for k := range p {
		copy(out[k][:], p[k])
	}
	return out
}
