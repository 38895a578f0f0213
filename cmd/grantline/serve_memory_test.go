package main

import (
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int64
		err  bool
	}{
		{"512MiB", 512 << 20, false},
		{"2GiB", 2 << 30, false},
		{"1G", 1 << 30, false},
		{"300MB", 300e6, false},
		{"4096", 4096, false},
		{" 64 KiB ", 64 << 10, false},
		{"0", 0, false},
		{"-1GiB", 0, true},
		{"1.5GiB", 0, true},
		{"lots", 0, true},
		{"99999999999TiB", 0, true},
	} {
		got, err := parseSize(tt.in)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.err)
		}
	}
	if got := sizeString(512 << 20); got != "512MiB" {
		t.Errorf("sizeString(512 MiB) = %q", got)
	}
}

// TestServeMemoryFlags: bad sizes are usage errors naming the flag.
func TestServeMemoryFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--memory-budget", "lots"},
		{"--max-mapped", "-5"},
		{"--memory-budget", "16MiB"},
	} {
		code, _, errs := runCmd(t, "", append([]string{"serve", "--data", t.TempDir(), "--listen", "127.0.0.1:0"}, args...)...)
		if code != 2 || !strings.Contains(errs, args[0]) {
			t.Errorf("serve %v = exit %d, %q; want exit 2 naming %s", args, code, errs, args[0])
		}
	}
}
