package verify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/badgerstore"
	"github.com/grantline/grantline/ledger/checkpoint"
	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/rules"
	"github.com/grantline/grantline/verify/format"
)

// mapLog is a real ledger with a subject map (badger in a temporary
// folder), and a Source and SubjectSource over it anchored to the
// checkpoint of size at (the latest when 0 and latest is set).
type mapLog struct {
	t      testing.TB
	dir    string
	o      ledger.Options
	l      *ledger.Log
	vkey   string
	at     uint64
	latest bool
}

func newMapLog(t testing.TB, o ledger.Options) *mapLog {
	t.Helper()
	o.SubjectMap = true
	return newLedgerLog(t, o)
}

// newLedgerLog is newMapLog with o's SubjectMap as given.
func newLedgerLog(t testing.TB, o ledger.Options) *mapLog {
	t.Helper()
	key, err := checkpoint.GenerateKey(checkpoint.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	if o.Signer, err = checkpoint.NewNoteSigner(testOrigin, key); err != nil {
		t.Fatal(err)
	}
	m := &mapLog{t: t, dir: filepath.Join(t.TempDir(), "ledger"), latest: true}
	if m.vkey, err = checkpoint.VerifierKey(testOrigin, key.Public()); err != nil {
		t.Fatal(err)
	}
	if o.Verifier, err = checkpoint.NewNoteVerifier(m.vkey); err != nil {
		t.Fatal(err)
	}
	m.o = o
	m.open()
	return m
}

func (m *mapLog) open() {
	m.t.Helper()
	st, err := badgerstore.Open(m.dir, badgerstore.Options{})
	if err != nil {
		m.t.Fatal(err)
	}
	if m.l, err = ledger.Open(context.Background(), st, m.o); err != nil {
		st.Close()
		m.t.Fatal(err)
	}
	m.t.Cleanup(func() { m.l.Close() })
}

// restart closes and reopens the log.
func (m *mapLog) restart() {
	m.t.Helper()
	if err := m.l.Close(); err != nil {
		m.t.Fatal(err)
	}
	m.open()
}

func (m *mapLog) append(evs []*pb.Event) {
	m.t.Helper()
	for len(evs) > 0 {
		n := min(len(evs), 500)
		if _, _, err := m.l.Append(context.Background(), evs[:n]); err != nil {
			m.t.Fatal(err)
		}
		evs = evs[n:]
	}
}

func (m *mapLog) Checkpoint(ctx context.Context) (ledger.Checkpoint, error) {
	if m.latest {
		return m.l.Latest(), nil
	}
	return m.l.CheckpointAt(ctx, m.at)
}

func (m *mapLog) evaluate(ctx context.Context, subjects []string, chains rules.ChainSource, asOf time.Time) *format.Findings {
	doc := &format.Findings{AsOf: asOf, Rules: testRules()}
	fs, err := testEvaluator{}.Evaluate(ctx, doc, subjects, chains)
	if err != nil {
		m.t.Fatal(err)
	}
	doc.Findings = fs
	doc.SubjectsEvaluated = uint64(len(subjects))
	return doc
}

func (m *mapLog) Evaluate(ctx context.Context, size uint64, asOf time.Time) (*format.Findings, error) {
	var subs []string
	if err := m.l.ForEachSubject(ctx, size, func(s string) error { subs = append(subs, s); return nil }); err != nil {
		return nil, err
	}
	return m.evaluate(ctx, subs, m.chains(size), asOf), nil
}

func (m *mapLog) EvaluateSubjects(ctx context.Context, size uint64, subjects []string, from, asOf time.Time) (*format.Findings, []string, error) {
	rec := &recorder{src: m.chains(size), read: map[string]bool{}}
	doc := m.evaluate(ctx, subjects, rec, asOf)
	var others []string
	for s := range rec.read {
		if !slices.Contains(subjects, s) {
			others = append(others, s)
		}
	}
	slices.Sort(others)
	return doc, others, nil
}

type recorder struct {
	src  rules.ChainSource
	mu   sync.Mutex
	read map[string]bool
}

func (r *recorder) Chain(ctx context.Context, s string) ([]rules.Entry, error) {
	r.mu.Lock()
	r.read[s] = true
	r.mu.Unlock()
	return r.src.Chain(ctx, s)
}

// chains is the ledger's chains at size, decoded.
type ledgerChains struct {
	l    *ledger.Log
	size uint64
}

func (m *mapLog) chains(size uint64) ledgerChains { return ledgerChains{m.l, size} }

func (c ledgerChains) Chain(ctx context.Context, s string) ([]rules.Entry, error) {
	es, err := c.l.SubjectEntries(ctx, s, c.size, 0, 0)
	if err != nil {
		return nil, err
	}
	out := make([]rules.Entry, len(es))
	for i, e := range es {
		ent, err := event.DecodeLeaf(e.Leaf)
		if err != nil {
			return nil, err
		}
		out[i] = rules.Entry{Index: e.Index, Event: ent.GetEvent()}
	}
	return out, nil
}

func (m *mapLog) Leaf(ctx context.Context, index uint64) ([]byte, error) {
	es, err := m.l.Entries(ctx, index, 1)
	if err != nil {
		return nil, err
	}
	return es[0].Leaf, nil
}

func (m *mapLog) Entries(ctx context.Context, size uint64, subjects []string, fn func(uint64, []byte) error) error {
	var all []ledger.Entry
	if subjects == nil {
		if size == 0 {
			return nil
		}
		es, err := m.l.Entries(ctx, 0, size)
		if err != nil {
			return err
		}
		all = es
	}
	for _, s := range subjects {
		es, err := m.l.SubjectEntries(ctx, s, size, 0, 0)
		if err != nil {
			return err
		}
		all = append(all, es...)
	}
	slices.SortFunc(all, func(a, b ledger.Entry) int { return int(a.Index) - int(b.Index) })
	for _, e := range all {
		if err := fn(e.Index, e.Leaf); err != nil {
			return err
		}
	}
	return nil
}

func (m *mapLog) InclusionProof(ctx context.Context, index, size uint64) ([][]byte, error) {
	return m.l.InclusionProof(ctx, index, size)
}

func (m *mapLog) ConsistencyProof(ctx context.Context, from, to uint64) ([][]byte, error) {
	return m.l.ConsistencyProof(ctx, from, to)
}

func (m *mapLog) SubjectProof(ctx context.Context, subject string, size uint64) (ledger.SubjectProof, error) {
	return m.l.SubjectProof(ctx, subject, size)
}

// exportSubjects exports a package of subjects proven complete from m.
func exportSubjects(t *testing.T, m *mapLog, subjects ...string) *pkgFixture {
	t.Helper()
	s, pub, _ := evidenceKey(t, "ed25519")
	dir := filepath.Join(t.TempDir(), "pkg")
	opts := ExportOptions{Signer: s, AsOf: asOf, Evaluator: testEvaluator{}, Subjects: subjects, All: subjects == nil}
	if err := Export(t.Context(), m, opts, DirSink{Dir: dir}); err != nil {
		t.Fatalf("Export: %v", err)
	}
	return &pkgFixture{signer: s, pub: pub, dir: dir, keys: Keys{LogKey: m.vkey, EvidenceKey: pub}}
}

// dropSubjectEntry removes from entries.jsonl the last entry of subject
// that no finding cites.
func dropSubjectEntry(t *testing.T, dir, subject string) {
	t.Helper()
	doc := readFindings(t, dir)
	cited := map[uint64]bool{}
	for _, f := range doc.Findings {
		for _, e := range f.Entries {
			cited[e.Index] = true
		}
	}
	editFile(t, dir, format.FileEntries, func(b []byte) []byte {
		lines := bytes.SplitAfter(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
		for i := len(lines) - 1; i >= 0; i-- {
			e, err := ParseEntryLine(lines[i])
			if err != nil {
				t.Fatal(err)
			}
			ent, err := event.DecodeLeaf(e.Leaf)
			if err == nil && ent.GetEvent().GetSubject().GetId() == subject && !cited[e.Index] {
				return bytes.Join(slices.Delete(lines, i, i+1), nil)
			}
		}
		t.Fatalf("no uncited entry of %s in the package", subject)
		return nil
	})
}

// editCompleteness rewrites completeness.json through edit.
func editCompleteness(t *testing.T, dir string, edit func(c *format.Completeness)) {
	t.Helper()
	editFile(t, dir, format.FileCompleteness, func(b []byte) []byte {
		var c format.Completeness
		if err := json.Unmarshal(b, &c); err != nil {
			t.Fatal(err)
		}
		edit(&c)
		out, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		return out
	})
}

// TestSubjectsComplete: a package of subjects proven complete passes
// verify --require-complete; with one entry of a subject removed and the
// statement re-signed with the evidence key, it fails, also when the
// tamperer fixes the count and chain in completeness.json to match.
func TestSubjectsComplete(t *testing.T) {
	m := newMapLog(t, ledger.Options{})
	m.append(synthEvents(40, 6))
	subjects := []string{"svc-00005", "user-00003", "nobody"}
	tests := []struct {
		name    string
		tamper  func(t *testing.T, fx *pkgFixture)
		wantErr error
		check   string
	}{
		{"as exported", nil, nil, ""},
		{"an entry removed and re-signed", func(t *testing.T, fx *pkgFixture) {
			dropSubjectEntry(t, fx.dir, "user-00003")
			resign(t, fx.dir, fx.signer)
		}, ErrVerification, "subject chain complete"},
		{"an entry removed, the proof's count and chain fixed, re-signed", func(t *testing.T, fx *pkgFixture) {
			dropSubjectEntry(t, fx.dir, "user-00003")
			editCompleteness(t, fx.dir, func(c *format.Completeness) {
				for i := range c.Subjects {
					if c.Subjects[i].Subject == "user-00003" {
						// What the package now holds.
						c.Subjects[i].Count--
						c.Subjects[i].Chain = nil
					}
				}
			})
			fixChain(t, fx.dir, "user-00003")
			resign(t, fx.dir, fx.signer)
		}, ErrVerification, "subject map proof"},
		{"completeness.json removed and re-signed", func(t *testing.T, fx *pkgFixture) {
			removeFile(t, fx.dir, format.FileCompleteness)
			resign(t, fx.dir, fx.signer)
		}, ErrVerification, "subjects proven complete"},
		{"the map leaf removed and re-signed", func(t *testing.T, fx *pkgFixture) {
			dropLastEntry(t, fx.dir) // the map leaf is the last line
			resign(t, fx.dir, fx.signer)
		}, ErrVerification, "map leaf"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fx := exportSubjects(t, m, subjects...)
			if tt.tamper != nil {
				tt.tamper(t, fx)
			}
			opts := verifyOpts()
			opts.RequireComplete = true
			rep, err := Verify(t.Context(), fx.dir, fx.keys, opts)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Verify --require-complete = %v, want success", err)
				}
				if rep.Kind != KindSubjectsComplete {
					t.Errorf("Kind = %q, want %q", rep.Kind, KindSubjectsComplete)
				}
				doc := readFindings(t, fx.dir)
				// The owner of svc-00005 is read by its rule: proven too.
				want := []string{"nobody", "svc-00005", "user-00003", "user-00005"}
				if !slices.Equal(doc.CompleteSubjects, want) {
					t.Errorf("complete_subjects = %q, want %q", doc.CompleteSubjects, want)
				}
				if rep.Subjects != 3 {
					t.Errorf("the package holds the chains of %d subjects, want 3 (nobody has none)", rep.Subjects)
				}
				return
			}
			var ce *CheckError
			if !errors.Is(err, tt.wantErr) || !errors.As(err, &ce) || ce.Check != tt.check {
				t.Fatalf("Verify = %v, want %v in check %q", err, tt.wantErr, tt.check)
			}
		})
	}
}

