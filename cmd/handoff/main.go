//go:build linux

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
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
	maxConns          int
	cpuAffinity       bool
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
	idleGrace         time.Duration
	unixMode          os.FileMode // --unix-mode; 0 for the default
	unixGroup         string
	backlog           int
	pidFile           string
	upgradeTimeout    time.Duration
	maxRequests       int
	maxLifetime       time.Duration
	maxMemory         int64 // bytes
	heartbeat         time.Duration
	heartbeatTimeout  time.Duration
	maxRestarts       int
	restartWindow     time.Duration
	version           bool         // --version: print it and exit
	specs             []listenSpec // parsed listen
	command           []string
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// parseFlags parses the command line. It writes nothing but the usage
// asked for with -h or --help, to stdout as GNU programs do, so that
// `handoff --help | less` shows it; an error is returned, for main to
// print as one line.
func parseFlags(args []string) (*config, error) {
	return parseFlagsTo(args, os.Stdout)
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

func parseFlagsTo(args []string, stdout io.Writer) (*config, error) {
	c := &config{}
	var listen listFlag
	fs := defineFlags(c, &listen)
	var bad *flagError
	wrapFlagValues(fs, &bad)
	// The flag package writes its own error and the whole usage on a
	// parse error; main writes one line instead, so nothing goes to
	// fs.Output but the help asked for.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		if helpAsked(args) && stdout != nil {
			writeHelp(stdout, fs)
		}
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, parseError(err, bad)
	}
	if c.version {
		if stdout != nil {
			fmt.Fprintln(stdout, versionString())
		}
		return nil, errVersion
	}
	if err := c.finish(fs, listen); err != nil {
		return nil, err
	}
	return c, nil
}

