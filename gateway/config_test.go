package gateway

import (
	"strings"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig([]byte(`
listen: 127.0.0.1:9000
routes:
  - prefix: /api/
    backend: [tcp://127.0.0.1:5555, ipc:///tmp/w.sock]
    timeout: 250ms
    max_body: 0
    strip_prefix: /api
  - path: /users/{id}
    host: "{sub}.example.com"
    methods: [get, put]
    backend: [tcp://127.0.0.1:5556]
    timeout: 2
`))
	if err != nil {
		t.Fatal(err)
	}
	r0, r1 := c.Routes[0], c.Routes[1]
	if c.Listen != "127.0.0.1:9000" || c.ServerName != "127.0.0.1" {
		t.Errorf("listen %q server name %q", c.Listen, c.ServerName)
	}
	if r0.TimeoutOrDefault() != 250*time.Millisecond || r0.MaxBodyOrDefault() != 0 || r0.Pattern() != "/api/" || len(r0.Backend) != 2 {
		t.Errorf("route 0: %+v", r0)
	}
	if r1.TimeoutOrDefault() != 2*time.Second || r1.MaxBodyOrDefault() != DefaultMaxBody || strings.Join(r1.Methods, ",") != "GET,PUT" {
		t.Errorf("route 1: %+v", r1)
	}
}

func TestParseConfigErrorsNameTheLine(t *testing.T) {
	tests := []struct{ text, want string }{
		{"routes:\n  - prefix: /a\n    bakend: [tcp://h:1]\n", "3: field bakend not found"},
		{"routes:\n  - prefix: /a\n    backend: [tcp://h:1]\n  - prefix: /b\n    backend: [http://h:1]\n", "4: route /b: endpoint \"http://h:1\": scheme must be tcp:// or ipc://"},
		{"routes:\n  - prefix: /a\n    backend: [tcp://h:1]\n    timeout: soon\n", "4: duration \"soon\""},
		{"routes:\n  - prefix: /a\n    backend: [tcp://h:1]\n    timeout: -1\n", "4: duration \"-1\" must be positive"},
		{"routes:\n  - backend: [tcp://h:1]\n", "2: route 1: set path"},
		{"routes:\n  - prefix: /a\n    path: /b\n    backend: [tcp://h:1]\n", "2: route 1: set path or prefix, not both"},
		{"routes:\n  - prefix: a\n    backend: [tcp://h:1]\n", "must start with /"},
		{"routes:\n  - prefix: /a\n", "2: route /a: no backend"},
		{"routes:\n  - prefix: /a\n    backend: [tcp://h:1]\n    methods: [FETCH]\n", "unknown method \"FETCH\""},
		{"routes:\n  - prefix: /a\n    backend: [tcp://h:1]\n    max_body: -3\n", "max_body must be 0"},
		{"listen: nonsense\nroutes:\n  - prefix: /a\n    backend: [tcp://h:1]\n", "listen \"nonsense\""},
		{"", "the configuration is empty"},
		{"routes: [\n", "1: did not find expected node content"},
		{"listen: 127.0.0.1:1\n", "no routes"},
	}
	for _, tt := range tests {
		_, err := ParseConfig([]byte(tt.text))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: got %v, want %q", tt.text, err, tt.want)
		}
	}
}

func TestParseRouteFlag(t *testing.T) {
	r, err := ParseRouteFlag("/api=tcp://127.0.0.1:1,tcp://127.0.0.1:2")
	if err != nil || r.Prefix != "/api" || len(r.Backend) != 2 {
		t.Errorf("got %+v, %v", r, err)
	}
	for _, bad := range []string{"/api", "=tcp://h:1", "/api="} {
		if _, err := ParseRouteFlag(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestStripTarget(t *testing.T) {
	h := &Handle{Route: &Route{Prefix: "/api", StripPrefix: "/api"}}
	for in, want := range map[string]string{
		"/api/x?y=1": "/x?y=1", "/api": "/", "/api?q": "/?q", "/apix": "/apix", "/other": "/other",
	} {
		if got := StripTarget(h, in); got != want {
			t.Errorf("StripTarget(%q) = %q, want %q", in, got, want)
		}
	}
}