// fixChain sets subject's chain in completeness.json to the one of the
// entries the package holds (after a tamperer removed one).
func fixChain(t *testing.T, dir, subject string) {
	t.Helper()
	var chain [32]byte
	var last uint64
	b, err := os.ReadFile(filepath.Join(dir, format.FileEntries))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n")) {
		e, err := ParseEntryLine(line)
		if err != nil {
			t.Fatal(err)
		}
		if ent, err := event.DecodeLeaf(e.Leaf); err == nil && ent.GetEvent().GetSubject().GetId() == subject {
			chain = ledger.ChainNext(chain, ledger.LeafHash(e.Leaf))
			last = e.Index
		}
	}
	editCompleteness(t, dir, func(c *format.Completeness) {
		for i := range c.Subjects {
			if c.Subjects[i].Subject == subject {
				c.Subjects[i].Chain, c.Subjects[i].Last = chain[:], last
			}
		}
	})
}

// TestSubjectsCompleteAnchors: packages of subjects proven complete at
// size 0, at an older checkpoint after a restart, with a checkpoint
// interval, and an --all package of a log with map leaves.
func TestSubjectsCompleteAnchors(t *testing.T) {
	t.Run("size 0", func(t *testing.T) {
		m := newMapLog(t, ledger.Options{})
		fx := exportSubjects(t, m, "user-00001")
		rep := requireComplete(t, fx)
		if rep.Size != 0 || rep.Kind != KindSubjectsComplete {
			t.Fatalf("size %d kind %q, want 0 and %q", rep.Size, rep.Kind, KindSubjectsComplete)
		}
	})
	t.Run("older checkpoint after restart", func(t *testing.T) {
		m := newMapLog(t, ledger.Options{})
		evs := synthEvents(30, 5)
		m.append(evs[:len(evs)/2])
		old := m.l.Latest().Size
		m.restart()
		m.append(evs[len(evs)/2:])
		m.latest, m.at = false, old
		fx := exportSubjects(t, m, "user-00002", "user-00020")
		if rep := requireComplete(t, fx); rep.Size != old {
			t.Fatalf("anchored to %d, want %d", rep.Size, old)
		}
		m.latest = true
		fx = exportSubjects(t, m, "user-00002", "user-00020")
		requireComplete(t, fx)
	})
	t.Run("checkpoint interval", func(t *testing.T) {
		m := newMapLog(t, ledger.Options{CheckpointInterval: time.Hour})
		m.append(synthEvents(20, 5))
		m.restart() // Close signs what waits, with its map leaf
		fx := exportSubjects(t, m, "user-00004")
		requireComplete(t, fx)
	})
	t.Run("all, with map leaves", func(t *testing.T) {
		m := newMapLog(t, ledger.Options{})
		m.append(synthEvents(20, 5))
		fx := exportSubjects(t, m) // nil: All
		if rep := requireComplete(t, fx); rep.Kind != KindAll {
			t.Fatalf("kind %q, want %q", rep.Kind, KindAll)
		}
	})
}

