package synth_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/grantline/grantline/internal/synth"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
	catalog "github.com/grantline/grantline/rules"
)

// vocabulary is docs/design.md's closed type vocabulary, written out again here
// rather than taken from the generator.
var vocabulary = strings.Fields(`identity.created identity.moved identity.disabled identity.enabled
identity.terminated access.requested access.approved access.denied access.revoked access.expired
review.certified review.revoked grant.assigned grant.activated grant.deactivated grant.removed
grant.expired session.started session.ended session.revoked credential.created
credential.checked_out credential.checked_in credential.rotated credential.revoked
breakglass.invoked breakglass.reviewed auth.succeeded account.created account.disabled
review.opened review.signed_off review.closed`)

var kinds = []string{"human", "service_account", "workload", "bot", "system", "vendor", "contractor"}

var tokenName = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

func generate(t *testing.T, cfg synth.Config) *synth.Org {
	t.Helper()
	o, err := synth.Generate(cfg)
	if err != nil {
		t.Fatalf("Generate(%+v): %v", cfg, err)
	}
	return o
}

func jsonl(t *testing.T, o *synth.Org) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := synth.WriteJSONL(&b, o.Events); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestDeterministic(t *testing.T) {
	cfg := synth.DefaultConfig()
	a, b := jsonl(t, generate(t, cfg)), jsonl(t, generate(t, cfg))
	if !bytes.Equal(a, b) {
		t.Fatalf("same config gave different bytes (%d vs %d)", len(a), len(b))
	}
	cfg.Seed++
	if c := jsonl(t, generate(t, cfg)); bytes.Equal(a, c) {
		t.Fatalf("seeds %d and %d gave the same bytes", cfg.Seed-1, cfg.Seed)
	}
	o1, o2 := generate(t, synth.DefaultConfig()), generate(t, synth.DefaultConfig())
	if !slices.Equal(o1.Planted, o2.Planted) {
		t.Errorf("same config planted different failures")
	}
}

func TestEventsAreValid(t *testing.T) {
	for _, cfg := range []synth.Config{synth.DefaultConfig(), {Seed: 5, Identities: 40, Months: 4, FailureRate: 0.5}} {
		o := generate(t, cfg)
		if len(o.Events) < cfg.Identities {
			t.Fatalf("%d events for %d identities", len(o.Events), cfg.Identities)
		}
		start := cfg.Start
		if start.IsZero() {
			start = synth.DefaultStart
		}
		seen := map[string]bool{}
		// Two plants break the organisation's habits on purpose: a closing
		// event reported late (backdated-closure) and a bot with no owner.
		late, ownerless := map[string]bool{}, map[string]bool{}
		for _, p := range o.Planted {
			switch p.Rule {
			case "backdated-closure":
				late[p.EventID] = true
			case "nhi-without-owner":
				ownerless[p.Subject] = true
			}
		}
		var prev time.Time
		for i, e := range o.Events {
			where := func(format string, args ...any) {
				t.Helper()
				t.Errorf("event %d (%s %s): "+format, append([]any{i, e.GetId(), e.GetType()}, args...)...)
			}
			key := e.GetSource().GetSystem() + "/" + e.GetId()
			switch {
			case e.GetId() == "":
				where("no id")
			case seen[key]:
				where("duplicate (source.system, id)")
			case !slices.Contains(vocabulary, e.GetType()):
				where("type not in the vocabulary")
			case e.GetTime() == nil || !e.GetTime().IsValid():
				where("no valid time")
			case !tokenName.MatchString(e.GetSource().GetSystem()) || !slices.Contains(synth.Sources, e.GetSource().GetSystem()):
				where("source.system %q", e.GetSource().GetSystem())
			case e.GetSubject().GetId() == "":
				where("no subject.id")
			case !slices.Contains(kinds, e.GetSubject().GetKind()):
				where("subject.kind %q", e.GetSubject().GetKind())
			case e.GetSubject().GetKind() != "human" && e.GetSubject().GetOwnerId() == "" && !ownerless[e.GetSubject().GetId()]:
				where("non-human subject without owner_id")
			case e.GetActor() != nil && !slices.Contains(kinds, e.GetActor().GetKind()):
				where("actor.kind %q", e.GetActor().GetKind())
			}
			seen[key] = true
			tm := e.GetTime().AsTime()
			if late[e.GetId()] {
				continue // reported late on purpose; the time checks below still apply to the rest
			}
			if tm.Before(prev) {
				where("out of time order")
			}
			if tm.Before(start) || !tm.Before(o.AsOf) {
				where("time %s outside [%s, %s)", tm, start, o.AsOf)
			}
			prev = tm
			if n := proto.Size(e); n > 4096 {
				where("%d bytes encoded", n)
			}
			switch {
			case strings.HasPrefix(e.GetType(), "grant.") && e.GetRefs().GetGrant() == "":
				where("grant event without refs.grant")
			case strings.HasPrefix(e.GetType(), "session.") && e.GetRefs().GetSession() == "":
				where("session event without refs.session")
			case strings.HasPrefix(e.GetType(), "credential.") && e.GetRefs().GetCredential() == "":
				where("credential event without refs.credential")
			case strings.HasPrefix(e.GetType(), "access.") && e.GetRefs().GetRequest() == "":
				where("access event without refs.request")
			}
		}
	}
}

