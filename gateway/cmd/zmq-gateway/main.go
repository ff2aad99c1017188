// Command zmq-gateway serves HTTP and relays each request to ZeroMQ workers
// over MZMQ/1, like the Apache module but as one static process.
//
//	zmq-gateway -listen 127.0.0.1:8081 -route /api=tcp://127.0.0.1:5555
//	zmq-gateway -config /etc/zmq-gateway.yaml
//	zmq-gateway -check -config /etc/zmq-gateway.yaml
//	zmq-gateway stream -listen 127.0.0.1:8082 -route /api=tcp://127.0.0.1:5555
//	zmq-gateway help [stream|broker|keygen]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/modzmq/modzmq/bridge"
	"github.com/modzmq/modzmq/gateway"
	"github.com/modzmq/modzmq/gateway/broker"
	"github.com/modzmq/modzmq/gateway/stream"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `zmq-gateway relays HTTP requests to ZeroMQ workers (REP or ROUTER sockets, any
language) with the MZMQ/1 protocol, and writes their replies back.

Usage:
  zmq-gateway [flags]          serve HTTP with Go's net/http
  zmq-gateway stream [flags]   serve HTTP straight from a libzmq ZMQ_STREAM socket
  zmq-gateway broker [flags]   run the load-balancing broker between bridges and workers
  zmq-gateway keygen NAME      write a CURVE key pair: NAME.key and NAME.key_secret
  zmq-gateway help [COMMAND]   this text, or a command's (stream, broker, keygen)

One route from flags:
  zmq-gateway -listen 127.0.0.1:8081 -route /api=tcp://127.0.0.1:5555
Several routes, hosts, methods, timeouts: a YAML file (see docs/GATEWAY.md and
conf/zmq-gateway.yaml):
  zmq-gateway -config /etc/zmq-gateway.yaml
Check a file without starting anything:
  zmq-gateway -check -config /etc/zmq-gateway.yaml

Answers: 504 when a worker is too slow, 503 when none is reachable, 502 for a
reply that breaks MZMQ/1, 413 for a body over the limit, 404 with no route,
405 (with Allow) for a method the route does not take. SIGTERM or SIGINT
stops accepting, lets requests in flight finish, then exits.

Flags:
`

const streamUsage = `zmq-gateway stream serves HTTP/1.1 and 1.0 straight from a libzmq ZMQ_STREAM
socket bound to -listen, without Go's net/http: keep-alive, pipelining, chunked
bodies. It takes the same flags, the same YAML file and the same routes as the
HTTP mode, and its workers get the same MZMQ/1 requests, headers in the order
the client sent them (docs/GATEWAY.md, "Stream mode").

  zmq-gateway stream -listen 127.0.0.1:8082 -route /api=tcp://127.0.0.1:5555
  zmq-gateway stream -config /etc/zmq-gateway.yaml

Flags:
`

const keygenUsage = `usage: zmq-gateway keygen NAME

Writes a CurveZMQ key pair in the zcert format czmq and pyzmq use: NAME.key
(public: give it to peers) and NAME.key_secret (mode 0600: keep it private).
`

// commandUsage is each command's usage text, for help COMMAND.
var commandUsage = map[string]string{"stream": streamUsage, "broker": brokerUsage, "keygen": keygenUsage}

// parseFlags parses args into fs. Asked for help (-h, -help, --help) it
// prints text and the flags to stdout; a bad flag is reported on stderr
// with a pointer to the help. done: the caller returns code.
func parseFlags(fs *flag.FlagSet, args []string, text string, stdout, stderr io.Writer) (code int, done bool) {
	fs.SetOutput(stderr)
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fmt.Fprint(stdout, text)
			fs.PrintDefaults()
			return 0, true
		}
		fmt.Fprintf(stderr, "(see: %s)\n", strings.Replace(fs.Name(), "zmq-gateway", "zmq-gateway help", 1))
		return 2, true
	}
	return 0, false
}

