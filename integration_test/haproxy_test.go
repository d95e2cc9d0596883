//go:build linux

package integration_test

import (
	"bufio"
	"encoding/csv"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/handoff-go/handoff/internal/netnstest"
	"github.com/handoff-go/handoff/internal/proctest"
)

// HAProxy's health checks of the fleet: every checkInter, down after
// checkFall failures in a row, up again after checkRise successes. A host
// is marked down within checkInter × checkFall of its first failed check.
const (
	checkInter = 300 * time.Millisecond
	checkFall  = 2
	checkRise  = 2
)

// haproxyConfig is the configuration the fleet tests run, and the one the
// operations guide (docs/operations.md) shows: mode tcp, round-robin, the PROXY protocol v2 to every host,
// and an HTTP check of each host's --admin /healthz (connect within inter,
// answer within timeout check). A connection that a
// host refuses is retried on another host (redispatch on every retry), so
// that a dead host costs only the connections it had.
const haproxyConfig = `global
    nbthread 1
    stats socket {{.Socket}} mode 600 level admin

defaults
    mode tcp
    timeout connect 2s
    timeout check 1s
    timeout client 30s
    timeout server 30s
    retries 2
    option redispatch 1

frontend clients
    bind {{.Frontend}}
    default_backend handoff

backend handoff
    balance roundrobin
    option httpchk GET /healthz
    default-server check port {{.AdminPort}} inter {{.Inter}} fall {{.Fall}} rise {{.Rise}} send-proxy-v2
{{- range .Servers}}
    server {{.Name}} {{.Addr}}
{{- end}}
`

// haproxyServer is one server line.
type haproxyServer struct {
	Name string // the fleet host's name
	Addr string // its --listen HOST:PORT
}

// haproxy is an HAProxy process the test started in the balancer's
// namespace, in the foreground (-db), so that its pid is the one to stop.
type haproxy struct {
	socket string           // the stats socket's path
	config string           // the configuration file's text
	out    *proctest.Output // its stdout and stderr: alerts and state changes
	cmd    *exec.Cmd        // the process
	done   chan struct{}    // closed once cmd.Wait returned
	host   *netnstest.Host  // where it runs
}

// haproxyPath finds HAProxy, or skips (fails with HANDOFF_REQUIRE_NETNS=1).
func haproxyPath(t *testing.T) string {
	t.Helper()
	netnstest.NeedRoot(t)
	p, err := proctest.LookPath("haproxy")
	if err != nil {
		if os.Getenv(netnstest.EnvRequire) == "1" {
			t.Fatalf("haproxy not found (%v); %s=1 requires this test to run: apt-get install haproxy (.ci/run does)", err, netnstest.EnvRequire)
		}
		t.Skipf("haproxy not found (%v): apt-get install haproxy to run this test", err)
	}
	return p
}

// startHAProxy writes the configuration for frontend and servers, starts
// HAProxy in host and waits until its stats socket answers. It is stopped,
// by its pid, in t.Cleanup.
func startHAProxy(t *testing.T, host *netnstest.Host, frontend string, adminPort int, servers []haproxyServer) *haproxy {
	t.Helper()
	bin := haproxyPath(t)
	dir := t.TempDir()
	h := &haproxy{socket: filepath.Join(dir, "stats.sock"), out: &proctest.Output{}, done: make(chan struct{}), host: host}
	var cfg strings.Builder
	err := template.Must(template.New("haproxy").Parse(haproxyConfig)).Execute(&cfg, map[string]any{
		"Socket": h.socket, "Frontend": frontend, "AdminPort": adminPort, "Servers": servers,
		"Inter": checkInter.Milliseconds(), "Fall": checkFall, "Rise": checkRise,
	})
	if err != nil {
		t.Fatal(err)
	}
	h.config = cfg.String()
	cfgPath := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(h.config), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-c", "-q", "-f", cfgPath).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s\n%s", err, out, h.config)
	}
	h.cmd = exec.Command(bin, "-db", "-f", cfgPath)
	h.cmd.Stdout, h.cmd.Stderr = h.out, h.out
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := host.Start(h.cmd); err != nil {
		t.Fatalf("starting haproxy: %v", err)
	}
	go func() {
		_ = h.cmd.Wait()
		close(h.done)
	}()
	t.Cleanup(func() {
		_ = h.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-h.done:
		case <-time.After(shutdownTimeout):
			_ = h.cmd.Process.Kill()
			<-h.done
		}
		if t.Failed() {
			t.Logf("haproxy output:\n%s", h.out.String())
		}
	})
	waitUntil(t, "haproxy's stats socket answers", startTimeout, func() error {
		_, err := h.stats()
		return err
	})
	return h
}

