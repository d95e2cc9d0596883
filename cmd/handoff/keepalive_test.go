//go:build linux

package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/proctest"
)

// Bounds of the keep-alive tests: every signal is sent within
// keepAliveSignalsWithin of wrk's start, and wrk runs keepAliveRun.
const (
	keepAliveSignalsWithin = 12 * time.Second
	keepAliveRun           = 14 * time.Second
)

// needTool finds a program the test runs (wrk, nginx), or skips; with
// HANDOFF_REQUIRE_NETNS=1, as CI sets it, it fails instead.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := proctest.LookPath(name)
	if err != nil {
		if os.Getenv(envRequireRoot) == "1" {
			t.Fatalf("%s not found (%v); %s=1 requires this test to run: apt-get install %s (.ci/run does)", name, err, envRequireRoot, name)
		}
		t.Skipf("%s not found (%v): apt-get install %s to run this test", name, err, name)
	}
	return p
}

// wrkResult is what wrk printed, read.
type wrkResult struct {
	requests, socketErrors, non2xx int
	out                            string
}

var (
	wrkRequests = regexp.MustCompile(`(\d+) requests in`)
	wrkSocket   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

func parseWrk(out string) (wrkResult, error) {
	r := wrkResult{out: out}
	m := wrkRequests.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no request count in wrk's output:\n%s", out)
	}
	r.requests, _ = strconv.Atoi(m[1])
	if m := wrkSocket.FindStringSubmatch(out); m != nil {
		for _, s := range m[1:] {
			n, _ := strconv.Atoi(s)
			r.socketErrors += n
		}
	}
	if m := wrkNon2xx.FindStringSubmatch(out); m != nil {
		r.non2xx, _ = strconv.Atoi(m[1])
	}
	return r, nil
}

// restartMaster starts the CLI with 2 demo workers on addr, with a pid
// file and a notify socket, so that a test can follow its reloads and
// its upgrade, and stops whichever master serves at the end.
func restartMaster(t *testing.T, addr string, args ...string) (*master, *notifySocket, string) {
	t.Helper()
	pidFile := filepath.Join(t.TempDir(), "handoff.pid")
	ns := newNotifySocket(t)
	cmd := exec.Command(handoffBin, append([]string{"--listen", addr, "--pid-file", pidFile, "--log-format", "json", "--workers", "2"}, args...)...)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+ns.path)
	m := launchToFile(t, cmd, addr)
	oldPID := m.cmd.Process.Pid
	t.Cleanup(func() {
		if p := readPID(pidFile); p > 0 && p != oldPID {
			stopProcessTree(t, p)
		}
	})
	ns.expect(t, "READY=1")
	return m, ns, pidFile
}

