package verify

import (
	"runtime/debug"
	"sync"
)

// BuildVersion is the Grantline version of this binary, as the Go build
// recorded it: the module version and, when built from a checkout, the
// commit ("(devel) 3f2a9c1e0b7d"). Reports state it.
var BuildVersion = sync.OnceValue(func() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += " " + s.Value[:12]
		}
		if s.Key == "vcs.modified" && s.Value == "true" {
			v += "+dirty"
		}
	}
	return "grantline " + v
})
