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
}

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
# HELP handoff_pending_connections Accepted connections waiting for a worker (the pending queue).
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