// serverStat is one server's row of HAProxy's `show stat`.
type serverStat struct {
	status  string // UP, DOWN, "UP 1/2" (going down), "DOWN 1/2" (going up), ...
	chkdown int    // transitions from UP to DOWN so far
	stot    int    // connections sent to it so far
	econ    int    // connection errors
	wretr   int    // connection retries
	wredis  int    // connections redispatched from it to another server
}

// stats reads `show stat` from the stats socket: each server of the
// handoff backend, by name. It makes no assertion.
func (h *haproxy) stats() (map[string]serverStat, error) {
	c, err := net.DialTimeout("unix", h.socket, requestTimeout)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(requestTimeout))
	if _, err := io.WriteString(c, "show stat\n"); err != nil {
		return nil, err
	}
	body, err := io.ReadAll(bufio.NewReader(c))
	if err != nil {
		return nil, err
	}
	text := strings.TrimPrefix(strings.TrimSpace(string(body)), "# ")
	r := csv.NewReader(strings.NewReader(text))
	r.FieldsPerRecord = -1
	rows, err := r.ReadAll()
	if err != nil || len(rows) < 2 {
		return nil, fmt.Errorf("show stat: %q: %v", body, err)
	}
	col := map[string]int{}
	for i, name := range rows[0] {
		col[name] = i
	}
	field := func(row []string, name string) string {
		if i, ok := col[name]; ok && i < len(row) {
			return row[i]
		}
		return ""
	}
	num := func(row []string, name string) int {
		n, _ := strconv.Atoi(field(row, name))
		return n
	}
	out := map[string]serverStat{}
	for _, row := range rows[1:] {
		if field(row, "pxname") != "handoff" || field(row, "svname") == "BACKEND" {
			continue
		}
		out[field(row, "svname")] = serverStat{
			status:  field(row, "status"),
			chkdown: num(row, "chkdown"),
			stot:    num(row, "stot"),
			econ:    num(row, "econ"),
			wretr:   num(row, "wretr"),
			wredis:  num(row, "wredis"),
		}
	}
	return out, nil
}

// serverState is `show servers state handoff`, as text, for the log.
func (h *haproxy) serverState() string {
	c, err := net.DialTimeout("unix", h.socket, requestTimeout)
	if err != nil {
		return err.Error()
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(requestTimeout))
	if _, err := io.WriteString(c, "show servers state handoff\n"); err != nil {
		return err.Error()
	}
	b, _ := io.ReadAll(c)
	return string(b)
}

// waitStatus polls until server's status is exactly want, and returns
// when it saw it.
func (h *haproxy) waitStatus(t *testing.T, server, want string, timeout time.Duration) time.Time {
	t.Helper()
	var seen time.Time
	waitUntil(t, fmt.Sprintf("haproxy to mark %s %s", server, want), timeout, func() error {
		st, err := h.stats()
		if err != nil {
			return err
		}
		if got := st[server].status; got != want {
			return fmt.Errorf("%s is %q", server, got)
		}
		seen = time.Now()
		return nil
	})
	return seen
}

// waitUntil polls check every 20ms until it returns nil, or fails the test
// after timeout with check's last error.
func waitUntil(t *testing.T, what string, timeout time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting %v for %s: %v", timeout, what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
