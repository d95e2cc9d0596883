//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/balancer"
	"github.com/prometheus/procfs"
)

// The servers, in the order they run within a workload.
var allServers = []string{"single", "reuseport", "handoff-rr", "handoff-ll", "handoff-lr", "node-rr", "node-none"}

// handoffPolicies are the policies of the handoff servers, by server:
// names that balancer.PolicyByName takes, as the handoff CLI's --policy.
var handoffPolicies = map[string]string{
	"handoff-rr": balancer.PolicyRoundRobin,
	"handoff-ll": balancer.PolicyLeastLoaded,
	"handoff-lr": balancer.PolicyLeastRequests,
}

// Lifecycle bounds of a server.
const (
	readyTimeout = 15 * time.Second
	stopGrace    = 5 * time.Second
)

// server is one started server: the processes the bench started (each
// the leader of its own process group), the process measured as its
// master if it has one, and the directory its workers put their stats
// sockets in.
type server struct {
	name     string
	statsDir string
	workers  int // stats sockets expected
	port     int
	procs    []*proc
	master   *proc  // handoff master or Node primary; nil if none
	marker   string // a string in every worker's command line
}

// proc is a child process of the bench.
type proc struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// registry tracks every server the bench runs, so each exit path can stop
// them.
type registry struct {
	mu      sync.Mutex
	servers map[*server]bool
}

func newRegistry() *registry { return &registry{servers: map[*server]bool{}} }

func (r *registry) add(s *server) {
	r.mu.Lock()
	r.servers[s] = true
	r.mu.Unlock()
}

func (r *registry) remove(s *server) {
	r.mu.Lock()
	delete(r.servers, s)
	r.mu.Unlock()
}

func (r *registry) list() []*server {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*server
	for s := range r.servers {
		out = append(out, s)
	}
	return out
}

// stopAll stops every server still running, gracefully.
func (r *registry) stopAll() {
	for _, s := range r.list() {
		s.stop()
		r.remove(s)
	}
}

// killAll SIGKILLs every server's processes at once.
func (r *registry) killAll() {
	for _, s := range r.list() {
		s.kill()
	}
}

// serverEnv is what starting a server needs.
type serverEnv struct {
	exe         string // this binary
	node        string // node's path, "" if absent
	nodeJS      string // the Node cluster script
	workers     int
	tmp         string    // per-bench temporary directory
	logs        string    // directory for the servers' stderr
	profile     string    // master CPU profile path for this run, "" for none
	perfStat    string    // perf's path, to count syscalls with perf stat; "" for not counting
	masterProcs int       // the master's GOMAXPROCS, 0 for Go's default
	procFS      procfs.FS // /proc, where each process's CPU and context switches are read
}

// startServer starts server name on a free port of 127.0.0.1 and waits
// until every worker serves.
func startServer(ctx context.Context, reg *registry, env *serverEnv, name, runTag string) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	statsDir, err := os.MkdirTemp(env.tmp, "stats-")
	if err != nil {
		return nil, err
	}
	s := &server{name: name, statsDir: statsDir, workers: env.workers, port: port, marker: "-stats-dir=" + statsDir}
	reg.add(s)
	logPath := filepath.Join(env.logs, runTag+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		s.stop()
		reg.remove(s)
		return nil, err
	}
	defer logf.Close() // each child has its own copy
	base := []string{"-port=" + strconv.Itoa(port), "-stats-dir=" + statsDir}
	environ := withoutEnv(os.Environ(), "GOMAXPROCS", "NODE_CLUSTER_SCHED_POLICY")
	start := func(path string, args, extraEnv []string) (*proc, error) {
		cmd := exec.Command(path, args...)
		cmd.Env = append(append([]string(nil), environ...), extraEnv...)
		cmd.Stdout, cmd.Stderr = logf, logf
		// Its own process group, so a terminal's Ctrl-C reaches only the
		// bench, which stops everything itself; and killed with the bench.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		p := &proc{cmd: cmd, exited: make(chan struct{})}
		go func() {
			_ = cmd.Wait()
			close(p.exited)
		}()
		s.procs = append(s.procs, p)
		return p, nil
	}
	switch name {
	case "single":
		_, err = start(env.exe, append([]string{"-role=single"}, base...), []string{"GOMAXPROCS=" + strconv.Itoa(env.workers)})
		s.workers = 1
	case "reuseport":
		for range env.workers {
			if _, err = start(env.exe, append([]string{"-role=reuseport"}, base...), []string{"GOMAXPROCS=1"}); err != nil {
				break
			}
		}
	case "handoff-rr", "handoff-ll", "handoff-lr":
		policy := handoffPolicies[name]
		args := append([]string{"-role=master", "-procs=" + strconv.Itoa(env.workers), "-policy=" + policy}, base...)
		if env.profile != "" {
			args = append(args, "-cpuprofile="+env.profile)
		}
		var menv []string
		if env.masterProcs > 0 {
			menv = []string{"GOMAXPROCS=" + strconv.Itoa(env.masterProcs)}
		}
		s.master, err = start(env.exe, args, menv)
	case "node-rr", "node-none":
		if env.node == "" {
			err = errors.New("node is not on PATH")
			break
		}
		s.marker = env.nodeJS
		s.master, err = start(env.node, []string{env.nodeJS, strconv.Itoa(port), strconv.Itoa(env.workers), statsDir},
			[]string{"NODE_CLUSTER_SCHED_POLICY=" + strings.TrimPrefix(name, "node-")})
	default:
		err = fmt.Errorf("unknown server %q", name)
	}
	if err == nil {
		err = s.waitReady(ctx)
	}
	if err != nil {
		s.stop()
		reg.remove(s)
		return nil, fmt.Errorf("%s: %w (log: %s)", name, err, logPath)
	}
	return s, nil
}

