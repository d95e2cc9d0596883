//go:build linux

package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/balancer"
	"github.com/handoff-go/handoff/internal/proctest"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func TestHealthz(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		stats balancer.Stats
		code  int
		body  string
	}{
		{name: "serving", stats: balancer.Stats{Workers: 2, Listening: 2}, code: 200, body: "ok: 2 of 2 workers listening\n"},
		{name: "one of two listening", stats: balancer.Stats{Workers: 2, Listening: 1}, code: 200, body: "ok: 1 of 2 workers listening\n"},
		{name: "starting", stats: balancer.Stats{Workers: 2}, code: 503, body: "no worker listening\n"},
		{name: "no workers", stats: balancer.Stats{}, code: 503, body: "no worker listening\n"},
		{name: "draining", stats: balancer.Stats{Workers: 2, Listening: 2, Draining: true}, code: 503, body: "draining\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := httptest.NewRecorder()
			adminHandler(fakeSource{s: tt.stats}).ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
			if rec.Code != tt.code || rec.Body.String() != tt.body {
				t.Errorf("%d %q, want %d %q", rec.Code, rec.Body.String(), tt.code, tt.body)
			}
		})
	}
}

func TestWorkersJSON(t *testing.T) {
	t.Parallel()
	rec := httptest.NewRecorder()
	adminHandler(testSource()).ServeHTTP(rec, httptest.NewRequest("GET", "/workers", nil))
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("%d %v", rec.Code, rec.Header())
	}
	var got []workerJSON
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatalf("%v: %s", err, rec.Body.String())
	}
	want := []workerJSON{
		{ID: 2, PID: 1002, State: "listening", Active: 3, Unread: 1, Dispatched: 7, Started: time.Unix(1700000000, 0).UTC(), Restarts: 1},
		{ID: 3, PID: 1003, State: "starting", Started: time.Unix(1700000001, 500e6).UTC()},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if !got[i].Started.Equal(want[i].Started) {
			t.Errorf("worker %d started %v, want %v", i, got[i].Started, want[i].Started)
		}
		got[i].Started, want[i].Started = time.Time{}, time.Time{}
		if wantBusy := []int{2, -1}[i]; (got[i].Busy == nil) != (wantBusy < 0) || (got[i].Busy != nil && *got[i].Busy != wantBusy) {
			t.Errorf("worker %d: busy %v, want %d (-1: absent, as it does not report it)", i, got[i].Busy, wantBusy)
		}
		got[i].Busy = nil
		if got[i] != want[i] {
			t.Errorf("worker %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	for _, key := range []string{`"id"`, `"pid"`, `"state"`, `"active"`, `"dispatched"`, `"started"`, `"restarts"`} {
		if !strings.Contains(rec.Body.String(), key) {
			t.Errorf("no %s in %s", key, rec.Body.String())
		}
	}
}

func TestAdminRoutes(t *testing.T) {
	t.Parallel()
	h := adminHandler(testSource())
	tests := []struct {
		name, method, target string
		code                 int
		contains             string
	}{
		{name: "metrics", method: "GET", target: "/metrics", code: 200, contains: `handoff_worker_connections_dispatched_total{worker="2"} 7`},
		{name: "go runtime metrics", method: "GET", target: "/metrics", code: 200, contains: "go_goroutines"},
		{name: "healthz head", method: "HEAD", target: "/healthz", code: 200},
		{name: "post is refused", method: "POST", target: "/healthz", code: 405},
		{name: "unknown path", method: "GET", target: "/debug", code: 404},
		{name: "index lists metrics", method: "GET", target: "/", code: 200, contains: "GET /metrics"},
		{name: "index lists healthz", method: "GET", target: "/", code: 200, contains: "GET /healthz"},
		{name: "index lists workers", method: "GET", target: "/", code: 200, contains: "GET /workers"},
		{name: "index has the version", method: "GET", target: "/", code: 200, contains: versionString()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(tt.method, tt.target, nil))
			if rec.Code != tt.code || !strings.Contains(rec.Body.String(), tt.contains) {
				t.Errorf("%s %s: %d, want %d with %q:\n%.2000s", tt.method, tt.target, rec.Code, tt.code, tt.contains, rec.Body.String())
			}
		})
	}
}

