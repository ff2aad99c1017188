package test

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
)

// apxsQuery returns `apxs -q NAME` (APXS from the environment, as make takes it).
func apxsQuery(t *testing.T, name string) string {
	t.Helper()
	apxs := os.Getenv("APXS")
	if apxs == "" {
		apxs = "apxs"
	}
	out, err := exec.Command(apxs, "-q", name).Output()
	if err != nil || strings.TrimSpace(string(out)) == "" {
		t.Fatalf("%s -q %s: %v %q (install apache2-dev)", apxs, name, err, out)
	}
	return strings.TrimSpace(string(out))
}

// runMake runs make TARGET ARGS... in the tree without remaking the built
// files (-o), so the test never rebuilds what other tests run. It returns
// the output and whether make succeeded.
func runMake(t *testing.T, target string, args ...string) (string, bool) {
	t.Helper()
	argv := []string{"-C", root, "--no-print-directory",
		"-o", "build/mod_zmq.so", "-o", "build/libmodzmq.so", "-o", "build/zmq-gateway", target}
	out, err := exec.Command("make", append(argv, args...)...).CombinedOutput()
	return string(out), err == nil
}

// fileState is what the test compares of a path outside DESTDIR.
type fileState struct {
	exists      bool
	size, mtime int64
	ino         uint64
}

func statOf(path string) fileState {
	fi, err := os.Lstat(path)
	if err != nil {
		return fileState{}
	}
	st := fileState{exists: true, size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ino = sys.Ino
	}
	return st
}

// filesUnder lists the files and symbolic links under dir, relative to it
// with a leading slash.
func filesUnder(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			files = append(files, strings.TrimPrefix(p, dir))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	return files
}

// TestMakeInstallHonoursDestdir: make install DESTDIR=dir writes the module
// and the library where ZmqLibrary looks by default, zmq-gateway, and on
// Debian zmq.load and zmq.conf, all under dir and nothing elsewhere (apxs -i
// ignored DESTDIR and wrote to the live module directory), without apxs'
// "dlname not found" warnings; make uninstall refuses while a2enmod's link
// exists, then removes every file install wrote.
func TestMakeInstallHonoursDestdir(t *testing.T) {
	requireBuilt(t, "mod_zmq.so", "libmodzmq.so", "zmq-gateway")
	libexec := apxsQuery(t, "LIBEXECDIR")
	sysconf := apxsQuery(t, "SYSCONFDIR")
	want := map[string]string{ // installed path -> the file it copies
		libexec + "/mod_zmq.so":      buildPath("mod_zmq.so"),
		libexec + "/libmodzmq.so":    buildPath("libmodzmq.so"),
		"/usr/local/bin/zmq-gateway": buildPath("zmq-gateway"),
	}
	debian := false
	if fi, err := os.Stat(sysconf + "/mods-available"); err == nil && fi.IsDir() {
		debian = true
		want[sysconf+"/mods-available/zmq.load"] = filepath.Join(root, "conf/zmq.load")
		want[sysconf+"/mods-available/zmq.conf"] = filepath.Join(root, "conf/zmq.conf")
	}
	live := map[string]fileState{}
	for p := range want {
		live[p] = statOf(p)
	}

	dest := t.TempDir()
	out, ok := runMake(t, "install", "DESTDIR="+dest)
	if !ok {
		t.Fatalf("make install DESTDIR=%s failed:\n%s", dest, out)
	}
	if strings.Contains(out, "dlname") || strings.Contains(out, "Warning") {
		t.Errorf("make install warns:\n%s", out)
	}
	var wantFiles []string
	for p := range want {
		wantFiles = append(wantFiles, p)
	}
	sort.Strings(wantFiles)
	if got := filesUnder(t, dest); strings.Join(got, " ") != strings.Join(wantFiles, " ") {
		t.Fatalf("make install wrote under DESTDIR\n got: %v\nwant: %v", got, wantFiles)
	}
	for p, src := range want {
		a, err1 := os.ReadFile(dest + p)
		b, err2 := os.ReadFile(src)
		if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
			t.Errorf("%s is not a copy of %s (%v, %v)", dest+p, src, err1, err2)
		}
		if fi, err := os.Stat(dest + p); err == nil && strings.HasSuffix(p, "/zmq-gateway") != (fi.Mode()&0o111 != 0) {
			t.Errorf("%s: mode %v", dest+p, fi.Mode())
		}
	}
	for p, before := range live {
		if after := statOf(p); after != before {
			t.Errorf("make install DESTDIR=... changed the live %s (%+v, was %+v)", p, after, before)
		}
	}

	if debian {
		link := dest + sysconf + "/mods-enabled/zmq.load"
		if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("../mods-available/zmq.load", link); err != nil {
			t.Fatal(err)
		}
		out, ok := runMake(t, "uninstall", "DESTDIR="+dest)
		if ok || !strings.Contains(out, "a2dismod zmq") {
			t.Errorf("make uninstall with zmq enabled: ok=%v, want a refusal naming a2dismod:\n%s", ok, out)
		}
		if _, err := os.Stat(dest + libexec + "/mod_zmq.so"); err != nil {
			t.Errorf("the refused uninstall removed files: %v", err)
		}
		if err := os.Remove(link); err != nil {
			t.Fatal(err)
		}
	}
	out, ok = runMake(t, "uninstall", "DESTDIR="+dest)
	if !ok {
		t.Fatalf("make uninstall DESTDIR=%s failed:\n%s", dest, out)
	}
	if got := filesUnder(t, dest); len(got) != 0 {
		t.Errorf("make uninstall left %v", got)
	}
	for p, before := range live {
		if after := statOf(p); after != before {
			t.Errorf("make uninstall DESTDIR=... changed the live %s", p)
		}
	}
}