// waitReady waits until every worker's stats socket exists and the port
// answers HTTP.
func (s *server) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(readyTimeout)
	for {
		for _, p := range s.procs {
			if !p.alive() {
				return fmt.Errorf("process %d exited while starting", p.pid())
			}
		}
		socks, _ := filepath.Glob(filepath.Join(s.statsDir, "*.sock"))
		if len(socks) >= s.workers && probeHTTP(s.port) == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s: %d of %d workers serving", readyTimeout, len(socks), s.workers)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// probeHTTP sends one GET / and reads the answer's status line.
func probeHTTP(port int) error {
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"); err != nil {
		return err
	}
	buf := make([]byte, 12)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if !strings.HasPrefix(string(buf), "HTTP/1.1 200") {
		return fmt.Errorf("probe answered %q", buf)
	}
	return nil
}

// signal sends sig to the process group of every process the bench
// started for this server.
func (s *server) signal(sig syscall.Signal) {
	for _, p := range s.procs {
		if p.alive() {
			_ = syscall.Kill(-p.pid(), sig)
		}
	}
}

// stop stops the server: SIGTERM to each process group, SIGKILL to those
// left after stopGrace, then SIGKILL to any worker still alive (a handoff
// worker has a process group of its own), and removes the stats sockets.
func (s *server) stop() {
	s.signal(syscall.SIGTERM)
	deadline := time.After(stopGrace)
	for _, p := range s.procs {
		select {
		case <-p.exited:
		case <-deadline:
			s.signal(syscall.SIGKILL)
			<-p.exited
		}
	}
	s.killStrayWorkers()
	_ = os.RemoveAll(s.statsDir)
}

// kill SIGKILLs everything at once, for a second Ctrl-C.
func (s *server) kill() {
	s.signal(syscall.SIGKILL)
	s.killStrayWorkers()
}

// killStrayWorkers SIGKILLs the workers whose stats sockets are in the
// server's directory, if they are alive and still this server's (their
// command line carries the directory), so a reused pid is never hit.
func (s *server) killStrayWorkers() {
	socks, _ := filepath.Glob(filepath.Join(s.statsDir, "*.sock"))
	for _, sock := range socks {
		pid, err := strconv.Atoi(strings.TrimSuffix(filepath.Base(sock), ".sock"))
		if err != nil || pid <= 1 {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if err != nil || !strings.Contains(string(cmdline), s.statsDir) {
			continue
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// freePort returns a TCP port of 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// withoutEnv drops the named variables from an environment.
func withoutEnv(env []string, names ...string) []string {
	var out []string
next:
	for _, kv := range env {
		for _, n := range names {
			if strings.HasPrefix(kv, n+"=") {
				continue next
			}
		}
		out = append(out, kv)
	}
	return out
}

// nodeClusterJS is the hello-world server of Node's cluster documentation
// (shared/reference/node-cluster-doc.md), with what the bench needs: the
// port, the worker count and the stats directory from argv, the same
// ?burn= as the Go handler, and a per-worker stats socket.
const nodeClusterJS = `'use strict';
// Written by handoff-bench: Node.js cluster "hello world", as in Node's docs.
const cluster = require('cluster');
const http = require('http');
const path = require('path');
const [port, workers, statsDir] = process.argv.slice(2);

if (cluster.isPrimary === undefined ? cluster.isMaster : cluster.isPrimary) {
  for (let i = 0; i < Number(workers); i++) {
    cluster.fork();
  }
  cluster.on('exit', function(worker) {
    console.error('worker ' + worker.process.pid + ' died');
  });
} else {
  let served = 0;
  const units = { ns: 1e-6, us: 1e-3, 'µs': 1e-3, ms: 1, s: 1000 };
  function burnMs(url) {
    const m = /[?&]burn=([0-9.]+)(ns|us|µs|ms|s)(&|$)/.exec(url);
    if (!m) return 0;
    const ms = Number(m[1]) * units[m[2]];
    return ms > 0 && ms <= 100 ? ms : 0;
  }
  function spin(ms) {
    const end = process.hrtime.bigint() + BigInt(Math.round(ms * 1e6));
    while (process.hrtime.bigint() < end) {}
  }
  http.Server(function(req, res) {
    served++;
    if (req.url.length > 1) {
      const ms = burnMs(req.url);
      if (ms > 0) spin(ms);
    }
    res.writeHead(200);
    res.end("hello world\n");
  }).listen(Number(port), '127.0.0.1', function() {
    // Exclusive: this worker's own socket, not shared through the primary.
    http.Server(function(req, res) {
      res.end(process.pid + ' ' + served + '\n');
    }).listen({ path: path.join(statsDir, process.pid + '.sock'), exclusive: true });
  });
}
`
