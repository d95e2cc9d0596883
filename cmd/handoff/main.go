//go:build linux

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/handoff-go/handoff/balancer"
	"github.com/handoff-go/handoff/worker"
	"github.com/rs/zerolog"
)

const defaultListen = ":8000"

// config is the parsed command line.
type config struct {
	listen            []string
	workers           int
	policy            string
	logFormat         string
	logLevel          string
	logLevelSet       bool // --log-level was given, not defaulted
	shutdownTimeout   time.Duration
	handoffTimeout    time.Duration
	maxPending        int
	maxUnread         int
	tcpKeepAlive      time.Duration
	tcpUserTimeout    time.Duration
	masterProcs       int
	reloadConcurrency int
	user              string
	admin             string
	adminMaxConns     int
	shutdownDelay     time.Duration
	maxConnAge        time.Duration
	pidFile           string
	upgradeTimeout    time.Duration
	specs             []listenSpec // parsed listen
	command           []string
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// parseFlags parses the command line. Errors and their usage go to stderr;
// the usage asked for with -h or --help goes to stdout, as GNU programs
// do, so that `handoff --help | less` shows it.
func parseFlags(args []string, stderr io.Writer) (*config, error) {
	return parseFlagsTo(args, os.Stdout, stderr)
}

// helpAsked reports whether args ask for the usage before any "--".
func helpAsked(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-h", "-help", "--h", "--help":
			return true
		}
	}
	return false
}

