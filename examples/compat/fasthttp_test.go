//go:build linux

package main

import (
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fasthttpRun is how long wrk runs in TestFastHTTPKeepAlive: the two
// rolling restarts fit well within it.
const fasthttpRun = 12 * time.Second

var (
	wrkRequests = regexp.MustCompile(`(\d+) requests in`)
	wrkErrors   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)|Non-2xx or 3xx responses: (\d+)`)
)

// TestFastHTTPKeepAlive: fasthttp's Server.Serve on a worker.Listen
// listener, drained as fasthttp.go says, with wrk on 16 keep-alive
// connections across 2 rolling restarts: no socket error and no non-2xx.
// wrk retries nothing, so every request that met a connection closed
// under it would count. (A plain Shutdown, --fasthttp-grace 0, lost some
// in every run; docs/operations.md has the figures.)
func TestFastHTTPKeepAlive(t *testing.T) {
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		if os.Getenv("HANDOFF_REQUIRE_NETNS") == "1" {
			t.Fatalf("wrk not found (%v): apt-get install wrk (.ci/run does)", err)
		}
		t.Skipf("wrk not found (%v): apt-get install wrk to run this test", err)
	}
	m := startMaster(t, "--fasthttp", "127.0.0.1:0")
	m.ownSignals = true // it takes SIGTERM itself, and returns once drained
	cmd := exec.Command(wrk, "-t1", "-c16", "-d", fasthttpRun.String(), "http://"+m.addr+"/")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	start := time.Now()
	time.Sleep(time.Second)
	for range 2 {
		t.Log(m.restart(t))
	}
	took := time.Since(start)
	if err := <-done; err != nil {
		t.Fatalf("wrk: %v\n%s", err, out.String())
	}
	if took > fasthttpRun {
		t.Fatalf("the restarts took %v, past wrk's %v: the test did not do what it says", took, fasthttpRun)
	}
	req := wrkRequests.FindStringSubmatch(out.String())
	if req == nil {
		t.Fatalf("no request count in wrk's output:\n%s", out.String())
	}
	failed := 0
	for _, m := range wrkErrors.FindAllStringSubmatch(out.String(), -1) {
		for _, s := range m[1:] {
			n, _ := strconv.Atoi(s)
			failed += n
		}
	}
	t.Logf("fasthttp across 2 rolling restarts: %s requests, %d failed", req[1], failed)
	if req[1] == "0" || failed > 0 {
		t.Errorf("%s requests, %d socket errors or non-2xx; want none:\n%s", req[1], failed, out.String())
	}
}