// defineFlags defines every flag of the command line, to be parsed into c
// and listen.
func defineFlags(c *config, listen *listFlag) *flag.FlagSet {
	fs := flag.NewFlagSet("handoff", flag.ContinueOnError)
	fs.Var(listen, "listen", "address to listen on, repeatable: HOST:PORT for TCP, unix:PATH for a Unix socket; a NAME= prefix matches systemd's FileDescriptorName= (default "+defaultListen+")")
	fs.Var(modeFlag{&c.unixMode}, "unix-mode", "permission bits of the socket file of every unix:PATH --listen, in octal, such as 0660 with --unix-group for a proxy of another user (default 0600)")
	fs.StringVar(&c.unixGroup, "unix-group", "", "group that owns the socket file of every unix:PATH --listen, such as www-data (default the master's)")
	fs.IntVar(&c.backlog, "backlog", 0, "listen backlog of every socket the master opens: connections the kernel queues before the master accepts them; 0 keeps the kernel's net.core.somaxconn, which also caps it")
	fs.IntVar(&c.workers, "workers", 0, "number of worker processes; 0 means the CPU limit of the cgroup (here "+strconv.Itoa(balancer.DefaultWorkers())+"), not every CPU of the host; each worker's GOMAXPROCS is its share of that limit unless GOMAXPROCS is set")
	fs.StringVar(&c.policy, "policy", balancer.PolicyRoundRobin, "dispatch policy: "+balancer.PolicyRoundRobin+" (rotate), "+balancer.PolicyLeastLoaded+" (fewest connections), "+balancer.PolicyLeastRequests+" (fewest requests in flight), or "+balancer.PolicyIPHash+" (sticky by the client's IP: the peer's, a proxy's if behind one)")
	fs.StringVar(&c.logFormat, "log-format", "", "log format: json or console (default console on a terminal, json otherwise)")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", balancer.DefaultShutdownTimeout, "how long a draining worker may take after SIGTERM before SIGKILL; 0 means the default")
	fs.DurationVar(&c.handoffTimeout, "handoff-timeout", balancer.DefaultHandoffTimeout, "how long a worker that stopped reading its connections (they are served elsewhere within milliseconds) may also leave the master's pings unanswered before it is killed; 0 means the default")
	fs.IntVar(&c.maxPending, "max-pending", balancer.DefaultMaxPending, "accepted connections held while no worker can take them; past this the newest are closed; 0 means the default")
	fs.IntVar(&c.maxConns, "max-conns", 0, "connections in progress (handed to a worker and not yet closed by it) across all workers; past it new connections wait in the pending queue (--max-pending) until others close; 0 means no cap")
	fs.BoolVar(&c.cpuAffinity, "cpu-affinity", false, "pin the worker of slot i to the (i mod n)-th of the n CPUs the master may run on, as nginx's worker_cpu_affinity auto; a replacement keeps its slot's CPU")
	fs.IntVar(&c.maxUnread, "max-unread", balancer.DefaultMaxUnread, "handoffs that may wait unread in a worker's sockets before it gets no more; 0 means the default")
	fs.DurationVar(&c.tcpKeepAlive, "tcp-keepalive", balancer.DefaultKeepAlive, "TCP keep-alive idle time and probe interval of every connection, set once on the listening socket; 0 turns keep-alive off")
	fs.IntVar(&c.masterProcs, "master-procs", 1, "GOMAXPROCS of the master process (the workers get their share of the CPUs; see --workers): the master's work is one accept loop per listener, and one P spares it the Go runtime's wakeups of idle threads; 0 leaves Go's default")
	fs.DurationVar(&c.tcpUserTimeout, "tcp-user-timeout", 0, "TCP_USER_TIMEOUT of every connection, set once on the listening socket: how long sent data may go unacknowledged before the kernel drops the connection; 0 leaves the kernel's default")
	fs.IntVar(&c.reloadConcurrency, "reload-concurrency", balancer.DefaultReloadConcurrency, "workers replaced at once by a rolling restart (SIGHUP); 0 means the default")
	fs.StringVar(&c.user, "user", "", "run the workers as this user (the master must be root; sockets stay the master's, so port 80 still works)")
	fs.StringVar(&c.admin, "admin", "", "serve GET /metrics (Prometheus), /workers (JSON) and /healthz on this HOST:PORT (default off); it has no authentication, so bind it to loopback, such as 127.0.0.1:9090")
	fs.IntVar(&c.adminMaxConns, "admin-max-conns", defaultAdminMaxConns, "connections the --admin server serves at once; more wait in the kernel's listen backlog, taking none of the master's fds, until one closes (idle ones are closed after a few seconds)")
	fs.DurationVar(&c.shutdownDelay, "shutdown-delay", 0, "on SIGTERM, turn /healthz to 503 at once and keep accepting this long before draining, so that an upstream load balancer stops sending first")
	fs.DurationVar(&c.maxConnAge, "max-conn-age", 0, "the demo worker ends a keep-alive connection older than this after its current response (HTTP/1 Connection: close, HTTP/2 GOAWAY), so that long-lived clients spread over new workers after a restart; 0 keeps them (a COMMAND sets worker.ServeConfig.MaxConnAge itself)")
	fs.DurationVar(&c.idleGrace, "idle-grace", worker.DefaultIdleGrace, "during a drain, how long the demo worker lets a keep-alive connection idle at the drain's start send one more request, answered with Connection: close, before it closes it; -1s closes idle connections at once (a COMMAND sets worker.ServeConfig.IdleGrace itself)")
	fs.StringVar(&c.pidFile, "pid-file", "", "write the master's pid to this file once its workers listen, again after each SIGUSR2 upgrade")
	fs.DurationVar(&c.upgradeTimeout, "upgrade-timeout", DefaultUpgradeTimeout, "how long a new master started by SIGUSR2 has to get its workers listening before it is killed and the old one keeps serving")
	fs.IntVar(&c.maxRequests, "max-requests", 0, "recycle a worker once it has been handed N connections (connections, not keep-alive requests): its replacement listens before it drains, one worker at a time; 0 means never")
	fs.DurationVar(&c.maxLifetime, "max-lifetime", 0, "recycle a worker once it has been up this long, less a random jitter of up to a tenth, drawn for each worker so that they do not all go at once; 0 means never")
	fs.Var(sizeFlag{&c.maxMemory}, "max-memory", "recycle a worker whose resident memory (RSS) stays above this for "+strconv.Itoa(balancer.MemoryChecks)+" checks in a row, "+balancer.MemoryCheckInterval.String()+" apart: "+sizeHelp+" (KB, MB, GB are powers of 1000; K, KiB, M, MiB, G, GiB of 1024); 0 means never")
	fs.DurationVar(&c.heartbeat, "heartbeat", 0, "ping every worker this often over its control socket; one that leaves a ping unanswered for --heartbeat-timeout is hung, even with no connection, and is killed and restarted; 0 turns it off")
	fs.DurationVar(&c.heartbeatTimeout, "heartbeat-timeout", 0, "how long a heartbeat ping may go unanswered, at least 100ms; 0 means 3 × --heartbeat")
	fs.IntVar(&c.maxRestarts, "max-restarts", 0, "stop restarting a worker slot that exited unexpectedly more than N times within --restart-window: it stays empty and /healthz answers 503 until a SIGHUP; 0 means no limit")
	fs.DurationVar(&c.restartWindow, "restart-window", balancer.DefaultRestartWindow, "the window of --max-restarts; 0 means the default")
	fs.BoolVar(&c.version, "version", false, "print the version and exit")
	return fs
}

