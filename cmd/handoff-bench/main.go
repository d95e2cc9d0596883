//go:build linux

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
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/balancer"
)

// Defaults of the bench's flags.
const (
	defaultDuration = 10 * time.Second
	defaultWarmup   = time.Second
	defaultConns    = 64
	defaultThreads  = 2
	defaultBurn     = 3 * time.Millisecond
	defaultBurnFrac = 0.1
	defaultOut      = "bench-out"
)

// Bounds that keep every run finite whatever the flags say.
const (
	maxDuration = 10 * time.Minute
	maxConns    = 10000
	maxWorkers  = 256
	maxRounds   = 20
)

// config is the bench's parsed command line.
type config struct {
	role string // "" for the bench itself

	duration    time.Duration
	warmup      time.Duration
	workers     int
	conns       int
	threads     int
	rounds      int
	burn        time.Duration
	burnFrac    float64
	servers     []string
	workloads   []string
	out         string
	jsonPath    string
	profileDir  string // master CPU profiles, "" for none
	perf        bool   // perf record the server processes
	perfStat    bool   // count syscalls and context switches with perf stat, if perf is on PATH
	masterProcs int    // GOMAXPROCS of the handoff master, 0 for Go's default
	replot      string // a results.json to render again, without running

	// Role flags, set by the bench for its children.
	port      int
	statsDir  string
	policy    string
	profile   string
	roleProcs int
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("handoff-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var servers, workloads string
	fs.DurationVar(&c.duration, "duration", defaultDuration, "measured duration of each run (wrk rounds it up to whole seconds)")
	fs.DurationVar(&c.warmup, "warmup", defaultWarmup, "unmeasured load before each run; 0 for none")
	fs.IntVar(&c.workers, "workers", runtime.NumCPU(), "worker processes per server (GOMAXPROCS of the single-process server)")
	fs.IntVar(&c.conns, "connections", defaultConns, "concurrent client connections")
	fs.IntVar(&c.threads, "threads", defaultThreads, "load generator threads (wrk -t); the skewed workload needs at least 2")
	fs.IntVar(&c.rounds, "rounds", 1, "runs of every server per workload; the table shows the median round by req/s")
	fs.DurationVar(&c.burn, "burn", defaultBurn, "CPU a burning request of the skewed workload spins for")
	fs.Float64Var(&c.burnFrac, "burn-fraction", defaultBurnFrac, "fraction of the skewed workload's requests that burn CPU")
	fs.StringVar(&servers, "servers", "", "comma-separated servers to run (default all): "+strings.Join(allServers, ","))
	fs.StringVar(&workloads, "workloads", "", "comma-separated workloads to run (default all): "+strings.Join(allWorkloads, ","))
	fs.StringVar(&c.out, "out", defaultOut, "directory for results.md, results.json, chart.png, chart.svg and logs/")
	fs.StringVar(&c.jsonPath, "json", "", "also write the JSON results to this file (always written to -out/results.json)")
	fs.StringVar(&c.profileDir, "cpuprofile-dir", "", "write a CPU profile of each handoff master's measured window to this directory")
	fs.StringVar(&c.replot, "replot", "", "render the table, chart and JSON again from this results.json into -out, without running anything")
	fs.IntVar(&c.masterProcs, "master-gomaxprocs", 1, "GOMAXPROCS of the handoff master process, 1 as in the handoff CLI (--master-procs); 0 leaves Go's default (the CPU count)")
	fs.BoolVar(&c.perf, "perf", false, "perf record -g the server processes during each measured run, into -out/perf/")
	fs.BoolVar(&c.perfStat, "perf-stat", true, "count the servers' syscalls and context switches with perf stat during each measured run, if perf is on PATH")

	fs.StringVar(&c.role, "role", "", "internal: run as a server process (single, reuseport, master, worker)")
	fs.IntVar(&c.port, "port", 0, "internal: the port a server role listens on, on 127.0.0.1")
	fs.StringVar(&c.statsDir, "stats-dir", "", "internal: directory for the per-process stats sockets")
	fs.StringVar(&c.policy, "policy", balancer.PolicyRoundRobin, "internal: the master's policy, one of "+strings.Join(balancer.PolicyNames(), ", "))
	fs.StringVar(&c.profile, "cpuprofile", "", "internal: the master's CPU profile, taken between SIGUSR1 and SIGUSR2")
	fs.IntVar(&c.roleProcs, "procs", 0, "internal: the worker count of a master role")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: handoff-bench [flags]\n\nRuns every server against every workload and writes a table, a chart and JSON.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if c.role != "" {
		return c, nil
	}
	var err error
	if c.servers, err = pickNames("-servers", servers, allServers); err != nil {
		return nil, err
	}
	if c.workloads, err = pickNames("-workloads", workloads, allWorkloads); err != nil {
		return nil, err
	}
	switch {
	case c.duration < time.Second || c.duration > maxDuration:
		return nil, fmt.Errorf("-duration must be from 1s to %s, not %s", maxDuration, c.duration)
	case c.warmup < 0 || c.warmup > maxDuration:
		return nil, fmt.Errorf("-warmup must be from 0 to %s, not %s", maxDuration, c.warmup)
	case c.workers < 1 || c.workers > maxWorkers:
		return nil, fmt.Errorf("-workers must be from 1 to %d, not %d", maxWorkers, c.workers)
	case c.conns < 1 || c.conns > maxConns:
		return nil, fmt.Errorf("-connections must be from 1 to %d, not %d", maxConns, c.conns)
	case c.threads < 1 || c.threads > c.conns:
		return nil, fmt.Errorf("-threads must be from 1 to -connections (%d), not %d", c.conns, c.threads)
	case c.rounds < 1 || c.rounds > maxRounds:
		return nil, fmt.Errorf("-rounds must be from 1 to %d, not %d", maxRounds, c.rounds)
	case c.burn <= 0 || c.burn > maxBurn:
		return nil, fmt.Errorf("-burn must be from 1ns to %s, not %s", maxBurn, c.burn)
	case c.burnFrac < 0 || c.burnFrac > 1:
		return nil, fmt.Errorf("-burn-fraction must be from 0 to 1, not %g", c.burnFrac)
	case c.masterProcs < 0:
		return nil, fmt.Errorf("-master-gomaxprocs must be 0 or more, not %d", c.masterProcs)
	case c.out == "":
		return nil, errors.New("-out must not be empty")
	}
	return c, nil
}

// pickNames parses a comma-separated filter; "" means all, in all's order.
// The result keeps all's order, so a filter never reorders the runs.
func pickNames(flagName, list string, all []string) ([]string, error) {
	if strings.TrimSpace(list) == "" {
		return slices.Clone(all), nil
	}
	want := map[string]bool{}
	for _, n := range strings.Split(list, ",") {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		if !slices.Contains(all, n) {
			return nil, fmt.Errorf("%s: unknown name %q (want some of %s)", flagName, n, strings.Join(all, ","))
		}
		want[n] = true
	}
	var out []string
	for _, n := range all {
		if want[n] {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no names in %q", flagName, list)
	}
	return out, nil
}

func main() {
	c, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "handoff-bench:", err)
		os.Exit(2)
	}
	if c.role != "" {
		os.Exit(runRole(c))
	}
	os.Exit(runMain(c))
}

// runMain runs the bench. A first SIGINT or SIGTERM stops it after
// killing every server it started; a second one kills them at once.
func runMain(c *config) int {
	if c.replot != "" {
		rep, err := readReport(c.replot)
		if err == nil {
			err = writeOutputs(c, rep, os.Stdout)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "handoff-bench:", err)
			return 1
		}
		return 0
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reg := newRegistry()
	defer reg.stopAll()

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		sig, ok := <-sigs
		if !ok {
			return
		}
		fmt.Fprintf(os.Stderr, "\nhandoff-bench: %s: stopping the servers\n", sig)
		cancel()
		if _, ok := <-sigs; ok {
			fmt.Fprintln(os.Stderr, "handoff-bench: killing the servers now")
			reg.killAll()
			os.Exit(130)
		}
	}()

	rep, err := runBench(ctx, c, reg)
	if rep != nil && len(rep.Runs) > 0 {
		if werr := writeOutputs(c, rep, os.Stdout); werr != nil {
			fmt.Fprintln(os.Stderr, "handoff-bench:", werr)
			return 1
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "handoff-bench:", err)
		return 1
	}
	return 0
}
