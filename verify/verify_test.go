package verify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/grantline/grantline/verify/format"
)

var asOf = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)

type pkgFixture struct {
	l      *ledgerFake
	signer *EvidenceSigner
	pub    []byte
	dir    string
	keys   Keys
}

func exportFixture(t *testing.T, alg string, opts ExportOptions) *pkgFixture {
	t.Helper()
	l := newLedgerFake(t, synthEvents(40, 6))
	s, pub, _ := evidenceKey(t, alg)
	dir := filepath.Join(t.TempDir(), "pkg")
	opts.Signer, opts.AsOf, opts.Evaluator = s, asOf, l.eval
	if err := Export(t.Context(), l, opts, DirSink{Dir: dir}); err != nil {
		t.Fatalf("Export: %v", err)
	}
	return &pkgFixture{l: l, signer: s, pub: pub, dir: dir, keys: Keys{LogKey: l.vkey(), EvidenceKey: pub}}
}

func verifyOpts() Options { return Options{Evaluator: testEvaluator{}} }

func TestExportVerifyRoundTrip(t *testing.T) {
	for _, alg := range []string{"ecdsa", "ed25519"} {
		t.Run(alg, func(t *testing.T) {
			fx := exportFixture(t, alg, ExportOptions{})
			rep, err := Verify(t.Context(), fx.dir, fx.keys, verifyOpts())
			if err != nil {
				t.Fatalf("Verify(fresh package) = %v, want success", err)
			}
			want, err := fx.l.Evaluate(t.Context(), fx.l.cp.Size, asOf)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Findings != len(want.Findings) || rep.Findings == 0 {
				t.Errorf("report findings = %d, want %d (> 0)", rep.Findings, len(want.Findings))
			}
			if rep.Size != fx.l.tree.Size() || rep.Origin != testOrigin {
				t.Errorf("report anchored to %q/%d, want %q/%d", rep.Origin, rep.Size, testOrigin, fx.l.tree.Size())
			}
			// Not --all: fewer entries than the tree, but every chain of a
			// finding's subject and of every owner a finding cites.
			if rep.Entries == 0 || rep.Entries >= fx.l.tree.Size() {
				t.Errorf("entries = %d, want 0 < n < %d", rep.Entries, fx.l.tree.Size())
			}
			names := map[string]bool{}
			for _, c := range rep.Checks {
				names[c.Name] = true
			}
			for _, n := range []string{"DSSE signature", "subject digests", "checkpoint signature", "inclusion proofs", "events match leaves", "findings reproduced", "back-matter hashes"} {
				if !names[n] {
					t.Errorf("report lacks check %q", n)
				}
			}
		})
	}
}

func TestExportAllAndTarGz(t *testing.T) {
	l := newLedgerFake(t, synthEvents(10, 5))
	s, pub, _ := evidenceKey(t, "ecdsa")
	p := filepath.Join(t.TempDir(), "pkg.tar.gz")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	sink := NewTarGzSink(f, asOf)
	if err := Export(t.Context(), l, ExportOptions{Signer: s, Evaluator: l.eval, AsOf: asOf, All: true}, sink); err != nil {
		t.Fatal(err)
	}
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	rep, err := Verify(t.Context(), p, Keys{LogKey: l.vkey(), EvidenceKey: pub}, verifyOpts())
	if err != nil {
		t.Fatalf("Verify(tar.gz) = %v", err)
	}
	if rep.Entries != l.tree.Size() {
		t.Errorf("--all package has %d entries, want %d", rep.Entries, l.tree.Size())
	}
}

