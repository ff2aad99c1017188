package test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestEveryLogCodeIsDocumented guards docs/ERRORS.md: each MODZMQnnnn code in
// the C shim and each Code constant of the bridge has a "### MODZMQnnnn" entry.
func TestEveryLogCodeIsDocumented(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join(root, "docs/ERRORS.md"))
	if err != nil {
		t.Fatal(err)
	}
	codes := map[string]string{}
	cfiles, _ := filepath.Glob(filepath.Join(root, "mod_zmq/*.c"))
	for _, f := range cfiles {
		b, _ := os.ReadFile(f)
		for _, m := range regexp.MustCompile(`MODZMQ\d{4}`).FindAllString(string(b), -1) {
			codes[m] = filepath.Base(f)
		}
	}
	gofiles, _ := filepath.Glob(filepath.Join(root, "bridge/*.go"))
	more, _ := filepath.Glob(filepath.Join(root, "gateway/*.go"))
	gofiles = append(gofiles, more...)
	for _, dir := range []string{"gateway/stream", "gateway/broker"} {
		more, _ = filepath.Glob(filepath.Join(root, dir, "*.go"))
		gofiles = append(gofiles, more...)
	}
	for _, f := range gofiles {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range regexp.MustCompile(`Code += (\d+)`).FindAllStringSubmatch(string(b), -1) {
			n, _ := strconv.Atoi(m[1])
			codes[fmt.Sprintf("MODZMQ%04d", n)] = filepath.Base(f)
		}
	}
	// The worker package writes its codes out in its log lines.
	wfiles, _ := filepath.Glob(filepath.Join(root, "worker/*.go"))
	for _, f := range wfiles {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, _ := os.ReadFile(f)
		for _, m := range regexp.MustCompile(`MODZMQ\d{4}`).FindAllString(string(b), -1) {
			codes[m] = filepath.Base(f)
		}
	}
	if len(codes) < 30 {
		t.Fatalf("found only %d codes: the scan is broken", len(codes))
	}
	for code, where := range codes {
		if !regexp.MustCompile(`(?m)^### ` + code + `$`).Match(doc) {
			t.Errorf("%s (used in %s) has no entry in docs/ERRORS.md", code, where)
		}
	}
}
