package verify

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/merkle/testonly"
	"golang.org/x/mod/sumdb/note"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/checkpoint"
	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/rules"
	"github.com/grantline/grantline/verify/format"
)

const testOrigin = "grantline.test/log"

var base = time.Date(2026, 1, 5, 9, 0, 0, 0, time.UTC)

// ledgerFake is an in-memory ledger with a real RFC 6962 tree: the Source
// the tests export from. It enforces the Source contract: Entries must not be
// called before Checkpoint and Evaluate, and InclusionProof only for sizes
// it published.
type ledgerFake struct {
	leaves    [][]byte
	subjectOf []string
	bySubject map[string][]uint64
	tree      *testonly.Tree
	signer    note.Signer
	eval      Evaluator
	params    []byte
	// set, when non-nil, is the real rules engine the fake evaluates with
	// (paramsYAML its overrides); otherwise eval with testRules.
	set        *rules.Set
	paramsYAML []byte

	origin    string
	evalTime  time.Duration // time spent in Evaluate (the server's rules evaluation)
	cp        ledger.Checkpoint
	evaluated bool
	// faults
	dropEntry     int64 // skip this index in Entries (-1 none)
	badProofIndex int64 // return a wrong proof for this index (-1 none)
}

// synthEvents returns a deterministic feed: humans with approvals and
// grants (some privileged and standing, some self-approved), service
// accounts owned by humans, and terminations.
func synthEvents(subjects, perSubject int) []*pb.Event {
	r := rand.New(rand.NewPCG(1, 2))
	var evs []*pb.Event
	t := base
	n := 0
	next := func(typ string, sub *pb.Identity) *pb.Event {
		n++
		t = t.Add(time.Duration(1+r.IntN(600)) * time.Second)
		return &pb.Event{
			Id: fmt.Sprintf("ev-%07d", n), Type: typ, Time: timestamppb.New(t),
			Source:  &pb.Source{System: []string{"okta", "cyberark", "sailpoint"}[r.IntN(3)]},
			Subject: sub,
		}
	}
	for s := 0; s < subjects; s++ {
		human := &pb.Identity{Id: fmt.Sprintf("user-%05d", s), Kind: "human", Display: fmt.Sprintf("User <%d> & co", s)}
		for k := 0; k < perSubject; k++ {
			switch r.IntN(6) {
			case 0, 1:
				e := next("access.approved", human)
				e.Actor = &pb.Identity{Id: "mgr-1"}
				if r.IntN(8) == 0 {
					e.Actor = &pb.Identity{Id: human.Id}
				}
				e.Refs = &pb.Refs{Request: fmt.Sprintf("req-%d-%d", s, k)}
				evs = append(evs, e)
			case 2, 3:
				e := next("grant.assigned", human)
				e.Entitlement = &pb.Entitlement{Id: "db-admin", Privileged: r.IntN(3) == 0}
				e.Refs = &pb.Refs{Grant: fmt.Sprintf("g-%d-%d", s, k)}
				evs = append(evs, e)
				if r.IntN(2) == 0 {
					end := next("grant.removed", human)
					end.Refs = &pb.Refs{Grant: e.Refs.Grant}
					evs = append(evs, end)
				}
			default:
				evs = append(evs, next("session.started", human))
			}
		}
		if s%5 == 0 {
			svc := &pb.Identity{Id: fmt.Sprintf("svc-%05d", s), Kind: "service_account", OwnerId: human.Id}
			evs = append(evs, next("credential.created", svc))
			evs = append(evs, next("identity.terminated", human))
		}
	}
	return evs
}

