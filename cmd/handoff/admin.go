//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/handoff-go/handoff/balancer"
	"github.com/handoff-go/handoff/worker"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"
	"golang.org/x/net/netutil"
)

// This file is the --admin HTTP server: GET /metrics (Prometheus text),
// GET /workers (JSON) and GET /healthz. It has no authentication, so bind
// it to loopback or to a private interface, never to a public address.

// statsSource is what the admin server reads, at each request.
type statsSource interface {
	Stats() balancer.Stats
	WorkerStats() []balancer.WorkerStats
	ListenQueues() []balancer.ListenQueue
}

// balancerSource reads a Balancer. Draining is also true from the moment
// the master decided to stop, before --shutdown-delay ends and
// Balancer.Shutdown begins, so that /healthz turns 503 at once.
type balancerSource struct {
	b        *balancer.Balancer
	draining *atomic.Bool
}

func (s balancerSource) Stats() balancer.Stats {
	st := s.b.Stats()
	st.Draining = st.Draining || s.draining.Load()
	return st
}

func (s balancerSource) ListenQueues() []balancer.ListenQueue { return s.b.ListenQueues() }

func (s balancerSource) WorkerStats() []balancer.WorkerStats {
	ws := s.b.Workers()
	out := make([]balancer.WorkerStats, len(ws))
	for i, w := range ws {
		out[i] = w.Stats()
	}
	return out
}

// adminHandler serves the admin endpoints from src. GET /metrics is
// rendered at most once per metricsCacheTTL and paced (see
// metricsHandler), so a flood of scrapers costs the master's one P next to
// nothing.
func adminHandler(src statsSource) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		newCollector(src),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", newMetricsHandler(reg))
	mux.HandleFunc("GET /workers", func(w http.ResponseWriter, r *http.Request) {
		serveWorkers(w, src.WorkerStats())
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		serveHealth(w, src.Stats())
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) { serveStatus(w, src) })
	mux.HandleFunc("GET /{$}", serveAdminIndex)
	return mux
}

// workerJSON is one worker in GET /workers.
type workerJSON struct {
	ID         int       `json:"id"`
	PID        int       `json:"pid"`
	Slot       int       `json:"slot"` // its place in the pool, from 0; a replacement takes its predecessor's
	State      string    `json:"state"`
	Active     int       `json:"active"`         // handed to it and not yet closed
	Unread     int       `json:"unread"`         // waiting unread in its sockets
	Stalled    bool      `json:"stalled"`        // not reading: routed around
	Busy       *int      `json:"busy,omitempty"` // connections with a request in flight, if it reports them (worker.Serve)
	Dispatched uint64    `json:"dispatched"`     // handed to it in all
	Started    time.Time `json:"started"`
	Restarts   int       `json:"restarts"`             // unexpected exits in its slot before it
	GOMAXPROCS int       `json:"gomaxprocs,omitempty"` // the GOMAXPROCS the master gave it; absent if the user set GOMAXPROCS
	CPU        *int      `json:"cpu,omitempty"`        // the CPU it is pinned to (--cpu-affinity); absent if not pinned

	// Recycling and liveness.
	RSS      int64      `json:"rss"`                 // resident memory, in bytes
	LastPong *time.Time `json:"last_pong,omitempty"` // when it last answered a ping (--heartbeat, or the stall check's)
}

func serveWorkers(w http.ResponseWriter, ws []balancer.WorkerStats) { writeJSON(w, workersJSON(ws)) }

// workersJSON is ws as GET /workers and GET /status show them.
func workersJSON(ws []balancer.WorkerStats) []workerJSON {
	out := make([]workerJSON, len(ws))
	for i, s := range ws {
		out[i] = workerJSON{
			ID:         s.ID,
			PID:        s.PID,
			Slot:       s.Slot,
			State:      s.State.String(),
			Active:     s.Active,
			Unread:     s.Unread,
			Stalled:    s.Stalled,
			Dispatched: s.Dispatched,
			Started:    s.Started.UTC(),
			Restarts:   s.Restarts,
			GOMAXPROCS: s.GOMAXPROCS,
			RSS:        s.RSS,
		}
		if s.Serving {
			out[i].Busy = &s.Busy
		}
		if s.Pinned {
			out[i].CPU = &s.CPU
		}
		if !s.LastPong.IsZero() {
			t := s.LastPong.UTC()
			out[i].LastPong = &t
		}
	}
	return out
}

