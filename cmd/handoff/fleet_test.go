//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/balancer"
	"github.com/handoff-go/handoff/internal/loadtest"
	"github.com/handoff-go/handoff/internal/proctest"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// The tests of recycling (--max-requests, --max-lifetime, --max-memory)
// and liveness (--heartbeat, --max-restarts), from outside: the CLI, its
// demo workers or a COMMAND, real clients, /workers and /metrics.

func TestParseFleetFlags(t *testing.T) {
	t.Parallel()
	tests := []flagCase{
		{name: "off by default", check: func(c *config) error {
			if c.maxRequests != 0 || c.maxLifetime != 0 || c.maxMemory != 0 || c.heartbeat != 0 || c.heartbeatTimeout != 0 ||
				c.maxRestarts != 0 || c.restartWindow != balancer.DefaultRestartWindow {
				return fmt.Errorf("%+v", c)
			}
			return nil
		}},
		{name: "all set", args: []string{"--max-requests", "500", "--max-lifetime", "1h", "--max-memory", "512MiB", "--heartbeat", "1s",
			"--heartbeat-timeout", "5s", "--max-restarts", "3", "--restart-window", "30s"}, check: func(c *config) error {
			opts, err := masterOptions(c)
			if err != nil || opts.MaxRequests != 500 || opts.MaxLifetime != time.Hour || opts.MaxMemory != 512<<20 || opts.Heartbeat != time.Second ||
				opts.HeartbeatTimeout != 5*time.Second || opts.MaxRestarts != 3 || opts.RestartWindow != 30*time.Second {
				return fmt.Errorf("%+v %v", opts, err)
			}
			return nil
		}},
		{name: "decimal memory", args: []string{"--max-memory", "200MB"}, check: func(c *config) error {
			if c.maxMemory != 200e6 {
				return fmt.Errorf("%d", c.maxMemory)
			}
			return nil
		}},
		{name: "bad memory", args: []string{"--max-memory", "lots"}, wantErr: `--max-memory lots: want a size such as 512MiB`},
		{name: "negative memory", args: []string{"--max-memory", "-1"}, wantErr: "-max-memory"},
		{name: "negative max requests", args: []string{"--max-requests", "-1"}, wantErr: "--max-requests must not be negative, not -1"},
		{name: "negative lifetime", args: []string{"--max-lifetime", "-1s"}, wantErr: "--max-lifetime must not be negative, not -1s"},
		{name: "negative heartbeat", args: []string{"--heartbeat", "-1s"}, wantErr: "--heartbeat must not be negative, not -1s"},
		{name: "negative max restarts", args: []string{"--max-restarts", "-2"}, wantErr: "--max-restarts must not be negative, not -2"},
		{name: "negative window", args: []string{"--restart-window", "-1m"}, wantErr: "--restart-window must not be negative, not -1m0s"},
		{name: "timeout without heartbeat", args: []string{"--heartbeat-timeout", "1s"}, wantErr: "--heartbeat-timeout must be 0 without a heartbeat interval, not 1s"},
		{name: "heartbeat too short", args: []string{"--heartbeat", "1ms"}, wantErr: "--heartbeat-timeout must be at least 100ms"},
		{name: "timeout not above the interval", args: []string{"--heartbeat", "1s", "--heartbeat-timeout", "1s"}, wantErr: "--heartbeat-timeout must be longer than the heartbeat interval (1s), not 1s"},
	}
	runFlagCases(t, tests)
}

func TestParseSize(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in   string
		want int64 // -1: an error
	}{
		{"0", 0}, {"4096", 4096}, {"100B", 100}, {"1K", 1024}, {"1KiB", 1024}, {"1KB", 1000}, {"512MiB", 512 << 20},
		{"200MB", 200e6}, {"1G", 1 << 30}, {"1gib", 1 << 30}, {"2GB", 2e9}, {"1.5GiB", 3 << 29}, {"1T", 1 << 40},
		{"", -1}, {"MiB", -1}, {"-1", -1}, {"1e9", -1}, {"12XB", -1}, {"1.2.3M", -1}, {"99999999999T", -1},
	} {
		got, err := parseSize(tt.in)
		if tt.want < 0 {
			if err == nil {
				t.Errorf("parseSize(%q) = %d, want an error", tt.in, got)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("parseSize(%q) = %d, %v, want %d", tt.in, got, err, tt.want)
		}
		if back, err := parseSize(formatSize(got)); err != nil || back != got {
			t.Errorf("formatSize(%d) = %q, which parses to %d, %v", got, formatSize(got), back, err)
		}
	}
}

