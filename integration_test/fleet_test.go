//go:build linux

package integration_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/netnstest"
	"github.com/handoff-go/handoff/internal/proctest"
	"golang.org/x/sync/errgroup"
)

// A fleet is HAProxy in front of several handoff hosts, with client hosts
// in front of HAProxy, all namespaces of one netnstest network: HAProxy
// runs in the network's server host, the hub that every other host has its
// veth to, and clients and handoff hosts are its client hosts. Clients
// reach HAProxy's frontend; only HAProxy reaches the handoff hosts.
//
//	client0 ─┐                ┌─ host0: handoff CLI + workers
//	client1 ─┴─ HAProxy (.1) ─┼─ host1
//	                          └─ host2
const (
	fleetClients  = 2
	fleetHosts    = 3
	fleetWorkers  = 2 // per host, unless a test asks for more
	frontendPort  = 80
	adminPort     = 9090
	shutdownDelay = 3 * time.Second // > checkInter × checkFall, with room to spare
)

// fleet is a running fleet.
type fleet struct {
	lb       *netnstest.Host   // HAProxy's host
	clients  []*netnstest.Host // the client hosts
	hosts    []*fleetHost      // the handoff hosts
	haproxy  *haproxy          // HAProxy
	frontend string            // HAProxy's HOST:PORT, which clients dial
}

// newFleet builds the network for subnet, starts the handoff hosts with
// workers workers each, then HAProxy, and waits until HAProxy has every
// host up. Everything is stopped by pid in t.Cleanup.
func newFleet(t *testing.T, subnet, workers int) *fleet {
	t.Helper()
	haproxyPath(t) // skip early, before any namespace, without it
	n := netnstest.New(t, netnstest.Config{Subnet: subnet, Clients: fleetClients + fleetHosts})
	f := &fleet{
		lb:       n.Server,
		clients:  n.Clients[:fleetClients],
		frontend: netip.AddrPortFrom(n.Server.IPv4(), frontendPort).String(),
	}
	var servers []haproxyServer
	for i, ns := range n.Clients[fleetClients:] {
		h := &fleetHost{
			name:    fmt.Sprintf("host%d", i),
			ns:      ns,
			workers: workers,
			addr:    netip.AddrPortFrom(ns.IPv4(), frontendPort).String(),
			admin:   netip.AddrPortFrom(ns.IPv4(), adminPort).String(),
			trust:   netip.PrefixFrom(n.Server.IPv4(), 32).String(),
			dir:     t.TempDir(),
		}
		f.hosts = append(f.hosts, h)
		servers = append(servers, haproxyServer{Name: h.name, Addr: h.addr})
	}
	// Hosts start in parallel: each waits for its workers.
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, h := range f.hosts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				h.stop(t)
			}()
		}
		wg.Wait()
	})
	var g errgroup.Group
	for _, h := range f.hosts {
		g.Go(h.start)
	}
	if err := g.Wait(); err != nil {
		for _, h := range f.hosts {
			t.Logf("%s's log:\n%s", h.name, h.log())
		}
		t.Fatal(err)
	}
	f.haproxy = startHAProxy(t, f.lb, f.frontend, adminPort, servers)
	for _, h := range f.hosts {
		f.haproxy.waitStatus(t, h.name, "UP", startTimeout)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, h := range f.hosts {
				t.Logf("%s's log:\n%s", h.name, h.log())
			}
		}
	})
	return f
}

// host returns the fleet host called name.
func (f *fleet) host(name string) *fleetHost {
	for _, h := range f.hosts {
		if h.name == name {
			return h
		}
	}
	return nil
}

// fleetHost is one handoff host: a namespace running the handoff CLI,
// whose workers are this test binary (fleetWorkerMain).
type fleetHost struct {
	name    string          // host0, host1, ...: HAProxy's server name
	ns      *netnstest.Host // its namespace
	workers int             // --workers
	addr    string          // --listen HOST:PORT
	admin   string          // --admin HOST:PORT
	trust   string          // HAProxy's address, the one PROXY-header sender
	dir     string          // pid file and log

	mu   sync.Mutex // guards the fields below
	cmd  *exec.Cmd  // the master this test started last
	done chan error // cmd.Wait's result, once
	pids []int      // every master the test started, for the cleanup
}