func parseFlagsTo(args []string, stdout, stderr io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("handoff", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var listen listFlag
	fs.Var(&listen, "listen", "address to listen on, repeatable: HOST:PORT for TCP, unix:PATH for a Unix socket; a NAME= prefix matches systemd's FileDescriptorName= (default "+defaultListen+")")
	fs.IntVar(&c.workers, "workers", runtime.NumCPU(), "number of worker processes")
	fs.StringVar(&c.policy, "policy", "round-robin", "dispatch policy: round-robin or least-loaded")
	fs.StringVar(&c.logFormat, "log-format", "", "log format: json or console (default console on a terminal, json otherwise)")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", balancer.DefaultShutdownTimeout, "how long a draining worker may take after SIGTERM before SIGKILL")
	fs.DurationVar(&c.handoffTimeout, "handoff-timeout", balancer.DefaultHandoffTimeout, "how long a worker that stopped reading its connections (they are served elsewhere within milliseconds) may also leave the master's pings unanswered before it is killed")
	fs.IntVar(&c.maxPending, "max-pending", balancer.DefaultMaxPending, "accepted connections held while no worker can take them; past this the newest are closed")
	fs.IntVar(&c.maxUnread, "max-unread", balancer.DefaultMaxUnread, "handoffs that may wait unread in a worker's sockets before it gets no more")
	fs.DurationVar(&c.tcpKeepAlive, "tcp-keepalive", balancer.DefaultKeepAlive, "TCP keep-alive idle time and probe interval of every connection, set once on the listening socket; 0 turns keep-alive off")
	fs.IntVar(&c.masterProcs, "master-procs", 1, "GOMAXPROCS of the master process (the workers keep Go's default): the master's work is one accept loop per listener, and one P spares it the Go runtime's wakeups of idle threads; 0 leaves Go's default")
	fs.DurationVar(&c.tcpUserTimeout, "tcp-user-timeout", 0, "TCP_USER_TIMEOUT of every connection, set once on the listening socket: how long sent data may go unacknowledged before the kernel drops the connection; 0 leaves the kernel's default")
	fs.IntVar(&c.reloadConcurrency, "reload-concurrency", balancer.DefaultReloadConcurrency, "workers replaced at once by a rolling restart (SIGHUP)")
	fs.StringVar(&c.user, "user", "", "run the workers as this user (the master must be root; sockets stay the master's, so port 80 still works)")
	fs.StringVar(&c.admin, "admin", "", "serve GET /metrics (Prometheus), /workers (JSON) and /healthz on this HOST:PORT (default off); it has no authentication, so bind it to loopback, such as 127.0.0.1:9090")
	fs.IntVar(&c.adminMaxConns, "admin-max-conns", defaultAdminMaxConns, "connections the --admin server serves at once; more wait in the kernel's listen backlog, taking none of the master's fds, until one closes (idle ones are closed after a few seconds)")
	fs.DurationVar(&c.shutdownDelay, "shutdown-delay", 0, "on SIGTERM, turn /healthz to 503 at once and keep accepting this long before draining, so that an upstream load balancer stops sending first")
	fs.DurationVar(&c.maxConnAge, "max-conn-age", 0, "the demo worker ends a keep-alive connection older than this after its current response (HTTP/1 Connection: close, HTTP/2 GOAWAY), so that long-lived clients spread over new workers after a restart; 0 keeps them (a COMMAND sets worker.ServeConfig.MaxConnAge itself)")
	fs.StringVar(&c.pidFile, "pid-file", "", "write the master's pid to this file once its workers listen, again after each SIGUSR2 upgrade")
	fs.DurationVar(&c.upgradeTimeout, "upgrade-timeout", DefaultUpgradeTimeout, "how long a new master started by SIGUSR2 has to get its workers listening before it is killed and the old one keeps serving")
	fs.Usage = func() {
		if helpAsked(args) && stdout != nil {
			fs.SetOutput(stdout)
		}
		fmt.Fprintf(fs.Output(), `Usage: handoff [flags] [-- COMMAND [ARG...]]

handoff is a master process that accepts every connection on its ports and
hands each one to a worker process, round-robin or least-loaded. Without a
COMMAND the workers run the built-in demo HTTP server ("hello world", header
X-Worker-Id, ?delay=250ms to answer slowly). With one, every worker runs
COMMAND, a program that uses github.com/handoff-go/handoff/worker.

Signals: SIGHUP replaces every worker with no failed request; SIGUSR2
upgrades the master itself: it starts the binary on disk, hands it the
listening sockets, and drains and exits once the new one's workers listen;
SIGTERM or SIGINT drains the workers (after --shutdown-delay) and exits 0; a
second one kills them at once.

Under systemd, sockets passed by socket activation (LISTEN_FDS) serve the
--listen addresses they are bound to or, with --listen NAME=ADDR, the
FileDescriptorName= NAME; the master reports READY=1, RELOADING=1 and
STOPPING=1 to NOTIFY_SOCKET.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	fs.Visit(func(f *flag.Flag) { c.logLevelSet = c.logLevelSet || f.Name == "log-level" })
	c.listen = listen
	if len(c.listen) == 0 {
		c.listen = []string{defaultListen}
	}
	c.command = fs.Args()
	switch {
	case c.workers < 1:
		return nil, fmt.Errorf("--workers must be at least 1, not %d", c.workers)
	case c.policy != "round-robin" && c.policy != "least-loaded":
		return nil, fmt.Errorf("--policy must be round-robin or least-loaded, not %q", c.policy)
	case c.logFormat != "" && c.logFormat != "json" && c.logFormat != "console":
		return nil, fmt.Errorf("--log-format must be json or console, not %q", c.logFormat)
	case c.shutdownTimeout <= 0:
		return nil, fmt.Errorf("--shutdown-timeout must be positive, not %s", c.shutdownTimeout)
	case c.handoffTimeout <= 0:
		return nil, fmt.Errorf("--handoff-timeout must be positive, not %s", c.handoffTimeout)
	case c.maxPending < 1:
		return nil, fmt.Errorf("--max-pending must be at least 1, not %d", c.maxPending)
	case c.maxUnread < 1:
		return nil, fmt.Errorf("--max-unread must be at least 1, not %d", c.maxUnread)
	case c.reloadConcurrency < 1:
		return nil, fmt.Errorf("--reload-concurrency must be at least 1, not %d", c.reloadConcurrency)
	case c.masterProcs < 0:
		return nil, fmt.Errorf("--master-procs must be 0 or more, not %d", c.masterProcs)
	case c.tcpKeepAlive < 0:
		return nil, fmt.Errorf("--tcp-keepalive must not be negative, not %s", c.tcpKeepAlive)
	case c.tcpUserTimeout < 0:
		return nil, fmt.Errorf("--tcp-user-timeout must not be negative, not %s", c.tcpUserTimeout)
	case c.shutdownDelay < 0:
		return nil, fmt.Errorf("--shutdown-delay must not be negative, not %s", c.shutdownDelay)
	case c.maxConnAge < 0:
		return nil, fmt.Errorf("--max-conn-age must not be negative, not %s", c.maxConnAge)
	case c.upgradeTimeout <= 0:
		return nil, fmt.Errorf("--upgrade-timeout must be positive, not %s", c.upgradeTimeout)
	case c.adminMaxConns < 1:
		return nil, fmt.Errorf("--admin-max-conns must be at least 1, not %d", c.adminMaxConns)
	}
	if c.admin != "" {
		if _, _, err := net.SplitHostPort(c.admin); err != nil {
			return nil, fmt.Errorf("--admin %q: want HOST:PORT, such as 127.0.0.1:9090", c.admin)
		}
	}
	if _, err := zerolog.ParseLevel(c.logLevel); err != nil || c.logLevel == "" {
		return nil, fmt.Errorf("--log-level must be debug, info, warn or error, not %q", c.logLevel)
	}
	for _, a := range c.listen {
		s, err := parseListen(a)
		if err != nil {
			return nil, err
		}
		c.specs = append(c.specs, s)
	}
	return c, nil
}

func main() {
	c, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "handoff:", err)
		os.Exit(2)
	}
	if worker.IsWorker() {
		os.Exit(runDemoWorker(c))
	}
	os.Exit(runMaster(c))
}
