//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"github.com/handoff-go/handoff/internal/proctest"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// readPID reads a pid file, or returns 0.
func readPID(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// stopProcessTree stops a master that is not our child (a new master
// after SIGUSR2 is the old master's child, and then an orphan): SIGTERM,
// then SIGKILL if it has not exited within 20s, then its workers.
func stopProcessTree(t *testing.T, pid int) {
	t.Helper()
	workers := proctest.Children(pid)
	if proctest.Alive(pid) {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		deadline := time.Now().Add(20 * time.Second)
		for proctest.Alive(pid) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if proctest.Alive(pid) {
			t.Errorf("master %d still alive 20s after SIGTERM; killing it", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	for _, w := range workers {
		if proctest.Alive(w) {
			_ = syscall.Kill(w, syscall.SIGKILL)
		}
	}
}

// healthLoad polls /healthz over new connections until stop and counts
// answers that are not 200.
func healthLoad(admin string, stop <-chan struct{}) func() (sent, failed int, first error) {
	var wg sync.WaitGroup
	var sent, failed int
	var first error
	wg.Add(1)
	go func() {
		defer wg.Done()
		client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		for i := 0; i < 20000; i++ {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			resp, err := client.Get("http://" + admin + "/healthz")
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					err = fmt.Errorf("status %d", resp.StatusCode)
				}
			}
			sent++
			if err != nil {
				failed++
				if first == nil {
					first = err
				}
			}
		}
	}()
	return func() (int, int, error) {
		wg.Wait()
		return sent, failed, first
	}
}

// TestCLIUpgradeUnderLoad sends SIGUSR2 under continuous load, with new
// connections and keep-alive ones: a new master with new workers takes
// over the sockets, the old one drains and exits 0, and no request fails,
// not even a health check.
func TestCLIUpgradeUnderLoad(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "handoff.pid")
	ns := newNotifySocket(t)
	addr, admin := proctest.FreeAddr(t), proctest.FreeAddr(t)
	cmd := exec.Command(handoffBin, "--listen", addr, "--admin", admin, "--pid-file", pidFile,
		"--log-format", "json", "--workers", "2")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+ns.path)
	m := launchToFile(t, cmd, addr)
	oldPID := m.cmd.Process.Pid
	var newPID int
	t.Cleanup(func() {
		if newPID == 0 {
			newPID = readPID(pidFile)
		}
		if newPID > 0 && newPID != oldPID {
			stopProcessTree(t, newPID)
		}
	})
	ns.expect(t, "READY=1")
	waitFor(t, "the pid file", func() bool { return readPID(pidFile) == oldPID })
	oldWorkers := m.workerPIDs()
	if len(oldWorkers) != 2 {
		t.Fatalf("%d workers, want 2", len(oldWorkers))
	}

	stop := make(chan struct{})
	wait := load(t, "http://"+addr+"/", stop)
	waitHealth := healthLoad(admin, stop)
	stopLoad := func() (sent, failed int, first error, hsent, hfailed int, hfirst error) {
		close(stop)
		sent, failed, first = wait()
		hsent, hfailed, hfirst = waitHealth()
		return
	}
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	if err := m.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-m.done:
		m.done <- err // for Cleanup
		if err != nil {
			stopLoad()
			t.Fatalf("old master exit: %v, want 0", err)
		}
	case <-time.After(60 * time.Second):
		stopLoad()
		t.Fatal("old master did not exit after SIGUSR2")
	}
	handover := time.Since(start)
	newPID = readPID(pidFile)
	time.Sleep(300 * time.Millisecond) // the new master alone, under load
	sent, failed, first, hsent, hfailed, hfirst := stopLoad()
	old := exitStats(t, m.out.String(), oldPID)
	t.Logf("SIGUSR2 under load: %d requests, %d failed; %d health checks, %d failed; old master exited %v after the signal, "+
		"having accepted %d connections (%d handed to another worker)", sent, failed, hsent, hfailed, handover, old.Accepted, old.Redispatched)
	if failed > 0 {
		t.Errorf("%d of %d requests failed during the upgrade; first: %v", failed, sent, first)
	}
	if hfailed > 0 {
		t.Errorf("%d of %d health checks failed during the upgrade; first: %v", hfailed, hsent, hfirst)
	}
	if sent < 100 {
		t.Errorf("only %d requests sent", sent)
	}

	if newPID == 0 || newPID == oldPID || !proctest.Alive(newPID) {
		t.Fatalf("pid file says %d after the upgrade; old master %d", newPID, oldPID)
	}
	for _, p := range oldWorkers {
		if proctest.Alive(p) {
			t.Errorf("old worker %d still alive", p)
		}
	}
	newWorkers := proctest.Children(newPID)
	if len(newWorkers) != 2 {
		t.Errorf("new master has %d children, want 2 workers", len(newWorkers))
	}
	ws := workersOf(t, admin)
	for _, w := range ws {
		if proctest.Parent(w.PID) != newPID {
			t.Errorf("/workers lists %+v, not a worker of the new master %d", w, newPID)
		}
	}
	if code, body := getAdmin(t, admin, "/healthz"); code != 200 {
		t.Errorf("/healthz of the new master: %d %q", code, body)
	}
	ns.expect(t, "RELOADING=1")
	if s := ns.expect(t, "READY=1"); !strings.Contains(s, "MAINPID="+strconv.Itoa(newPID)) {
		t.Errorf("the new master's READY=1 does not name it the main pid: %q", s)
	}
	if !strings.Contains(m.out.String(), `"upgraded":true`) {
		t.Error("the new master did not log that it was started by an upgrade")
	}
	// The last master removes the pid file when it stops.
	stopProcessTree(t, newPID)
	newPID = -1 // stopped; Cleanup must not signal a pid that may be reused
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Errorf("pid file left after the last master stopped: %v", err)
	}
}

