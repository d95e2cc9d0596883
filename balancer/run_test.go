//go:build linux

package balancer_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/balancer"
	"github.com/handoff-go/handoff/internal/proctest"
)

// childMaster is a master run by runChildMaster in a process of its own.
type childMaster struct {
	addr string
	cmd  *exec.Cmd
	logs *proctest.Output
	done chan struct{} // closed when the process has exited
	err  error         // Wait's result, once done is closed
}

// startChildMaster starts a child master and waits until it serves.
// Cleanup sends it SIGTERM, and kills it if it has not exited 20s later.
func startChildMaster(t *testing.T) *childMaster {
	t.Helper()
	m := &childMaster{addr: proctest.FreeAddr(t), logs: &proctest.Output{}, done: make(chan struct{})}
	m.cmd = exec.Command(os.Args[0])
	m.cmd.Env = append(os.Environ(), envChildMaster+"="+m.addr)
	m.cmd.Stderr = m.logs
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(m.done)
		m.err = m.cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = m.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-m.done:
		case <-time.After(20 * time.Second):
			_ = m.cmd.Process.Kill()
			<-m.done
		}
	})
	client := newConnClient()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := client.Get("http://" + m.addr + "/")
		if err == nil {
			resp.Body.Close()
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("child master never served: %v\n%s", err, m.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// answer makes one request on a new connection and returns the answering
// worker's id, or an error.
func answer(url string) (int, error) {
	resp, err := newConnClient().Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != 200 || string(body) != "hello world\n" {
		return 0, fmt.Errorf("status %d body %q", resp.StatusCode, body)
	}
	return strconv.Atoi(resp.Header.Get("X-Worker-Id"))
}

// Run gives an embedding program the handoff command's signals: SIGHUP
// replaces every worker with no failed request, and SIGTERM drains: the
// request in flight is answered and the master exits 0.
func TestRunHandlesSignals(t *testing.T) {
	m := startChildMaster(t)
	url := "http://" + m.addr + "/"
	// Both workers listen before the SIGHUP, so that both are replaced.
	seen := map[int]bool{}
	for deadline := time.Now().Add(20 * time.Second); !seen[1] || !seen[2]; {
		id, err := answer(url)
		if err != nil || time.Now().After(deadline) {
			t.Fatalf("before the SIGHUP, workers %v answered; last error %v\n%s", seen, err, m.logs.String())
		}
		seen[id] = true
	}
	if err := m.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	// Load across the rolling restart, until only new workers answer
	// (ids count up: the first two are 1 and 2).
	sent, newOnly := 0, 0
	deadline := time.Now().Add(30 * time.Second)
	for newOnly < 20 {
		id, err := answer(url)
		sent++
		if err != nil {
			t.Fatalf("request %d during the rolling restart: %v\n%s", sent, err, m.logs.String())
		}
		if id > 2 {
			newOnly++
		} else {
			newOnly = 0
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 30s and %d requests, the old workers still answer\n%s", sent, m.logs.String())
		}
	}
	t.Logf("%d requests across the SIGHUP, none failed", sent)

	slow := make(chan error, 1)
	go func() {
		_, err := answer(url + "?delay=300ms")
		slow <- err
	}()
	time.Sleep(100 * time.Millisecond) // the request is in flight
	if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-slow; err != nil {
		t.Fatalf("the request in flight at SIGTERM: %v\n%s", err, m.logs.String())
	}
	select {
	case <-m.done:
		if m.err != nil {
			t.Fatalf("the master exited with %v after SIGTERM, want 0\n%s", m.err, m.logs.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the master did not exit after SIGTERM\n%s", m.logs.String())
	}
}

// A worker that serves through worker.Serve reports its requests in
// flight, which the master shows per worker.
func TestWorkerStatsShowRequestsInFlight(t *testing.T) {
	c := startCluster(t, 1, balancer.Options{})
	c.waitListening(t, 1)
	w := c.b.Workers()[0]
	done := make(chan error, 1)
	go func() {
		_, err := answer("http://" + c.addr + "/?delay=500ms")
		done <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for s := w.Stats(); !s.Serving || s.Busy != 1; s = w.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("with a request in flight: serving %v, busy %d; want true, 1", s.Serving, s.Busy)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for s := w.Stats(); s.Busy != 0; s = w.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("answered, and still busy %d", s.Busy)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Run returns when the balancer is shut down by other code, and when its
// context ends.
func TestRunReturnsOnShutdownAndContext(t *testing.T) {
	for _, byContext := range []bool{false, true} {
		c := startCluster(t, 1, balancer.Options{Workers: 1})
		c.waitListening(t, 1)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- c.b.Run(ctx) }()
		if byContext {
			cancel()
		} else {
			go func() { _ = c.b.Shutdown(context.Background()) }()
		}
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("byContext %v: Run returned %v", byContext, err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("byContext %v: Run did not return", byContext)
		}
		cancel()
		if n := len(c.b.Workers()); n != 0 {
			t.Errorf("byContext %v: %d workers left after Run returned", byContext, n)
		}
	}
}
