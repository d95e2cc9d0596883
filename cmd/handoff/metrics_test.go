//go:build linux

package main

import (
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/balancer"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeSource is a statsSource with fixed numbers.
type fakeSource struct {
	s  balancer.Stats
	ws []balancer.WorkerStats
	qs []balancer.ListenQueue
}

func (f fakeSource) ListenQueues() []balancer.ListenQueue { return f.qs }

func (f fakeSource) Stats() balancer.Stats               { return f.s }
func (f fakeSource) WorkerStats() []balancer.WorkerStats { return f.ws }

func testSource() fakeSource {
	return fakeSource{
		s: balancer.Stats{
			Accepted:     10,
			AcceptErrors: map[string]uint64{"EMFILE": 3},
			Dispatched:   11,
			Redispatched: 1,
			Pending:      2,
			Forked:       3,
			Restarts:     1,
			Reclaimed:    4,
			Stalls:       2,
			StuckKills:   1,
			Exits:        map[string]uint64{"signal": 1},
			Workers:      2,
			Listening:    1,
		},
		ws: []balancer.WorkerStats{
			{ID: 2, PID: 1002, State: balancer.StateListening, Started: time.Unix(1700000000, 0), Dispatched: 7, Active: 3, Unread: 1, Reclaimed: 2, Restarts: 1, Serving: true, Busy: 2},
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
# HELP handoff_connections_reclaimed_total Connections taken back unread from a worker (dead, stalled or closing a listener) and dispatched again.
# TYPE handoff_connections_reclaimed_total counter
handoff_connections_reclaimed_total 4
# HELP handoff_connections_redispatched_total Connections handed to another worker after the first one failed to take them.
# TYPE handoff_connections_redispatched_total counter
handoff_connections_redispatched_total 1
# HELP handoff_pending_connections Accepted connections waiting for a worker (the pending queue), or for room under --max-conns.
# TYPE handoff_pending_connections gauge
handoff_pending_connections 2
# HELP handoff_worker_connections_active Connections handed to the worker and not yet closed by it.
# TYPE handoff_worker_connections_active gauge
handoff_worker_connections_active{worker="2"} 3
handoff_worker_connections_active{worker="3"} 0
# HELP handoff_worker_connections_reclaimed_total Connections taken back unread from the worker and served elsewhere.
# TYPE handoff_worker_connections_reclaimed_total counter
handoff_worker_connections_reclaimed_total{worker="2"} 2
handoff_worker_connections_reclaimed_total{worker="3"} 0
# HELP handoff_worker_connections_busy Connections of the worker with a request in flight; only for workers that report it (worker.Serve).
# TYPE handoff_worker_connections_busy gauge
handoff_worker_connections_busy{worker="2"} 2
# HELP handoff_worker_connections_unread Connections waiting, unread, in the worker's sockets.
# TYPE handoff_worker_connections_unread gauge
handoff_worker_connections_unread{worker="2"} 1
handoff_worker_connections_unread{worker="3"} 0
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
handoff_worker_kills_total{reason="heartbeat"} 0
handoff_worker_kills_total{reason="protocol_error"} 0
# HELP handoff_worker_stalls_total Times a worker was found not reading its connections and routed around.
# TYPE handoff_worker_stalls_total counter
handoff_worker_stalls_total 2
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
		"handoff_connections_reclaimed_total", "handoff_worker_connections_reclaimed_total",
		"handoff_worker_connections_unread", "handoff_worker_connections_busy", "handoff_worker_stalls_total",
		"handoff_pending_connections", "handoff_worker_connections_active", "handoff_worker_connections_dispatched_total",
		"handoff_worker_exits_total", "handoff_worker_info", "handoff_worker_kills_total", "handoff_worker_restarts",
		"handoff_worker_start_time_seconds", "handoff_workers_listening",
	}
	if err := testutil.CollectAndCompare(newCollector(testSource()), strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
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

// The admission figures, the time-queued histogram and each worker's
// GOMAXPROCS and pinned CPU, where they are set.
func TestCollectorAdmissionAndCPUs(t *testing.T) {
	t.Parallel()
	src := testSource()
	src.s.Pending, src.s.Admission, src.s.InProgress, src.s.MaxConns = 5, 4, 10, 10
	src.s.PendingWait = balancer.WaitHistogram{Count: 3, Sum: 1500 * time.Millisecond}
	bounds := []time.Duration{time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond, 10 * time.Millisecond,
		25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
		time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second}
	for i, b := range bounds {
		src.s.PendingWait.Bounds[i] = b
		if b >= 500*time.Millisecond {
			src.s.PendingWait.Buckets[i] = 3
		} else if b >= 250*time.Millisecond {
			src.s.PendingWait.Buckets[i] = 1
		}
	}
	src.ws[0].GOMAXPROCS, src.ws[0].Pinned, src.ws[0].CPU = 1, true, 1
	// src.ws[1] is not pinned, and has the user's GOMAXPROCS.
	const want = `
# HELP handoff_connections_in_progress Connections handed to workers and not yet closed by them, unread ones included: what --max-conns caps.
# TYPE handoff_connections_in_progress gauge
handoff_connections_in_progress 10
# HELP handoff_max_conns The cap on connections in progress (--max-conns); 0 for none.
# TYPE handoff_max_conns gauge
handoff_max_conns 10
# HELP handoff_pending_admission_connections Of handoff_pending_connections, the new ones, queued while --max-conns is set (for room, or for a worker).
# TYPE handoff_pending_admission_connections gauge
handoff_pending_admission_connections 4
# HELP handoff_pending_wait_seconds How long connections handed to a worker from the pending queue had waited there.
# TYPE handoff_pending_wait_seconds histogram
handoff_pending_wait_seconds_bucket{le="0.001"} 0
handoff_pending_wait_seconds_bucket{le="0.0025"} 0
handoff_pending_wait_seconds_bucket{le="0.005"} 0
handoff_pending_wait_seconds_bucket{le="0.01"} 0
handoff_pending_wait_seconds_bucket{le="0.025"} 0
handoff_pending_wait_seconds_bucket{le="0.05"} 0
handoff_pending_wait_seconds_bucket{le="0.1"} 0
handoff_pending_wait_seconds_bucket{le="0.25"} 1
handoff_pending_wait_seconds_bucket{le="0.5"} 3
handoff_pending_wait_seconds_bucket{le="1"} 3
handoff_pending_wait_seconds_bucket{le="2.5"} 3
handoff_pending_wait_seconds_bucket{le="5"} 3
handoff_pending_wait_seconds_bucket{le="10"} 3
handoff_pending_wait_seconds_bucket{le="+Inf"} 3
handoff_pending_wait_seconds_sum 1.5
handoff_pending_wait_seconds_count 3
# HELP handoff_worker_cpu The CPU the worker is pinned to (--cpu-affinity); absent when it is not pinned.
# TYPE handoff_worker_cpu gauge
handoff_worker_cpu{worker="2"} 1
# HELP handoff_worker_gomaxprocs The GOMAXPROCS the master gave the worker, its share of the CPU limit; absent when the user set GOMAXPROCS.
# TYPE handoff_worker_gomaxprocs gauge
handoff_worker_gomaxprocs{worker="2"} 1
`
	names := []string{"handoff_connections_in_progress", "handoff_max_conns", "handoff_pending_admission_connections",
		"handoff_pending_wait_seconds", "handoff_worker_cpu", "handoff_worker_gomaxprocs"}
	if err := testutil.CollectAndCompare(newCollector(src), strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
}