// TestExportSourceFaults checks that Export refuses a Source that breaks its
// contract instead of signing a package that cannot verify.
func TestExportSourceFaults(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault func(l *ledgerFake)
	}{
		{"bad inclusion proof", func(l *ledgerFake) { l.badProofIndex = 3 }},
		{"cited entry missing", func(l *ledgerFake) {
			doc, _ := l.Evaluate(context.Background(), l.tree.Size(), asOf)
			i, _ := doc.Findings[0].Primary()
			l.dropEntry = int64(i)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLedgerFake(t, synthEvents(10, 5))
			l.Checkpoint(t.Context())
			tc.fault(l)
			s, _, _ := evidenceKey(t, "ed25519")
			err := Export(t.Context(), l, ExportOptions{Signer: s, Evaluator: l.eval, AsOf: asOf}, DirSink{Dir: t.TempDir()})
			if !errors.Is(err, ErrSource) {
				t.Fatalf("Export with %s = %v, want ErrSource", tc.name, err)
			}
		})
	}
}

// resign recomputes the statement over the files now present and signs it
// with s: a tamperer who holds the evidence key, so that the deeper checks
// must catch the change.
func resign(t *testing.T, dir string, s *EvidenceSigner) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, format.FileStatement))
	if err != nil {
		t.Fatal(err)
	}
	var env Envelope
	if err := json.Unmarshal(b, &env); err != nil {
		t.Fatal(err)
	}
	var st Statement
	if err := json.Unmarshal(env.Payload, &st); err != nil {
		t.Fatal(err)
	}
	st.Subject = nil
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.Name() == format.FileStatement {
			continue
		}
		d, err := fileSHA256(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		st.Subject = append(st.Subject, Subject{Name: e.Name(), Digest: map[string]string{"sha256": d}})
	}
	payload, _ := json.Marshal(st)
	nenv, err := s.Sign(PayloadType, payload)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(nenv)
	if err := os.WriteFile(filepath.Join(dir, format.FileStatement), out, 0o644); err != nil {
		t.Fatal(err)
	}
}

func editFile(t *testing.T, dir, name string, edit func([]byte) []byte) {
	t.Helper()
	p := filepath.Join(dir, name)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	nb := edit(b)
	if bytes.Equal(nb, b) {
		t.Fatalf("edit of %s changed nothing", name)
	}
	if err := os.WriteFile(p, nb, 0o644); err != nil {
		t.Fatal(err)
	}
}

// editJSONL rewrites line n (0-based) of entries.jsonl.
func editEntry(t *testing.T, dir string, n int, edit func(*format.EntryLine)) {
	t.Helper()
	editFile(t, dir, format.FileEntries, func(b []byte) []byte {
		lines := bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
		e, err := ParseEntryLine(lines[n])
		if err != nil {
			t.Fatal(err)
		}
		edit(&e)
		lines[n], _ = json.Marshal(e)
		return append(bytes.Join(lines, []byte("\n")), '\n')
	})
}

func editFindings(t *testing.T, dir string, edit func(*format.Findings)) {
	t.Helper()
	editFile(t, dir, format.FileFindings, func(b []byte) []byte {
		doc, err := ParseFindings(b)
		if err != nil {
			t.Fatal(err)
		}
		edit(doc)
		out, _ := json.MarshalIndent(doc, "", "  ")
		return out
	})
}

