//go:build linux

package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// countingGatherer counts Gather calls, each of which takes a while.
type countingGatherer struct {
	g     prometheus.Gatherer
	calls atomic.Int32
	took  time.Duration
}

func (c *countingGatherer) Gather() ([]*dto.MetricFamily, error) {
	c.calls.Add(1)
	time.Sleep(c.took)
	return c.g.Gather()
}

// fakeClock is a time.Now that moves only when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (f *fakeClock) Now() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return f.now }

func (f *fakeClock) add(d time.Duration) { f.mu.Lock(); defer f.mu.Unlock(); f.now = f.now.Add(d) }

func testMetricsHandler(t *testing.T) (*metricsHandler, *countingGatherer, *fakeClock) {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(newCollector(testSource()))
	g := &countingGatherer{g: reg, took: 50 * time.Millisecond}
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	h := newMetricsHandler(g)
	h.now = clock.Now
	return h, g, clock
}

// Scrapes that come together cost one rendering, and one per TTL after.
func TestMetricsRenderedOncePerTTL(t *testing.T) {
	t.Parallel()
	h, g, clock := testMetricsHandler(t)
	const scrapers = 20
	var wg sync.WaitGroup
	bodies := make([][]byte, scrapers)
	for i := 0; i < scrapers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bodies[i] = h.exposition().body
		}()
	}
	wg.Wait()
	if n := g.calls.Load(); n != 1 {
		t.Errorf("%d scrapes at once rendered %d times, want once", scrapers, n)
	}
	for i, b := range bodies {
		if !strings.Contains(string(b), `handoff_worker_connections_dispatched_total{worker="2"} 7`) {
			t.Fatalf("scrape %d: %.500s", i, b)
		}
	}
	clock.add(h.ttl - time.Nanosecond)
	h.exposition()
	if n := g.calls.Load(); n != 1 {
		t.Errorf("rendered %d times within the TTL, want once", n)
	}
	clock.add(time.Nanosecond)
	h.exposition()
	if n := g.calls.Load(); n != 2 {
		t.Errorf("rendered %d times after the TTL, want twice", n)
	}
}

// Scrapes are paced one per interval, and refused past maxWait.
func TestMetricsPaced(t *testing.T) {
	t.Parallel()
	h, _, _ := testMetricsHandler(t)
	if h.interval <= 0 || h.maxWait <= 0 {
		t.Fatalf("scrapes are not paced: interval %v, maxWait %v", h.interval, h.maxWait)
	}
	slots := int(h.maxWait/h.interval) + 1 // waits 0, interval, ... maxWait
	for i := 0; i < slots; i++ {
		wait, ok := h.reserve()
		if !ok || wait != time.Duration(i)*h.interval {
			t.Fatalf("scrape %d: wait %v, %v; want %v", i, wait, ok, time.Duration(i)*h.interval)
		}
	}
	if wait, ok := h.reserve(); ok {
		t.Fatalf("scrape %d waits %v, past maxWait %v", slots, wait, h.maxWait)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") == "" {
		t.Errorf("past maxWait: %d %v, want 429 with Retry-After", rec.Code, rec.Header())
	}
}

func TestMetricsServed(t *testing.T) {
	t.Parallel()
	h, _, _ := testMetricsHandler(t)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 || rec.Header().Get("Content-Type") != string(metricsFormat) ||
		!strings.Contains(rec.Body.String(), "# TYPE handoff_workers_listening gauge") {
		t.Errorf("%d %v:\n%.500s", rec.Code, rec.Header(), rec.Body.String())
	}
}