func newLedgerFake(t testing.TB, evs []*pb.Event) *ledgerFake {
	t.Helper()
	l := &ledgerFake{bySubject: map[string][]uint64{}, tree: testonly.New(rfc6962.DefaultHasher), eval: testEvaluator{}, dropEntry: -1, badProofIndex: -1}
	for i, ev := range evs {
		leaf, err := event.EncodeLeaf(ev, base.Add(time.Duration(i)*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		l.leaves = append(l.leaves, leaf)
		sub := ev.GetSubject().GetId()
		l.subjectOf = append(l.subjectOf, sub)
		l.bySubject[sub] = append(l.bySubject[sub], uint64(i))
		l.tree.AppendData(leaf)
	}
	key, err := checkpoint.GenerateKey("")
	if err != nil {
		t.Fatal(err)
	}
	l.signer, err = checkpoint.NewNoteSigner(testOrigin, key)
	if err != nil {
		t.Fatal(err)
	}
	vkey, err := checkpoint.VerifierKey(testOrigin, key.Public())
	if err != nil {
		t.Fatal(err)
	}
	logKeys[l] = vkey
	return l
}

// logKeys remembers each fake's verifier key.
var logKeys = map[*ledgerFake]string{}

func (l *ledgerFake) vkey() string { return logKeys[l] }

// signedAt returns the signed checkpoint note at size.
func (l *ledgerFake) signedAt(t testing.TB, size uint64) []byte {
	t.Helper()
	c, err := ledger.SignCheckpoint(l.signer, size, [32]byte(l.tree.HashAt(size)))
	if err != nil {
		t.Fatal(err)
	}
	return c.Note
}

func (l *ledgerFake) Checkpoint(ctx context.Context) (ledger.Checkpoint, error) {
	size := l.tree.Size()
	c, err := ledger.SignCheckpoint(l.signer, size, [32]byte(l.tree.HashAt(size)))
	if err != nil {
		return ledger.Checkpoint{}, err
	}
	if l.origin != "" {
		c.Origin = l.origin // a Source that breaks its contract
	}
	l.cp = c
	return l.cp, nil
}

func (l *ledgerFake) Evaluate(ctx context.Context, size uint64, asOf time.Time) (*format.Findings, error) {
	if size != l.cp.Size {
		return nil, fmt.Errorf("evaluate at size %d, checkpoint is %d", size, l.cp.Size)
	}
	subs := make([]string, 0, len(l.bySubject))
	for s := range l.bySubject {
		subs = append(subs, s)
	}
	slices.Sort(subs)
	if l.set != nil {
		start := time.Now()
		defer func() { l.evalTime = time.Since(start) }()
		res, err := l.set.Evaluate(ctx, subs, l, asOf)
		if err != nil {
			return nil, err
		}
		l.evaluated = true
		return FindingsDocument(l.set, res, l.paramsYAML)
	}
	doc := &format.Findings{AsOf: asOf, Rules: testRules(), Params: l.params}
	fs, err := l.eval.Evaluate(ctx, doc, subs, l)
	if err != nil {
		return nil, err
	}
	doc.Findings = fs
	doc.SubjectsEvaluated = uint64(len(subs))
	doc.EntriesEvaluated = size
	l.evaluated = true
	return doc, nil
}

func (l *ledgerFake) Chain(_ context.Context, subject string) ([]rules.Entry, error) {
	var out []rules.Entry
	for _, i := range l.bySubject[subject] {
		ent, err := event.DecodeLeaf(l.leaves[i])
		if err != nil {
			return nil, err
		}
		out = append(out, rules.Entry{Index: i, Event: ent.Event})
	}
	return out, nil
}

func (l *ledgerFake) Leaf(_ context.Context, index uint64) ([]byte, error) {
	if index >= l.cp.Size {
		return nil, fmt.Errorf("leaf %d: out of range", index)
	}
	return l.leaves[index], nil
}

func (l *ledgerFake) Entries(ctx context.Context, size uint64, subjects []string, fn func(uint64, []byte) error) error {
	if !l.evaluated {
		return errors.New("contract: Entries before Evaluate")
	}
	var idx []uint64
	if subjects == nil {
		for i := uint64(0); i < size; i++ {
			idx = append(idx, i)
		}
	} else {
		for _, s := range subjects {
			idx = append(idx, l.bySubject[s]...)
		}
		slices.Sort(idx)
	}
	for _, i := range idx {
		if int64(i) == l.dropEntry {
			continue
		}
		if err := fn(i, l.leaves[i]); err != nil {
			return err
		}
	}
	return nil
}

func (l *ledgerFake) InclusionProof(_ context.Context, index, size uint64) ([][]byte, error) {
	if size != l.cp.Size {
		return nil, fmt.Errorf("contract: proof at size %d, checkpoint is %d", size, l.cp.Size)
	}
	p, err := l.tree.InclusionProof(index, size)
	if int64(index) == l.badProofIndex && len(p) > 0 {
		p[0] = make([]byte, 32)
	}
	return p, err
}

func (l *ledgerFake) ConsistencyProof(_ context.Context, from, to uint64) ([][]byte, error) {
	return l.tree.ConsistencyProof(from, to)
}

// testRules are the records of the test evaluator's rules.
func testRules() []format.Rule {
	var rs []format.Rule
	for _, r := range []struct{ id, sev, text string }{
		{"owner-terminated", "high", "id: owner-terminated\nexpression: owner has identity.terminated\n"},
		{"self-approval", "high", "id: self-approval\nexpression: actor.id == subject.id\n"},
		{"standing-privilege", "high", "id: standing-privilege\nexpression: privileged grant without end\n"},
	} {
		sum := sha256.Sum256([]byte(r.text))
		rs = append(rs, format.Rule{ID: r.id, Title: r.id, Severity: r.sev, Controls: []string{"PR.AA-05", "PR.AC-4", "AC-2", "AC-6"}, SHA256: hex.EncodeToString(sum[:]), Text: r.text})
	}
	return rs
}

// testEvaluator is a stand-in for the rules engine: three plain Go rules,
// one of which reads a second chain (the owner's), like orphaned-nhi.
type testEvaluator struct{}

func (testEvaluator) Evaluate(ctx context.Context, doc *format.Findings, subjects []string, chains rules.ChainSource) ([]format.Finding, error) {
	enabled := map[string]format.Rule{}
	for _, r := range doc.Rules {
		enabled[r.ID] = r
	}
	var out []format.Finding
	add := func(rule, subject, msg string, exposure int64, es ...rules.Entry) {
		r, ok := enabled[rule]
		if !ok {
			return
		}
		f := format.Finding{Rule: rule, Title: r.Title, Severity: r.Severity, Controls: r.Controls, Subject: subject, Message: msg, ExposureSeconds: exposure}
		for _, e := range es {
			f.Entries = append(f.Entries, format.EntryRef{Index: e.Index, EventID: e.Event.GetId()})
		}
		out = append(out, f)
	}
	for _, s := range subjects {
		chain, err := chains.Chain(ctx, s)
		if err != nil {
			return nil, err
		}
		ended := map[string]bool{}
		for _, e := range chain {
			if e.Event.GetType() == "grant.removed" && !e.Event.GetTime().AsTime().After(doc.AsOf) {
				ended[e.Event.GetRefs().GetGrant()] = true
			}
		}
		for _, e := range chain {
			ev := e.Event
			if ev.GetTime().AsTime().After(doc.AsOf) {
				continue
			}
			switch {
			case ev.GetType() == "access.approved" && ev.GetActor().GetId() == s:
				add("self-approval", s, "approved their own request "+ev.GetRefs().GetRequest(), 0, e)
			case ev.GetType() == "grant.assigned" && ev.GetEntitlement().GetPrivileged() && !ended[ev.GetRefs().GetGrant()]:
				add("standing-privilege", s, "standing privileged grant "+ev.GetRefs().GetGrant(), int64(doc.AsOf.Sub(ev.GetTime().AsTime())/time.Second), e)
			}
		}
		if len(chain) > 0 && chain[0].Event.GetSubject().GetKind() != "human" {
			owner := chain[0].Event.GetSubject().GetOwnerId()
			oc, err := chains.Chain(ctx, owner)
			if err != nil {
				return nil, err
			}
			for _, o := range oc {
				if o.Event.GetType() == "identity.terminated" && !o.Event.GetTime().AsTime().After(doc.AsOf) {
					add("owner-terminated", s, "owner "+owner+" terminated", 0, chain[0], o)
				}
			}
		}
	}
	SortFindings(out)
	return out, nil
}

// evidenceKey returns a new evidence signer and its PEM public key.
func evidenceKey(t testing.TB, alg string) (*EvidenceSigner, []byte, crypto.PublicKey) {
	t.Helper()
	var priv crypto.Signer
	switch alg {
	case "ecdsa":
		k, err := ecdsa.GenerateKey(elliptic.P256(), cryptoRand{})
		if err != nil {
			t.Fatal(err)
		}
		priv = k
	default:
		_, k, err := ed25519.GenerateKey(cryptoRand{})
		if err != nil {
			t.Fatal(err)
		}
		priv = k
	}
	privPEM, err := cryptoutils.MarshalPrivateKeyToPEM(priv)
	if err != nil {
		t.Fatal(err)
	}
	s, err := LoadEvidenceSigner(privPEM)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM, err := cryptoutils.MarshalPublicKeyToPEM(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	return s, pubPEM, priv.Public()
}