func TestTamperedPackagesRejected(t *testing.T) {
	for _, tc := range []struct {
		name      string
		tamper    func(t *testing.T, fx *pkgFixture)
		resign    bool
		wantFile  string
		wantCheck string
	}{
		{"leaf altered", func(t *testing.T, fx *pkgFixture) {
			editEntry(t, fx.dir, 2, func(e *format.EntryLine) { e.Leaf[len(e.Leaf)-1] ^= 1 })
		}, false, format.FileEntries, "sha256 digest"},
		{"leaf altered, re-signed", func(t *testing.T, fx *pkgFixture) {
			editEntry(t, fx.dir, 2, func(e *format.EntryLine) { e.Leaf[len(e.Leaf)-1] ^= 1 })
		}, true, format.FileEntries, "inclusion proof"},
		{"event altered, re-signed", func(t *testing.T, fx *pkgFixture) {
			editEntry(t, fx.dir, 1, func(e *format.EntryLine) {
				e.Event = bytes.Replace(e.Event, []byte(`"ev-`), []byte(`"EV-`), 1)
			})
		}, true, format.FileEntries, "event matches leaf"},
		{"cited entry removed, re-signed", func(t *testing.T, fx *pkgFixture) {
			b, _ := os.ReadFile(filepath.Join(fx.dir, format.FileFindings))
			doc, err := ParseFindings(b)
			if err != nil {
				t.Fatal(err)
			}
			idx, _ := doc.Findings[0].Primary()
			editFile(t, fx.dir, format.FileEntries, func(b []byte) []byte {
				var out []byte
				for _, line := range bytes.SplitAfter(b, []byte("\n")) {
					if e, err := ParseEntryLine(line); err == nil && e.Index == idx {
						continue
					}
					out = append(out, line...)
				}
				return out
			})
		}, true, format.FileFindings, "cited entries present"},
		{"finding altered", func(t *testing.T, fx *pkgFixture) {
			editFindings(t, fx.dir, func(d *format.Findings) { d.Findings[0].ExposureSeconds++ })
		}, false, format.FileFindings, "sha256 digest"},
		{"finding altered, re-signed", func(t *testing.T, fx *pkgFixture) {
			editFindings(t, fx.dir, func(d *format.Findings) { d.Findings[0].Severity = "low" })
		}, true, format.FileFindings, "findings reproduced"},
		{"finding removed, re-signed", func(t *testing.T, fx *pkgFixture) {
			editFindings(t, fx.dir, func(d *format.Findings) { d.Findings = d.Findings[1:] })
		}, true, format.FileFindings, "findings reproduced"},
		{"rule text altered, re-signed", func(t *testing.T, fx *pkgFixture) {
			editFindings(t, fx.dir, func(d *format.Findings) { d.Rules[0].Text += "# changed\n" })
		}, true, format.FileFindings, "rule sha256"},
		{"checkpoint altered", func(t *testing.T, fx *pkgFixture) {
			editFile(t, fx.dir, format.FileCheckpoint, func(b []byte) []byte { return bytes.Replace(b, []byte("\n"), []byte("\n1"), 1) })
		}, false, format.FileCheckpoint, "sha256 digest"},
		{"checkpoint altered, re-signed", func(t *testing.T, fx *pkgFixture) {
			editFile(t, fx.dir, format.FileCheckpoint, func(b []byte) []byte { return bytes.Replace(b, []byte("\n"), []byte("\n1"), 1) })
		}, true, format.FileCheckpoint, "checkpoint signature"},
		{"file removed", func(t *testing.T, fx *pkgFixture) {
			os.Remove(filepath.Join(fx.dir, format.FileReport))
		}, false, format.FileReport, "required file present"},
		{"file added", func(t *testing.T, fx *pkgFixture) {
			os.WriteFile(filepath.Join(fx.dir, "notes.txt"), []byte("hi"), 0o644)
		}, false, "notes.txt", "no unlisted files"},
		{"report altered", func(t *testing.T, fx *pkgFixture) {
			editFile(t, fx.dir, format.FileReport, func(b []byte) []byte { return bytes.Replace(b, []byte("<h1>"), []byte("<h1>OK "), 1) })
		}, false, format.FileReport, "sha256 digest"},
		{"signature from another key", func(t *testing.T, fx *pkgFixture) {
			other, _, _ := evidenceKey(t, "ecdsa")
			resign(t, fx.dir, other)
		}, false, format.FileStatement, "DSSE signature"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fx := exportFixture(t, "ecdsa", ExportOptions{})
			tc.tamper(t, fx)
			if tc.resign {
				resign(t, fx.dir, fx.signer)
			}
			_, err := Verify(t.Context(), fx.dir, fx.keys, verifyOpts())
			var ce *CheckError
			if !errors.As(err, &ce) {
				t.Fatalf("Verify(%s) = %v, want a *CheckError", tc.name, err)
			}
			if ce.File != tc.wantFile || tc.wantCheck != "" && ce.Check != tc.wantCheck {
				t.Fatalf("Verify(%s) failed %s/%s (%v), want %s/%s", tc.name, ce.File, ce.Check, err, tc.wantFile, tc.wantCheck)
			}
			if !errors.Is(err, ErrVerification) || !strings.HasPrefix(err.Error(), tc.wantFile+": ") {
				t.Errorf("error %q should wrap ErrVerification and start with the file name", err)
			}
		})
	}
}

