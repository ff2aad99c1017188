// Package gateway is zmq-gateway's HTTP front: routes matched with
// gorilla/mux, each relayed over MZMQ/1 by a bridge.Client. The stream
// subpackage serves the same routes straight from a ZMQ_STREAM socket.
package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/modzmq/modzmq/bridge"
)

// Defaults for zero Config and Route fields, in one place.
const (
	DefaultListen            = "127.0.0.1:8081"
	DefaultTimeout           = bridge.DefaultTimeout
	DefaultMaxBody           = 8 << 20
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultIdleTimeout       = 120 * time.Second
	DefaultShutdownTimeout   = 30 * time.Second
)

// Config is a gateway configuration, as read from a YAML file (see
// docs/GATEWAY.md) or built from flags. Zero values mean the defaults above.
type Config struct {
	Listen     string   `yaml:"listen"`      // host:port to serve HTTP on
	ServerName string   `yaml:"server_name"` // meta server-name; zero means the listen host
	AccessLog  string   `yaml:"access_log"`  // "stdout" (zero), "stderr", "off" or a file path
	Admin      string   `yaml:"admin"`       // host:port of the admin listener (/metrics, /status); zero: none
	Timeouts   Timeouts `yaml:"timeouts"`
	Routes     []Route  `yaml:"routes"`
}

// Timeouts of the HTTP server. Zero values mean: read_header 10s, read and
// write derived from the longest route timeout, idle 120s, shutdown 30s.
type Timeouts struct {
	ReadHeader Duration `yaml:"read_header"`
	Read       Duration `yaml:"read"`
	Write      Duration `yaml:"write"`
	Idle       Duration `yaml:"idle"`
	Shutdown   Duration `yaml:"shutdown"`
}

// Route sends matching requests to one set of endpoints. Exactly one of Path
// (a gorilla/mux path template matched whole, e.g. /users/{id}) and Prefix (a
// path prefix, which may contain templates) is set.
type Route struct {
	Path        string   `yaml:"path"`
	Prefix      string   `yaml:"prefix"`
	Host        string   `yaml:"host"`     // mux host template, e.g. {sub}.example.com; zero matches any
	Methods     []string `yaml:"methods"`  // zero allows any method
	Backend     []string `yaml:"backend"`  // tcp:// or ipc:// endpoints
	Timeout     Duration `yaml:"timeout"`  // zero means 30s
	MaxBody     *int64   `yaml:"max_body"` // bytes; nil means 8 MiB, 0 no limit
	StripPrefix string   `yaml:"strip_prefix"`
	// Heartbeat is the ZMTP heartbeat interval ("1s"), or "off" for workers
	// whose ZeroMQ library does not answer PINGs (pure-Go go-zeromq/zmq4);
	// zero means 1s. HeartbeatTimeout zero means 3s.
	Heartbeat        string   `yaml:"heartbeat"`
	HeartbeatTimeout Duration `yaml:"heartbeat_timeout"`
	// Retries is how many more attempts an idempotent request gets when its
	// worker was unreachable or lost; RetryAll extends it to every method.
	Retries  int  `yaml:"retries"`
	RetryAll bool `yaml:"retry_all"`
	// MaxInFlight bounds the requests in flight on this route; more get 503
	// with Retry-After. Zero means no limit.
	MaxInFlight int `yaml:"max_in_flight"`
	// CurveServerCert (the worker's public .key) and CurveClientCert (the
	// gateway's .key_secret) make the route a CurveZMQ client.
	CurveServerCert string `yaml:"curve_server_cert"`
	CurveClientCert string `yaml:"curve_client_cert"`
	// MaxReply bounds a worker's reply in bytes; larger gets 502. Nil means
	// 64 MiB, 0 no limit.
	MaxReply *int64 `yaml:"max_reply"`
	// ConnectionNotices asks stream mode to tell this route's workers when a
	// client connection opens and closes (see docs/PROTOCOL.md).
	ConnectionNotices bool `yaml:"connection_notices"`
	// Notices: the route's workers get a cancel notice when a client goes
	// away before its reply or stream ended (docs/PROTOCOL.md). They must
	// be ROUTER (or DEALER) workers: a REP socket cannot take notices.
	Notices bool `yaml:"notices"`
	// StreamWindow is the credit a streamed reply starts with, and the most
	// the gateway holds for one stream, in bytes; zero means 256 KiB.
	StreamWindow int64 `yaml:"stream_window"`
	// StreamIdleTimeout ends a stream with no part for this long; zero
	// means 60s.
	StreamIdleTimeout Duration `yaml:"stream_idle_timeout"`
	// MaxStreams bounds the streams open on this route at once; a stream
	// over it gets 503 with Retry-After. Zero means no limit.
	MaxStreams int `yaml:"max_streams"`
	// StreamBody: request bodies go to the worker in parts, as it asks for
	// them (docs/PROTOCOL.md, "Streamed request bodies"); ROUTER or DEALER
	// workers only.
	StreamBody bool `yaml:"stream_body"`
	// WebSocket: the route takes WebSocket handshakes beside its plain
	// requests and relays their messages (docs/PROTOCOL.md, "WebSockets");
	// ROUTER or DEALER workers only. WebSocketMaxMessage is the largest
	// message either side may send, in bytes (zero means 16 MiB);
	// WebSocketOrigins, when set, lists the Origins a handshake may come
	// from (others get 403; a handshake without Origin is let through).
	WebSocket           bool     `yaml:"websocket"`
	WebSocketMaxMessage int64    `yaml:"websocket_max_message"`
	WebSocketOrigins    []string `yaml:"websocket_origins"`

	line      int           // where the route starts in the file, for messages
	heartbeat time.Duration // parsed Heartbeat; -1 for off
	curve     *bridge.Curve
}