// finish checks the parsed flags and fills what follows from them.
func (c *config) finish(fs *flag.FlagSet, listen listFlag) error {
	fs.Visit(func(f *flag.Flag) { c.logLevelSet = c.logLevelSet || f.Name == "log-level" })
	c.listen = listen
	if len(c.listen) == 0 {
		c.listen = []string{defaultListen}
	}
	c.command = fs.Args()
	switch {
	case c.logFormat != "" && c.logFormat != "json" && c.logFormat != "console":
		return fmt.Errorf("--log-format must be json or console, not %q", c.logFormat)
	case c.masterProcs < 0:
		return fmt.Errorf("--master-procs must be 0 or more, not %d", c.masterProcs)
	case c.tcpKeepAlive < 0:
		return fmt.Errorf("--tcp-keepalive must not be negative, not %s", c.tcpKeepAlive)
	case c.shutdownDelay < 0:
		return fmt.Errorf("--shutdown-delay must not be negative, not %s", c.shutdownDelay)
	case c.maxConnAge < 0:
		return fmt.Errorf("--max-conn-age must not be negative, not %s", c.maxConnAge)
	case c.upgradeTimeout <= 0:
		return fmt.Errorf("--upgrade-timeout must be positive, not %s", c.upgradeTimeout)
	case c.adminMaxConns < 1:
		return fmt.Errorf("--admin-max-conns must be at least 1, not %d", c.adminMaxConns)
	}
	if c.admin != "" {
		if _, _, err := net.SplitHostPort(c.admin); err != nil {
			return fmt.Errorf("--admin %q: want HOST:PORT, such as 127.0.0.1:9090", c.admin)
		}
	}
	if c.unixGroup != "" {
		if _, err := balancer.LookupGroup(c.unixGroup); err != nil {
			return &flagError{flag: "unix-group", value: c.unixGroup, want: "want a group of this host: " + err.Error()}
		}
	}
	if _, err := zerolog.ParseLevel(c.logLevel); err != nil || c.logLevel == "" {
		return fmt.Errorf("--log-level must be debug, info, warn or error, not %q", c.logLevel)
	}
	// The balancer checks its own options (Options.Validate); the checks
	// above are of the flags that are the CLI's own, and of a flag's own
	// encoding (--tcp-keepalive 0 for off).
	if _, err := masterOptions(c); err != nil {
		return err
	}
	for _, a := range c.listen {
		s, err := parseListen(a)
		if err != nil {
			return err
		}
		c.specs = append(c.specs, s)
	}
	return nil
}

