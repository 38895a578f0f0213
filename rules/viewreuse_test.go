package rules

import (
	"reflect"
	"testing"

	"github.com/grantline/grantline/internal/synth"
)

// TestViewsOnReusedSlabs: views built in a slab that held other subjects'
// chains (its events, lists, maps, grant aggregates and interned strings
// reused) equal views built in a new slab, for every subject of a
// generated organisation, read as leaves and as decoded events, with the
// subjects taken in order and then in reverse (so that each slab is reused
// by chains both longer and shorter than the one before).
func TestViewsOnReusedSlabs(t *testing.T) {
	org, err := synth.Generate(synth.Config{Seed: 11, Identities: 120, FailureRate: 0.3})
	if err != nil {
		t.Fatal(err)
	}
	subjects, decoded, leaves := orgChains(t, org.Events)
	defer func(g func() *eventSlab) { getSlab = g }(getSlab)
	// One slab, reused for every chain (as one worker's pool does).
	shared := new(eventSlab)
	reused := func() *eventSlab { return shared }
	fresh := func() *eventSlab { return new(eventSlab) }
	order := append(append([]string(nil), subjects...), subjects...)
	for i := range subjects {
		order[len(subjects)+i] = subjects[len(subjects)-1-i]
	}
	for name, chains := range map[string]leafChains{"leaves": leaves, "decoded": decoded} {
		for _, sub := range order {
			getSlab = fresh
			want, err := buildViews(sub, chains[sub], org.AsOf, nil)
			if err != nil {
				t.Fatal(err)
			}
			getSlab = reused
			got, err := buildViews(sub, chains[sub], org.AsOf, nil)
			if err != nil {
				t.Fatal(err)
			}
			want.slabs, got.slabs = nil, nil
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("%s, subject %s: views built in a reused slab differ from views built in a new one", name, sub)
			}
			got.release()
		}
	}
}
