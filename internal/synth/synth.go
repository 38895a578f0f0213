// Package synth generates a deterministic synthetic organisation for demos,
// tests and benchmarks: humans with departments and managers, service
// accounts, workloads and bots with owners, vaulted shared accounts, and
// several months of their IGA, PAM and HR events (joiners, requests,
// approvals, just-in-time grants, sessions, reviews, movers, leavers,
// credential checkouts and rotations, break-glass). The organisation is
// mostly clean, with a configurable share of each failure the 19 built-in
// rules of round 1 (rules/catalog) describe planted in it, and one plant of
// each rule added in round 2 on identities of its own (round2.go, "r2."
// and "r2-" ids); Org.Planted lists every
// planted finding, so tests can check that evaluating at Org.AsOf finds
// exactly those (see the rulecheck subpackage). The same Config always yields
// the same events, byte for byte (math/rand/v2 PCG seeded from Config.Seed).
// The package is pure: no I/O beyond the writer given to WriteJSONL.
package synth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// The simulated sources. Each is a valid principal (token) name.
const (
	SourceHR  = "workday-hr"    // joiners, movers, leavers, leave of absence
	SourceIGA = "sailpoint-iga" // requests, approvals, standing grants, reviews, non-human identities
	SourcePAM = "cyberark-pam"  // JIT grants, sessions, vaulted credentials, break-glass
)

// Sources lists the simulated source systems, in a fixed order.
var Sources = []string{SourceHR, SourceIGA, SourcePAM}

// Defaults used by DefaultConfig.
const (
	DefaultIdentities  = 200
	DefaultMonths      = 6
	DefaultFailureRate = 0.04
	DefaultSeed        = 1
)

// DefaultStart is the first day of the default simulated period.
var DefaultStart = time.Date(2026, time.March, 2, 0, 0, 0, 0, time.UTC)

// Limits on Config.
const (
	MinIdentities  = 40
	MaxIdentities  = 200000
	MinMonths      = 4 // the 90-day rules need a quarter of history
	MaxMonths      = 11
	MaxFailureRate = 0.5
)

// ErrConfig is returned (wrapped) for an invalid Config.
var ErrConfig = errors.New("invalid synth config")

// Config describes the organisation to generate. The zero value of a field
// means its default, except FailureRate: 0 means a clean organisation.
type Config struct {
	Seed       uint64    // same seed, same bytes
	Identities int       // humans, non-human identities and vaulted accounts together; default 200
	Start      time.Time // first instant of the simulated period; default DefaultStart
	Months     int       // length of the period; default 6
	// FailureRate is the share of each rule's eligible population given that
	// rule's failure (scaled by how common the failure is in practice); every
	// rule gets at least one plant when it is above zero. 0 plants nothing.
	FailureRate float64
}

// DefaultConfig is the configuration `grantline demo` uses.
func DefaultConfig() Config {
	return Config{Seed: DefaultSeed, Identities: DefaultIdentities, Start: DefaultStart,
		Months: DefaultMonths, FailureRate: DefaultFailureRate}
}

func (c Config) normalize() (Config, error) {
	if c.Identities == 0 {
		c.Identities = DefaultIdentities
	}
	if c.Months == 0 {
		c.Months = DefaultMonths
	}
	if c.Start.IsZero() {
		c.Start = DefaultStart
	}
	c.Start = c.Start.UTC().Truncate(time.Second)
	switch {
	case c.Identities < MinIdentities || c.Identities > MaxIdentities:
		return c, fmt.Errorf("%w: identities %d: want %d to %d", ErrConfig, c.Identities, MinIdentities, MaxIdentities)
	case c.Months < MinMonths || c.Months > MaxMonths:
		return c, fmt.Errorf("%w: months %d: want %d to %d (the 90-day rules need history; approvals last a year)", ErrConfig, c.Months, MinMonths, MaxMonths)
	case c.FailureRate < 0 || c.FailureRate > MaxFailureRate || c.FailureRate != c.FailureRate:
		return c, fmt.Errorf("%w: failure rate %v: want 0 (clean) to %v", ErrConfig, c.FailureRate, MaxFailureRate)
	}
	return c, nil
}

// Planted is one finding the generator planted on purpose: the rule that
// must report it, the subject, and the id of the primary event the finding
// cites.
type Planted struct {
	Rule    string
	Subject string
	EventID string
}

// Org is a generated organisation.
type Org struct {
	Config     Config      // the normalized configuration
	Events     []*pb.Event // sorted by time; ids unique and increasing per source
	Planted    []Planted   // sorted by rule, subject, event id
	AsOf       time.Time   // the evaluation time the plants are designed for; every event is before it
	Identities int         // subjects with at least one event
	// SoDPairs are the separation-of-duties entitlement pairs the
	// organisation's policy forbids; pass them as the sod_pairs param.
	SoDPairs [][2]string
}

// BySource splits the events per source system, keeping time order.
func (o *Org) BySource() map[string][]*pb.Event {
	m := make(map[string][]*pb.Event, len(Sources))
	for _, e := range o.Events {
		m[e.GetSource().GetSystem()] = append(m[e.GetSource().GetSystem()], e)
	}
	return m
}

// ParamsYAML is a rule params file (for `grantline serve --params`) that
// sets sod_pairs to the organisation's policy.
func (o *Org) ParamsYAML() []byte {
	var b bytes.Buffer
	b.WriteString("# separation-of-duties policy of the synthetic organisation\nsod_pairs:\n")
	for _, p := range o.SoDPairs {
		fmt.Fprintf(&b, "  - [%q, %q]\n", p[0], p[1])
	}
	return b.Bytes()
}

// Plantable reports whether the organisation's period is long enough to
// plant a failure of rule: access-review-missing needs an item older than
// its six-month review interval (docs/rules.md rule 35), which a shorter
// period cannot hold. Every other rule of Rules is always planted (when the
// failure rate is not 0).
func (o *Org) Plantable(rule string) bool {
	if rule == rAccessReview {
		return o.Config.Start.Add(12 * time.Hour).Add(accessReviewEvery).Before(o.AsOf)
	}
	return true
}

// MarshalEvent encodes one event as a single line of compact protojson with
// lower_snake_case field names, the form `grantline append` reads. The
// output is stable: the same event always gives the same bytes.
func MarshalEvent(ev *pb.Event) ([]byte, error) {
	raw, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("encoding event %q: %w", ev.GetId(), err)
	}
	// protojson randomizes whitespace between builds on purpose; compacting
	// makes the bytes depend only on the event.
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return nil, fmt.Errorf("compacting event %q: %w", ev.GetId(), err)
	}
	return b.Bytes(), nil
}

// WriteJSONL writes events as JSON lines (see MarshalEvent).
func WriteJSONL(w io.Writer, events []*pb.Event) error {
	var b bytes.Buffer
	for _, ev := range events {
		line, err := MarshalEvent(ev)
		if err != nil {
			return err
		}
		b.Write(line)
		b.WriteByte('\n')
		if b.Len() >= 64<<10 {
			if _, err := w.Write(b.Bytes()); err != nil {
				return fmt.Errorf("writing events: %w", err)
			}
			b.Reset()
		}
	}
	if _, err := w.Write(b.Bytes()); err != nil {
		return fmt.Errorf("writing events: %w", err)
	}
	return nil
}