// restartsUnderWrk runs wrk with args against url while it sends m hups
// SIGHUPs, each once the last reload is over, and then a SIGUSR2, and
// waits for the old master to exit. It fails unless all of that happened
// within keepAliveSignalsWithin.
func restartsUnderWrk(t *testing.T, m *master, ns *notifySocket, pidFile string, hups int, url string, args ...string) wrkResult {
	t.Helper()
	wrk := needTool(t, "wrk")
	ctx, cancel := context.WithTimeout(context.Background(), keepAliveRun+30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, wrk, append(append([]string{"-d", keepAliveRun.String()}, args...), url)...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	wrkDone := make(chan error, 1)
	go func() { wrkDone <- cmd.Wait() }()
	start := time.Now()
	time.Sleep(time.Second) // connections open and busy
	for i := 0; i < hups; i++ {
		if err := m.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		ns.expect(t, "RELOADING=1")
		ns.expect(t, "READY=1")
	}
	oldPID := m.cmd.Process.Pid
	if err := m.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-m.done:
		m.done <- err // for Cleanup
		if err != nil {
			t.Errorf("old master exit: %v, want 0", err)
		}
	case <-time.After(keepAliveRun):
		t.Error("the old master did not exit after SIGUSR2")
	}
	took := time.Since(start)
	if p := readPID(pidFile); p == oldPID || p == 0 {
		t.Errorf("pid file has %d after the upgrade, want the new master's", p)
	}
	if err := <-wrkDone; err != nil {
		t.Fatalf("wrk: %v\n%s", err, out.String())
	}
	if took > keepAliveSignalsWithin {
		t.Fatalf("%d SIGHUPs and a SIGUSR2 took %v, more than %v of wrk's %v: the test did not do what it says", hups, took, keepAliveSignalsWithin, keepAliveRun)
	}
	r, err := parseWrk(out.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d SIGHUPs and a SIGUSR2 in %v: %d requests, %d socket errors, %d non-2xx", hups, took.Round(time.Millisecond), r.requests, r.socketErrors, r.non2xx)
	return r
}

// TestCLIKeepAliveClientsLoseNothing: wrk on 32 keep-alive connections to
// the demo, across 2 rolling restarts and an upgrade of the master, sees
// no socket error and no non-2xx. wrk does not retry: each error would be
// a request that met a connection closed under it.
func TestCLIKeepAliveClientsLoseNothing(t *testing.T) {
	addr := proctest.FreeAddr(t)
	m, ns, pidFile := restartMaster(t, addr)
	r := restartsUnderWrk(t, m, ns, pidFile, 2, "http://"+addr+"/", "-t1", "-c32")
	if r.requests == 0 || r.socketErrors > 0 || r.non2xx > 0 {
		t.Errorf("%d requests, %d socket errors, %d non-2xx; want 0 errors\n%s", r.requests, r.socketErrors, r.non2xx, r.out)
	}
}

// nginxConfig is nginx in front of the CLI as a deployment has it: an
// upstream pool of keep-alive connections, HTTP/1.1 to the upstream with
// an empty Connection header.
const nginxConfig = `daemon off;
worker_processes 1;
error_log {{dir}}/error.log warn;
pid {{dir}}/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path {{dir}}/body;
  proxy_temp_path {{dir}}/proxy;
  fastcgi_temp_path {{dir}}/fastcgi;
  uwsgi_temp_path {{dir}}/uwsgi;
  scgi_temp_path {{dir}}/scgi;
  upstream app { server {{upstream}}; keepalive 32; }
  server {
    listen {{listen}};
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`

// startNginx runs nginx on listen in front of upstream, and stops it by
// its pid when the test ends. It returns nginx's error log path.
func startNginx(t *testing.T, listen, upstream string) string {
	t.Helper()
	bin := needTool(t, "nginx")
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil { // nginx's workers run as nobody under root
		t.Fatal(err)
	}
	conf := strings.NewReplacer("{{dir}}", dir, "{{upstream}}", upstream, "{{listen}}", listen).Replace(nginxConfig)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	out := &proctest.Output{}
	cmd := exec.Command(bin, "-p", dir, "-c", path, "-e", filepath.Join(dir, "error.log"))
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGQUIT) // nginx's graceful stop
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	waitFor(t, "nginx to answer", func() bool {
		select {
		case <-done:
			t.Fatalf("nginx exited:\n%s", out.String())
		default:
		}
		return httpGetOK("http://" + listen + "/")
	})
	return filepath.Join(dir, "error.log")
}

// TestCLIBehindNginxPostsLoseNothing: POSTs, which nginx does not retry,
// through nginx's upstream keep-alive pool to the CLI, across 3 rolling
// restarts and an upgrade of the master: none fails. With a drain that
// closes idle keep-alive connections at once, nginx answered 502 to some
// ("upstream prematurely closed connection").
func TestCLIBehindNginxPostsLoseNothing(t *testing.T) {
	addr, front := proctest.FreeAddr(t), proctest.FreeAddr(t)
	m, ns, pidFile := restartMaster(t, addr)
	errLog := startNginx(t, front, addr)
	script := filepath.Join(t.TempDir(), "post.lua")
	if err := os.WriteFile(script, []byte("wrk.method = \"POST\"\nwrk.body = \"hello=world\"\nwrk.headers[\"Content-Type\"] = \"application/x-www-form-urlencoded\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := restartsUnderWrk(t, m, ns, pidFile, 3, "http://"+front+"/", "-t1", "-c16", "-s", script)
	if r.requests == 0 || r.socketErrors > 0 || r.non2xx > 0 {
		log, _ := os.ReadFile(errLog)
		t.Errorf("%d POSTs, %d socket errors, %d non-2xx; want 0 errors\n%s\nnginx's error log:\n%.3000s", r.requests, r.socketErrors, r.non2xx, r.out, log)
	}
}

// httpGetOK reports whether a GET of url answers 200.
func httpGetOK(url string) bool {
	client := &http.Client{Timeout: time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
