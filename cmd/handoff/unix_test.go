//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/proctest"
	dto "github.com/prometheus/client_model/go"
)

// startUnixMaster starts the CLI with 1 demo worker on a loopback port and
// on the Unix socket path, with args, and waits until it serves.
func startUnixMaster(t *testing.T, path string, args ...string) *master {
	t.Helper()
	addr := proctest.FreeAddr(t)
	cmd := exec.Command(handoffBin, append([]string{"--listen", addr, "--listen", "unix:" + path, "--log-format", "json", "--workers", "1"}, args...)...)
	out := &proctest.Output{}
	cmd.Stdout, cmd.Stderr = out, out
	return launch(t, cmd, addr, out)
}

// unixGet sends GET / over the Unix socket at path and returns the status.
func unixGet(path string) (int, error) {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := c.Get("http://unix/")
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// runToExit runs the CLI with args, expecting it to fail at start, and
// returns its exit code and output.
func runToExit(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, handoffBin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("handoff %v: %v, want a failed start\n%s", args, err, out.String())
	}
	return ee.ExitCode(), out.String()
}

// A master killed by SIGKILL leaves its socket file; the next one removes
// it, since nobody listens there, and serves.
func TestCLIUnixStaleSocketAfterSIGKILL(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.sock")
	m := startUnixMaster(t, path)
	workers := m.workerPIDs()
	_ = m.cmd.Process.Kill()
	_ = m.wait(t, 10*time.Second, "the master outlived SIGKILL")
	for _, w := range workers {
		_ = syscall.Kill(w, syscall.SIGKILL)
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Type() != fs.ModeSocket {
		t.Fatalf("after SIGKILL: %v, %v; want the stale socket file left behind (nothing was tested)", fi, err)
	}
	if _, err := unixGet(path); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("the stale socket: %v, want ECONNREFUSED", err)
	}
	startUnixMaster(t, path)
	if code, err := unixGet(path); err != nil || code != 200 {
		t.Errorf("the master started over the stale socket: %d, %v; want 200", code, err)
	}
}

// A socket that a live master listens on is never taken over: the second
// master fails and names the holder, and the first keeps serving.
func TestCLIUnixLiveSocketIsNotTakenOver(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.sock")
	m := startUnixMaster(t, path)
	code, out := runToExit(t, "--listen", "unix:"+path, "--workers", "1")
	if code != 1 || !strings.Contains(out, "a live listener holds "+path) || !strings.Contains(out, "address already in use") {
		t.Errorf("a second master on a live socket: exit %d:\n%s\nwant 1, saying a live listener holds it", code, out)
	}
	if pid := strconv.Itoa(m.cmd.Process.Pid); !strings.Contains(out, "pid "+pid) {
		t.Errorf("the error does not name the holder, pid %s:\n%s", pid, out)
	}
	if code, err := unixGet(path); err != nil || code != 200 {
		t.Errorf("the first master after the refused start: %d, %v; want 200", code, err)
	}
}

// A file at the path that is not a socket is never removed.
func TestCLIUnixNonSocketIsNotRemoved(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.sock")
	if err := os.WriteFile(path, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out := runToExit(t, "--listen", "unix:"+path, "--workers", "1")
	if code != 1 || !strings.Contains(out, "is not a socket") {
		t.Errorf("exit %d:\n%s\nwant 1, saying the file is not a socket", code, out)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "keep me" {
		t.Errorf("the file: %q, %v; want it untouched", b, err)
	}
}

// --unix-mode 0660 --unix-group G: a process of another user in G
// connects; with the default 0600 it cannot. It needs root, to run that
// process as another user.
func TestCLIUnixModeAndGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv(envRequireRoot) == "1" {
			t.Fatalf("running as uid %d; %s=1 requires this test, which needs root", os.Geteuid(), envRequireRoot)
		}
		t.Skipf("running as uid %d: this test needs root, to connect as another user", os.Geteuid())
	}
	curl := needTool(t, "curl")
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skipf("no user nobody: %v", err)
	}
	group, err := user.LookupGroup("nogroup")
	if err != nil {
		t.Skipf("no group nogroup: %v", err)
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(group.Gid)
	dir := t.TempDir()
	// nobody may reach the socket: t.TempDir and its parent are 0700.
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// connectAs runs curl as nobody, in group nogroup, over the socket.
	connectAs := func(path string) (string, error) {
		cmd := exec.Command(curl, "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", path, "http://unix/")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{uint32(gid)}}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for _, tt := range []struct {
		name string
		args []string
		mode os.FileMode
		gid  int
		ok   bool
	}{
		{"default 0600", nil, 0o600, 0, false},
		{"0660 and the group", []string{"--unix-mode", "0660", "--unix-group", "nogroup"}, 0o660, gid, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-")+".sock")
			startUnixMaster(t, path, tt.args...)
			fi, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			st := fi.Sys().(*syscall.Stat_t)
			if fi.Mode().Perm() != tt.mode || int(st.Gid) != tt.gid {
				t.Errorf("socket file mode %v, gid %d; want %v, gid %d", fi.Mode().Perm(), st.Gid, tt.mode, tt.gid)
			}
			out, err := connectAs(path)
			if got := err == nil && out == "200"; got != tt.ok {
				t.Errorf("nobody (group nogroup) connecting: %q, %v; want success %v", out, err, tt.ok)
			}
		})
	}
}