// runHelp prints the usage of the command named in args, or the general one.
func runHelp(args []string, stdout, stderr io.Writer) int {
	switch {
	case len(args) == 0:
		run([]string{"-help"}, stdout, stderr)
		return 0
	case len(args) > 1:
		fmt.Fprintln(stderr, "usage: zmq-gateway help [stream|broker|keygen]")
		return 2
	case args[0] == "keygen":
		fmt.Fprint(stdout, keygenUsage)
		return 0
	case commandUsage[args[0]] != "":
		return run([]string{args[0], "-help"}, stdout, stderr)
	}
	fmt.Fprintf(stderr, "zmq-gateway help: no command %q (commands: stream, broker, keygen)\n", args[0])
	return 2
}

type routeFlags []string

func (r *routeFlags) String() string     { return strings.Join(*r, " ") }
func (r *routeFlags) Set(s string) error { *r = append(*r, s); return nil }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "help" {
		return runHelp(args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "broker" {
		return runBroker(args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "keygen" {
		return runKeygen(args[1:], stdout, stderr)
	}
	mode, name, text := "http", "zmq-gateway", usage
	if len(args) > 0 && args[0] == "stream" {
		mode, name, text, args = "stream", "zmq-gateway stream", streamUsage, args[1:]
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	var routes routeFlags
	listen := fs.String("listen", "", "address to serve on, host:port (default "+gateway.DefaultListen+", or the file's listen:)")
	fs.Var(&routes, "route", "PATH=ENDPOINT[,ENDPOINT...]: relay requests under PATH to these workers (repeatable)")
	configPath := fs.String("config", "", "YAML configuration file")
	check := fs.Bool("check", false, "check the configuration, print the result and exit")
	timeout := fs.Duration("timeout", 0, "worker timeout for -route routes (default 30s)")
	maxBody := fs.String("max-body", "", "largest request body for -route routes, in bytes; 0 = no limit (default 8 MiB)")
	accessLog := fs.String("access-log", "", `access log: "stdout", "stderr", "off" or a file (default stdout)`)
	admin := fs.String("admin", "", "admin listener host:port serving /metrics (Prometheus) and /status (default: the file's admin:, or none)")
	logLevel := fs.String("log-level", "info", "error log level: debug, info, warn, error")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if code, done := parseFlags(fs, args, text, stdout, stderr); done {
		return code
	}
	if *showVersion {
		fmt.Fprintln(stdout, "zmq-gateway", version)
		return 0
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q (see: zmq-gateway help)\n", name, fs.Arg(0))
		return 2
	}

	cfg, err := buildConfig(*configPath, routes, *listen, *timeout, *maxBody, *accessLog)
	if err != nil {
		fmt.Fprintf(stderr, "zmq-gateway: %v\n", err)
		return 1
	}
	if *check {
		src := *configPath
		if src == "" {
			src = "flags"
		}
		fmt.Fprintf(stdout, "%s: OK, %d route(s), listen %s\n", src, len(cfg.Routes), cfg.Listen)
		return 0
	}

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(stderr, "zmq-gateway: -log-level %q: want debug, info, warn or error\n", *logLevel)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	gw, err := gateway.New(cfg, log)
	if err != nil {
		fmt.Fprintf(stderr, "zmq-gateway: %v\n", err)
		return 1
	}
	lv := gateway.NewLive(gw)
	defer lv.Close()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if *admin != "" {
		cfg.Admin = *admin
	}
	if cfg.Admin != "" {
		al, err := net.Listen("tcp", cfg.Admin)
		if err != nil {
			fmt.Fprintf(stderr, "zmq-gateway: admin listener: %v\n", err)
			return 1
		}
		asrv := &http.Server{Handler: lv.AdminHandler(), ReadHeaderTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second,
			ErrorLog: gateway.ErrorLog(log)}
		go asrv.Serve(al)
		defer asrv.Close()
		log.Info(gateway.CodeServing.String()+": admin listener: /metrics, /status", "listen", al.Addr().String())
	}
	readConfig := func() (*gateway.Config, error) {
		c, err := buildConfig(*configPath, routes, *listen, *timeout, *maxBody, *accessLog)
		if err == nil && *admin != "" {
			c.Admin = *admin
		}
		return c, err
	}
	access, err := gateway.OpenReopenableLog(cfg.AccessLog)
	if err != nil {
		fmt.Fprintf(stderr, "zmq-gateway: access log: %v\n", err)
		return 1
	}
	defer access.Close()
	go func() {
		for range hup {
			reload(lv, access, cfg, log, readConfig)
		}
	}()
	if mode == "stream" {
		srv, err := stream.New(lv, cfg.Listen, stream.Options{Log: log,
			IdleTimeout: time.Duration(cfg.Timeouts.Idle), HeaderTimeout: time.Duration(cfg.Timeouts.ReadHeader),
			BodyTimeout: time.Duration(cfg.Timeouts.Read), Drain: time.Duration(cfg.Timeouts.Shutdown), AccessLog: access})
		if err != nil {
			fmt.Fprintf(stderr, "zmq-gateway: %v\n", err)
			return 1
		}
		if err := srv.Serve(ctx); err != nil {
			fmt.Fprintf(stderr, "zmq-gateway: %v\n", err)
			return 1
		}
		return 0
	}
	l, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		fmt.Fprintf(stderr, "zmq-gateway: %v\n", err)
		return 1
	}
	if err := gateway.Serve(ctx, l, lv, access); err != nil {
		fmt.Fprintf(stderr, "zmq-gateway: %v\n", err)
		return 1
	}
	return 0
}

// reload re-reads the configuration (SIGHUP), in either mode: a good one
// goes in service with its access log opened again (after logrotate moved
// it); a bad one is logged and the gateway in service goes on. Listeners,
// and stream mode's timeouts, stay as they are. The admin pages' counters
// go on across it (gateway.Live.Status).
func reload(lv *gateway.Live, access *gateway.ReopenableLog, first *gateway.Config, log *slog.Logger, read func() (*gateway.Config, error)) {
	cfg, err := read()
	if err != nil {
		log.Error(gateway.CodeReloadFailed.String()+": reload: the configuration in service stays", "error", err)
		return
	}
	g, err := gateway.New(cfg, log)
	if err != nil {
		log.Error(gateway.CodeReloadFailed.String()+": reload: the configuration in service stays", "error", err)
		return
	}
	if cfg.Listen != first.Listen || cfg.Admin != first.Admin {
		log.Warn(gateway.CodeReloaded.String()+": reload: listen and admin addresses change only at a restart",
			"listen", first.Listen, "admin", first.Admin)
	}
	lv.Replace(g, nil)
	if access != nil {
		if err := access.Reopen(cfg.AccessLog); err != nil {
			log.Error(gateway.CodeReloadFailed.String()+": reload: the access log could not be opened again; it goes on where it was", "error", err)
		}
	}
	log.Info(gateway.CodeReloaded.String()+": reloaded", "routes", len(cfg.Routes))
}

// buildConfig reads the file, if any, and applies the flags over it.
func buildConfig(path string, routes []string, listen string, timeout time.Duration, maxBodyFlag string, accessLog string) (*gateway.Config, error) {
	cfg := &gateway.Config{}
	var maxBody *int64
	if maxBodyFlag != "" {
		n, err := strconv.ParseInt(maxBodyFlag, 10, 64)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("-max-body %q: want a number of bytes, 0 for no limit", maxBodyFlag)
		}
		maxBody = &n
	}
	if path != "" {
		var err error
		if cfg, err = gateway.LoadConfig(path); err != nil {
			return nil, err
		}
	}
	for _, r := range routes {
		rt, err := gateway.ParseRouteFlag(r)
		if err != nil {
			return nil, err
		}
		rt.Timeout = gateway.Duration(timeout)
		rt.MaxBody = maxBody
		cfg.Routes = append(cfg.Routes, rt)
	}
	if listen != "" {
		cfg.Listen = listen
	}
	if accessLog != "" {
		cfg.AccessLog = accessLog
	}
	if path == "" && len(routes) == 0 {
		return nil, errors.New("nothing to serve: give -route PATH=ENDPOINT or -config FILE (see -help)")
	}
	if err := cfg.Check(); err != nil {
		if path != "" {
			return nil, fmt.Errorf("%s:%w", path, err)
		}
		return nil, fmt.Errorf("flags: %w", err)
	}
	return cfg, nil
}

const brokerUsage = `zmq-gateway broker routes requests from bridges (Apache's mod_zmq, zmq-gateway)
to workers that announce themselves (worker protocol MZMQW/1, docs/PROTOCOL.md),
giving each request to the least recently used idle worker. Workers join and
leave at any time; a silent worker is dropped after 3 heartbeats and a request
it held is answered 503.

  zmq-gateway broker -frontend tcp://127.0.0.1:5555 -backend tcp://127.0.0.1:5556
  then: ZmqBackend tcp://127.0.0.1:5555, and workers connect to :5556

Flags:
`

func runBroker(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("zmq-gateway broker", flag.ContinueOnError)
	front := fs.String("frontend", "tcp://127.0.0.1:5555", "endpoint bridges connect to (ZmqBackend)")
	back := fs.String("backend", "tcp://127.0.0.1:5556", "endpoint workers connect to")
	hb := fs.Duration("heartbeat", broker.DefaultHeartbeat, "heartbeat interval with workers")
	queue := fs.Int("queue", broker.DefaultQueue, "requests that may wait for an idle worker; more get 503")
	queueTimeout := fs.Duration("queue-timeout", broker.DefaultQueueTimeout, "a request waiting longer for a worker gets 503")
	busy := fs.Duration("busy-timeout", 0, "drop a worker silent this long while it holds a request (default 3 heartbeats)")
	logLevel := fs.String("log-level", "info", "debug, info, warn, error")
	if code, done := parseFlags(fs, args, brokerUsage, stdout, stderr); done {
		return code
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(stderr, "zmq-gateway broker: -log-level %q: want debug, info, warn or error\n", *logLevel)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	b, err := broker.New(broker.Options{Frontend: *front, Backend: *back, Heartbeat: *hb, Queue: *queue,
		QueueTimeout: *queueTimeout, BusyTimeout: *busy, Log: log})
	if err != nil {
		fmt.Fprintf(stderr, "zmq-gateway broker: %v\n", err)
		return 1
	}
	defer b.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// The broker reads no file and logs to stderr: SIGHUP (a service's
	// reload, logrotate) has nothing to do, and must not end it.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			log.Info(gateway.CodeReloaded.String() + ": SIGHUP: the broker has no file to read again; its flags change at a restart")
		}
	}()
	if err := b.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "zmq-gateway broker: %v\n", err)
		return 1
	}
	return 0
}

// runKeygen writes a CurveZMQ key pair in the zcert format czmq and pyzmq use.
func runKeygen(args []string, stdout, stderr io.Writer) int {
	if len(args) == 1 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		fmt.Fprint(stdout, keygenUsage)
		return 0
	}
	if len(args) != 1 || strings.HasPrefix(args[0], "-") {
		fmt.Fprint(stderr, keygenUsage)
		return 2
	}
	public, secret, err := zmq.NewCurveKeypair()
	if err != nil {
		fmt.Fprintf(stderr, "zmq-gateway keygen: %v (is libzmq built with CURVE?)\n", err)
		return 1
	}
	if err := bridge.WriteCertificates(args[0], public, secret); err != nil {
		fmt.Fprintf(stderr, "zmq-gateway keygen: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "wrote %s.key (give it to peers) and %s.key_secret (keep it private)\n", args[0], args[0])
	return 0
}
