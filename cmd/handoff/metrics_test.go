package main

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/balancer"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeSource is a statsSource with fixed numbers.
type fakeSource struct {
	s  balancer.Stats
	ws []balancer.WorkerStats
}

func (f fakeSource) Stats() balancer.Stats               { return f.s }
func (f fakeSource) WorkerStats() []balancer.WorkerStats { return f.ws }

func testSource() fakeSource {
	var h balancer.Histogram
	h.Counts[0] = 2                               // ≤ 10µs
	h.Counts[3] = 1                               // ≤ 100µs
	h.Counts[len(balancer.AckLatencyBuckets)] = 1 // > 1s
	h.Sum = 2*5*time.Microsecond + 80*time.Microsecond + 2*time.Second
	h.Count = 4
	return fakeSource{
		s: balancer.Stats{
			Accepted:     10,
			AcceptErrors: map[string]uint64{"EMFILE": 3},
			Dispatched:   11,
			Redispatched: 1,
			Pending:      2,
			Forked:       3,
			Restarts:     1,
			StuckKills:   1,
			Exits:        map[string]uint64{"signal": 1},
			Workers:      2,
			Listening:    1,
		},
		ws: []balancer.WorkerStats{
			{ID: 2, PID: 1002, State: balancer.StateListening, Started: time.Unix(1700000000, 0), Dispatched: 7, Active: 3, Unacked: 1, Restarts: 1, AckLatency: h},
			{ID: 3, PID: 1003, State: balancer.StateStarting, Started: time.Unix(1700000001, 500e6)},
		},
	}
}

func TestCollectorSeries(t *testing.T) {
	t.Parallel()
	const want = `
# HELP handoff_accept_errors_total Failed accept4 calls, by errno.
# TYPE handoff_accept_errors_total counter
handoff_accept_errors_total{errno="EMFILE"} 3
# HELP handoff_connections_accepted_total Connections the master accepted.
# TYPE handoff_connections_accepted_total counter
handoff_connections_accepted_total 10
# HELP handoff_connections_redispatched_total Connections handed to another worker after the first one failed to take them.
# TYPE handoff_connections_redispatched_total counter
handoff_connections_redispatched_total 1
# HELP handoff_pending_connections Accepted connections waiting for a worker (the pending queue).
# TYPE handoff_pending_connections gauge
handoff_pending_connections 2
# HELP handoff_worker_connections_active Connections handed to the worker and not yet closed by it.
# TYPE handoff_worker_connections_active gauge
handoff_worker_connections_active{worker="2"} 3
handoff_worker_connections_active{worker="3"} 0
# HELP handoff_worker_connections_dispatched_total Connections handed to the worker.
# TYPE handoff_worker_connections_dispatched_total counter
handoff_worker_connections_dispatched_total{worker="2"} 7
handoff_worker_connections_dispatched_total{worker="3"} 0
# HELP handoff_worker_exits_total Worker exits by reason: disconnect (asked to), code (exited on its own), signal (killed).
# TYPE handoff_worker_exits_total counter
handoff_worker_exits_total{reason="code"} 0
handoff_worker_exits_total{reason="disconnect"} 0
handoff_worker_exits_total{reason="signal"} 1
# HELP handoff_worker_info Always 1, with the worker's pid and state.
# TYPE handoff_worker_info gauge
handoff_worker_info{pid="1002",state="listening",worker="2"} 1
handoff_worker_info{pid="1003",state="starting",worker="3"} 1
# HELP handoff_worker_kills_total Workers the master killed, by reason.
# TYPE handoff_worker_kills_total counter
handoff_worker_kills_total{reason="handoff_timeout"} 1
handoff_worker_kills_total{reason="protocol_error"} 0
# HELP handoff_worker_restarts Unexpected exits in the worker's slot before it was started.
# TYPE handoff_worker_restarts gauge
handoff_worker_restarts{worker="2"} 1
handoff_worker_restarts{worker="3"} 0
# HELP handoff_worker_start_time_seconds When the worker was started, in seconds since the Unix epoch.
# TYPE handoff_worker_start_time_seconds gauge
handoff_worker_start_time_seconds{worker="2"} 1.7e+09
handoff_worker_start_time_seconds{worker="3"} 1.7000000015e+09
# HELP handoff_workers_listening Workers that can take connections now.
# TYPE handoff_workers_listening gauge
handoff_workers_listening 1
`
	names := []string{
		"handoff_accept_errors_total", "handoff_connections_accepted_total", "handoff_connections_redispatched_total",
		"handoff_pending_connections", "handoff_worker_connections_active", "handoff_worker_connections_dispatched_total",
		"handoff_worker_exits_total", "handoff_worker_info", "handoff_worker_kills_total", "handoff_worker_restarts",
		"handoff_worker_start_time_seconds", "handoff_workers_listening",
	}
	if err := testutil.CollectAndCompare(newCollector(testSource()), strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
}

func TestCollectorAckHistogram(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(newCollector(testSource()))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "handoff_worker_handoff_ack_seconds" {
			continue
		}
		if len(mf.Metric) != 2 {
			t.Fatalf("%d histograms, want one per worker", len(mf.Metric))
		}
		m := mf.Metric[0] // worker="2"
		h := m.GetHistogram()
		if l := m.Label[0]; l.GetName() != "worker" || l.GetValue() != "2" {
			t.Fatalf("label %v, want worker=2", l)
		}
		if h.GetSampleCount() != 4 || math.Abs(h.GetSampleSum()-2.00009) > 1e-9 {
			t.Errorf("count %d sum %g, want 4 and 2.00009", h.GetSampleCount(), h.GetSampleSum())
		}
		if len(h.Bucket) != len(balancer.AckLatencyBuckets) {
			t.Fatalf("%d buckets, want %d", len(h.Bucket), len(balancer.AckLatencyBuckets))
		}
		// Cumulative: 2 up to 10µs, 3 from 100µs on, +Inf (the count) 4.
		for i, bk := range h.Bucket {
			want := uint64(2)
			if i >= 3 {
				want = 3
			}
			if bk.GetUpperBound() != balancer.AckLatencyBuckets[i].Seconds() || bk.GetCumulativeCount() != want {
				t.Errorf("bucket %d: le=%g count %d, want le=%g count %d", i, bk.GetUpperBound(), bk.GetCumulativeCount(),
					balancer.AckLatencyBuckets[i].Seconds(), want)
			}
		}
		return
	}
	t.Fatal("no handoff_worker_handoff_ack_seconds")
}

func TestCollectorLint(t *testing.T) {
	t.Parallel()
	problems, err := testutil.CollectAndLint(newCollector(testSource()))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}
