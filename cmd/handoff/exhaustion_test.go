//go:build linux

package main

import (
	"fmt"
	"github.com/handoff-go/handoff/internal/proctest"
	"net"
	"net/http"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startLimited starts the CLI under prlimit with an fd limit of n, soft
// and hard: the master and its workers start with it.
func startLimited(t *testing.T, n int, args ...string) *master {
	t.Helper()
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skip("prlimit (util-linux) is not installed")
	}
	addr := proctest.FreeAddr(t)
	full := append([]string{fmt.Sprintf("--nofile=%d:%d", n, n), handoffBin, "--listen", addr, "--log-format", "json"}, args...)
	cmd := exec.Command(prlimit, full...) // prlimit execs handoff: same pid
	out := &proctest.Output{}
	cmd.Stdout, cmd.Stderr = out, out
	return launch(t, cmd, addr, out)
}

// hold opens n connections to addr and keeps them open, each with a
// request sent and its answer left unread, until the returned function
// closes them all. Connections that fail to open are counted, not fatal:
// under a flood the backlog may overflow.
func hold(addr string, n int) (opened int, release func()) {
	var conns []net.Conn
	for i := 0; i < n; i++ {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			continue
		}
		_, _ = fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		conns = append(conns, c)
	}
	return len(conns), func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}
}

// serveN makes n sequential requests on new connections and returns how
// many were answered 200.
func serveN(url string, n int) int {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	ok := 0
	for i := 0; i < n; i++ {
		resp, err := client.Get(url)
		if err != nil {
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == 200 {
			ok++
		}
	}
	return ok
}

// Fd exhaustion heals by itself: at an fd limit of 64, a flood of 200
// held connections and 50 clients, during which the worker dies, cannot
// leave the master without the fds to restart it, and once the flood is
// over it serves again with its worker.
func TestCLIHealsAfterFDExhaustion(t *testing.T) {
	m := startLimited(t, 64, "--workers", "1")
	url := "http://" + m.addr + "/"
	before := m.fdCount(t)
	opened, release := hold(m.addr, 200)
	if pids := m.workerPIDs(); len(pids) == 1 {
		_ = syscall.Kill(pids[0], syscall.SIGKILL) // its held connections fail: they were in progress
	}
	time.Sleep(500 * time.Millisecond)
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			serveN(url, 2)
		}()
	}
	wg.Wait()
	t.Logf("flood: %d of 200 held connections opened; master fds %d before, %d during", opened, before, m.fdCount(t))
	release()
	// Within 10s of the flood's end: 20 of 20 served, its worker there.
	deadline := time.Now().Add(10 * time.Second)
	got := 0
	for time.Now().Before(deadline) {
		if got = serveN(url, 20); got == 20 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got != 20 {
		t.Fatalf("%d of 20 requests served within 10s of the flood's end", got)
	}
	if n := len(m.workerPIDs()); n != 1 {
		t.Errorf("%d workers after the flood, want 1", n)
	}
	t.Logf("after: 20 of 20 served; master fds %d", m.fdCount(t))
}

// A worker killed right after SIGHUP, while its replacement starts, is
// not also restarted: its slot keeps exactly one worker, every time.
func TestCLIKillDuringReloadKeepsTheCount(t *testing.T) {
	admin := proctest.FreeAddr(t)
	const n = 3
	m := startMaster(t, "--workers", fmt.Sprint(n), "--admin", admin)
	for round := 0; round < 3; round++ {
		ws := workersOf(t, admin)
		if len(ws) != n {
			t.Fatalf("round %d: %d workers before SIGHUP, want %d", round, len(ws), n)
		}
		if err := m.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Kill(ws[0].PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		old := map[int]bool{}
		for _, w := range ws {
			old[w.PID] = true
		}
		// Settled: none of the old workers left, n listening, and still
		// n a while later (an extra restart would come after a backoff).
		waitFor(t, "the reload to replace every old worker", func() bool {
			got := workersOf(t, admin)
			for _, w := range got {
				if old[w.PID] || w.State != "listening" {
					return false
				}
			}
			return len(got) >= n
		})
		time.Sleep(time.Second)
		if got, pids := workersOf(t, admin), m.workerPIDs(); len(got) != n || len(pids) != n {
			t.Fatalf("round %d: /workers lists %d, the master has %d children; want %d", round, len(got), len(pids), n)
		}
	}
}

// While the workers crash-loop, clients that give up leave nothing
// behind in the master: their queued connections are closed.
func TestCLIQueueDropsClientsThatLeft(t *testing.T) {
	admin := proctest.FreeAddr(t)
	addr := proctest.FreeAddr(t)
	// Workers that exit at once: a crash loop, so no worker ever listens.
	cmd := exec.Command(handoffBin, "--listen", addr, "--log-format", "json", "--workers", "2", "--admin", admin, "--", "/bin/false")
	out := &proctest.Output{}
	cmd.Stdout, cmd.Stderr = out, out
	m := &master{cmd: cmd, addr: addr, out: out, done: make(chan error, 1)}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { m.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-m.done
		if t.Failed() {
			t.Logf("master output:\n%s", out.String())
		}
	})
	waitFor(t, "the admin port", func() bool {
		c, err := net.Dial("tcp", admin)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	time.Sleep(300 * time.Millisecond)
	start := m.fdCount(t)
	opened, release := hold(addr, 200)
	waitFor(t, "the master to queue the clients", func() bool { return m.fdCount(t) >= start+opened/2 })
	peak := m.fdCount(t)
	time.Sleep(time.Second) // the clients give up after a second
	release()
	time.Sleep(5 * time.Second)
	after := m.fdCount(t)
	t.Logf("%d clients queued; master fds %d at start, %d at the peak, %d 5s after they left", opened, start, peak, after)
	if after > start+10 {
		t.Errorf("master holds %d fds 5s after its clients left, %d at start", after, start)
	}
}