// serveHealth answers 200 while at least one worker listens, no worker
// slot was stopped by a crash loop (--max-restarts) and the master is not
// draining, and 503 otherwise, for a load balancer's checks.
func serveHealth(w http.ResponseWriter, s balancer.Stats) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	switch {
	case s.Draining:
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = fmt.Fprintln(w, "draining")
	case s.FailedSlots > 0:
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = fmt.Fprintf(w, "crash loop: %d worker slot(s) stopped restarting after more than --max-restarts unexpected exits; %d of %d workers listening; a reload (SIGHUP) restarts them\n",
			s.FailedSlots, s.Listening, s.Workers)
	case s.Listening == 0:
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = fmt.Fprintln(w, "no worker listening")
	default:
		_, _ = fmt.Fprintf(w, "ok: %d of %d workers listening\n", s.Listening, s.Workers)
	}
}

// defaultAdminMaxConns is the default of --admin-max-conns.
const defaultAdminMaxConns = 64

// The admin server's timeouts: a connection that sends no request header
// within adminReadHeaderTimeout, whose request is not read within
// adminReadTimeout, whose response is not written within
// adminWriteTimeout, or that stays idle between requests for
// adminIdleTimeout is closed, and its slot under --admin-max-conns freed.
const (
	adminReadHeaderTimeout = 5 * time.Second
	adminReadTimeout       = 10 * time.Second
	adminWriteTimeout      = 10 * time.Second // above metricsMaxWait
	adminIdleTimeout       = 30 * time.Second // longer than a scrape interval of 15s
)

// adminServer is the running --admin server.
type adminServer struct {
	srv       *http.Server
	ln        net.Listener
	stopServe context.CancelFunc // starts the drain
	done      chan struct{}      // closed when the drain is over
}

// adminDrainTimeout bounds how long stop waits for requests in progress.
const adminDrainTimeout = 5 * time.Second

// serveAdmin serves h on ln until stop. It owns ln.
//
// It serves at most maxConns connections at once, so that the admin port
// can never take the master's fd table: it then holds at most maxConns+1
// fds. Connections past the cap wait in the kernel's listen backlog rather
// than being accepted and refused: a waiting connection takes none of the
// master's fds and none of its CPU (accepting and closing a flood would
// burn the master's one P, which dispatch needs), and a health check that
// waits is answered once a slot frees, which the timeouts above bound,
// instead of being failed. When the backlog too is full the kernel drops
// the SYN and the client retries.
func serveAdmin(ln net.Listener, h http.Handler, maxConns int, log zerolog.Logger) *adminServer {
	if maxConns < 1 {
		maxConns = defaultAdminMaxConns
	}
	a := &adminServer{
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: adminReadHeaderTimeout,
			ReadTimeout:       adminReadTimeout,
			WriteTimeout:      adminWriteTimeout,
			IdleTimeout:       adminIdleTimeout,
			ErrorLog:          httpErrorLog(log, "admin server"),
		},
		ln:   netutil.LimitListener(ln, maxConns),
		done: make(chan struct{}),
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.stopServe = cancel
	log.Info().Str("address", ln.Addr().String()).Int("max_conns", maxConns).Msg("admin server: /metrics, /workers, /healthz")
	go func() {
		defer close(a.done)
		// The master handles its own signals: the admin server stops
		// when the master says.
		sc := worker.ServeConfig{DrainTimeout: adminDrainTimeout, NoSignals: true}
		if err := sc.Serve(ctx, a.srv, a.ln); err != nil && !errors.Is(err, worker.ErrDrainTimeout) {
			log.Error().Err(err).Msg("admin server failed")
		}
	}()
	return a
}

// stop stops accepting and answers the requests already accepted, for up
// to adminDrainTimeout, then closes the server (see worker.ServeConfig.Serve: a
// health check that reached this master gets its answer). It may be called more
// than once, and on a nil *adminServer.
func (a *adminServer) stop() {
	if a == nil {
		return
	}
	a.stopServe()
	<-a.done
}

// adminIndex is the admin port's "/": what it serves, for a person who
// opens it in a browser or with curl.
const adminIndex = `%s

  GET /metrics   Prometheus metrics: connections, workers, queues, restarts
  GET /healthz   200 "ok" while workers listen, 503 with the reason otherwise
  GET /workers   every worker as JSON: id, pid, slot, state, load, rss
  GET /status    the workers, the listeners' kernel queues and the totals, as JSON
                 (what 'handoff status' prints)

See docs/operations.md of github.com/handoff-go/handoff.
`

func serveAdminIndex(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, adminIndex, versionString())
}
