package main

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestNoSecretInHelp runs the real binary with secrets in the environment:
// no help text, usage line or flag error of any client command may print
// them (they used to appear as the flags' defaults).
func TestNoSecretInHelp(t *testing.T) {
	requireBinary(t)
	secrets := []string{"secret-xyz", "ca-secret-path", "pw-secret"}
	env := append(os.Environ(),
		"GRANTLINE_TOKEN=secret-xyz",
		"GRANTLINE_CA=/etc/ca-secret-path.pem",
		"GRANTLINE_SERVER=http://user:pw-secret@127.0.0.1:1",
	)
	var cmds [][]string
	for _, name := range [][]string{{"append"}, {"backup"}, {"bench"}, {"checkpoint"}, {"evaluate"}, {"events"},
		{"evidence", "export"}, {"proof", "inclusion"}, {"proof", "consistency"}} {
		cmds = append(cmds,
			append(name[:len(name):len(name)], "-h"),
			append(name[:len(name):len(name)], "--no-such-flag"),
			append(name[:len(name):len(name)], "--token"), // a flag missing its value
		)
	}
	cmds = append(cmds, []string{"help", "append"})
	for _, args := range cmds {
		cmd := exec.CommandContext(t.Context(), grantlineBin, args...)
		cmd.Env = env
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		_ = cmd.Run() // the exit status does not matter here, the output does
		for _, s := range secrets {
			if n := strings.Count(out.String(), s); n > 0 {
				t.Errorf("grantline %s prints %q %d time(s):\n%s", strings.Join(args, " "), s, n, out.String())
			}
		}
		if args[len(args)-1] == "-h" && !strings.Contains(out.String(), "$GRANTLINE_TOKEN") {
			t.Errorf("grantline %s -h does not say the token defaults to $GRANTLINE_TOKEN:\n%s", args[0], out.String())
		}
	}
}