// DefaultMaxReply is the reply size limit of a route without max_reply.
const DefaultMaxReply = 64 << 20

// BridgeOptions are the bridge.Options of the route (without Log).
func (r *Route) BridgeOptions() bridge.Options {
	return bridge.Options{
		Endpoints:         r.Backend,
		Timeout:           r.TimeoutOrDefault(),
		Heartbeat:         max(r.heartbeat, 0),
		HeartbeatTimeout:  time.Duration(r.HeartbeatTimeout),
		NoHeartbeat:       r.heartbeat < 0,
		Retries:           r.Retries,
		RetryAll:          r.RetryAll,
		MaxInFlight:       r.MaxInFlight,
		MaxReply:          r.maxReply(),
		Curve:             r.curve,
		Notices:           r.Notices,
		StreamIdleTimeout: time.Duration(r.StreamIdleTimeout),
		MaxStreams:        r.MaxStreams,
	}
}

// StreamWindowOrDefault is the route's stream window in bytes.
func (r *Route) StreamWindowOrDefault() int64 {
	if r.StreamWindow > 0 {
		return r.StreamWindow
	}
	return bridge.DefaultStreamWindow
}

func (r *Route) maxReply() int64 {
	if r.MaxReply != nil {
		return *r.MaxReply
	}
	return DefaultMaxReply
}

// WebSocketMaxMessageOrDefault is the route's largest WebSocket message.
func (r *Route) WebSocketMaxMessageOrDefault() int64 {
	if r.WebSocketMaxMessage > 0 {
		return r.WebSocketMaxMessage
	}
	return bridge.DefaultWebSocketMaxMessage
}

// Pattern is the route's path pattern as it appears in meta "route".
func (r *Route) Pattern() string {
	if r.Path != "" {
		return r.Path
	}
	return r.Prefix
}

// TimeoutOrDefault is the route's timeout.
func (r *Route) TimeoutOrDefault() time.Duration {
	if r.Timeout > 0 {
		return time.Duration(r.Timeout)
	}
	return DefaultTimeout
}

// MaxBodyOrDefault is the route's body limit in bytes; 0 means none.
func (r *Route) MaxBodyOrDefault() int64 {
	if r.MaxBody != nil {
		return *r.MaxBody
	}
	return DefaultMaxBody
}

// Duration is a time.Duration written as "10s", "250ms" or a number of seconds.
type Duration time.Duration

// UnmarshalYAML accepts Go duration strings and plain numbers of seconds.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %v", n.Line, err)
	}
	*d = Duration(v)
	return nil
}

