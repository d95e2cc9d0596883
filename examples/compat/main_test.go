//go:build linux

package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// The binaries TestMain builds: the handoff CLI, as users run it, and
// this package's server, which every worker runs.
var bin struct {
	master string // cmd/handoff
	server string // this package; with -race when the tests have it
}

// TestMain builds both binaries once, runs the tests and checks that no
// goroutine outlives them.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "handoff-compat-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := 1
	if err := buildBinaries(dir); err != nil {
		fmt.Fprintln(os.Stderr, "building the binaries:", err)
	} else {
		code = m.Run()
		if code == 0 {
			if err := goleak.Find(); err != nil {
				fmt.Fprintln(os.Stderr, "goleak:", err)
				code = 1
			}
		}
	}
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

func buildBinaries(dir string) error {
	bin.master = filepath.Join(dir, "handoff")
	bin.server = filepath.Join(dir, "compatserver")
	// -buildvcs=false: a checkout owned by another user has no VCS
	// stamp to read (git refuses it), and go build would fail.
	serverArgs := []string{"build", "-buildvcs=false", "-o", bin.server}
	if raceEnabled {
		serverArgs = append(serverArgs, "-race")
	}
	for _, b := range []struct {
		dir  string // where to run go build: the library's module for the CLI
		args []string
	}{
		{"../..", []string{"build", "-buildvcs=false", "-o", bin.master, "./cmd/handoff"}},
		{".", append(serverArgs, ".")},
	} {
		cmd := exec.Command("go", b.args...)
		cmd.Dir = b.dir
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go %s: %v\n%s", strings.Join(b.args, " "), err, out)
		}
	}
	return nil
}

// logLine is what the harness reads of a line of the master's JSON log.
type logLine struct {
	Message         string `json:"message"`
	Listen          string `json:"listen"`  // "listener ready": the --listen value
	Address         string `json:"address"` // "listener ready": the bound address
	Worker          int    `json:"worker"`
	PID             int    `json:"pid"`
	Code            int    `json:"code"`   // "worker exited"
	Signal          string `json:"signal"` // "worker exited": set if killed by one
	AfterDisconnect bool   `json:"after_disconnect"`
}

// workerExit is how a worker ended, as the master logged it.
type workerExit struct {
	code            int
	signal          string
	afterDisconnect bool
	at              time.Time // when the harness read the line
}

// master is a handoff CLI process, with two workers running the compat
// server, and what its log has said so far.
type master struct {
	cmd     *exec.Cmd
	addr    string        // the bound address the workers serve; set by startMaster
	exited  chan struct{} // closed once cmd.Wait returned
	waitErr error         // cmd.Wait's error; read it once exited is closed
	logDone chan struct{} // closed when the log reader has read the last line

	mu          sync.Mutex         // guards the fields below, which the log reader writes
	bound       string             // the bound address in "listener ready"
	admin       string             // the admin server's address
	ready       bool               // "ready: workers listening" was logged
	listening   map[int]bool       // pids of the workers listening and not exited
	exits       map[int]workerExit // by pid
	retiring    map[int]bool       // pids of the workers the master is disconnecting
	restartDone int                // "rolling restart done" lines so far
	lines       []string           // the whole log, workers' output included
	changed     chan struct{}      // closed, and replaced, at every line

	// ownSignals is set for a server that handles its signals itself
	// (gRPC) rather than through worker.Serve: the master's SIGTERM, which
	// follows its Disconnect, may then end it after its drain, which is
	// counted, not failed. worker.Serve takes that SIGTERM, so an HTTP
	// worker ended by it fails the case.
	ownSignals bool
}

