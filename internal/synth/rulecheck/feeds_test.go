package rulecheck

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

const feedsDir = "../../../testdata/feeds"

// feedSpec is what testdata/feeds/README.md promises for one feed.
type feedSpec struct {
	file     string
	findings []finding
	none     bool
}

// readFeedsREADME parses the README: "As of: T", then per "## FILE"
// section lines "- finding: RULE SUBJECT EVENT_ID" or "- no findings".
func readFeedsREADME(t *testing.T) (time.Time, []*feedSpec) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(feedsDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var asOf time.Time
	var specs []*feedSpec
	for i, line := range strings.Split(string(data), "\n") {
		switch {
		case strings.HasPrefix(line, "As of: "):
			if asOf, err = time.Parse(time.RFC3339, strings.TrimPrefix(line, "As of: ")); err != nil {
				t.Fatalf("README.md:%d: %v", i+1, err)
			}
		case strings.HasPrefix(line, "## "):
			specs = append(specs, &feedSpec{file: strings.TrimPrefix(line, "## ")})
		case strings.HasPrefix(line, "- finding: "):
			f := strings.Fields(strings.TrimPrefix(line, "- finding: "))
			if len(f) != 3 || len(specs) == 0 {
				t.Fatalf("README.md:%d: want \"- finding: RULE SUBJECT EVENT_ID\" under a \"## FILE\" heading", i+1)
			}
			s := specs[len(specs)-1]
			s.findings = append(s.findings, finding{f[0], f[1], f[2]})
		case line == "- no findings":
			specs[len(specs)-1].none = true
		}
	}
	if asOf.IsZero() {
		t.Fatal("README.md: no \"As of:\" line")
	}
	return asOf, specs
}

func readFeed(t *testing.T, name string) []*pb.Event {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(feedsDir, name))
	if err != nil {
		t.Fatal(err)
	}
	var evs []*pb.Event
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		ev := &pb.Event{}
		if err := protojson.Unmarshal(sc.Bytes(), ev); err != nil {
			t.Fatalf("%s:%d: %v", name, n, err)
		}
		if err := event.Validate(ev, time.Now()); err != nil {
			t.Fatalf("%s:%d: the server would refuse it: %v", name, n, err)
		}
		evs = append(evs, ev)
	}
	return evs
}

func TestFeedsMatchTheirREADME(t *testing.T) {
	asOf, specs := readFeedsREADME(t)
	files, _ := filepath.Glob(filepath.Join(feedsDir, "*.jsonl"))
	if len(files) != len(specs) {
		t.Errorf("%d feeds but %d README sections", len(files), len(specs))
	}
	var all []*pb.Event
	var wantAll []finding
	for _, s := range specs {
		t.Run(s.file, func(t *testing.T) {
			if !s.none && len(s.findings) == 0 {
				t.Fatalf("README section %s states no findings and not \"- no findings\"", s.file)
			}
			evs := readFeed(t, s.file)
			all = append(all, evs...)
			wantAll = append(wantAll, s.findings...)
			want := sorted(s.findings)
			cel, orc := evaluate(t, evs, asOf, nil)
			for name, got := range map[string][]finding{"CEL catalog": cel, "oracle": orc} {
				for _, f := range missing(want, got) {
					t.Errorf("%s: README promises %s, not found", name, f)
				}
				for _, f := range missing(got, want) {
					t.Errorf("%s: found %s, not in the README", name, f)
				}
			}
		})
	}
	// All feeds in one ledger, appended in README order as the README
	// says: the same findings, on the catalog and on the oracle.
	cel, orc := evaluate(t, all, asOf, nil)
	if len(missing(cel, orc)) != 0 || len(missing(orc, cel)) != 0 {
		t.Errorf("all feeds together: catalog %v, oracle %v", cel, orc)
	}
	want := sorted(wantAll)
	if len(missing(want, cel)) != 0 || len(missing(cel, want)) != 0 {
		t.Errorf("all feeds together: got %v, want %v", cel, want)
	}
	seen := map[string]bool{}
	for _, e := range all {
		k := e.GetSource().GetSystem() + "/" + e.GetId()
		if seen[k] {
			t.Errorf("event id %s is used by two feeds", k)
		}
		seen[k] = true
	}
}

// TestGeneratedEventsPassServerValidation runs the server's own event
// validation over a generated organisation.
func TestGeneratedEventsPassServerValidation(t *testing.T) {
	o := generateDefault(t)
	for i, e := range o.Events {
		if err := event.Validate(e, time.Now()); err != nil {
			t.Fatalf("event %d (%s): %v", i, e.GetId(), err)
		}
	}
}

// TestFeedsDoNotShareSubjectsWithTheDemo keeps the README's walk-through
// honest: it appends the feeds and the default synthetic organisation to
// one ledger, and each feed's story must keep its own chains.
func TestFeedsDoNotShareSubjectsWithTheDemo(t *testing.T) {
	_, specs := readFeedsREADME(t)
	org := generateDefault(t)
	synthSubjects := map[string]bool{}
	for _, e := range org.Events {
		synthSubjects[e.GetSubject().GetId()] = true
	}
	for _, s := range specs {
		for _, e := range readFeed(t, s.file) {
			if synthSubjects[e.GetSubject().GetId()] {
				t.Errorf("%s: subject %s also exists in the default synthetic organisation", s.file, e.GetSubject().GetId())
			}
		}
	}
}