// optionFlags names the flag that sets each balancer.Options field, so
// that the balancer's *OptionError speaks of the flag.
var optionFlags = map[string]string{
	"Workers":           "workers",
	"ShutdownTimeout":   "shutdown-timeout",
	"HandoffTimeout":    "handoff-timeout",
	"MaxPending":        "max-pending",
	"MaxConns":          "max-conns",
	"MaxUnread":         "max-unread",
	"KeepAlive":         "tcp-keepalive",
	"TCPUserTimeout":    "tcp-user-timeout",
	"ReloadConcurrency": "reload-concurrency",
	"MaxRequests":       "max-requests",
	"MaxLifetime":       "max-lifetime",
	"MaxMemory":         "max-memory",
	"Heartbeat":         "heartbeat",
	"HeartbeatTimeout":  "heartbeat-timeout",
	"MaxRestarts":       "max-restarts",
	"RestartWindow":     "restart-window",
	"Socket.UnixMode":   "unix-mode",
	"Socket.Backlog":    "backlog",
}

// masterOptions maps the flags to the balancer's Options, checked by
// Options.Validate; the Logger is left to the caller. An error names the
// flag.
func masterOptions(c *config) (balancer.Options, error) {
	opts := balancer.Options{
		Workers:           c.workers,
		ShutdownTimeout:   c.shutdownTimeout,
		HandoffTimeout:    c.handoffTimeout,
		MaxPending:        c.maxPending,
		MaxConns:          c.maxConns,
		CPUAffinity:       c.cpuAffinity,
		MaxUnread:         c.maxUnread,
		KeepAlive:         c.tcpKeepAlive,
		TCPUserTimeout:    c.tcpUserTimeout,
		ReloadConcurrency: c.reloadConcurrency,
		User:              c.user,
		MaxRequests:       c.maxRequests,
		MaxLifetime:       c.maxLifetime,
		MaxMemory:         c.maxMemory,
		Heartbeat:         c.heartbeat,
		HeartbeatTimeout:  c.heartbeatTimeout,
		MaxRestarts:       c.maxRestarts,
		RestartWindow:     c.restartWindow,
		Socket:            balancer.SocketOptions{UnixMode: c.unixMode, UnixGroup: c.unixGroup, Backlog: c.backlog},
	}
	policy, err := balancer.PolicyByName(c.policy)
	if err != nil {
		names := balancer.PolicyNames()
		return opts, &flagError{flag: "policy", value: c.policy,
			want: "want " + strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]}
	}
	opts.Policy = policy
	if c.tcpKeepAlive == 0 {
		opts.KeepAlive = -1 // off; the Options' zero means the default
	}
	if len(c.command) > 0 {
		opts.Path, opts.Args = c.command[0], c.command[1:]
		if opts.Args == nil {
			opts.Args = []string{}
		}
	}
	opts.Env = append(opts.Env, workerLogEnv(c)...) // the demo logs as the master does
	if os.Getenv("NOTIFY_SOCKET") != "" {
		// The last value wins: only the master talks to systemd.
		opts.Env = append(opts.Env, "NOTIFY_SOCKET=")
	}
	if err := opts.Validate(); err != nil {
		var oe *balancer.OptionError
		if errors.As(err, &oe) && optionFlags[oe.Field] != "" {
			return opts, fmt.Errorf("--%s %s, not %v", optionFlags[oe.Field], oe.Rule, oe.Value)
		}
		return opts, err
	}
	return opts, nil
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "status" && !worker.IsWorker() {
		os.Exit(runStatus(os.Args[2:], os.Stdout, os.Stderr))
	}
	c, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) || errors.Is(err, errVersion) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "handoff: %v\nrun 'handoff --help' for usage\n", err)
		os.Exit(2)
	}
	if worker.IsWorker() {
		os.Exit(runDemoWorker(c))
	}
	os.Exit(runMaster(c))
}

// modeFlag is --unix-mode: permission bits in octal.
type modeFlag struct{ m *os.FileMode }

func (f modeFlag) String() string {
	if f.m == nil || *f.m == 0 {
		return ""
	}
	return fmt.Sprintf("%#o", uint32(*f.m))
}

func (f modeFlag) Set(s string) error {
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil || v > 0o777 {
		return errors.New("want permission bits in octal, such as 0660")
	}
	*f.m = os.FileMode(v)
	return nil
}