func (h *fleetHost) pidFile() string { return filepath.Join(h.dir, "handoff.pid") }
func (h *fleetHost) logFile() string { return filepath.Join(h.dir, "handoff.log") }

// log is everything its masters and workers wrote.
func (h *fleetHost) log() string {
	b, _ := os.ReadFile(h.logFile())
	return string(b)
}

// start starts a master (again, after a stop or a kill) and waits until
// its /healthz answers 200 with every worker listening. It makes no
// assertion, so it is safe off the test goroutine.
func (h *fleetHost) start() error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(handoffBin,
		"--listen", h.addr, "--admin", h.admin, "--workers", strconv.Itoa(h.workers),
		"--shutdown-delay", shutdownDelay.String(), "--pid-file", h.pidFile(), "--log-format", "json",
		"--", self, "-test.run=^$")
	cmd.Env = append(os.Environ(), envFleetHost+"="+h.name, envFleetListen+"="+h.addr, envFleetTrust+"="+h.trust)
	// A file, not a pipe: a master started by SIGUSR2 inherits it.
	out, err := os.OpenFile(h.logFile(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := h.ns.Start(cmd); err != nil {
		return fmt.Errorf("%s: starting handoff: %w", h.name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	h.mu.Lock()
	h.cmd, h.done = cmd, done
	h.pids = append(h.pids, cmd.Process.Pid)
	h.mu.Unlock()
	return h.waitReady(cmd.Process.Pid)
}

// waitReady waits until the master with pid has written its pid file and
// /healthz answers 200 with all the workers listening.
func (h *fleetHost) waitReady(pid int) error {
	deadline := time.Now().Add(startTimeout)
	for {
		err := func() error {
			b, err := os.ReadFile(h.pidFile())
			if err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(pid) {
				return fmt.Errorf("pid file %q, want %d (%v)", b, pid, err)
			}
			code, body, err := h.adminGet("/healthz")
			if err != nil || code != http.StatusOK {
				return fmt.Errorf("/healthz: %d %q %v", code, body, err)
			}
			ws, err := h.workerStats()
			if err != nil {
				return err
			}
			if listening := countListening(ws); listening != h.workers || len(ws) != h.workers {
				return fmt.Errorf("%d of %d workers listening: %+v", listening, h.workers, ws)
			}
			return nil
		}()
		if err == nil {
			return nil
		}
		if !proctest.Alive(pid) {
			return fmt.Errorf("%s: the master (pid %d) exited before it was ready: %v", h.name, pid, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not ready after %v: %v", h.name, startTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// masterPID is the pid of the master serving now: the pid file's, which
// follows SIGUSR2 upgrades, or else the one the test started.
func (h *fleetHost) masterPID() int {
	if b, err := os.ReadFile(h.pidFile()); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			return pid
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cmd.Process.Pid
}

// signal sends sig to the master serving now.
func (h *fleetHost) signal(sig syscall.Signal) (int, error) {
	pid := h.masterPID()
	return pid, syscall.Kill(pid, sig)
}

// exited waits for the master the test started last to exit, and returns
// cmd.Wait's error.
func (h *fleetHost) exited(timeout time.Duration) (error, bool) {
	h.mu.Lock()
	done := h.done
	h.mu.Unlock()
	select {
	case err := <-done:
		done <- err // for stop
		return err, true
	case <-time.After(timeout):
		return nil, false
	}
}

// stop ends every master of the host that still runs, and its workers, by
// pid: SIGTERM, then SIGKILL after shutdownTimeout. It also waits for the
// test's own children. It makes no fatal assertion, so the hosts stop in
// parallel.
func (h *fleetHost) stop(t *testing.T) {
	h.mu.Lock()
	pids := append([]int(nil), h.pids...)
	done := h.done
	h.mu.Unlock()
	if done == nil {
		return
	}
	if pid := h.masterPID(); !containsInt(pids, pid) {
		pids = append(pids, pid) // the successor of an upgrade
	}
	var workers []int
	for _, pid := range pids {
		if proctest.Alive(pid) {
			workers = append(workers, proctest.Children(pid)...)
			_ = syscall.Kill(pid, syscall.SIGTERM)
		}
	}
	deadline := time.Now().Add(shutdownTimeout)
	for _, pid := range pids {
		for proctest.Alive(pid) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if proctest.Alive(pid) {
			t.Errorf("%s: master %d still running %v after SIGTERM; killing it", h.name, pid, shutdownTimeout)
			workers = append(workers, proctest.Children(pid)...)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	for _, pid := range workers {
		if proctest.Alive(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	select {
	case <-done:
	case <-time.After(shutdownTimeout):
		t.Errorf("%s: the master the test started never exited", h.name)
	}
}

// kill SIGKILLs the master serving now and all its workers at once, and
// waits until they are gone.
func (h *fleetHost) kill() error {
	pid := h.masterPID()
	victims := append([]int{pid}, proctest.Children(pid)...)
	for _, p := range victims {
		if err := syscall.Kill(p, syscall.SIGKILL); err != nil {
			return fmt.Errorf("killing %d: %w", p, err)
		}
	}
	deadline := time.Now().Add(shutdownTimeout)
	for _, p := range victims {
		for proctest.Alive(p) {
			if time.Now().After(deadline) {
				return fmt.Errorf("process %d still alive after SIGKILL", p)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	_ = os.Remove(h.pidFile()) // a killed master cannot
	return nil
}

// adminGet makes a request to the host's --admin server, from inside the
// host. It makes no assertion.
func (h *fleetHost) adminGet(path string) (int, string, error) {
	client := h.ns.HTTPClient(requestTimeout)
	defer client.CloseIdleConnections()
	resp, err := client.Get("http://" + h.admin + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// adminWorker is the part of one worker in GET /workers that tests read.
type adminWorker struct {
	ID         int    `json:"id"`
	PID        int    `json:"pid"`
	State      string `json:"state"`
	Dispatched uint64 `json:"dispatched"`
}

// workerStats reads GET /workers.
func (h *fleetHost) workerStats() ([]adminWorker, error) {
	code, body, err := h.adminGet("/workers")
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("/workers: %d %q", code, body)
	}
	var ws []adminWorker
	if err := json.Unmarshal([]byte(body), &ws); err != nil {
		return nil, fmt.Errorf("/workers: %w: %q", err, body)
	}
	return ws, nil
}

func countListening(ws []adminWorker) int {
	n := 0
	for _, w := range ws {
		if w.State == "listening" {
			n++
		}
	}
	return n
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// Bounds of every load run.
const (
	loadConcurrency = 6                    // requests in flight at most, spread over the client hosts
	loadMaxRequests = 40000                // per run
	loadMaxDuration = 60 * time.Second     // per run, even if never stopped
	loadDelay       = "?delay=2ms"         // so that requests are in progress on the hosts
	loadErrorsKept  = 10                   // failed requests kept for the log
	loadPause       = 2 * time.Millisecond // between requests of one client
)

// result is one request of a load run.
type result struct {
	client string        // the client host it came from
	start  time.Time     // when it began
	host   string        // X-Fleet-Host, "" if it failed
	worker int           // X-Worker-Id
	err    error         // nil if it was answered 200 with the client's own address
	took   time.Duration // how long it took
}

// load is a running load: loadConcurrency clients, each making one
// request at a time on a new connection to HAProxy's frontend.
type load struct {
	stopc   chan struct{} // closed by stop
	once    sync.Once     // closes stopc
	g       errgroup.Group
	began   time.Time
	sent    atomic.Int64
	mu      sync.Mutex // guards results
	results []result
}

// startLoad starts a load on f of at most maxRequests requests. Call stop
// to end it, or wait for it to make them all; t.Cleanup stops it too.
func (f *fleet) startLoad(t *testing.T, maxRequests int) *load {
	l := &load{stopc: make(chan struct{}), began: time.Now()}
	t.Cleanup(func() { l.stop() })
	deadline := l.began.Add(loadMaxDuration)
	for i := 0; i < loadConcurrency; i++ {
		c := f.clients[i%len(f.clients)]
		l.g.Go(func() error {
			for time.Now().Before(deadline) && l.sent.Add(1) <= int64(maxRequests) {
				select {
				case <-l.stopc:
					return nil
				default:
				}
				r := f.request(c)
				l.mu.Lock()
				l.results = append(l.results, r)
				l.mu.Unlock()
				time.Sleep(loadPause)
			}
			return nil
		})
	}
	return l
}

// stop ends the load and returns every request made.
func (l *load) stop() []result {
	l.once.Do(func() { close(l.stopc) })
	return l.wait()
}

// wait waits until the load has made all its requests (or its time is
// up), and returns them.
func (l *load) wait() []result {
	_ = l.g.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]result(nil), l.results...)
}

// request makes one request from client c through HAProxy and checks that
// the handler saw the client's own address and port. It makes no
// assertion.
func (f *fleet) request(c *netnstest.Host) result {
	r := f.try(c)
	r.took = time.Since(r.start)
	return r
}

func (f *fleet) try(c *netnstest.Host) result {
	r := result{client: c.Name, start: time.Now()}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	conn, err := c.DialContext(ctx, "tcp", f.frontend)
	if err != nil {
		r.err = err
		return r
	}
	local := conn.LocalAddr().String()
	a, err := getOn(conn, "/"+loadDelay, "X-Fleet-Host")
	switch {
	case err != nil:
		r.err = err
	case a.body != local:
		r.err = fmt.Errorf("%s worker %d saw the client at %q, want %s", a.header, a.worker, a.body, local)
	case a.header == "" || a.worker == 0:
		r.err = fmt.Errorf("answer without X-Fleet-Host or X-Worker-Id: %+v", a)
	default:
		r.host, r.worker = a.header, a.worker
	}
	return r
}

// summary counts results.
type summary struct {
	total, failed int
	byHost        map[string]int // answered, by host
	byClient      map[string]int // answered, by client host
	errs          []string       // the first few failures
	slowest       time.Duration
}

func summarize(results []result, began time.Time) summary {
	s := summary{byHost: map[string]int{}, byClient: map[string]int{}}
	for _, r := range results {
		s.total++
		s.slowest = max(s.slowest, r.took)
		if r.err != nil {
			s.failed++
			if len(s.errs) < loadErrorsKept {
				s.errs = append(s.errs, fmt.Sprintf("%v after start, from %s: %v", r.start.Sub(began).Round(time.Millisecond), r.client, r.err))
			}
			continue
		}
		s.byHost[r.host]++
		s.byClient[r.client]++
	}
	return s
}

// report summarizes results, the load's, and logs the summary under
// title.
func (l *load) report(t *testing.T, title string, results []result) summary {
	t.Helper()
	s := summarize(results, l.began)
	logSummary(t, title, s, time.Since(l.began))
	return s
}

// logSummary logs s under title.
func logSummary(t *testing.T, title string, s summary, took time.Duration) {
	t.Helper()
	t.Logf("%s: %d requests in %v (%d clients, each a new connection through HAProxy), %d failed; by host %s; by client %s; slowest %v",
		title, s.total, took.Round(time.Millisecond), loadConcurrency, s.failed, split(s.byHost), split(s.byClient), s.slowest.Round(time.Millisecond))
	for _, e := range s.errs {
		t.Logf("  failed: %s", e)
	}
}
