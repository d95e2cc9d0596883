//go:build linux

package integration_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
)

// The README's example, run as a user would run it: these tests need no
// namespace and no root, only loopback.

// Bounds of the README tests.
const (
	// readmeLoadClients make the load across the SIGHUP, each with a
	// new connection per request.
	readmeLoadClients = 4
	// readmeMaxRequests and readmeLoadTimeout bound that load.
	readmeMaxRequests = 2000
	readmeLoadTimeout = 20 * time.Second
	// readmeLoadPace is each load client's pause between requests, so
	// that readmeMaxRequests last over the whole rolling restart.
	readmeLoadPace = 2 * time.Millisecond
	// readmeRestartTimeout bounds the rolling restart.
	readmeRestartTimeout = 15 * time.Second
	// readmeHalfClients is the number of requests in flight at SIGTERM.
	readmeHalfClients = 8
	// readmeDrainSettle is how long, once the master refuses new
	// connections, the test waits before it sends the rest of the
	// requests in flight, so that every worker's drain has begun: the
	// master disconnects every worker at once (worker.Serve's drain
	// begins then), and sends each SIGTERM once its listeners have
	// closed, about 50ms later (a plain srv.Shutdown begins then).
	readmeDrainSettle = 500 * time.Millisecond
	// readmeExitTimeout bounds the master's exit after SIGTERM.
	readmeExitTimeout = 15 * time.Second
)

// readmeRequest is the request sent in two halves around SIGTERM; it is
// cut in the middle of its headers.
const readmeRequest = "GET / HTTP/1.1\r\nHost: readme.test\r\nUser-Agent: handoff-readme-test\r\nAccept: */*\r\n\r\n"

// TestREADMELibraryExample proves the README's library example as a user
// would take it: built in a module of its own outside the repo, it
// serves; a SIGHUP replaces every worker under load with no failed
// request; and at SIGTERM, the requests in flight (half their headers
// sent) are answered in full before the master exits 0.
func TestREADMELibraryExample(t *testing.T) {
	addr := freeLoopbackAddr(t)
	m := startExample(t, buildExample(t, readmeExample(t), addr), addr)
	m.rollingRestartUnderLoad(t)
	answered, lost := m.terminateWithRequestsInFlight(t)
	t.Logf("SIGTERM: %d of %d requests in flight answered in full", answered, readmeHalfClients)
	if lost > 0 {
		t.Errorf("SIGTERM: %d of %d requests in flight were not answered", lost, readmeHalfClients)
	}
	m.checkOutput(t)
}

// TestREADMEPlainShutdownLosesRequests is the control of the SIGTERM
// check above: the same example with the worker serving as the README's
// earlier version did (srv.Serve, then srv.Shutdown at SIGTERM) loses
// the requests whose headers arrive after Shutdown began, so the check
// can fail, and its timing does put the rest of each request after the
// worker's drain began.
func TestREADMEPlainShutdownLosesRequests(t *testing.T) {
	addr := freeLoopbackAddr(t)
	src := plainShutdownExample(t, readmeExample(t))
	m := startExample(t, buildExample(t, src, addr), addr)
	answered, lost := m.terminateWithRequestsInFlight(t)
	t.Logf("plain Shutdown: %d of %d requests in flight lost, %d answered", lost, readmeHalfClients, answered)
	if lost != readmeHalfClients {
		t.Errorf("plain Shutdown answered %d of %d requests in flight, want none: the rest of each request reached the worker before its drain began, so TestREADMELibraryExample proves nothing about requests in flight", answered, readmeHalfClients)
	}
}

// readmeExample returns the first ```go block under "## Library use" in
// the repo's README.md.
func readmeExample(t *testing.T) string {
	t.Helper()
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## Library use\n")
	if !ok {
		t.Fatal(`README.md has no "## Library use" section: this test runs its first go block`)
	}
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end]
	}
	_, block, ok := strings.Cut(section, "\n```go\n")
	if !ok {
		t.Fatal("README.md's \"## Library use\" section has no ```go block")
	}
	src, _, ok := strings.Cut(block, "\n```\n")
	if !ok {
		t.Fatal("README.md's \"## Library use\" go block has no closing ```")
	}
	for _, want := range []string{"package main\n", "func main() {", "worker.IsWorker()", "b.Run(", "worker.Serve("} {
		if !strings.Contains(src, want) {
			t.Fatalf("README.md's \"## Library use\" example changed shape: no %q in\n%s", want, src)
		}
	}
	return src + "\n"
}

