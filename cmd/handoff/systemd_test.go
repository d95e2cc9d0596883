//go:build linux

package main

import (
	"bytes"
	"errors"
	"fmt"
	"github.com/handoff-go/handoff/internal/fdtest"
	"github.com/handoff-go/handoff/internal/loadtest"
	"github.com/handoff-go/handoff/internal/proctest"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeListener is a net.Listener that only has an address.
type fakeListener struct{ addr net.Addr }

func (l fakeListener) Accept() (net.Conn, error) { return nil, net.ErrClosed }
func (l fakeListener) Close() error              { return nil }
func (l fakeListener) Addr() net.Addr            { return l.addr }

func tcpSock(name, addr string) activatedListener {
	a, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		panic(err)
	}
	return activatedListener{name: name, ln: fakeListener{a}}
}

func unixSock(name, path string) activatedListener {
	return activatedListener{name: name, ln: fakeListener{&net.UnixAddr{Name: path, Net: "unix"}}}
}

func specs(t *testing.T, values ...string) []listenSpec {
	t.Helper()
	var out []listenSpec
	for _, v := range values {
		s, err := parseListen(v)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

func TestMatchActivated(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		listen  []string
		socks   []activatedListener
		want    []int
		wantErr string
	}{
		{name: "none passed", listen: []string{":8000"}, want: []int{-1}},
		{name: "same ip and port", listen: []string{"127.0.0.1:8080"},
			socks: []activatedListener{tcpSock("LISTEN_FD_3", "127.0.0.1:8080")}, want: []int{0}},
		{name: "other port", listen: []string{"127.0.0.1:8081"},
			socks: []activatedListener{tcpSock("LISTEN_FD_3", "127.0.0.1:8080")}, want: []int{-1}},
		{name: "other ip", listen: []string{"127.0.0.2:8080"},
			socks: []activatedListener{tcpSock("LISTEN_FD_3", "127.0.0.1:8080")}, want: []int{-1}},
		{name: "port only matches a wildcard socket", listen: []string{":80"},
			socks: []activatedListener{tcpSock("LISTEN_FD_3", "[::]:80")}, want: []int{0}},
		{name: "port only does not match a bound ip", listen: []string{":80"},
			socks: []activatedListener{tcpSock("LISTEN_FD_3", "127.0.0.1:80")}, want: []int{-1}},
		{name: "ipv4 wildcard matches ipv6 wildcard", listen: []string{"0.0.0.0:80"},
			socks: []activatedListener{tcpSock("LISTEN_FD_3", "[::]:80")}, want: []int{0}},
		{name: "port 0 matches nothing", listen: []string{"127.0.0.1:0"},
			socks: []activatedListener{tcpSock("LISTEN_FD_3", "127.0.0.1:0")}, want: []int{-1}},
		{name: "unix path", listen: []string{"unix:/run/x/../h.sock"},
			socks: []activatedListener{unixSock("LISTEN_FD_3", "/run/h.sock")}, want: []int{0}},
		{name: "by name whatever the address", listen: []string{"web=127.0.0.1:1", "api=unix:/run/api.sock"},
			socks: []activatedListener{unixSock("api", "/run/other.sock"), tcpSock("web", "[::]:80")}, want: []int{1, 0}},
		{name: "name first, then address", listen: []string{"127.0.0.1:80", "web=:9"},
			socks: []activatedListener{tcpSock("web", "127.0.0.1:80"), tcpSock("other", "127.0.0.1:80")}, want: []int{1, 0}},
		{name: "a socket serves one spec", listen: []string{"127.0.0.1:80", "127.0.0.1:80"},
			socks: []activatedListener{tcpSock("LISTEN_FD_3", "127.0.0.1:80")}, want: []int{0, -1}},
		{name: "unknown name falls back to the address", listen: []string{"web=127.0.0.1:80"},
			socks: []activatedListener{tcpSock("other", "127.0.0.1:80")}, want: []int{0}},
		{name: "name of another network", listen: []string{"web=:80"},
			socks: []activatedListener{unixSock("web", "/run/h.sock")}, wantErr: "is unix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := matchActivated(specs(t, tt.listen...), tt.socks)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, %v; want an error mentioning %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("got %v, want %v", got, tt.want)
				}
			}
		})
	}
}

func TestNotifierStates(t *testing.T) {
	t.Parallel()
	var sent []string
	n := notifier{send: func(s string) (bool, error) { sent = append(sent, s); return true, nil }, log: discardLogger()}
	n.ready(42, false, "2 workers listening")
	n.ready(43, true, "2 workers listening")
	n.reloading("rolling restart")
	n.stopping("draining")
	want := []string{
		"READY=1\nSTATUS=2 workers listening",
		"READY=1\nSTATUS=2 workers listening\nMAINPID=43",
		"RELOADING=1\nMONOTONIC_USEC=",
		"STOPPING=1\nSTATUS=draining",
	}
	if len(sent) != len(want) {
		t.Fatalf("sent %q", sent)
	}
	for i := range want {
		if !strings.HasPrefix(sent[i], want[i]) {
			t.Errorf("state %d: %q, want %q...", i, sent[i], want[i])
		}
	}
	if !strings.HasSuffix(sent[2], "\nSTATUS=rolling restart") || monotonicUsec() <= 0 {
		t.Errorf("reloading: %q", sent[2])
	}
	// A failing socket is logged, not fatal.
	n.send = func(string) (bool, error) { return false, errors.New("no socket") }
	n.stopping("x")
}

