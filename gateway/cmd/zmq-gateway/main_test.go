package main

import (
	"bytes"
	"strings"
	"testing"
)

// Help goes to stdout with status 0, for the command and each subcommand,
// whether asked with a flag or with help; mistakes go to stderr with 2.
func TestHelp(t *testing.T) {
	for _, c := range []struct {
		args   []string
		code   int
		stdout string // a line the output must contain
		stderr string
	}{
		{[]string{"--help"}, 0, "zmq-gateway stream [flags]", ""},
		{[]string{"-h"}, 0, "  -route value", ""},
		{[]string{"help"}, 0, "zmq-gateway help [COMMAND]", ""},
		{[]string{"help", "stream"}, 0, "ZMQ_STREAM", ""},
		{[]string{"stream", "-help"}, 0, "ZMQ_STREAM", ""},
		{[]string{"stream", "--help"}, 0, "  -listen string", ""},
		{[]string{"help", "broker"}, 0, "  -frontend string", ""},
		{[]string{"broker", "-h"}, 0, "MZMQW/1", ""},
		{[]string{"help", "keygen"}, 0, "usage: zmq-gateway keygen NAME", ""},
		{[]string{"keygen", "--help"}, 0, "NAME.key_secret", ""},
		{[]string{"help", "nope"}, 2, "", `no command "nope"`},
		{[]string{"help", "stream", "broker"}, 2, "", "usage: zmq-gateway help"},
		{[]string{"-bogus"}, 2, "", "(see: zmq-gateway help)"},
		{[]string{"stream", "-bogus"}, 2, "", "(see: zmq-gateway help stream)"},
		{[]string{"broker", "-bogus"}, 2, "", "(see: zmq-gateway help broker)"},
		{[]string{"keygen"}, 2, "", "usage: zmq-gateway keygen NAME"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(c.args, &stdout, &stderr)
		if code != c.code || !strings.Contains(stdout.String(), c.stdout) || !strings.Contains(stderr.String(), c.stderr) ||
			(c.stdout == "" && stdout.Len() > 0) || (c.stderr == "" && stderr.Len() > 0) {
			t.Errorf("zmq-gateway %s: status %d, stdout %q, stderr %q; want %d, stdout with %q, stderr with %q",
				strings.Join(c.args, " "), code, stdout.String(), stderr.String(), c.code, c.stdout, c.stderr)
		}
	}
}