func TestVerifyWrongKeys(t *testing.T) {
	fx := exportFixture(t, "ed25519", ExportOptions{})
	other := newLedgerFake(t, synthEvents(1, 1))
	_, err := Verify(t.Context(), fx.dir, Keys{LogKey: other.vkey(), EvidenceKey: fx.pub}, verifyOpts())
	var ce *CheckError
	if !errors.As(err, &ce) || ce.File != format.FileCheckpoint || ce.Check != "checkpoint signature" {
		t.Errorf("Verify with another log key = %v, want checkpoint/checkpoint signature", err)
	}
	_, pub2, _ := evidenceKey(t, "ed25519")
	_, err = Verify(t.Context(), fx.dir, Keys{LogKey: fx.l.vkey(), EvidenceKey: pub2}, verifyOpts())
	if !errors.As(err, &ce) || ce.File != format.FileStatement || ce.Check != "DSSE signature" {
		t.Errorf("Verify with another evidence key = %v, want statement/DSSE signature", err)
	}
}

func TestVerifySince(t *testing.T) {
	l := newLedgerFake(t, synthEvents(20, 5))
	s, pub, _ := evidenceKey(t, "ecdsa")
	keys := Keys{LogKey: l.vkey(), EvidenceKey: pub}
	dir := filepath.Join(t.TempDir(), "pkg")
	if err := Export(t.Context(), l, ExportOptions{Signer: s, Evaluator: l.eval, AsOf: asOf, SinceSizes: []uint64{7, 30}}, DirSink{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		since     []byte
		wantFile  string // "" = success
		wantCheck string
	}{
		{"proof included", l.signedAt(t, 30), "", ""},
		{"other proof included", l.signedAt(t, 7), "", ""},
		{"same size", l.signedAt(t, l.tree.Size()), "", ""},
		{"no proof for that size", l.signedAt(t, 12), format.FileConsistency, "consistency proof"},
		{"since newer than package", func() []byte {
			l2 := *l
			n, _ := l2.signer.Sign([]byte("x"))
			_ = n
			return nil
		}(), "", ""},
	} {
		if tc.since == nil {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			o := verifyOpts()
			o.Since = tc.since
			_, err := Verify(t.Context(), dir, keys, o)
			if tc.wantFile == "" {
				if err != nil {
					t.Fatalf("Verify(--since) = %v, want success", err)
				}
				return
			}
			var ce *CheckError
			if !errors.As(err, &ce) || ce.File != tc.wantFile || ce.Check != tc.wantCheck {
				t.Fatalf("Verify(--since) = %v, want %s/%s", err, tc.wantFile, tc.wantCheck)
			}
		})
	}
	// A forked log: an old checkpoint of size 30 signed by the same key over a
	// different root.
	forked := newLedgerFake(t, synthEvents(3, 10)) // different events
	forked.signer = l.signer
	o := verifyOpts()
	o.Since = forked.signedAt(t, 30)
	_, err := Verify(t.Context(), dir, keys, o)
	var ce *CheckError
	if !errors.As(err, &ce) || ce.File != format.FileConsistency {
		t.Fatalf("Verify(--since forked checkpoint) = %v, want consistency.json failure", err)
	}
}

