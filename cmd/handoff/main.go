// Command handoff runs a handoff master: it listens, starts one worker
// process per CPU and hands every accepted connection to one of them.
//
// Without a COMMAND the workers run the built-in demo, an HTTP server that
// answers "hello world". With one, every worker runs that program, which
// uses the github.com/handoff-go/handoff/worker package.
//
//	handoff [flags] [-- COMMAND [ARG...]]
//
// Signals: SIGHUP replaces every worker with no failed request; SIGTERM or
// SIGINT drains the workers and exits 0; a second SIGINT or SIGTERM kills
// them at once.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
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
	shutdownTimeout   time.Duration
	handoffTimeout    time.Duration
	maxPending        int
	maxUnacked        int
	reloadConcurrency int
	user              string
	command           []string
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("handoff", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var listen listFlag
	fs.Var(&listen, "listen", "address to listen on, repeatable: HOST:PORT for TCP, unix:PATH for a Unix socket (default "+defaultListen+")")
	fs.IntVar(&c.workers, "workers", runtime.NumCPU(), "number of worker processes")
	fs.StringVar(&c.policy, "policy", "round-robin", "dispatch policy: round-robin or least-loaded")
	fs.StringVar(&c.logFormat, "log-format", "", "log format: json or console (default console on a terminal, json otherwise)")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", balancer.DefaultShutdownTimeout, "how long a draining worker may take after SIGTERM before SIGKILL")
	fs.DurationVar(&c.handoffTimeout, "handoff-timeout", balancer.DefaultHandoffTimeout, "how long a worker may leave handed-off connections unacknowledged before it is killed and they go to another worker")
	fs.IntVar(&c.maxPending, "max-pending", balancer.DefaultMaxPending, "accepted connections held while no worker can take them; past this the newest are closed")
	fs.IntVar(&c.maxUnacked, "max-unacked", balancer.DefaultMaxUnacked, "handoffs a worker may have unacknowledged before it gets no more")
	fs.IntVar(&c.reloadConcurrency, "reload-concurrency", balancer.DefaultReloadConcurrency, "workers replaced at once by a rolling restart (SIGHUP)")
	fs.StringVar(&c.user, "user", "", "run the workers as this user (the master must be root; sockets stay the master's, so port 80 still works)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: handoff [flags] [-- COMMAND [ARG...]]

handoff is a master process that accepts every connection on its ports and
hands each one to a worker process, round-robin or least-loaded. Without a
COMMAND the workers run the built-in demo HTTP server ("hello world", header
X-Worker-Id, ?delay=250ms to answer slowly). With one, every worker runs
COMMAND, a program that uses github.com/handoff-go/handoff/worker.

Signals: SIGHUP replaces every worker with no failed request; SIGTERM or
SIGINT drains the workers and exits 0; a second one kills them at once.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
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
	case c.shutdownTimeout <= 0 || c.handoffTimeout <= 0:
		return nil, errors.New("--shutdown-timeout and --handoff-timeout must be positive")
	case c.maxPending < 1 || c.maxUnacked < 1 || c.reloadConcurrency < 1:
		return nil, errors.New("--max-pending, --max-unacked and --reload-concurrency must be at least 1")
	}
	if _, err := zerolog.ParseLevel(c.logLevel); err != nil || c.logLevel == "" {
		return nil, fmt.Errorf("--log-level must be debug, info, warn or error, not %q", c.logLevel)
	}
	for _, a := range c.listen {
		if _, _, err := splitListen(a); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// splitListen turns a --listen value into a network and an address.
func splitListen(a string) (network, address string, err error) {
	if p, ok := strings.CutPrefix(a, "unix:"); ok {
		if p == "" {
			return "", "", errors.New("--listen unix: needs a path")
		}
		return "unix", p, nil
	}
	if !strings.Contains(a, ":") {
		return "", "", fmt.Errorf("--listen %q: want HOST:PORT, :PORT or unix:PATH", a)
	}
	return "tcp", a, nil
}

func newLogger(c *config) zerolog.Logger {
	level, _ := zerolog.ParseLevel(c.logLevel)
	var out io.Writer = os.Stderr
	format := c.logFormat
	if format == "" {
		format = "json"
		if fi, err := os.Stderr.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			format = "console"
		}
	}
	if format == "console" {
		out = zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: "15:04:05.000"}
	}
	zerolog.TimeFieldFormat = time.RFC3339Nano
	return zerolog.New(out).Level(level).With().Timestamp().Logger()
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

func runMaster(c *config) int {
	log := newLogger(c)
	opts := balancer.Options{
		Workers:           c.workers,
		ShutdownTimeout:   c.shutdownTimeout,
		HandoffTimeout:    c.handoffTimeout,
		MaxPending:        c.maxPending,
		MaxUnacked:        c.maxUnacked,
		ReloadConcurrency: c.reloadConcurrency,
		User:              c.user,
		Logger:            log,
	}
	if c.policy == "least-loaded" {
		opts.Policy = balancer.LeastLoaded
	}
	if len(c.command) > 0 {
		opts.Path, opts.Args = c.command[0], c.command[1:]
		if opts.Args == nil {
			opts.Args = []string{}
		}
	}
	// Catch signals before any worker exists, so none is missed.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)

	b, err := balancer.New(opts)
	if err != nil {
		log.Error().Err(err).Msg("cannot start")
		return 1
	}
	fail := func(err error) int {
		log.Error().Err(err).Msg("cannot start")
		b.Kill()
		_ = b.Shutdown(context.Background())
		return 1
	}
	for _, a := range c.listen {
		network, address, _ := splitListen(a)
		if _, err := b.Listen(network, address); err != nil {
			return fail(err)
		}
	}
	if err := b.Start(); err != nil {
		return fail(err)
	}
	log.Info().Int("workers", c.workers).Str("policy", c.policy).Strs("listen", c.listen).Msg("master running")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	shutdownErr := make(chan error, 1)
	stopping := false
	for {
		select {
		case err := <-shutdownErr:
			if err != nil {
				log.Error().Err(err).Msg("shutdown")
				return 1
			}
			return 0
		case sig := <-sigs:
			switch {
			case sig == syscall.SIGHUP && !stopping:
				log.Info().Msg("SIGHUP: rolling restart")
				go func() {
					if err := b.Reload(ctx); err != nil {
						log.Error().Err(err).Msg("rolling restart failed")
					}
				}()
			case sig == syscall.SIGHUP:
			case !stopping:
				stopping = true
				log.Info().Str("signal", sig.String()).Msg("draining workers; send again to stop at once")
				cancel()
				go func() { shutdownErr <- b.Shutdown(context.Background()) }()
			default:
				log.Warn().Str("signal", sig.String()).Msg("stopping at once")
				b.Kill()
			}
		}
	}
}