func TestCoversVocabularyAndRules(t *testing.T) {
	o := generate(t, synth.DefaultConfig())
	types := map[string]int{}
	for _, e := range o.Events {
		types[e.GetType()]++
	}
	for _, v := range vocabulary {
		if types[v] == 0 {
			t.Errorf("no %s event in the default organisation", v)
		}
	}
	rules := map[string]int{}
	for _, p := range o.Planted {
		rules[p.Rule]++
		if p.Subject == "" || p.EventID == "" {
			t.Errorf("incomplete plant %+v", p)
		}
	}
	builtin, err := catalog.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	if len(synth.Rules) != len(builtin) {
		t.Errorf("synth.Rules has %d rules, want the catalog's %d", len(synth.Rules), len(builtin))
	}
	for _, r := range synth.Rules {
		if rules[r] == 0 {
			t.Errorf("no plant for %s", r)
		}
	}
	// Mostly clean: far fewer subjects with a plant than subjects.
	subjects := map[string]bool{}
	for _, p := range o.Planted {
		subjects[p.Subject] = true
	}
	if len(subjects)*4 > o.Identities {
		t.Errorf("%d of %d identities carry a failure; want a realistic minority", len(subjects), o.Identities)
	}
	kindsSeen := map[string]bool{}
	sources := map[string]bool{}
	for _, e := range o.Events {
		kindsSeen[e.GetSubject().GetKind()] = true
		sources[e.GetSource().GetSystem()] = true
	}
	for _, k := range []string{"human", "service_account", "workload", "bot"} {
		if !kindsSeen[k] {
			t.Errorf("no %s subject", k)
		}
	}
	if len(sources) != len(synth.Sources) {
		t.Errorf("sources used %v, want %v", sources, synth.Sources)
	}
	if clean := generate(t, synth.Config{Seed: 1}); len(clean.Planted) != 0 {
		t.Errorf("FailureRate 0 planted %d failures", len(clean.Planted))
	}
}

func TestScales(t *testing.T) {
	small := generate(t, synth.Config{Seed: 3, Identities: 100, FailureRate: 0.04})
	large := generate(t, synth.Config{Seed: 3, Identities: 400, FailureRate: 0.04})
	if large.Identities < 380 || small.Identities < 95 {
		t.Errorf("identities with events: %d for 100, %d for 400", small.Identities, large.Identities)
	}
	if len(large.Events) < 3*len(small.Events) {
		t.Errorf("400 identities gave %d events, 100 gave %d: want roughly 4x", len(large.Events), len(small.Events))
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		cfg  synth.Config
		want string
	}{
		{synth.Config{Identities: 3}, "identities 3"},
		{synth.Config{Months: 2}, "months 2"},
		{synth.Config{Months: 13}, "months 13"},
		{synth.Config{FailureRate: -0.1}, "failure rate -0.1"},
		{synth.Config{FailureRate: 0.9}, "failure rate 0.9"},
	} {
		_, err := synth.Generate(tc.cfg)
		if !errors.Is(err, synth.ErrConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Generate(%+v) = %v, want ErrConfig mentioning %q", tc.cfg, err, tc.want)
		}
	}
}

// TestJSONLRoundTrip checks that every line is lower_snake_case protojson
// that decodes back to the same event, as `grantline append` will read it.
func TestJSONLRoundTrip(t *testing.T) {
	o := generate(t, synth.Config{Seed: 11, Identities: 60, FailureRate: 0.1})
	sc := bufio.NewScanner(bytes.NewReader(jsonl(t, o)))
	sc.Buffer(nil, 1<<20)
	n := 0
	for sc.Scan() {
		line := sc.Bytes()
		var generic map[string]any
		if err := json.Unmarshal(line, &generic); err != nil {
			t.Fatalf("line %d: not JSON: %v", n+1, err)
		}
		for k := range generic {
			if strings.ToLower(k) != k {
				t.Fatalf("line %d: field %q is not lower_snake_case", n+1, k)
			}
		}
		ev := &pb.Event{}
		if err := (protojson.UnmarshalOptions{}).Unmarshal(line, ev); err != nil {
			t.Fatalf("line %d: %v", n+1, err)
		}
		if !proto.Equal(ev, o.Events[n]) {
			t.Fatalf("line %d decodes to a different event", n+1)
		}
		n++
	}
	if n != len(o.Events) {
		t.Fatalf("%d lines for %d events", n, len(o.Events))
	}
}

func ExampleGenerate() {
	org, err := synth.Generate(synth.DefaultConfig())
	if err != nil {
		panic(err)
	}
	for src, evs := range org.BySource() {
		_ = src // stream evs to the server as source src, e.g. over AppendStream
		_ = evs
	}
	_ = org.AsOf // evaluate at this time to see every planted failure
}

func BenchmarkGenerate(b *testing.B) {
	cfg := synth.DefaultConfig()
	var events int
	for b.Loop() {
		o, err := synth.Generate(cfg)
		if err != nil {
			b.Fatal(err)
		}
		events = len(o.Events)
	}
	b.ReportMetric(float64(events)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

func BenchmarkWriteJSONL(b *testing.B) {
	o, err := synth.Generate(synth.DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	var buf bytes.Buffer
	for b.Loop() {
		buf.Reset()
		if err := synth.WriteJSONL(&buf, o.Events); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(buf.Len()))
	b.ReportMetric(float64(len(o.Events))*float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
