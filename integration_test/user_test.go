//go:build linux

package integration_test

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/handoff-go/handoff/balancer"
	"github.com/handoff-go/handoff/internal/netnstest"
	"github.com/handoff-go/handoff/internal/testworker"
)

// TestWorkersRunAsAnotherUser: privilege separation, as Node's uid/gid
// settings. The master, as root, binds port 80; its workers run as
// "nobody" and still serve port 80, because the sockets stay the master's.
func TestWorkersRunAsAnotherUser(t *testing.T) {
	t.Parallel()
	n := netnstest.New(t, netnstest.Config{Subnet: 7, Clients: 1})
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("this test needs the user nobody: %v", err)
	}
	// The workers are this test binary; copy it where nobody may run it.
	bin := copyExecutable(t)
	addr := netip.AddrPortFrom(n.Server.IPv4(), 80).String()
	b, err := balancer.New(balancer.Options{
		Workers: 2,
		Path:    bin,
		Args:    []string{},
		Dir:     filepath.Dir(bin),
		User:    "nobody",
		Env:     []string{testworker.EnvListen + "=" + testworker.FormatAddrs([2]string{"tcp", addr})},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	if err := n.Server.Do(func() error { _, err := b.Listen("tcp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	m := &master{b: b}
	workers := m.waitListening(t, 2, 0)
	for _, w := range workers {
		uid, err := processUID(w.PID())
		if err != nil {
			t.Fatal(err)
		}
		if uid != nobody.Uid {
			t.Errorf("worker %d (pid %d) runs as uid %s, want nobody's %s", w.ID(), w.PID(), uid, nobody.Uid)
		}
	}
	if os.Getuid() != 0 {
		t.Errorf("the master runs as uid %d, want root", os.Getuid())
	}
	client := n.Clients[0].HTTPClient(requestTimeout)
	defer client.CloseIdleConnections()
	byWorker := map[int]int{}
	for i := 0; i < 4; i++ {
		a, err := get(client, "http://"+addr+"/", "")
		if err != nil || a.body != hello {
			t.Fatalf("request %d to port 80: %q, %v", i, a.body, err)
		}
		byWorker[a.worker]++
	}
	checkEven(t, byWorker, 2, 4)
}

// copyExecutable copies the test binary into a directory anyone may read.
func copyExecutable(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "handoff-user-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bin := filepath.Join(dir, "worker.test")
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return bin
}

// processUID reads a process's real uid from /proc.
func processUID(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Uid:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				if _, err := strconv.Atoi(f[0]); err == nil {
					return f[0], nil
				}
			}
		}
	}
	return "", fmt.Errorf("no Uid line for pid %d", pid)
}