// ParseDuration parses "10s", "250ms", "1m" or "10" (seconds); it must be > 0.
func ParseDuration(s string) (time.Duration, error) {
	if n, err := strconv.ParseFloat(s, 64); err == nil {
		if n <= 0 {
			return 0, fmt.Errorf("duration %q must be positive", s)
		}
		return time.Duration(n * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("duration %q: want e.g. 10s, 250ms or a number of seconds", s)
	}
	return d, nil
}

// LoadConfig reads and checks a YAML configuration file. Errors name the
// file and line.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("%s:%w", path, err)
	}
	return c, nil
}

// lineError is an error at a line of the configuration.
func lineError(line int, format string, args ...any) error {
	return fmt.Errorf("%d: %s", line, fmt.Sprintf(format, args...))
}

// ParseConfig parses and checks YAML configuration text. Unknown keys are
// errors. Error texts start with the line number and a colon.
func ParseConfig(b []byte) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return nil, yamlError(err)
	}
	// Decode again as nodes to learn where each route starts.
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err == nil && len(doc.Content) == 1 {
		top := doc.Content[0]
		for i := 0; i+1 < len(top.Content); i += 2 {
			if top.Content[i].Value == "routes" {
				for j, rn := range top.Content[i+1].Content {
					if j < len(c.Routes) {
						c.Routes[j].line = rn.Line
					}
				}
			}
		}
	}
	if err := c.Check(); err != nil {
		return nil, err
	}
	return &c, nil
}

// yamlError turns yaml.v3's "yaml: line N: msg" into "N: msg".
func yamlError(err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		err = errors.New(te.Errors[0])
	}
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		return errors.New(rest)
	}
	if msg == "EOF" {
		return errors.New("1: the configuration is empty")
	}
	return fmt.Errorf("1: %s", msg)
}

var knownMethods = map[string]bool{"GET": true, "HEAD": true, "POST": true, "PUT": true, "DELETE": true,
	"PATCH": true, "OPTIONS": true, "CONNECT": true, "TRACE": true}

