//go:build linux

package main

import (
	"errors"
	"github.com/handoff-go/handoff/internal/proctest"
	"io"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// served makes one request on a new connection and returns the id of
// the worker that answered it, or an error.
func served(client *http.Client, url string) (int, error) {
	resp, err := client.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if _, err := io.ReadAll(resp.Body); err != nil {
		return 0, err
	}
	return strconv.Atoi(resp.Header.Get("X-Worker-Id"))
}

// A worker stopped with SIGSTOP loses nothing: the master finds it not
// reading, routes around it and serves what it never read elsewhere, so
// every new connection made meanwhile is answered by the other worker;
// after SIGCONT it gets connections again. All under load from outside,
// with no failed request.
func TestCLIStoppedWorkerIsRoutedAround(t *testing.T) {
	admin := proctest.FreeAddr(t)
	m := startMaster(t, "--workers", "2", "--admin", admin)
	ws := workersOf(t, admin)
	if len(ws) != 2 {
		t.Fatalf("/workers: %+v", ws)
	}
	stopped, other := ws[0], ws[1]
	url := "http://" + m.addr + "/"
	stop := make(chan struct{})
	wait := load(t, url, stop)
	time.Sleep(200 * time.Millisecond)
	if err := syscall.Kill(stopped.PID, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stoppedOnce := true
	defer func() {
		if stoppedOnce {
			_ = syscall.Kill(stopped.PID, syscall.SIGCONT)
		}
	}()
	// kill returns before a thread running on another CPU has stopped:
	// until then the worker can still read a connection, which it then
	// holds, stopped, until it is killed.
	waitFor(t, "every thread of the stopped worker to stop", func() bool { return proctest.Stopped(stopped.PID) })
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	const n = 100
	for i := 0; i < n; i++ {
		id, err := served(client, url)
		if err != nil {
			t.Fatalf("request %d while worker %d was stopped: %v", i, stopped.ID, err)
		}
		if id != other.ID {
			t.Fatalf("request %d while worker %d was stopped was answered by worker %d, want %d", i, stopped.ID, id, other.ID)
		}
	}
	time.Sleep(metricsCacheTTL) // a rendering from after the stall
	mfs := metricsOf(t, admin)
	if v := value(t, mfs, "handoff_worker_stalls_total"); v < 1 {
		t.Errorf("handoff_worker_stalls_total %v, want at least 1", v)
	}
	if err := syscall.Kill(stopped.PID, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	stoppedOnce = false
	waitFor(t, "the resumed worker to serve again", func() bool {
		id, err := served(client, url)
		return err == nil && id == stopped.ID
	})
	close(stop)
	sent, failed, first := wait()
	t.Logf("%d requests under load, %d failed; reclaimed %v", sent, failed, value(t, metricsOf(t, admin), "handoff_connections_reclaimed_total"))
	if failed > 0 {
		t.Errorf("%d of %d requests failed; first: %v", failed, sent, first)
	}
	if got := workersOf(t, admin); len(got) != 2 || got[0].PID != stopped.PID && got[1].PID != stopped.PID {
		t.Errorf("after SIGCONT /workers is %+v; the stopped worker (pid %d) should still be there", got, stopped.PID)
	}
}

// A worker killed with SIGKILL under load costs at most the requests in
// progress on it: whatever it never read is served by the other worker,
// and its slot is restarted.
func TestCLIKilledWorkerCostsOnlyItsInProgress(t *testing.T) {
	admin := proctest.FreeAddr(t)
	m := startMaster(t, "--workers", "2", "--admin", admin)
	ws := workersOf(t, admin)
	url := "http://" + m.addr + "/"
	stop := make(chan struct{})
	wait := load(t, url, stop)
	time.Sleep(300 * time.Millisecond)
	if err := syscall.Kill(ws[0].PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a replacement worker", func() bool {
		got := workersOf(t, admin)
		return len(got) == 2 && got[0].PID != ws[0].PID && got[1].PID != ws[0].PID && got[0].State == "listening" && got[1].State == "listening"
	})
	time.Sleep(300 * time.Millisecond)
	close(stop)
	sent, failed, first := wait()
	t.Logf("%d requests under load, %d failed; first: %v", sent, failed, first)
	// load runs 6 clients, one request each at a time: at most that many
	// can have been in progress on the killed worker.
	if failed > loadClients {
		t.Errorf("%d of %d requests failed, more than the %d that can have been in progress", failed, sent, loadClients)
	}
}

// After SIGTERM the port refuses new connections at once, while the
// requests in flight finish: no client waits on a socket nobody accepts.
func TestCLISigtermRefusesNewConnectionsAtOnce(t *testing.T) {
	m := startMaster(t, "--workers", "2")
	slow := make(chan error, 1)
	go func() {
		client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		_, err := served(client, "http://"+m.addr+"/?delay=3s")
		slow <- err
	}()
	time.Sleep(300 * time.Millisecond) // the slow request is in flight
	if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	refused := false
	for time.Since(sent) < time.Second {
		c, err := net.DialTimeout("tcp", m.addr, 200*time.Millisecond)
		if err != nil {
			refused = errors.Is(err, syscall.ECONNREFUSED)
			if refused {
				break
			}
			continue
		}
		_ = c.Close()
		time.Sleep(20 * time.Millisecond)
	}
	if !refused {
		t.Errorf("a new connection was not refused within 1s of SIGTERM")
	}
	t.Logf("refused %v after SIGTERM", time.Since(sent).Round(time.Millisecond))
	if err := <-slow; err != nil {
		t.Errorf("the request in flight at SIGTERM failed: %v", err)
	}
}

// With --shutdown-delay, new connections are still served during the
// delay, after SIGTERM.
func TestCLIShutdownDelayServesThenRefuses(t *testing.T) {
	m := startMaster(t, "--workers", "1", "--shutdown-delay", "1s")
	if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	if _, err := served(client, "http://"+m.addr+"/"); err != nil {
		t.Fatalf("a request during the shutdown delay failed: %v", err)
	}
	waitFor(t, "new connections refused after the delay", func() bool {
		c, err := net.DialTimeout("tcp", m.addr, 200*time.Millisecond)
		if err == nil {
			_ = c.Close()
		}
		return errors.Is(err, syscall.ECONNREFUSED)
	})
}