// activatedMaster starts the CLI as systemd would with socket activation:
// the sockets on fds 3 and up, LISTEN_FDS and LISTEN_FDNAMES set, and
// LISTEN_PID the master's own pid, which only the process itself can
// know before exec, hence sh.
func activatedMaster(t *testing.T, socks []*net.TCPListener, names string, serveAddr string, args ...string) *master {
	t.Helper()
	var files []*os.File
	for _, l := range socks {
		f, err := l.File()
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	cmd := exec.Command("sh", append([]string{"-c", `LISTEN_PID=$$ exec "$0" "$@"`, handoffBin, "--log-format", "json"}, args...)...)
	cmd.Env = append(os.Environ(), "LISTEN_FDS="+strconv.Itoa(len(files)), "LISTEN_FDNAMES="+names)
	cmd.ExtraFiles = files
	out := &proctest.Output{}
	cmd.Stdout, cmd.Stderr = out, out
	m := launch(t, cmd, serveAddr, out)
	// The master has its copies now; ours go, so that only the master's
	// keep the sockets open.
	for i, f := range files {
		_ = f.Close()
		_ = socks[i].Close()
	}
	return m
}

func tcpListener(t *testing.T) *net.TCPListener {
	t.Helper()
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func TestCLISocketActivation(t *testing.T) {
	t.Run("by address", func(t *testing.T) {
		sock := tcpListener(t)
		addr := sock.Addr().String()
		m := activatedMaster(t, []*net.TCPListener{sock}, "", addr, "--workers", "2", "--listen", addr)
		checkActivated(t, m, addr)
	})
	t.Run("by name, other sockets closed", func(t *testing.T) {
		web, extra := tcpListener(t), tcpListener(t)
		extraAddr := extra.Addr().String()
		// The address written is not the socket's: the name decides.
		m := activatedMaster(t, []*net.TCPListener{extra, web}, "extra:web", web.Addr().String(),
			"--workers", "2", "--listen", "web=127.0.0.1:1")
		checkActivated(t, m, web.Addr().String())
		if !strings.Contains(m.out.String(), "no --listen matches") {
			t.Error("no warning about the unused socket")
		}
		if c, err := net.DialTimeout("tcp", extraAddr, 2*time.Second); err == nil {
			c.Close()
			t.Errorf("the unused socket %s still accepts", extraAddr)
		}
	})
}

// checkActivated checks that m serves addr on the socket systemd passed,
// and that its workers see no LISTEN_* variable.
func checkActivated(t *testing.T, m *master, addr string) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for i := 0; i < 10; i++ {
		if err := loadtest.Get(client, "http://"+addr+"/"); err != nil {
			t.Fatal(err)
		}
	}
	if !strings.Contains(m.out.String(), `"from":"systemd"`) {
		t.Errorf("the master did not log taking the socket from systemd")
	}
	pids := m.workerPIDs()
	if len(pids) != 2 {
		t.Fatalf("%d workers", len(pids))
	}
	for _, pid := range pids {
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(env, []byte("LISTEN_")) {
			t.Errorf("worker %d inherited LISTEN_* variables", pid)
		}
		if n := fdtest.CountOf(t, pid); n > 12 {
			t.Errorf("worker %d has %d fds open", pid, n)
		}
	}
}

// notifySocket is a NOTIFY_SOCKET to read sd_notify states from.
type notifySocket struct {
	path string
	conn *net.UnixConn
}

func newNotifySocket(t *testing.T) *notifySocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &notifySocket{path: path, conn: conn}
}

// next returns the next state sent, or fails after 30s.
func (n *notifySocket) next(t *testing.T) string {
	t.Helper()
	buf := make([]byte, 4096)
	_ = n.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	k, _, err := n.conn.ReadFromUnix(buf)
	if err != nil {
		t.Fatalf("no sd_notify state: %v", err)
	}
	return string(buf[:k])
}

func (n *notifySocket) expect(t *testing.T, first string) string {
	t.Helper()
	s := n.next(t)
	if !strings.HasPrefix(s, first+"\n") && s != first {
		t.Fatalf("sd_notify %q, want %s first", s, first)
	}
	return s
}

func TestCLISystemdNotify(t *testing.T) {
	ns := newNotifySocket(t)
	addr := proctest.FreeAddr(t)
	cmd := exec.Command(handoffBin, "--listen", addr, "--log-format", "json", "--workers", "2")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+ns.path)
	out := &proctest.Output{}
	cmd.Stdout, cmd.Stderr = out, out
	m := launch(t, cmd, addr, out)

	ready := ns.expect(t, "READY=1")
	if !strings.Contains(ready, "STATUS=") || strings.Contains(ready, "MAINPID") {
		t.Errorf("ready state %q", ready)
	}
	for _, pid := range m.workerPIDs() {
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(env, []byte("\x00NOTIFY_SOCKET=\x00")) && !bytes.HasPrefix(env, []byte("NOTIFY_SOCKET=\x00")) {
			t.Errorf("worker %d does not have NOTIFY_SOCKET empty", pid)
		}
	}

	if err := m.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if s := ns.expect(t, "RELOADING=1"); !strings.Contains(s, "MONOTONIC_USEC=") {
		t.Errorf("reloading state %q", s)
	}
	ns.expect(t, "READY=1")
	waitFor(t, "the rolling restart's log", func() bool { return strings.Contains(m.out.String(), "rolling restart done") })

	if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ns.expect(t, "STOPPING=1")
	if err := m.wait(t, 30*time.Second, "master did not exit"); err != nil {
		t.Errorf("master exit: %v", err)
	}
}