// TestAdminServerStop checks that stop closes the listener and may be
// called twice.
func TestAdminServerStop(t *testing.T) {
	t.Parallel()
	ln := listenLoopback(t)
	a := serveAdmin(ln, http.NotFoundHandler(), defaultAdminMaxConns, discardLogger())
	resp, err := http.Get("http://" + ln.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	a.stop()
	a.stop()
	var nilServer *adminServer
	nilServer.stop()
	if _, err := http.Get("http://" + ln.Addr().String() + "/"); err == nil {
		t.Error("admin server still answers after stop")
	}
}

// getAdmin fetches an admin path over a fresh connection.
func getAdmin(t *testing.T, admin, path string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + admin + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, string(body)
}

// waitFor polls cond every 20ms until it holds or 20s pass.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// workersOf fetches and decodes GET /workers.
func workersOf(t *testing.T, admin string) []workerJSON {
	t.Helper()
	code, body := getAdmin(t, admin, "/workers")
	var ws []workerJSON
	if err := json.Unmarshal([]byte(body), &ws); code != 200 || err != nil {
		t.Fatalf("/workers: %d %v\n%s", code, err, body)
	}
	return ws
}

// metricsOf fetches and parses GET /metrics.
func metricsOf(t *testing.T, admin string) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := getAdmin(t, admin, "/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d\n%s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics is not Prometheus text: %v\n%s", err, body)
	}
	return mfs
}

// byWorker returns a family's values by their worker label.
func byWorker(t *testing.T, mfs map[string]*dto.MetricFamily, name string) map[string]float64 {
	t.Helper()
	mf := mfs[name]
	if mf == nil {
		t.Fatalf("no %s", name)
	}
	out := map[string]float64{}
	for _, m := range mf.Metric {
		w := ""
		for _, l := range m.Label {
			if l.GetName() == "worker" {
				w = l.GetValue()
			}
		}
		if w == "" {
			t.Fatalf("%s has a series without a worker label", name)
		}
		switch {
		case m.Counter != nil:
			out[w] = m.Counter.GetValue()
		case m.Gauge != nil:
			out[w] = m.Gauge.GetValue()
		case m.Histogram != nil:
			out[w] = float64(m.Histogram.GetSampleCount())
		}
	}
	return out
}

func value(t *testing.T, mfs map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	mf := mfs[name]
	if mf == nil {
		t.Fatalf("no %s", name)
	}
next:
	for _, m := range mf.Metric {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.Label {
				found = found || (l.GetName() == labels[i] && l.GetValue() == labels[i+1])
			}
			if !found {
				continue next
			}
		}
		if m.Counter != nil {
			return m.Counter.GetValue()
		}
		return m.Gauge.GetValue()
	}
	t.Fatalf("no %s%v", name, labels)
	return 0
}