// plainShutdownExample rewrites the example's worker to serve with
// srv.Serve and stop with srv.Shutdown at SIGTERM, as the README's
// example did before worker.Serve.
func plainShutdownExample(t *testing.T, src string) string {
	t.Helper()
	const serve = "\tif err := worker.Serve(context.Background(), srv, ln); err != nil {\n\t\tlog.Fatal(err)\n\t}\n"
	const plain = "\tctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)\n" +
		"\tdefer stop()\n" +
		"\tgo srv.Serve(ln)\n" +
		"\t<-ctx.Done() // the master sends SIGTERM to drain us\n" +
		"\tsrv.Shutdown(context.Background())\n"
	const imports = "\t\"net/http\"\n"
	if strings.Count(src, serve) != 1 || strings.Count(src, imports) != 1 {
		t.Fatalf("the README example changed shape: want one %q and one %q to rewrite in\n%s", serve, imports, src)
	}
	src = strings.Replace(src, serve, plain, 1)
	return strings.Replace(src, imports, imports+"\t\"os/signal\"\n\t\"syscall\"\n", 1)
}

// freeLoopbackAddr returns 127.0.0.1:PORT with a port free just now.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// buildExample writes src, listening on addr instead of :8000, as the
// main package of a new module outside the repo that requires the
// library from the repo (replace), and builds it offline, from the
// module cache, with the race detector. It returns the binary's path.
//
// The new go.mod lists the repo's own requirements, which is what
// go mod tidy would add with the network (and a few more, unused):
// go build then needs only the modules that building the repo fetched,
// whereas tidy also wants the go.mod of every version in the module
// graph, which a module cache filled by go test ./... may not have.
func buildExample(t *testing.T, src, addr string) string {
	t.Helper()
	if n := strings.Count(src, `":8000"`); n != 2 {
		t.Fatalf(`the README example has %d ":8000", want 2 (the master's Listen and the worker's):%s`, n, src)
	}
	src = strings.ReplaceAll(src, `":8000"`, strconv.Quote(addr))
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	rootMod := repoGoMod(t, root)
	var mod strings.Builder
	fmt.Fprintf(&mod, "module readmeexample\n\ngo %s\n\nrequire github.com/handoff-go/handoff v0.0.0\n\nrequire (\n", rootMod.Go)
	for _, r := range rootMod.Require {
		fmt.Fprintf(&mod, "\t%s %s\n", r.Path, r.Version)
	}
	fmt.Fprintf(&mod, ")\n\nreplace github.com/handoff-go/handoff => %s\n", strconv.Quote(root))
	for _, r := range rootMod.Replace {
		to := r.New.Path + " " + r.New.Version
		if r.New.Version == "" { // a directory, maybe relative to the repo
			to = strconv.Quote(filepath.Join(root, r.New.Path))
			if filepath.IsAbs(r.New.Path) {
				to = strconv.Quote(r.New.Path)
			}
		}
		fmt.Fprintf(&mod, "\nreplace %s %s => %s\n", r.Old.Path, r.Old.Version, to)
	}
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, data := range map[string]string{"main.go": src, "go.mod": mod.String(), "go.sum": string(sum)} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(dir, "readmeexample")
	// -race as TestMain builds the CLI: that build has put the library
	// and the standard library, so built, in the build cache.
	cmd := exec.Command("go", "build", "-race", "-o", bin, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod -buildvcs=false", "GOPROXY=off", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build in a module of its own, offline (GOPROXY=off; the module cache needs what building the repo fetches): %v\n%s\ngo.mod:\n%s\nmain.go:\n%s", err, out, mod.String(), src)
	}
	return bin
}

// goMod is what buildExample reads of a go.mod (go mod edit -json).
type goMod struct {
	Go      string // the go line
	Require []struct {
		Path, Version string
	}
	Replace []struct {
		Old, New struct {
			Path, Version string
		}
	}
}

// repoGoMod reads the go.mod of the module at root.
func repoGoMod(t *testing.T, root string) goMod {
	t.Helper()
	cmd := exec.Command("go", "mod", "edit", "-json")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go mod edit -json in %s: %v", root, err)
	}
	var m goMod
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("go mod edit -json in %s: %v", root, err)
	}
	if m.Go == "" || len(m.Require) == 0 {
		t.Fatalf("go mod edit -json in %s: no go line or no requirement:\n%s", root, out)
	}
	return m
}

// exampleMaster is the example's master process, started by startExample.
type exampleMaster struct {
	bin    string        // the example's binary, which its workers run too
	addr   string        // where it serves
	output string        // the file with its and its workers' output
	cmd    *exec.Cmd     // the master
	exited chan struct{} // closed once cmd.Wait returned

	mu   sync.Mutex
	seen []int // every worker pid seen, for the cleanup
}