// TestVerifyManyBatches checks a package larger than one worker batch: an
// early failure ends the parallel reader without hanging, and order is
// checked across batches.
func TestVerifyManyBatches(t *testing.T) {
	l := newLedgerFake(t, synthEvents(200, 10))
	s, pub, _ := evidenceKey(t, "ed25519")
	keys := Keys{LogKey: l.vkey(), EvidenceKey: pub}
	fresh := func() string {
		dir := filepath.Join(t.TempDir(), "pkg")
		if err := Export(t.Context(), l, ExportOptions{Signer: s, Evaluator: l.eval, AsOf: asOf, All: true}, DirSink{Dir: dir}); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	if l.tree.Size() < 4*entryBatchSize {
		t.Fatalf("tree of %d entries is too small for this test", l.tree.Size())
	}
	for _, tc := range []struct {
		name      string
		edit      func([][]byte) [][]byte
		wantCheck string
	}{
		{"first line altered", func(ls [][]byte) [][]byte {
			// The leaf's last byte ends a varint of the observed time: it
			// still decodes to the same event, so only the root catches it.
			e, _ := ParseEntryLine(ls[0])
			e.Leaf[len(e.Leaf)-1] ^= 1
			ls[0], _ = json.Marshal(e)
			return ls
		}, "tree recomputed"},
		{"last line dropped", func(ls [][]byte) [][]byte { return ls[:len(ls)-1] }, "inclusion proof"},
		{"lines swapped across batches", func(ls [][]byte) [][]byte {
			i, j := entryBatchSize-1, entryBatchSize+1
			ls[i], ls[j] = ls[j], ls[i]
			return ls
		}, "entry order"},
		{"duplicate line", func(ls [][]byte) [][]byte {
			return append(ls[:3*entryBatchSize], append([][]byte{ls[3*entryBatchSize-1]}, ls[3*entryBatchSize:]...)...)
		}, "entry order"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fresh()
			editFile(t, dir, format.FileEntries, func(b []byte) []byte {
				ls := bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
				ls = tc.edit(ls)
				return append(bytes.Join(ls, []byte("\n")), '\n')
			})
			resign(t, dir, s)
			done := make(chan error, 1)
			go func() {
				_, err := Verify(t.Context(), dir, keys, verifyOpts())
				done <- err
			}()
			var err error
			select {
			case err = <-done:
			case <-time.After(60 * time.Second):
				t.Fatal("Verify did not return: the parallel reader hangs")
			}
			var ce *CheckError
			if !errors.As(err, &ce) || ce.File != format.FileEntries || ce.Check != tc.wantCheck {
				t.Fatalf("Verify = %v, want entries.jsonl/%s", err, tc.wantCheck)
			}
		})
	}
}

// TestVerifySinceHint: when the package lacks the proof --since needs, the
// error says how to export one, with a flag that exists.
func TestVerifySinceHint(t *testing.T) {
	l := newLedgerFake(t, synthEvents(20, 5))
	s, pub, _ := evidenceKey(t, "ecdsa")
	keys := Keys{LogKey: l.vkey(), EvidenceKey: pub}
	for _, tc := range []struct {
		name  string
		sizes []uint64
	}{
		{"no consistency.json", nil},
		{"no proof for that size", []uint64{7}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "pkg")
			if err := Export(t.Context(), l, ExportOptions{Signer: s, Evaluator: l.eval, AsOf: asOf, SinceSizes: tc.sizes}, DirSink{Dir: dir}); err != nil {
				t.Fatal(err)
			}
			o := verifyOpts()
			o.Since = l.signedAt(t, 12)
			_, err := Verify(t.Context(), dir, keys, o)
			if err == nil || !strings.Contains(err.Error(), "grantline evidence export --since OLD_CHECKPOINT") || strings.Contains(err.Error(), "--since-size") {
				t.Fatalf("Verify(--since without a proof) = %v, want a hint to export with --since", err)
			}
		})
	}
}
