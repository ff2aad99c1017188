package test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// readMan returns a man page of debian/ and checks that groff formats it
// without a warning (lintian's check, through man --warnings).
func readMan(t *testing.T, name string) string {
	t.Helper()
	path := filepath.Join(root, "debian", name)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("groff"); err == nil {
		cmd := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z", path)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil || stderr.Len() > 0 {
			t.Errorf("groff -man -ww %s: %v\n%s", name, err, stderr.String())
		}
	} else {
		t.Logf("no groff (Debian: groff-base): %s is not formatted", name)
	}
	return string(b)
}

// roffName is how a name with dashes is written in the pages: \- for each -.
func roffName(s string) string { return strings.ReplaceAll(s, "-", `\-`) }

// TestManPagesDescribeEverything: debian/mod_zmq.8 has an entry for every
// directive (mod_zmq/mod_zmq.h) and every handler; debian/zmq-gateway.1
// names every flag of every command (as zmq-gateway help prints them) and
// every key of the YAML file (gateway/config.go). A directive, flag or key
// added without its line in the man page fails here.
func TestManPagesDescribeEverything(t *testing.T) {
	requireBuilt(t, "zmq-gateway")
	header, err := os.ReadFile(filepath.Join(root, "mod_zmq/mod_zmq.h"))
	if err != nil {
		t.Fatal(err)
	}
	module := readMan(t, "mod_zmq.8")
	directives := regexp.MustCompile(`#define MODZMQ_DIR_\w+\s+"(\w+)"`).FindAllStringSubmatch(string(header), -1)
	handlers := regexp.MustCompile(`#define MODZMQ_\w*HANDLER\s+"([\w-]+)"`).FindAllStringSubmatch(string(header), -1)
	if len(directives) < 10 || len(handlers) < 2 {
		t.Fatalf("found %d directives and %d handlers in mod_zmq.h: has its form changed?", len(directives), len(handlers))
	}
	for _, m := range append(directives, handlers...) {
		entry := regexp.MustCompile(`(?m)^\.TP\n\.B[IR]? ` + regexp.QuoteMeta(roffName(m[1])) + `( |$)`)
		if !entry.MatchString(module) {
			t.Errorf("debian/mod_zmq.8 has no entry (.TP, then .B %s) for %s", roffName(m[1]), m[1])
		}
	}

	gateway := readMan(t, "zmq-gateway.1")
	flagLine := regexp.MustCompile(`(?m)^  -([a-z][a-z-]*)`)
	for _, cmd := range []string{"", "stream", "broker"} {
		args := []string{"help"}
		if cmd != "" {
			args = append(args, cmd)
		}
		out, err := exec.Command(buildPath("zmq-gateway"), args...).Output()
		if err != nil {
			t.Fatalf("zmq-gateway %v: %v", args, err)
		}
		flags := flagLine.FindAllStringSubmatch(string(out), -1)
		if len(flags) < 5 {
			t.Fatalf("zmq-gateway %v lists %d flags: has its form changed?\n%s", args, len(flags), out)
		}
		for _, f := range flags {
			if !regexp.MustCompile(`(?m)^\.BI? \\-` + regexp.QuoteMeta(roffName(f[1])) + `( |$)`).MatchString(gateway) {
				t.Errorf("debian/zmq-gateway.1 does not describe %s's flag -%s", strings.TrimSpace("zmq-gateway "+cmd), f[1])
			}
		}
	}
	config, err := os.ReadFile(filepath.Join(root, "gateway/config.go"))
	if err != nil {
		t.Fatal(err)
	}
	keys := regexp.MustCompile(`yaml:"([a-z_]+)`).FindAllStringSubmatch(string(config), -1)
	if len(keys) < 20 {
		t.Fatalf("found %d YAML keys in gateway/config.go: has its form changed?", len(keys))
	}
	for _, k := range keys {
		if !regexp.MustCompile(`(?m)^\.(B|BR|RB|BI) .*\b` + k[1] + `\b`).MatchString(gateway) {
			t.Errorf("debian/zmq-gateway.1 (CONFIGURATION) does not name the key %s", k[1])
		}
	}
}