func TestHelpDocumentsFleetFlags(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	if _, err := parseFlagsTo([]string{"--help"}, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	for _, f := range []string{"max-requests", "max-lifetime", "max-memory", "heartbeat", "heartbeat-timeout", "max-restarts", "restart-window", "?grow="} {
		if !strings.Contains(out.String(), f) {
			t.Errorf("--help does not mention %s:\n%s", f, out.String())
		}
	}
}

func TestDemoHandlerGrow(t *testing.T) {
	// Not parallel: it grows this test process by 1MiB, for good (what
	// an earlier run, -count=N, grew stays too: count from here).
	grown.mu.Lock()
	before := grown.total
	grown.mu.Unlock()
	h := demoHandler(7)
	for _, tt := range []struct {
		target string
		code   int
	}{
		{"/?grow=1MiB", 200},
		{"/?grow=0", 200},
		{"/?grow=lots", 400},
		{"/?grow=-1", 400},
		{"/?grow=2GiB", 400}, // over the bound of 1GiB in all
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", tt.target, nil))
		if rec.Code != tt.code || rec.Header().Get("X-Worker-Id") != "7" {
			t.Errorf("%s: %d %q, want %d", tt.target, rec.Code, rec.Body.String(), tt.code)
		}
	}
	grown.mu.Lock()
	defer grown.mu.Unlock()
	if grown.total-before != 1<<20 {
		t.Errorf("the demo grew by %d bytes, want 1MiB", grown.total-before)
	}
}

func TestHealthzCrashLoop(t *testing.T) {
	t.Parallel()
	rec := httptest.NewRecorder()
	adminHandler(fakeSource{s: balancer.Stats{Workers: 1, Listening: 1, FailedSlots: 1}}).ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	if rec.Code != 503 || !strings.Contains(rec.Body.String(), "crash loop: 1 worker slot(s) stopped restarting") {
		t.Errorf("%d %q", rec.Code, rec.Body.String())
	}
}

func TestCollectorFleetSeries(t *testing.T) {
	t.Parallel()
	src := fakeSource{
		s: balancer.Stats{Recycles: map[string]uint64{"requests": 4, "memory": 1}, HeartbeatKills: 2, FailedSlots: 1},
		ws: []balancer.WorkerStats{
			{ID: 2, PID: 1002, State: balancer.StateListening, RSS: 1 << 20, LastPong: time.Unix(1700000000, 0)},
			{ID: 3, PID: 1003, State: balancer.StateStarting},
		},
	}
	mfs := metricsFrom(t, adminHandler(src))
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"handoff_worker_recycles_total", []string{"reason", "requests"}, 4},
		{"handoff_worker_recycles_total", []string{"reason", "lifetime"}, 0},
		{"handoff_worker_recycles_total", []string{"reason", "memory"}, 1},
		{"handoff_worker_kills_total", []string{"reason", "heartbeat"}, 2},
		{"handoff_slots_failed", nil, 1},
		{"handoff_worker_resident_memory_bytes", []string{"worker", "2"}, 1 << 20},
	} {
		if got := value(t, mfs, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if got := byWorker(t, mfs, "handoff_worker_resident_memory_bytes"); len(got) != 1 {
		t.Errorf("RSS series %v: a worker whose RSS is unknown has none", got)
	}
	rec := httptest.NewRecorder()
	adminHandler(src).ServeHTTP(rec, httptest.NewRequest("GET", "/workers", nil))
	var ws []workerJSON
	if err := json.Unmarshal(rec.Body.Bytes(), &ws); err != nil || len(ws) != 2 {
		t.Fatalf("%v: %s", err, rec.Body.String())
	}
	if ws[0].RSS != 1<<20 || ws[0].LastPong == nil || !ws[0].LastPong.Equal(time.Unix(1700000000, 0)) || ws[1].LastPong != nil ||
		!strings.Contains(rec.Body.String(), `"rss"`) {
		t.Errorf("/workers: %s", rec.Body.String())
	}
}

// newConnLoad runs n requests on new connections from clients clients,
// as a rolling restart's worst case (every request needs a worker that
// accepts), and returns how many failed and the first failure.
func newConnLoad(url string, clients, n int) (sent, failed int, first error) {
	l := loadtest.Load{URL: url, NewConn: clients, PerClient: n / clients, Timeout: 10 * time.Second}
	r, wait := l.Start(nil)
	wait()
	return r.Counts()
}

// pidsOf returns the pids of the workers in ws.
func pidsOf(ws []workerJSON) []int {
	pids := make([]int, len(ws))
	for i, w := range ws {
		pids[i] = w.PID
	}
	return pids
}

// allListening reports whether /workers shows n workers, all listening,
// none of them with a pid in gone.
func allListening(ws []workerJSON, n int, gone []int) bool {
	if len(ws) != n {
		return false
	}
	for _, w := range ws {
		if w.State != "listening" || slices.Contains(gone, w.PID) {
			return false
		}
	}
	return true
}

// --max-requests 500 replaces every worker while 3000 requests on new
// connections run, with none failed; recycles are not crashes.
func TestCLIMaxRequestsRecyclesEveryWorker(t *testing.T) {
	admin := proctest.FreeAddr(t)
	m := startMaster(t, "--workers", "2", "--max-requests", "500", "--admin", admin)
	old := pidsOf(workersOf(t, admin))
	sent, failed, first := newConnLoad("http://"+m.addr+"/", 4, 3000)
	t.Logf("%d requests on new connections with --max-requests 500, %d failed", sent, failed)
	if sent != 3000 || failed > 0 {
		t.Errorf("%d of %d requests failed; first: %v", failed, sent, first)
	}
	waitFor(t, "every original worker to be gone", func() bool {
		return allListening(workersOf(t, admin), 2, old) && !proctest.Alive(old[0]) && !proctest.Alive(old[1])
	})
	time.Sleep(metricsCacheTTL)
	mfs := metricsOf(t, admin)
	// Each worker is due after 500 of about 1500: at least the two
	// originals went, and likely their successors.
	n := value(t, mfs, "handoff_worker_recycles_total", "reason", "requests")
	t.Logf("%v workers recycled by requests", n)
	if n < 2 {
		t.Errorf("handoff_worker_recycles_total{reason=requests} = %v, want at least 2", n)
	}
	if n := value(t, mfs, "handoff_worker_restarts_total"); n != 0 {
		t.Errorf("handoff_worker_restarts_total = %v: a recycled worker is not a crash", n)
	}
	if !strings.Contains(m.out.String(), `"reason":"requests"`) || !strings.Contains(m.out.String(), `"message":"worker recycled"`) {
		t.Errorf("no recycle logged with its reason")
	}
}

// --max-lifetime replaces every worker, each after its own lifetime (the
// jitter differs per worker), with no failed request under light load.
//
// The lifetime is long beside a replacement's start: recycles go one at
// a time, each taking a worker's start (up to a second under -race on a
// loaded machine), and the wait below needs a moment with both workers
// listening, which two recycles per 2s lifetime could leave none of.
func TestCLIMaxLifetimeRecyclesWithJitter(t *testing.T) {
	const lifetime = 4 * time.Second
	admin := proctest.FreeAddr(t)
	m := startMaster(t, "--workers", "2", "--max-lifetime", lifetime.String(), "--admin", admin)
	old := pidsOf(workersOf(t, admin))
	stop := make(chan struct{})
	l := loadtest.Load{URL: "http://" + m.addr + "/", NewConn: 1, KeepAlive: 1, PerClient: 100000, Timeout: 10 * time.Second}
	r, wait := l.Start(stop)
	waitFor(t, "every original worker to be recycled", func() bool {
		return allListening(workersOf(t, admin), 2, old) && !proctest.Alive(old[0]) && !proctest.Alive(old[1])
	})
	close(stop)
	wait()
	sent, failed, first := r.Counts()
	t.Logf("%d requests while the workers were recycled by lifetime, %d failed", sent, failed)
	if failed > 0 {
		t.Errorf("%d of %d requests failed; first: %v", failed, sent, first)
	}
	// Every recycle line gives the worker's own lifetime: the flag's less
	// its jitter, at most a tenth, drawn for each worker.
	lifetimes := map[int]time.Duration{}
	for _, line := range strings.Split(m.out.String(), "\n") {
		var e struct {
			Message  string `json:"message"`
			Worker   int    `json:"worker"`
			Reason   string `json:"reason"`
			Lifetime string `json:"lifetime"`
		}
		if json.Unmarshal([]byte(line), &e) != nil || e.Message != "worker recycled" || e.Reason != "lifetime" {
			continue
		}
		d, err := time.ParseDuration(e.Lifetime)
		if err != nil || d > lifetime || d < lifetime-lifetime/10 {
			t.Errorf("worker %d recycled with a lifetime of %q, want %s to %s", e.Worker, e.Lifetime, lifetime-lifetime/10, lifetime)
		}
		lifetimes[e.Worker] = d
	}
	if len(lifetimes) < 2 {
		t.Fatalf("lifetimes of recycled workers %v, want the two originals at least", lifetimes)
	}
	if lifetimes[1] == lifetimes[2] {
		t.Errorf("workers 1 and 2 had the same lifetime %v: no jitter", lifetimes[1])
	}
}

// --max-memory: the worker that grew past it is recycled, the other one
// is not.
func TestCLIMaxMemoryRecyclesOnlyTheGrownWorker(t *testing.T) {
	admin := proctest.FreeAddr(t)
	m := startMaster(t, "--workers", "2", "--max-memory", "64MiB", "--admin", admin)
	ws := workersOf(t, admin)
	for _, w := range ws {
		if w.RSS <= 0 || w.RSS > 64<<20 {
			t.Fatalf("worker %d's RSS is %d before it grew: want 0 to 64MiB", w.ID, w.RSS)
		}
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	id, err := served(client, "http://"+m.addr+"/?grow=100MiB")
	if err != nil {
		t.Fatal(err)
	}
	var grew, other workerJSON
	for _, w := range ws {
		if w.ID == id {
			grew = w
		} else {
			other = w
		}
	}
	waitFor(t, "the grown worker to be replaced", func() bool {
		return allListening(workersOf(t, admin), 2, []int{grew.PID}) && !proctest.Alive(grew.PID)
	})
	time.Sleep(metricsCacheTTL)
	if n := value(t, metricsOf(t, admin), "handoff_worker_recycles_total", "reason", "memory"); n != 1 {
		t.Errorf("handoff_worker_recycles_total{reason=memory} = %v, want 1", n)
	}
	found := false
	for _, w := range workersOf(t, admin) {
		found = found || w.PID == other.PID
	}
	if !found {
		t.Errorf("worker %d, which did not grow, was replaced too", other.ID)
	}
}

// --heartbeat: a worker stopped while no traffic runs, which the stall
// check cannot see (it has no connection waiting), answers no ping: it is
// killed and its slot gets a new worker. The other one is left alone.
func TestCLIHeartbeatReplacesStoppedIdleWorker(t *testing.T) {
	admin := proctest.FreeAddr(t)
	startMaster(t, "--workers", "2", "--heartbeat", "200ms", "--admin", admin)
	ws := workersOf(t, admin)
	stopped := ws[0]
	if err := syscall.Kill(stopped.PID, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if proctest.Alive(stopped.PID) {
			_ = syscall.Kill(stopped.PID, syscall.SIGCONT)
		}
	})
	waitFor(t, "every thread of the stopped worker to stop", func() bool { return proctest.Stopped(stopped.PID) || !proctest.Alive(stopped.PID) })
	since := time.Now()
	waitFor(t, "a new worker in the stopped one's slot", func() bool {
		got := workersOf(t, admin)
		if !allListening(got, 2, []int{stopped.PID}) || proctest.Alive(stopped.PID) {
			return false
		}
		return slices.ContainsFunc(got, func(w workerJSON) bool { return w.Slot == stopped.Slot && w.ID != stopped.ID })
	})
	t.Logf("the stopped worker was replaced, its successor listening, %v after it stopped (not checked)", time.Since(since).Round(time.Millisecond))
	time.Sleep(metricsCacheTTL)
	if n := value(t, metricsOf(t, admin), "handoff_worker_kills_total", "reason", "heartbeat"); n != 1 {
		t.Errorf("handoff_worker_kills_total{reason=heartbeat} = %v, want 1", n)
	}
	for _, w := range workersOf(t, admin) {
		if w.ID != ws[1].ID && w.Slot != stopped.Slot {
			t.Errorf("worker %+v: the running worker was replaced too", w)
		}
		if w.LastPong == nil {
			t.Errorf("worker %d has no last_pong with --heartbeat", w.ID)
		}
	}
}

// --max-restarts: a bad deploy (a COMMAND that exits at once) crash-loops
// its slot; past the limit the slot stops restarting, /healthz answers
// 503 and the master stays up. Once the fix is in place, SIGHUP (a new
// deployment) starts the slot again with a fresh history, and it serves.
func TestCLIMaxRestartsStopsACrashLoopUntilSighup(t *testing.T) {
	addr, admin := proctest.FreeAddr(t), proctest.FreeAddr(t)
	fixed := filepath.Join(t.TempDir(), "fixed")
	script := `test -e "$HANDOFF_TEST_FIXED" && exec "$0" --listen "$1"; exit 3`
	cmd := exec.Command(handoffBin, "--listen", addr, "--log-format", "json", "--workers", "1", "--max-restarts", "2", "--admin", admin,
		"--", "/bin/sh", "-c", script, handoffBin, addr)
	cmd.Env = append(os.Environ(), "HANDOFF_TEST_FIXED="+fixed)
	out := &proctest.Output{}
	cmd.Stdout, cmd.Stderr = out, out
	m := &master{cmd: cmd, addr: addr, out: out, done: make(chan error, 1)}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { m.done <- cmd.Wait() }()
	t.Cleanup(func() {
		pids := m.workerPIDs()
		_ = cmd.Process.Kill()
		<-m.done
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		if t.Failed() {
			t.Logf("master output:\n%s", out.String())
		}
	})
	health := func() (int, string) {
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := client.Get("http://" + admin + "/healthz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitFor(t, "the crash loop to be stopped", func() bool { return strings.Contains(out.String(), `"message":"crash loop:`) })
	if code, body := health(); code != 503 || !strings.Contains(body, "crash loop") {
		t.Errorf("/healthz: %d %q, want 503 saying crash loop", code, body)
	}
	time.Sleep(time.Second) // a restart would be due within 800ms
	time.Sleep(metricsCacheTTL)
	mfs := metricsOf(t, admin)
	if n := value(t, mfs, "handoff_slots_failed"); n != 1 {
		t.Errorf("handoff_slots_failed = %v, want 1", n)
	}
	// The first worker and its two restarts, and no more.
	if n := value(t, mfs, "handoff_workers_started_total"); n != 3 {
		t.Errorf("handoff_workers_started_total = %v, want 3: the slot must stop after 2 restarts", n)
	}
	select {
	case err := <-m.done:
		m.done <- err
		t.Fatalf("the master exited: %v", err)
	default:
	}

	if err := os.WriteFile(fixed, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "/healthz to answer 200 after the fix and SIGHUP", func() bool { code, _ := health(); return code == 200 })
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	if err := loadtest.Get(client, "http://"+addr+"/"); err != nil {
		t.Errorf("after SIGHUP: %v", err)
	}
	time.Sleep(metricsCacheTTL)
	if n := value(t, metricsOf(t, admin), "handoff_slots_failed"); n != 0 {
		t.Errorf("handoff_slots_failed = %v after SIGHUP, want 0", n)
	}
	if !strings.Contains(out.String(), "restarting the worker slots stopped by a crash loop") {
		t.Errorf("the revival was not logged")
	}
}

// metricsFrom renders h's GET /metrics and parses it.
func metricsFrom(t *testing.T, h http.Handler) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(rec.Body.String()))
	if rec.Code != 200 || err != nil {
		t.Fatalf("/metrics: %d %v\n%s", rec.Code, err, rec.Body.String())
	}
	return mfs
}