// --backlog N is the listening socket's backlog, as ss shows it (Send-Q of
// a listening socket).
func TestCLIBacklog(t *testing.T) {
	ss := needTool(t, "ss")
	m := startMaster(t, "--workers", "1", "--backlog", "7")
	_, port, _ := net.SplitHostPort(m.addr)
	out, err := exec.Command(ss, "-Hltn", "sport = :"+port).Output()
	if err != nil {
		t.Fatalf("ss: %v", err)
	}
	fields := strings.Fields(string(out))
	if len(fields) < 3 || fields[2] != "7" {
		t.Errorf("ss -ltn for port %s: %q, want Send-Q (the backlog) 7", port, out)
	}
}

// metricOf returns the value of the series of name whose labels include
// label=value (any series if label is ""), or fails.
func metricOf(t *testing.T, mfs map[string]*dto.MetricFamily, name, label, value string) float64 {
	t.Helper()
	mf := mfs[name]
	if mf == nil {
		t.Fatalf("no %s in /metrics", name)
	}
	for _, m := range mf.Metric {
		ok := label == ""
		for _, l := range m.Label {
			ok = ok || l.GetName() == label && l.GetValue() == value
		}
		if !ok {
			continue
		}
		if m.Counter != nil {
			return m.Counter.GetValue()
		}
		return m.Gauge.GetValue()
	}
	t.Fatalf("no %s{%s=%q} in /metrics", name, label, value)
	return 0
}

// TestCLIListenQueueMetrics: /metrics has the listener's backlog, its
// accept queue and the namespace's listen overflows, and the overflows move
// when the backlog fills while the master does not accept (stopped).
func TestCLIListenQueueMetrics(t *testing.T) {
	const backlog, clients = 4, 16
	admin := proctest.FreeAddr(t)
	m := startMaster(t, "--workers", "1", "--backlog", strconv.Itoa(backlog), "--admin", admin)
	mfs := metricsOf(t, admin)
	if got := metricOf(t, mfs, "handoff_listen_backlog", "listener", m.addr); got != backlog {
		t.Errorf("handoff_listen_backlog %v, want %d", got, backlog)
	}
	if got := metricOf(t, mfs, "handoff_listen_queue_length", "listener", m.addr); got != 0 {
		t.Errorf("handoff_listen_queue_length %v with nothing waiting, want 0", got)
	}
	before := metricOf(t, mfs, "handoff_listen_overflows_total", "", "")
	metricOf(t, mfs, "handoff_listen_drops_total", "", "")

	// Stopped, the master accepts nothing: backlog+1 clients fill the
	// queue and the kernel drops the others' handshakes, counting them.
	if err := m.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			_ = m.cmd.Process.Signal(syscall.SIGCONT)
		}
	}
	t.Cleanup(resume)
	dialed := make(chan net.Conn, clients)
	for range clients {
		go func() {
			c, _ := net.DialTimeout("tcp", m.addr, 10*time.Second)
			dialed <- c
		}()
	}
	time.Sleep(500 * time.Millisecond) // every SYN has been sent and answered or dropped
	resume()
	for range clients {
		if c := <-dialed; c != nil {
			_ = c.Close()
		}
	}
	time.Sleep(300 * time.Millisecond) // past the metrics cache
	after := metricOf(t, metricsOf(t, admin), "handoff_listen_overflows_total", "", "")
	t.Logf("listen overflows %v → %v with %d clients against a backlog of %d", before, after, clients, backlog)
	if after <= before {
		t.Errorf("handoff_listen_overflows_total %v → %v: %d clients against a stopped master's backlog of %d overflowed nothing", before, after, clients, backlog)
	}
}