func TestCLIAdminEndpoints(t *testing.T) {
	admin := proctest.FreeAddr(t)
	m := startMaster(t, "--workers", "2", "--admin", admin)
	waitFor(t, "/healthz 200 with 2 workers", func() bool {
		code, body := getAdmin(t, admin, "/healthz")
		return code == 200 && body == "ok: 2 of 2 workers listening\n"
	})
	if code, body := getAdmin(t, admin, "/"); code != 200 || !strings.Contains(body, "/metrics") || !strings.Contains(body, "handoff ") {
		t.Errorf("GET /: %d %q, want 200 listing the endpoints and the version", code, body)
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	const n = 40
	for i := 0; i < n; i++ {
		resp, err := client.Get("http://" + m.addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}

	ws := workersOf(t, admin)
	pids := m.workerPIDs()
	if len(ws) != 2 || len(pids) != 2 {
		t.Fatalf("/workers lists %+v; the master has children %v", ws, pids)
	}
	for _, w := range ws {
		if w.State != "listening" || (w.PID != pids[0] && w.PID != pids[1]) || time.Since(w.Started) > time.Minute || w.Restarts != 0 {
			t.Errorf("/workers: %+v; worker pids %v", w, pids)
		}
	}

	// The workers count their closes on their counter pages, which the
	// master reads: every connection is closed, so none is active.
	var mfs map[string]*dto.MetricFamily
	waitFor(t, "every worker's connections reported closed", func() bool {
		mfs = metricsOf(t, admin)
		active := byWorker(t, mfs, "handoff_worker_connections_active")
		sum := 0.0
		for _, v := range active {
			sum += v
		}
		return len(active) == 2 && sum == 0
	})
	dispatched := byWorker(t, mfs, "handoff_worker_connections_dispatched_total")
	unread := byWorker(t, mfs, "handoff_worker_connections_unread")
	total := 0.0
	for _, w := range ws {
		id := strconv.Itoa(w.ID)
		if dispatched[id] < 1 || float64(w.Dispatched) > dispatched[id]+n || unread[id] != 0 {
			t.Errorf("worker %s: dispatched %v, unread %v; /workers %+v", id, dispatched[id], unread[id], w)
		}
		total += dispatched[id]
	}
	if len(dispatched) != 2 || total < n {
		t.Errorf("dispatched by worker %v, want 2 workers and at least %d in all", dispatched, n)
	}
	for _, name := range []string{"handoff_worker_connections_active", "handoff_worker_restarts", "handoff_worker_info", "handoff_worker_start_time_seconds"} {
		if got := byWorker(t, mfs, name); len(got) != 2 {
			t.Errorf("%s: %v, want 2 workers", name, got)
		}
	}
	if v := value(t, mfs, "handoff_connections_accepted_total"); v < n {
		t.Errorf("accepted %v, want at least %d", v, n)
	}
	for _, name := range []string{"handoff_pending_connections", "handoff_connections_redispatched_total", "handoff_draining"} {
		if v := value(t, mfs, name); v != 0 {
			t.Errorf("%s = %v, want 0", name, v)
		}
	}
	// A worker killed from outside: an exit by signal, a restart in its
	// slot, and /healthz stays 200 thanks to the other worker.
	victim := ws[0]
	if err := syscall.Kill(victim.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a restarted worker", func() bool {
		ws := workersOf(t, admin)
		return len(ws) == 2 && (ws[0].Restarts == 1 || ws[1].Restarts == 1) && ws[0].State == "listening" && ws[1].State == "listening"
	})
	// /metrics may be up to metricsCacheTTL older than /workers.
	time.Sleep(metricsCacheTTL)
	mfs = metricsOf(t, admin)
	if v := value(t, mfs, "handoff_worker_exits_total", "reason", "signal"); v != 1 {
		t.Errorf("exits by signal %v, want 1", v)
	}
	if v := value(t, mfs, "handoff_worker_restarts_total"); v != 1 {
		t.Errorf("restarts %v, want 1", v)
	}
	if code, body := getAdmin(t, admin, "/healthz"); code != 200 {
		t.Errorf("/healthz after a restart: %d %q", code, body)
	}
}

func TestCLIShutdownDelay(t *testing.T) {
	admin := proctest.FreeAddr(t)
	const delay = 1500 * time.Millisecond
	m := startMaster(t, "--workers", "2", "--admin", admin, "--shutdown-delay", delay.String())
	waitFor(t, "/healthz 200", func() bool { code, _ := getAdmin(t, admin, "/healthz"); return code == 200 })

	start := time.Now()
	if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "/healthz 503", func() bool { code, _ := getAdmin(t, admin, "/healthz"); return code == 503 })
	if d := time.Since(start); d > delay/3 {
		t.Errorf("/healthz turned 503 %v after SIGTERM, want at once", d)
	}
	if _, body := getAdmin(t, admin, "/healthz"); body != "draining\n" {
		t.Errorf("/healthz body %q", body)
	}
	// Until the delay ends, new connections are still served.
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	served := 0
	for i := 0; i < 1000 && time.Since(start) < delay-300*time.Millisecond; i++ {
		resp, err := client.Get("http://" + m.addr + "/")
		if err != nil {
			t.Fatalf("request %d, %v after SIGTERM, within the shutdown delay: %v", i, time.Since(start), err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "hello world\n" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
		served++
		time.Sleep(10 * time.Millisecond)
	}
	if v := value(t, metricsOf(t, admin), "handoff_draining"); v != 1 {
		t.Errorf("handoff_draining = %v during the delay, want 1", v)
	}
	if err := m.wait(t, 30*time.Second, "master did not exit"); err != nil {
		t.Errorf("master exit: %v, want 0", err)
	}
	if d := time.Since(start); d < delay {
		t.Errorf("master exited %v after SIGTERM, before the %v delay", d, delay)
	}
	if !strings.Contains(m.out.String(), "shutdown delay over") {
		t.Error("no log line for the end of the delay")
	}
	t.Logf("served %d requests during the shutdown delay; exited %v after SIGTERM", served, time.Since(start))
}