// exitStats finds the "master exiting" log line of the master pid.
func exitStats(t *testing.T, log string, pid int) (st struct {
	PID          int    `json:"pid"`
	Accepted     uint64 `json:"accepted"`
	Redispatched uint64 `json:"redispatched"`
}) {
	t.Helper()
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, `"master exiting"`) {
			continue
		}
		if err := json.Unmarshal([]byte(line), &st); err == nil && st.PID == pid {
			return st
		}
	}
	t.Errorf("no exit line of master %d", pid)
	return st
}

// A SIGUSR2 to a new master while the old one still drains is refused by
// tableflip ("parent hasn't exited"): that is logged as a warning, not as
// a failed upgrade, and the new master keeps serving.
func TestCLIUpgradeRefusedWhileOldMasterDrains(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "handoff.pid")
	addr := proctest.FreeAddr(t)
	cmd := exec.Command(handoffBin, "--listen", addr, "--pid-file", pidFile, "--log-format", "json", "--workers", "1")
	m := launchToFile(t, cmd, addr)
	oldPID := m.cmd.Process.Pid
	t.Cleanup(func() {
		if pid := readPID(pidFile); pid > 0 && pid != oldPID {
			stopProcessTree(t, pid)
		}
	})
	waitFor(t, "the pid file", func() bool { return readPID(pidFile) == oldPID })
	// A slow request keeps the old master's worker, and so the old
	// master, draining after the handover.
	slow := make(chan error, 1)
	go func() {
		client := &http.Client{Timeout: 30 * time.Second}
		resp, err := client.Get("http://" + addr + "/?delay=4s")
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		slow <- err
	}()
	time.Sleep(200 * time.Millisecond) // the slow request under way
	if err := m.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	var newPID int
	waitFor(t, "the new master", func() bool { newPID = readPID(pidFile); return newPID > 0 && newPID != oldPID })
	if err := syscall.Kill(newPID, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	const refused = "SIGUSR2 while the previous master still drains"
	waitFor(t, "the refusal", func() bool { return strings.Contains(m.out.String(), refused) })
	if !proctest.Alive(oldPID) {
		t.Fatal("the old master exited before the second SIGUSR2 was handled: nothing was tested")
	}
	if err := <-slow; err != nil {
		t.Errorf("the slow request: %v", err)
	}
	if err := m.wait(t, 30*time.Second, "old master did not exit"); err != nil {
		t.Errorf("old master exit: %v, want 0", err)
	}
	if ok := serveN("http://"+addr+"/", 5); ok != 5 {
		t.Errorf("the new master served %d of 5", ok)
	}
	for _, raw := range jsonLines(t, m.out.String()) {
		l := decodeLine(t, raw)
		if l.Level == "error" {
			t.Errorf("error line: %v", raw)
		}
		if strings.Contains(l.Message, refused) && l.Level != "warn" {
			t.Errorf("the refusal at level %q, want warn: %v", l.Level, raw)
		}
	}
}