func requireComplete(t *testing.T, fx *pkgFixture) *Report {
	t.Helper()
	opts := verifyOpts()
	opts.RequireComplete = true
	rep, err := Verify(t.Context(), fx.dir, fx.keys, opts)
	if err != nil {
		t.Fatalf("Verify --require-complete = %v, want success", err)
	}
	return rep
}

func removeFile(t *testing.T, dir, name string) {
	t.Helper()
	if err := os.Remove(filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

// TestSubjectsWithoutMap: a log created without a subject map cannot make
// a package of subjects proven complete, and says why.
func TestSubjectsWithoutMap(t *testing.T) {
	m := newLedgerLog(t, ledger.Options{})
	m.append(synthEvents(5, 3))
	s, _, _ := evidenceKey(t, "ed25519")
	err := Export(t.Context(), m, ExportOptions{Signer: s, AsOf: asOf, Evaluator: testEvaluator{}, Subjects: []string{"user-00001"}}, DirSink{Dir: t.TempDir()})
	if !errors.Is(err, ledger.ErrNoSubjectMap) {
		t.Fatalf("Export --subject from a log without a map = %v, want ErrNoSubjectMap", err)
	}
	err = Export(t.Context(), m, ExportOptions{Signer: s, AsOf: asOf, Subjects: []string{"user-00001"}, All: true}, DirSink{Dir: t.TempDir()})
	if err == nil {
		t.Fatal("Export with both All and Subjects succeeded")
	}
}
