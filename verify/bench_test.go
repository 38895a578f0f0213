package verify

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/internal/cputime"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	"github.com/grantline/grantline/rules"
)

// benchEvents returns a deterministic feed of about total events: subjects
// of 20 events each (requests, approvals, grants ended on time, sessions),
// clean under the built-in catalog except that every 10th subject approved
// its own request (self-approval) and every 10th, offset by 5, kept a grant
// past its expiry (grant-overstayed-expiry, with exposure): about one
// finding per 100 events.
func benchEvents(total int) []*pb.Event {
	const per = 20
	sources := []string{"sailpoint-iga", "cyberark-pam", "okta"}
	evs := make([]*pb.Event, 0, total)
	n := 0
	for s := 0; len(evs) < total; s++ {
		sub := &pb.Identity{Id: fmt.Sprintf("user-%06d", s), Kind: "human", Display: fmt.Sprintf("User %d", s)}
		t := base.Add(time.Duration(s%1000) * time.Minute)
		add := func(typ string, e *pb.Event) {
			n++
			t = t.Add(37 * time.Minute)
			e.Id, e.Type, e.Time, e.Subject = fmt.Sprintf("ev-%08d", n), typ, timestamppb.New(t), sub
			e.Source = &pb.Source{System: sources[(s+n)%3]}
			evs = append(evs, e)
		}
		for k := 0; k < per/5; k++ {
			req := fmt.Sprintf("req-%d-%d", s, k)
			g := fmt.Sprintf("g-%d-%d", s, k)
			ent := &pb.Entitlement{Id: "app-user", Resource: "crm"}
			add("access.requested", &pb.Event{Entitlement: ent, Refs: &pb.Refs{Request: req}})
			approver := &pb.Identity{Id: "mgr-1", Kind: "human"}
			if k == 0 && s%10 == 0 {
				approver = &pb.Identity{Id: sub.Id, Kind: "human"}
			}
			add("access.approved", &pb.Event{Entitlement: ent, Actor: approver, Refs: &pb.Refs{Request: req}})
			exp := timestamppb.New(t.Add(24 * time.Hour))
			add("grant.assigned", &pb.Event{Entitlement: ent, Refs: &pb.Refs{Request: req, Grant: g}, ExpiresAt: exp})
			add("session.started", &pb.Event{Entitlement: ent, Refs: &pb.Refs{Grant: g, Session: g + "-s"}})
			if k == 0 && s%10 == 5 {
				add("session.ended", &pb.Event{Entitlement: ent, Refs: &pb.Refs{Grant: g, Session: g + "-s"}})
				continue // never removed: overstays its expiry
			}
			add("grant.removed", &pb.Event{Entitlement: ent, Refs: &pb.Refs{Request: req, Grant: g}})
		}
	}
	return evs[:total]
}

var (
	benchMu   sync.Mutex
	benchFake = map[int]*ledgerFake{}
)

// benchLedger returns a fake ledger of n entries evaluated by the built-in
// rules, built once per size.
func benchLedger(b *testing.B, n int) *ledgerFake {
	benchMu.Lock()
	defer benchMu.Unlock()
	if l, ok := benchFake[n]; ok {
		return l
	}
	l := newLedgerFake(b, benchEvents(n))
	builtin, err := rules.Builtin()
	if err != nil {
		b.Fatal(err)
	}
	if l.set, err = rules.NewSet(builtin, rules.Params{}); err != nil {
		b.Fatal(err)
	}
	benchFake[n] = l
	return l
}

var benchAsOf = base.AddDate(0, 3, 0)

func benchSizes() []int {
	if testing.Short() {
		return []int{100_000}
	}
	return []int{1_000_000}
}

// BenchmarkExport exports a package anchored in an n-entry ledger: the
// Source evaluates the built-in rules over every subject (as the server
// does), then Export streams the chains with findings, with proofs, and
// renders findings.json, the CSV, the report, OSCAL and the signed statement.
func BenchmarkExport(b *testing.B) {
	for _, n := range benchSizes() {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			l := benchLedger(b, n)
			s, _, _ := evidenceKey(b, "ecdsa")
			var findings, entries int
			var size int64
			var eval time.Duration
			cpu0 := cputime.Process()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				dir := filepath.Join(b.TempDir(), "pkg")
				l.evaluated = false
				if err := Export(b.Context(), l, ExportOptions{Signer: s, Evaluator: l.eval, AsOf: benchAsOf}, DirSink{Dir: dir}); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				eval += l.evalTime
				size, entries, findings = dirStats(b, dir)
				os.RemoveAll(dir)
				b.StartTimer()
			}
			b.ReportMetric(float64(findings), "findings")
			b.ReportMetric(float64(entries), "pkg-entries")
			b.ReportMetric(float64(size)/(1<<20), "pkg-MiB")
			b.ReportMetric(eval.Seconds()/float64(b.N), "rules-eval-s/op")
			b.ReportMetric((cputime.Process()-cpu0).Seconds()/float64(b.N), "cpu-s/op")
		})
	}
}

// BenchmarkVerify verifies that package offline, re-running the rules on
// the included chains.
func BenchmarkVerify(b *testing.B) {
	for _, n := range benchSizes() {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			l := benchLedger(b, n)
			s, pub, _ := evidenceKey(b, "ecdsa")
			dir := filepath.Join(b.TempDir(), "pkg")
			l.evaluated = false
			if err := Export(b.Context(), l, ExportOptions{Signer: s, Evaluator: l.eval, AsOf: benchAsOf}, DirSink{Dir: dir}); err != nil {
				b.Fatal(err)
			}
			keys := Keys{LogKey: l.vkey(), EvidenceKey: pub}
			var rep *Report
			cpu0 := cputime.Process()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				var err error
				if rep, err = Verify(b.Context(), dir, keys, Options{}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(rep.Findings), "findings")
			b.ReportMetric(float64(rep.Entries), "pkg-entries")
			b.ReportMetric((cputime.Process()-cpu0).Seconds()/float64(b.N), "cpu-s/op")
		})
	}
}

func dirStats(b *testing.B, dir string) (size int64, entries, findings int) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		fi, _ := e.Info()
		size += fi.Size()
	}
	bf, _ := os.ReadFile(filepath.Join(dir, "findings.json"))
	doc, err := ParseFindings(bf)
	if err != nil {
		b.Fatal(err)
	}
	be, _ := os.ReadFile(filepath.Join(dir, "entries.jsonl"))
	for _, c := range be {
		if c == '\n' {
			entries++
		}
	}
	return size, entries, len(doc.Findings)
}