// startMaster starts the CLI on a free loopback port with two workers
// that run the compat server with serverArgs, and returns once both
// listen. serverArgs should ask for 127.0.0.1:0, which shares the
// master's port. The master is stopped, and its workers too, when the
// test ends.
func startMaster(t *testing.T, serverArgs ...string) *master {
	t.Helper()
	args := append([]string{"--workers", "2", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--log-format", "json", "--", bin.server}, serverArgs...)
	m := &master{
		cmd:       exec.Command(bin.master, args...),
		exited:    make(chan struct{}),
		logDone:   make(chan struct{}),
		listening: make(map[int]bool),
		exits:     make(map[int]workerExit),
		retiring:  make(map[int]bool),
		changed:   make(chan struct{}),
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	m.cmd.Stdout, m.cmd.Stderr = w, w // the workers write there too
	err = m.cmd.Start()
	_ = w.Close()
	if err != nil {
		_ = r.Close()
		t.Fatal(err)
	}
	go m.readLog(r)
	go func() {
		m.waitErr = m.cmd.Wait()
		close(m.exited)
	}()
	t.Cleanup(func() { m.stop(t) })
	m.waitUntil(t, 60*time.Second, "the workers listen", func() bool { return m.ready && m.bound != "" })
	m.mu.Lock()
	m.addr = m.bound
	m.mu.Unlock()
	return m
}

// readLog reads the master's log until every process writing it exits.
func (m *master) readLog(r *os.File) {
	defer close(m.logDone)
	defer r.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		text := sc.Text()
		var l logLine
		isJSON := json.Unmarshal([]byte(text), &l) == nil
		m.mu.Lock()
		m.lines = append(m.lines, text)
		if isJSON {
			m.recordLocked(l)
		}
		close(m.changed)
		m.changed = make(chan struct{})
		m.mu.Unlock()
	}
}

func (m *master) recordLocked(l logLine) {
	switch l.Message {
	case "listener ready":
		m.bound = l.Address
	case "admin server: /metrics, /workers, /healthz":
		m.admin = l.Address
	case "ready: workers listening":
		m.ready = true
	case "worker listening":
		if _, gone := m.exits[l.PID]; !gone {
			m.listening[l.PID] = true
		}
	case "worker exited":
		delete(m.listening, l.PID)
		m.exits[l.PID] = workerExit{code: l.Code, signal: l.Signal, afterDisconnect: l.AfterDisconnect, at: time.Now()}
	case "disconnecting worker":
		m.retiring[l.PID] = true
	case "rolling restart done":
		m.restartDone++
	}
}

// waitUntil waits until cond, called under m.mu, holds, and fails the
// test if it does not within timeout.
func (m *master) waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		m.mu.Lock()
		ok, changed := cond(), m.changed
		m.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-changed:
		case <-m.exited:
			t.Fatalf("waiting until %s: the master exited: %v", what, m.waitErr)
		case <-deadline.C:
			t.Fatalf("waiting until %s: not within %v", what, timeout)
		}
	}
}

// pids returns the pids of the workers listening now, sorted.
func (m *master) pids() []int {
	m.mu.Lock()
	defer m.mu.Unlock()
	var pids []int
	for pid := range m.listening {
		pids = append(pids, pid)
	}
	slices.Sort(pids)
	return pids
}

// restartResult is what a rolling restart did.
type restartResult struct {
	old, new []int         // the workers' pids before and after
	done     time.Duration // SIGHUP to "rolling restart done": every replacement listens
	drained  time.Duration // SIGHUP to the last old worker's exit
	// termAfterServe counts the old workers that the master's SIGTERM
	// ended, not their own exit: see restart.
	termAfterServe int
}

func (r restartResult) String() string {
	return fmt.Sprintf("restart: replacements listening after %v, old workers %v drained and exited after %v (%d of them ended by SIGTERM after the drain); new workers %v",
		r.done.Round(time.Millisecond), r.old, r.drained.Round(time.Millisecond), r.termAfterServe, r.new)
}

