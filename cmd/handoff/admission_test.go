//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/loadtest"
	"github.com/handoff-go/handoff/internal/proctest"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/sync/errgroup"
)

// --max-conns 10: 30 clients, each holding a connection with a slow
// request, are served at most 10 at once across the two workers, as the
// master's own in-progress count shows while they run; the 20 others wait
// in the master's queue, and all 30 are answered in the end, with their
// time queued in the histogram.
func TestCLIMaxConnsCapsConnectionsInProgress(t *testing.T) {
	const (
		capped  = 10
		clients = 30
	)
	admin := proctest.FreeAddr(t)
	m := startMaster(t, "--workers", "2", "--admin", admin, "--max-conns", fmt.Sprint(capped))
	if got := value(t, metricsOf(t, admin), "handoff_max_conns"); got != capped {
		t.Fatalf("handoff_max_conns %v, want %d", got, capped)
	}

	// Poll the master's count (taken under its lock, so consistent
	// across workers) until the clients are done.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var most, samples int
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		for ctx.Err() == nil {
			if n, err := scrapeGauge(admin, "handoff_connections_in_progress"); err == nil {
				most = max(most, int(n))
				samples++
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()

	var g errgroup.Group
	for range clients {
		g.Go(func() error {
			client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			return loadtest.Get(client, "http://"+m.addr+"/?delay=600ms")
		})
	}
	err := g.Wait()
	cancel()
	<-polled
	if err != nil {
		t.Fatalf("a client was not answered 200: %v", err)
	}
	t.Logf("%d samples of handoff_connections_in_progress, at most %d", samples, most)
	if most > capped {
		t.Errorf("%d connections in progress at once, over --max-conns %d", most, capped)
	}
	if most < capped {
		t.Errorf("at most %d connections in progress, never the cap %d: the cap held back more than it should", most, capped)
	}
	waitFor(t, "the time-queued histogram to count the 20 that waited", func() bool {
		mf := metricsOf(t, admin)["handoff_pending_wait_seconds"]
		return mf != nil && len(mf.Metric) == 1 && mf.Metric[0].Histogram.GetSampleCount() >= clients-capped
	})
	// The workers close after the answer; /metrics is at most 250ms old.
	waitFor(t, "handoff_connections_in_progress 0 once every client is answered", func() bool {
		return value(t, metricsOf(t, admin), "handoff_connections_in_progress") == 0
	})
}

// scrapeGauge reads one unlabelled gauge from GET /metrics; unlike
// metricsOf it returns its errors, so that it may run off the test's
// goroutine.
func scrapeGauge(admin, name string) (float64, error) {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + admin + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return 0, fmt.Errorf("/metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return 0, err
	}
	mf := mfs[name]
	if mf == nil || len(mf.Metric) != 1 || mf.Metric[0].Gauge == nil {
		return 0, fmt.Errorf("/metrics has no gauge %s", name)
	}
	return mf.Metric[0].Gauge.GetValue(), nil
}

// SIGTERM while --max-conns holds clients in the queue serves them before
// the workers drain: they were accepted, and are answered, not closed.
func TestCLIMaxConnsSigtermServesTheQueue(t *testing.T) {
	const clients = 6
	admin := proctest.FreeAddr(t)
	m := startMaster(t, "--workers", "2", "--admin", admin, "--max-conns", "2")
	var g errgroup.Group
	for range clients {
		g.Go(func() error {
			client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			return loadtest.Get(client, "http://"+m.addr+"/?delay=500ms")
		})
	}
	waitFor(t, "clients held by --max-conns", func() bool {
		return value(t, metricsOf(t, admin), "handoff_pending_admission_connections") > 0
	})
	if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := g.Wait(); err != nil {
		t.Errorf("a client held by --max-conns at SIGTERM was not answered: %v", err)
	}
	if err := m.wait(t, 30*time.Second, "the master did not exit after SIGTERM"); err != nil {
		t.Errorf("master exited with %v after SIGTERM", err)
	}
}