// startExample runs bin, which serves on addr, and waits until it
// answers "hello world\n". The master and its workers are killed by pid
// in t.Cleanup if they are still running.
func startExample(t *testing.T, bin, addr string) *exampleMaster {
	t.Helper()
	m := &exampleMaster{bin: bin, addr: addr, output: filepath.Join(filepath.Dir(bin), "output"), exited: make(chan struct{})}
	out, err := os.Create(m.output)
	if err != nil {
		t.Fatal(err)
	}
	m.cmd = exec.Command(bin)
	m.cmd.Dir = filepath.Dir(bin)
	m.cmd.Stdout, m.cmd.Stderr = out, out // a file: Wait copies nothing
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = m.cmd.Start()
	_ = out.Close()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(m.exited)
		_ = m.cmd.Wait()
	}()
	t.Cleanup(func() { m.kill(t) })

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: time.Second}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(startTimeout)
	for {
		a, err := get(client, "http://"+addr+"/", "")
		if err == nil && a.body == hello {
			break
		}
		select {
		case <-m.exited:
			t.Fatalf("the example's master exited (%v) before it served", m.cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the example does not serve %q on %s after %v: %q, %v", hello, addr, startTimeout, a.body, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The master starts one worker per CPU.
	m.waitWorkers(t, "the example's workers to start", func(pids []int) bool { return len(pids) >= runtime.NumCPU() })
	return m
}

// kill stops the master and the workers it leaves, by pid, and logs
// their output if t failed.
func (m *exampleMaster) kill(t *testing.T) {
	select {
	case <-m.exited:
	default:
		left := m.workers()
		_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL) // its own group
		select {
		case <-m.exited:
		case <-time.After(shutdownTimeout):
			t.Errorf("the example's master (pid %d) survived SIGKILL", m.cmd.Process.Pid)
		}
		m.mu.Lock()
		left = append(left, m.seen...)
		m.mu.Unlock()
		// Workers have process groups of their own, and end by
		// themselves when their master dies; do not wait for it.
		for _, pid := range left {
			if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && exe == m.bin {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if t.Failed() {
		if out, err := os.ReadFile(m.output); err == nil {
			t.Logf("the example's output:\n%s", out)
		}
	}
}

// workers returns the pids of the master's living children: its workers.
func (m *exampleMaster) workers() []int {
	pids := childrenOf(m.cmd.Process.Pid)
	m.mu.Lock()
	for _, pid := range pids {
		if !slices.Contains(m.seen, pid) {
			m.seen = append(m.seen, pid)
		}
	}
	m.mu.Unlock()
	return pids
}

// waitWorkers waits until done(the worker pids) is true, and returns them.
func (m *exampleMaster) waitWorkers(t *testing.T, what string, done func([]int) bool) []int {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	for {
		pids := m.workers()
		if done(pids) {
			return pids
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s; the master's children are %v", startTimeout, what, pids)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// childrenOf returns the pids of ppid's children that are not zombies,
// read from /proc/*/stat.
func childrenOf(ppid int) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue // gone
		}
		// pid (comm) state ppid ...; comm may hold spaces and parens.
		i := strings.LastIndexByte(string(stat), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 2 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		if p, err := strconv.Atoi(f[1]); err == nil && p == ppid {
			pids = append(pids, pid)
		}
	}
	return pids
}

// rollingRestartUnderLoad sends the master SIGHUP under load and checks
// that every worker is replaced with no failed request.
func (m *exampleMaster) rollingRestartUnderLoad(t *testing.T) {
	t.Helper()
	before := m.workers()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: requestTimeout}
	defer client.CloseIdleConnections()
	url := "http://" + m.addr + "/"

	var (
		started, ok, failed atomic.Int64
		errMu               sync.Mutex
		errs                []string // the first failures
	)
	ctx, cancel := context.WithTimeout(context.Background(), readmeLoadTimeout)
	defer cancel()
	stop := make(chan struct{})
	var g errgroup.Group
	stopLoad := sync.OnceFunc(func() { close(stop); _ = g.Wait() })
	defer stopLoad() // if the test fails before the load is over
	for range readmeLoadClients {
		g.Go(func() error {
			for {
				select {
				case <-stop:
					return nil
				case <-ctx.Done():
					return nil
				default:
				}
				if started.Add(1) > readmeMaxRequests {
					return nil
				}
				a, err := get(client, url, "")
				if err == nil && a.body != hello {
					err = fmt.Errorf("body %q", a.body)
				}
				if err != nil {
					failed.Add(1)
					errMu.Lock()
					if len(errs) < 5 {
						errs = append(errs, err.Error())
					}
					errMu.Unlock()
				} else {
					ok.Add(1)
				}
				time.Sleep(readmeLoadPace)
			}
		})
	}
	done := func() int64 { return ok.Load() + failed.Load() }
	waitFor := func(n int64) {
		for done() < n && ctx.Err() == nil && started.Load() < readmeMaxRequests {
			time.Sleep(time.Millisecond)
		}
	}

	waitFor(100)
	atHUP := done()
	hup := time.Now()
	if err := m.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	var after []int
	restarted := false
	for !restarted && time.Since(hup) < readmeRestartTimeout {
		time.Sleep(5 * time.Millisecond)
		after = m.workers()
		restarted = len(after) >= len(before) && !slices.ContainsFunc(after, func(pid int) bool { return slices.Contains(before, pid) })
	}
	restart := time.Since(hup)
	atRestarted := done()
	waitFor(atRestarted + 100)
	stopLoad()
	limited := started.Load() > readmeMaxRequests || ctx.Err() != nil

	t.Logf("SIGHUP: workers %v replaced by %v in %v; %d requests in all, %d while the workers were replaced, %d failed",
		before, after, restart.Round(time.Millisecond), done(), atRestarted-atHUP, failed.Load())
	if !restarted {
		t.Fatalf("SIGHUP: the workers %v were not all replaced after %v: the master's children are %v", before, readmeRestartTimeout, after)
	}
	if n := failed.Load(); n > 0 {
		t.Errorf("SIGHUP: %d of %d requests failed; the first: %s", n, done(), strings.Join(errs, "; "))
	}
	if atRestarted == atHUP {
		t.Errorf("SIGHUP: no request was made while the workers were replaced")
	}
	if limited {
		t.Errorf("SIGHUP: the load reached its bound (%d requests or %v) before the restart was over and 100 more requests were made", readmeMaxRequests, readmeLoadTimeout)
	}
}

// terminateWithRequestsInFlight sends the first half of a request's
// headers on readmeHalfClients connections, waits until the workers have
// read them, sends the master SIGTERM, and once the master refuses new
// connections and the workers' drain has begun, sends the rest. It
// returns how many were answered in full (200, "hello world\n") and how
// many were not, and checks that the master exits 0.
func (m *exampleMaster) terminateWithRequestsInFlight(t *testing.T) (answered, lost int) {
	t.Helper()
	head, rest := readmeRequest[:len(readmeRequest)/2], readmeRequest[len(readmeRequest)/2:]
	conns := make([]net.Conn, readmeHalfClients)
	ports := make([]int, readmeHalfClients)
	for i := range conns {
		c, err := net.DialTimeout("tcp", m.addr, requestTimeout)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		_ = c.SetDeadline(time.Now().Add(shutdownTimeout))
		if _, err := io.WriteString(c, head); err != nil {
			t.Fatal(err)
		}
		conns[i], ports[i] = c, c.LocalAddr().(*net.TCPAddr).Port
	}
	_, portStr, _ := net.SplitHostPort(m.addr)
	serverPort, _ := strconv.Atoi(portStr)
	waitHalfRead(t, serverPort, ports)
	workers := m.workers()

	term := time.Now()
	if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	refused := waitRefused(t, m.addr, readmeExitTimeout)
	if refused < 0 {
		t.Fatalf("SIGTERM: the master still accepts new connections after %v", readmeExitTimeout)
	}
	t.Logf("SIGTERM: new connections refused after %v", refused.Round(time.Millisecond))
	time.Sleep(readmeDrainSettle)
	select {
	case <-m.exited:
		t.Fatalf("SIGTERM: the master exited (%v) with %d requests in flight", m.cmd.ProcessState, readmeHalfClients)
	default:
	}

	for _, c := range conns {
		if _, err := io.WriteString(c, rest); err != nil {
			t.Logf("sending the rest of a request in flight: %v", err)
		}
	}
	for i, c := range conns {
		if err := readHello(c); err != nil {
			lost++
			t.Logf("request in flight %d (port %d): %v", i, ports[i], err)
		} else {
			answered++
		}
	}

	select {
	case <-m.exited:
	case <-time.After(readmeExitTimeout - time.Since(term)):
		t.Fatalf("SIGTERM: the master did not exit within %v", readmeExitTimeout)
	}
	t.Logf("SIGTERM: the master exited (%v) after %v", m.cmd.ProcessState, time.Since(term).Round(time.Millisecond))
	if code := m.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("SIGTERM: the master exited %v, want 0", m.cmd.ProcessState)
	}
	if waitRefused(t, m.addr, 0) < 0 {
		t.Errorf("SIGTERM: a new connection after the master exited was not refused")
	}
	for _, pid := range workers {
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && exe == m.bin {
			t.Errorf("SIGTERM: worker pid %d still runs after the master exited", pid)
		}
	}
	return answered, lost
}

// checkOutput checks that the master printed its one "serving" line and
// that nothing else was printed: no error and, as they are built with
// -race, no data race.
func (m *exampleMaster) checkOutput(t *testing.T) {
	t.Helper()
	out, err := os.ReadFile(m.output)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(" master %d serving on %s\n", m.cmd.Process.Pid, m.addr)
	if line, rest, _ := strings.Cut(string(out), "\n"); !strings.HasSuffix(line+"\n", want) || rest != "" {
		t.Errorf("the example printed:\n%s\nwant one line ending in %q", out, want)
	}
}

// readHello reads one response from c, and checks that it is a 200 with
// the body "hello world\n".
func readHello(c net.Conn) error {
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return fmt.Errorf("no response: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("reading the body: %w", err)
	}
	if resp.StatusCode != http.StatusOK || string(body) != hello {
		return fmt.Errorf("%s %q, want 200 %q", resp.Status, body, hello)
	}
	return nil
}

// waitRefused dials addr until a connection is refused, for up to
// timeout, and returns how long that took, or -1.
func waitRefused(t *testing.T, addr string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
		} else if errors.Is(err, syscall.ECONNREFUSED) {
			return time.Since(start)
		} else if !errors.Is(err, syscall.ECONNRESET) {
			// ECONNRESET: the listener closed during this handshake,
			// which the kernel resets; the next dial is refused.
			t.Fatalf("dialing %s: %v, want a connection, ECONNRESET or ECONNREFUSED", addr, err)
		}
		if time.Since(start) >= timeout {
			return -1
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitHalfRead waits until the first half of the request sent from each
// of clientPorts to serverPort on loopback has been read on the server
// side, as /proc/net/tcp shows: the client's bytes are acked (tx_queue
// 0), and then the server socket's receive queue is empty. Only a worker
// reads a connection's bytes (the master hands the fd off), so each
// request is then in a worker's net/http, waiting for the rest of its
// headers.
func waitHalfRead(t *testing.T, serverPort int, clientPorts []int) {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	acked := false
	for {
		sockets := loopbackSockets(t)
		all := true
		for _, p := range clientPorts {
			var q tcpQueues
			var found bool
			if !acked {
				q, found = sockets[[2]int{p, serverPort}]
				all = all && found && q.tx == 0
			} else {
				q, found = sockets[[2]int{serverPort, p}]
				all = all && found && q.rx == 0
			}
		}
		if all && acked {
			return
		}
		acked = acked || all
		if time.Now().After(deadline) {
			t.Fatalf("the workers have not read the requests in flight after %v (acked: %v)", startTimeout, acked)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// tcpQueues is a socket's queues, in bytes.
type tcpQueues struct {
	tx int // sent and not acked
	rx int // received and not read
}

// loopbackSockets reads the established sockets in /proc/net/tcp and
// tcp6, keyed by local and remote port.
func loopbackSockets(t *testing.T) map[[2]int]tcpQueues {
	t.Helper()
	sockets := map[[2]int]tcpQueues{}
	for _, name := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		data, err := os.ReadFile(name)
		if errors.Is(err, os.ErrNotExist) {
			continue // no IPv6
		}
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.Lines(string(data)) {
			// sl local_address rem_address st tx_queue:rx_queue ...
			f := strings.Fields(line)
			if len(f) < 5 || f[0] == "sl" || f[3] != "01" { // ESTABLISHED only
				continue
			}
			local, err1 := hexPort(f[1])
			remote, err2 := hexPort(f[2])
			tx, rx, ok := strings.Cut(f[4], ":")
			txn, err3 := strconv.ParseInt(tx, 16, 64)
			rxn, err4 := strconv.ParseInt(rx, 16, 64)
			if !ok || errors.Join(err1, err2, err3, err4) != nil {
				t.Fatalf("%s: unexpected line %q", name, line)
			}
			sockets[[2]int{local, remote}] = tcpQueues{tx: int(txn), rx: int(rxn)}
		}
	}
	return sockets
}

// hexPort returns the port of a /proc/net/tcp address, ADDR:PORT in hex.
func hexPort(addr string) (int, error) {
	_, port, ok := strings.Cut(addr, ":")
	if !ok {
		return 0, fmt.Errorf("no port in %q", addr)
	}
	p, err := strconv.ParseUint(port, 16, 16)
	return int(p), err
}
