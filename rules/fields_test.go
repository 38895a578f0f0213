package rules

import (
	"testing"
	"time"

	"github.com/google/cel-go/common/types"
)

// TestFastFieldsAgreeWithReflection reads every field that has a direct
// accessor (fields.go) of every view object of a generated organisation
// both ways, directly and through ext.NativeTypes' reflection, and wants
// the same CEL value. (A zero time.Time is left out: reflection reads it
// as the Unix epoch, the accessors as the zero time, and rules test
// has_expiry and the like first.)
func TestFastFieldsAgreeWithReflection(t *testing.T) {
	env, err := baseEnv()
	if err != nil {
		t.Fatal(err)
	}
	fast, ok := env.CELTypeProvider().(*fastProvider)
	if !ok {
		t.Fatalf("the provider is a %T, not the fast one", env.CELTypeProvider())
	}
	adapter := env.CELTypeAdapter()
	leaves, subjects, _, asOf := synthOrg(t, 60)
	s := catalogSet(t, Params{}, Options{}, nil)
	checked := map[string]int{}
	check := func(typeName string, obj any) {
		t.Helper()
		for field := range getters[typeName] {
			f, ok1 := fast.FindStructFieldType(typeName, field)
			r, ok2 := fast.Provider.FindStructFieldType(typeName, field)
			if !ok1 || !ok2 {
				t.Fatalf("%s.%s: not a field", typeName, field)
			}
			fv, err1 := f.GetFrom(obj)
			rv, err2 := r.GetFrom(obj)
			if err1 != nil || err2 != nil {
				t.Fatalf("%s.%s: %v, %v", typeName, field, err1, err2)
			}
			a, b := adapter.NativeToValue(fv), adapter.NativeToValue(rv)
			if ts, ok := a.(types.Timestamp); ok && ts.Time.Equal(time.Time{}) {
				continue
			}
			if a.Equal(b) != types.True {
				t.Fatalf("%s.%s of %+v: direct %v, reflection %v", typeName, field, obj, a, b)
			}
			checked[typeName+"."+field]++
		}
	}
	for _, sub := range subjects {
		v, _, err := s.loadViews(t.Context(), sub, leaves, asOf, nil)
		if err != nil {
			t.Fatal(err)
		}
		check("rules.Subject", &v.subject)
		check("rules.Owner", &v.owner)
		for _, e := range v.events {
			check("rules.Event", e)
			check("rules.Identity", &e.Subject)
			check("rules.Identity", &e.Actor)
			check("rules.Entitlement", &e.Entitlement)
			check("rules.Refs", &e.Refs)
		}
		for _, g := range v.grants {
			check("rules.Grant", g)
		}
		for _, x := range v.sessions {
			check("rules.Session", x)
		}
		for _, a := range v.approvals {
			check("rules.Approval", a)
		}
		for _, c := range v.credentials {
			check("rules.Credential", c)
			for _, k := range c.Checkouts {
				check("rules.Checkout", k)
			}
		}
		v.release()
	}
	for typeName, fields := range getters {
		for field := range fields {
			if checked[typeName+"."+field] == 0 {
				t.Errorf("%s.%s: never compared", typeName, field)
			}
		}
	}
}