// restart sends the master SIGHUP, waits until every replacement listens
// and every old worker has exited, and checks that each old worker
// exited 0 after its drain (or, with ownSignals, by the master's SIGTERM
// after it); not killed, nor with an error.
func (m *master) restart(t *testing.T) restartResult {
	t.Helper()
	m.mu.Lock()
	before := m.restartDone
	m.mu.Unlock()
	old := m.pids()
	start := time.Now()
	if err := m.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	var done time.Duration
	var skipped []int // old workers the restart left serving
	m.waitUntil(t, 60*time.Second, "the rolling restart is done and the old workers exited", func() bool {
		if m.restartDone == before {
			return false
		}
		if done == 0 {
			done = time.Since(start)
			for _, pid := range old {
				if _, exited := m.exits[pid]; !exited && !m.retiring[pid] {
					skipped = append(skipped, pid)
				}
			}
			if len(skipped) > 0 {
				return true
			}
		}
		for _, pid := range old {
			if _, ok := m.exits[pid]; !ok {
				return false
			}
		}
		return true
	})
	if len(skipped) > 0 {
		t.Fatalf("the rolling restart is done but left the old workers %v serving: the master never disconnected them", skipped)
	}
	r := restartResult{old: old, new: m.pids(), done: done}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, pid := range old {
		e := m.exits[pid]
		r.drained = max(r.drained, e.at.Sub(start))
		switch {
		case e.signal == "terminated" && e.afterDisconnect && m.ownSignals:
			// The master's SIGTERM, which follows its Disconnect, can
			// arrive after worker.Serve has drained and returned (and
			// stopped catching signals), before the process exits. What
			// matters is that it did not come mid-drain, which the
			// clients' figures show: a download or stream cut.
			r.termAfterServe++
		case e.code != 0 || e.signal != "" || !e.afterDisconnect:
			t.Errorf("old worker %d exited with code %d, signal %q, after disconnect %v; want 0 after its drain", pid, e.code, e.signal, e.afterDisconnect)
		}
	}
	if len(r.new) != len(old) {
		t.Errorf("after the restart %d workers listen (%v), want %d", len(r.new), r.new, len(old))
	}
	for _, pid := range r.new {
		if slices.Contains(old, pid) {
			t.Errorf("worker %d listens before and after the restart", pid)
		}
	}
	return r
}

// stop stops the master with SIGTERM (SIGKILL after 30s) and then kills
// by pid any worker it left behind. On failure it logs the master's log.
func (m *master) stop(t *testing.T) {
	if t.Failed() {
		m.logMetrics(t)
	}
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.exited:
		if m.waitErr != nil {
			t.Errorf("master: %v", m.waitErr)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("master did not exit within 30s of SIGTERM; killing it")
		_ = m.cmd.Process.Kill()
		<-m.exited
	}
	m.mu.Lock()
	left := make([]int, 0, len(m.listening))
	for pid := range m.listening {
		left = append(left, pid)
	}
	m.mu.Unlock()
	for _, pid := range left {
		if ours(pid) {
			t.Errorf("worker %d outlived its master; killing it", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	select {
	case <-m.logDone:
	case <-time.After(10 * time.Second):
		t.Errorf("the master's log is still open 10s after it exited")
	}
	if t.Failed() {
		m.mu.Lock()
		t.Logf("master log:\n%s", strings.Join(m.lines, "\n"))
		m.mu.Unlock()
	}
}

// ours reports whether pid is a running compat server, so that a pid
// reused by another process is not killed.
func ours(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	exe, _, _ := bytes.Cut(b, []byte{0})
	return string(exe) == bin.server
}

// ioSyscw returns the write syscalls that process pid has made so far:
// syscw in /proc/PID/io, which counts write(2), sendfile(2) and their
// kin, one per call, whatever the size.
func ioSyscw(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var n int64
		if _, err := fmt.Sscanf(sc.Text(), "syscw: %d", &n); err == nil {
			return n, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("/proc/%d/io: no syscw line", pid)
}

// logMetrics logs the master's own counters (handoff_* in /metrics,
// without their help text), for the report of a failed case.
func (m *master) logMetrics(t *testing.T) {
	m.mu.Lock()
	admin := m.admin
	m.mu.Unlock()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Logf("master metrics: %v", err)
		return
	}
	defer resp.Body.Close()
	var lines []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if l := sc.Text(); strings.HasPrefix(l, "handoff_") {
			lines = append(lines, l)
		}
	}
	t.Logf("master metrics:\n%s", strings.Join(lines, "\n"))
}