// Check validates c and fills in defaults. It does not contact workers.
func (c *Config) Check() error {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	host, _, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return lineError(1, "listen %q: want host:port (%v)", c.Listen, err)
	}
	if c.ServerName == "" {
		c.ServerName = host
	}
	if len(c.Routes) == 0 {
		return lineError(1, "no routes: add at least one under routes:, or use -route PATH=ENDPOINT")
	}
	for i := range c.Routes {
		r := &c.Routes[i]
		line := max(r.line, 1)
		switch {
		case r.Path == "" && r.Prefix == "":
			return lineError(line, "route %d: set path (a whole-path template) or prefix", i+1)
		case r.Path != "" && r.Prefix != "":
			return lineError(line, "route %d: set path or prefix, not both", i+1)
		}
		if !strings.HasPrefix(r.Pattern(), "/") {
			return lineError(line, "route %d: %q must start with /", i+1, r.Pattern())
		}
		if strings.Count(r.Pattern(), "{") != strings.Count(r.Pattern(), "}") {
			return lineError(line, "route %d: unbalanced braces in %q", i+1, r.Pattern())
		}
		if len(r.Backend) == 0 {
			return lineError(line, "route %s: no backend endpoints", r.Pattern())
		}
		for _, ep := range r.Backend {
			if err := bridge.ParseEndpoint(ep); err != nil {
				return lineError(line, "route %s: %v", r.Pattern(), err)
			}
		}
		for j, m := range r.Methods {
			m = strings.ToUpper(m)
			if !knownMethods[m] {
				return lineError(line, "route %s: unknown method %q", r.Pattern(), m)
			}
			r.Methods[j] = m
		}
		if r.MaxBody != nil && *r.MaxBody < 0 {
			return lineError(line, "route %s: max_body must be 0 (no limit) or more", r.Pattern())
		}
		switch r.Heartbeat {
		case "":
		case "off":
			r.heartbeat = -1
		default:
			d, err := ParseDuration(r.Heartbeat)
			if err != nil {
				return lineError(line, "route %s: heartbeat: %v (or off)", r.Pattern(), err)
			}
			r.heartbeat = d
		}
		if r.HeartbeatTimeout > 0 && time.Duration(r.HeartbeatTimeout) <= max(r.heartbeat, bridge.DefaultHeartbeat) {
			return lineError(line, "route %s: heartbeat_timeout must be longer than the heartbeat interval", r.Pattern())
		}
		if r.Retries < 0 || r.Retries > 10 {
			return lineError(line, "route %s: retries must be 0-10", r.Pattern())
		}
		if (r.CurveServerCert == "") != (r.CurveClientCert == "") {
			return lineError(line, "route %s: CURVE needs both curve_server_cert and curve_client_cert", r.Pattern())
		}
		if r.CurveServerCert != "" {
			curve, err := bridge.LoadCurve(r.CurveServerCert, r.CurveClientCert)
			if err != nil {
				return lineError(line, "route %s: %v", r.Pattern(), errors.Unwrap(err))
			}
			r.curve = curve
		}
		if r.MaxReply != nil && *r.MaxReply < 0 {
			return lineError(line, "route %s: max_reply must be 0 (no limit) or more", r.Pattern())
		}
		if r.MaxInFlight < 0 {
			return lineError(line, "route %s: max_in_flight must be 0 (no limit) or more", r.Pattern())
		}
		if r.StreamWindow != 0 && (r.StreamWindow < 4<<10 || r.StreamWindow > 64<<20) {
			return lineError(line, "route %s: stream_window must be from 4096 to 67108864 bytes", r.Pattern())
		}
		if r.StreamIdleTimeout < 0 {
			return lineError(line, "route %s: stream_idle_timeout must be 0 (60s) or more", r.Pattern())
		}
		if r.MaxStreams < 0 {
			return lineError(line, "route %s: max_streams must be 0 (no limit) or more", r.Pattern())
		}
		if err := r.checkWebSocket(); err != nil {
			return lineError(line, "route %s: %v", r.Pattern(), err)
		}
		if r.StripPrefix != "" && !strings.HasPrefix(r.StripPrefix, "/") {
			return lineError(line, "route %s: strip_prefix %q must start with /", r.Pattern(), r.StripPrefix)
		}
	}
	return nil
}

// MaxWebSocketMessage is the largest websocket_max_message a route may set.
const MaxWebSocketMessage = 1 << 30

// checkWebSocket checks the WebSocket keys of a route.
func (r *Route) checkWebSocket() error {
	if r.WebSocketMaxMessage < 0 || r.WebSocketMaxMessage > MaxWebSocketMessage {
		return fmt.Errorf("websocket_max_message must be from 1 to %d bytes (0: 16 MiB)", MaxWebSocketMessage)
	}
	if !r.WebSocket {
		if r.WebSocketMaxMessage != 0 || len(r.WebSocketOrigins) > 0 {
			return errors.New("websocket_max_message and websocket_origins need websocket: true")
		}
		return nil
	}
	if m := r.maxReply(); m > 0 && r.WebSocketMaxMessageOrDefault() > m {
		return fmt.Errorf("websocket_max_message (%d) must not exceed max_reply (%d): a worker's message is a reply", r.WebSocketMaxMessageOrDefault(), m)
	}
	for _, o := range r.WebSocketOrigins {
		scheme, host, ok := strings.Cut(o, "://")
		if !ok || (scheme != "http" && scheme != "https") || host == "" || strings.ContainsAny(host, "/?# ") {
			return fmt.Errorf("websocket_origins: %q is not an origin: scheme://host[:port], e.g. https://example.com", o)
		}
	}
	return nil
}

// ParseRouteFlag parses the -route flag's PATH=ENDPOINT[,ENDPOINT...] into a
// prefix route.
func ParseRouteFlag(s string) (Route, error) {
	path, eps, ok := strings.Cut(s, "=")
	if !ok || path == "" || eps == "" {
		return Route{}, fmt.Errorf("-route %q: want PATH=ENDPOINT[,ENDPOINT...], e.g. /api=tcp://127.0.0.1:5555", s)
	}
	return Route{Prefix: path, Backend: strings.Split(eps, ",")}, nil
}
