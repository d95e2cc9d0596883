//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
)

// collector is a prometheus.Collector that reads the balancer's counters
// at scrape time, so the balancer keeps no Prometheus state and the
// dispatch path pays nothing for metrics. Every series is prefixed
// handoff_; a worker's are labelled worker="<id>" and go away when it
// exits.
type collector struct {
	src statsSource

	accepted     *prometheus.Desc
	acceptErrors *prometheus.Desc
	dispatched   *prometheus.Desc
	redispatched *prometheus.Desc
	dropped      *prometheus.Desc
	reclaimed    *prometheus.Desc
	stalls       *prometheus.Desc
	pending      *prometheus.Desc
	admission    *prometheus.Desc
	pendingWait  *prometheus.Desc
	inProgress   *prometheus.Desc
	maxConns     *prometheus.Desc
	forked       *prometheus.Desc
	restarts     *prometheus.Desc
	exits        *prometheus.Desc
	kills        *prometheus.Desc
	listenErrors *prometheus.Desc
	workers      *prometheus.Desc
	listening    *prometheus.Desc
	draining     *prometheus.Desc
	recycles     *prometheus.Desc
	slotsFailed  *prometheus.Desc
	queueLength  *prometheus.Desc
	backlog      *prometheus.Desc
	overflows    *prometheus.Desc
	drops        *prometheus.Desc

	wInfo       *prometheus.Desc
	wDispatched *prometheus.Desc
	wActive     *prometheus.Desc
	wUnread     *prometheus.Desc
	wBusy       *prometheus.Desc
	wReclaimed  *prometheus.Desc
	wRestarts   *prometheus.Desc
	wStarted    *prometheus.Desc
	wProcs      *prometheus.Desc
	wCPU        *prometheus.Desc
	wRSS        *prometheus.Desc
}

var _ prometheus.Collector = (*collector)(nil)

func newCollector(src statsSource) *collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("handoff_"+name, help, labels, nil)
	}
	return &collector{
		src:          src,
		accepted:     d("connections_accepted_total", "Connections the master accepted."),
		acceptErrors: d("accept_errors_total", "Failed accept4 calls, by errno.", "errno"),
		dispatched:   d("connections_dispatched_total", "Handoffs sent to workers, re-dispatches included."),
		redispatched: d("connections_redispatched_total", "Connections handed to another worker after the first one failed to take them."),
		dropped:      d("connections_dropped_total", "Connections closed because the pending queue was full."),
		reclaimed:    d("connections_reclaimed_total", "Connections taken back unread from a worker (dead, stalled or closing a listener) and dispatched again."),
		stalls:       d("worker_stalls_total", "Times a worker was found not reading its connections and routed around."),
		pending:      d("pending_connections", "Accepted connections waiting for a worker (the pending queue), or for room under --max-conns."),
		admission:    d("pending_admission_connections", "Of handoff_pending_connections, the new ones, queued while --max-conns is set (for room, or for a worker)."),
		pendingWait:  d("pending_wait_seconds", "How long connections handed to a worker from the pending queue had waited there."),
		inProgress:   d("connections_in_progress", "Connections handed to workers and not yet closed by them, unread ones included: what --max-conns caps."),
		maxConns:     d("max_conns", "The cap on connections in progress (--max-conns); 0 for none."),
		forked:       d("workers_started_total", "Worker processes started."),
		restarts:     d("worker_restarts_total", "Unexpected worker exits that were restarted."),
		exits:        d("worker_exits_total", "Worker exits by reason: disconnect (asked to), code (exited on its own), signal (killed).", "reason"),
		kills:        d("worker_kills_total", "Workers the master killed, by reason.", "reason"),
		listenErrors: d("worker_listen_errors_total", "Workers' listen requests that failed."),
		workers:      d("workers", "Worker processes that have not exited."),
		listening:    d("workers_listening", "Workers that can take connections now."),
		draining:     d("draining", "1 once the master has begun to shut down."),
		recycles:     d("worker_recycles_total", "Workers replaced by recycling (--max-requests, --max-lifetime, --max-memory), by reason.", "reason"),
		slotsFailed:  d("slots_failed", "Worker slots no longer restarted after a crash loop (--max-restarts), until a reload."),
		queueLength:  d("listen_queue_length", "Connections complete and waiting in the kernel's accept queue of a TCP listener, not yet accepted by the master (TCP_INFO).", "listener"),
		backlog:      d("listen_backlog", "The most connections the kernel queues for a TCP listener: its listen backlog (--backlog, capped by net.core.somaxconn).", "listener"),
		overflows:    d("listen_overflows_total", "Connections the kernel dropped because a listener's accept queue was full, in the master's network namespace (ListenOverflows of /proc/net/netstat, every listener of the namespace counted)."),
		drops:        d("listen_drops_total", "Connections the kernel dropped in front of a listener for any reason, full queue included, in the master's network namespace (ListenDrops of /proc/net/netstat)."),

		wInfo:       d("worker_info", "Always 1, with the worker's pid and state.", "worker", "pid", "state"),
		wDispatched: d("worker_connections_dispatched_total", "Connections handed to the worker.", "worker"),
		wActive:     d("worker_connections_active", "Connections handed to the worker and not yet closed by it.", "worker"),
		wUnread:     d("worker_connections_unread", "Connections waiting, unread, in the worker's sockets.", "worker"),
		wBusy:       d("worker_connections_busy", "Connections of the worker with a request in flight; only for workers that report it (worker.Serve).", "worker"),
		wReclaimed:  d("worker_connections_reclaimed_total", "Connections taken back unread from the worker and served elsewhere.", "worker"),
		wRestarts:   d("worker_restarts", "Unexpected exits in the worker's slot before it was started.", "worker"),
		wStarted:    d("worker_start_time_seconds", "When the worker was started, in seconds since the Unix epoch.", "worker"),
		wProcs:      d("worker_gomaxprocs", "The GOMAXPROCS the master gave the worker, its share of the CPU limit; absent when the user set GOMAXPROCS.", "worker"),
		wCPU:        d("worker_cpu", "The CPU the worker is pinned to (--cpu-affinity); absent when it is not pinned.", "worker"),
		wRSS:        d("worker_resident_memory_bytes", "The worker's resident memory (RSS), from /proc.", "worker"),
	}
}

// Describe sends every series' description: the collector is checked.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.accepted, c.acceptErrors, c.dispatched, c.redispatched, c.dropped, c.reclaimed, c.stalls, c.pending,
		c.admission, c.pendingWait, c.inProgress, c.maxConns,
		c.forked, c.restarts, c.exits, c.kills, c.listenErrors, c.workers, c.listening, c.draining, c.recycles, c.slotsFailed,
		c.queueLength, c.backlog, c.overflows, c.drops,
		c.wInfo, c.wDispatched, c.wActive, c.wUnread, c.wBusy, c.wReclaimed, c.wRestarts, c.wStarted, c.wProcs, c.wCPU, c.wRSS,
	} {
		ch <- d
	}
}

// Collect reads the balancer's counters once per scrape.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter(c.accepted, s.Accepted)
	for errno, n := range s.AcceptErrors {
		counter(c.acceptErrors, n, errno)
	}
	counter(c.dispatched, s.Dispatched)
	counter(c.redispatched, s.Redispatched)
	counter(c.dropped, s.Dropped)
	gauge(c.pending, float64(s.Pending))
	gauge(c.admission, float64(s.Admission))
	gauge(c.inProgress, float64(s.InProgress))
	gauge(c.maxConns, float64(s.MaxConns))
	buckets := make(map[float64]uint64, len(s.PendingWait.Bounds))
	for i, b := range s.PendingWait.Bounds {
		buckets[b.Seconds()] = s.PendingWait.Buckets[i]
	}
	ch <- prometheus.MustNewConstHistogram(c.pendingWait, s.PendingWait.Count, s.PendingWait.Sum.Seconds(), buckets)
	counter(c.forked, s.Forked)
	counter(c.restarts, s.Restarts)
	for _, reason := range []string{"disconnect", "code", "signal"} {
		counter(c.exits, s.Exits[reason], reason) // zero series too, for rate()
	}
	for reason, n := range s.Exits {
		if reason != "disconnect" && reason != "code" && reason != "signal" {
			counter(c.exits, n, reason)
		}
	}
	counter(c.kills, s.ProtocolErrors, "protocol_error")
	counter(c.kills, s.StuckKills, "handoff_timeout")
	counter(c.kills, s.HeartbeatKills, "heartbeat")
	for _, reason := range []string{"requests", "lifetime", "memory"} {
		counter(c.recycles, s.Recycles[reason], reason) // zero series too, for rate()
	}
	gauge(c.slotsFailed, float64(s.FailedSlots))
	counter(c.reclaimed, s.Reclaimed)
	counter(c.stalls, s.Stalls)
	counter(c.listenErrors, s.ListenErrors)
	gauge(c.workers, float64(s.Workers))
	gauge(c.listening, float64(s.Listening))
	draining := 0.0
	if s.Draining {
		draining = 1
	}
	gauge(c.draining, draining)
	for _, q := range c.src.ListenQueues() {
		gauge(c.queueLength, float64(q.Length), q.Listener)
		gauge(c.backlog, float64(q.Backlog), q.Listener)
	}
	if overflows, drops, err := listenOverflows(); err == nil {
		counter(c.overflows, overflows)
		counter(c.drops, drops)
	}

	for _, w := range c.src.WorkerStats() {
		id := strconv.Itoa(w.ID)
		gauge(c.wInfo, 1, id, strconv.Itoa(w.PID), w.State.String())
		counter(c.wDispatched, w.Dispatched, id)
		gauge(c.wActive, float64(w.Active), id)
		gauge(c.wUnread, float64(w.Unread), id)
		if w.Serving {
			gauge(c.wBusy, float64(w.Busy), id)
		}
		counter(c.wReclaimed, w.Reclaimed, id)
		gauge(c.wRestarts, float64(w.Restarts), id)
		gauge(c.wStarted, float64(w.Started.UnixNano())/1e9, id)
		if w.GOMAXPROCS > 0 {
			gauge(c.wProcs, float64(w.GOMAXPROCS), id)
		}
		if w.Pinned {
			gauge(c.wCPU, float64(w.CPU), id)
		}
		if w.RSS > 0 {
			gauge(c.wRSS, float64(w.RSS), id)
		}
	}
}

// GET /metrics is cheap whoever asks and however often: the exposition is
// rendered at most once per metricsCacheTTL (one Stats call and one
// WorkerStats call on the balancer, whose lock dispatch takes), by one
// request while the others wait for its result, and every scrape then
// writes the same bytes. Scrapes are also paced to one per
// metricsInterval in all, by making them wait, which costs no CPU: a
// flood of scrapers, each waiting for its answer before it asks again,
// then costs the master's one P a bounded number of requests per second.
const (
	metricsCacheTTL = 250 * time.Millisecond
	metricsInterval = 10 * time.Millisecond // at most 100 scrapes a second
	metricsMaxWait  = time.Second           // a scrape that would wait longer gets 429
)

// metricsFormat is what GET /metrics serves: Prometheus text, which every
// scraper accepts, so one rendering serves them all.
var metricsFormat = expfmt.NewFormat(expfmt.TypeTextPlain)

// metricsHandler serves a Gatherer's metrics, rendered at most once per
// ttl and paced to one scrape per interval.
type metricsHandler struct {
	gather   prometheus.Gatherer
	ttl      time.Duration
	interval time.Duration
	maxWait  time.Duration
	now      func() time.Time // time.Now, or a fake in tests

	cur atomic.Pointer[exposition] // the latest rendering, or nil

	// renderMu is held while rendering: one rendering at a time, and a
	// request that waited for it uses its result.
	renderMu sync.Mutex

	// paceMu guards next; nothing blocks under it.
	paceMu sync.Mutex
	next   time.Time // when the next scrape may be answered
}

// exposition is one rendering of the metrics.
type exposition struct {
	body []byte
	at   time.Time // when it was rendered
	err  error     // from Gather, which may still have rendered something
}

func newMetricsHandler(g prometheus.Gatherer) *metricsHandler {
	return &metricsHandler{gather: g, ttl: metricsCacheTTL, interval: metricsInterval, maxWait: metricsMaxWait, now: time.Now}
}

func (h *metricsHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	wait, ok := h.reserve()
	if !ok {
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many scrapes; try again in a second", http.StatusTooManyRequests)
		return
	}
	if err := sleep(r.Context(), wait); err != nil {
		return // the client has gone
	}
	e := h.exposition()
	if e.err != nil && len(e.body) == 0 {
		http.Error(w, "gathering metrics: "+e.err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", string(metricsFormat))
	w.Header().Set("Content-Length", strconv.Itoa(len(e.body)))
	_, _ = w.Write(e.body)
}

// reserve takes the next free slot, one per interval, and returns how long
// to wait for it, or false if that is longer than maxWait.
func (h *metricsHandler) reserve() (time.Duration, bool) {
	h.paceMu.Lock()
	defer h.paceMu.Unlock()
	now := h.now()
	slot := h.next
	if slot.Before(now) {
		slot = now
	}
	wait := slot.Sub(now)
	if wait > h.maxWait {
		return 0, false
	}
	h.next = slot.Add(h.interval)
	return wait, true
}

// exposition returns a rendering at most ttl old, rendering it if need be.
func (h *metricsHandler) exposition() *exposition {
	if e := h.cur.Load(); e != nil && h.now().Sub(e.at) < h.ttl {
		return e
	}
	h.renderMu.Lock()
	defer h.renderMu.Unlock()
	if e := h.cur.Load(); e != nil && h.now().Sub(e.at) < h.ttl {
		return e // rendered while this one waited
	}
	e := h.render()
	h.cur.Store(e)
	return e
}

// render gathers and encodes every metric once. As promhttp does with
// ContinueOnError, what was gathered is served even if something failed.
func (h *metricsHandler) render() *exposition {
	mfs, err := h.gather.Gather()
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, metricsFormat)
	for _, mf := range mfs {
		if encErr := enc.Encode(mf); encErr != nil && err == nil {
			err = encErr
		}
	}
	return &exposition{body: buf.Bytes(), at: h.now(), err: err}
}

// sleep waits for d, or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// netstatPath is where the kernel counts listen overflows and drops, for
// the network namespace of the reader.
const netstatPath = "/proc/net/netstat"

// listenOverflows reads ListenOverflows and ListenDrops from the TcpExt
// lines of /proc/net/netstat: a line of names, then a line of values.
func listenOverflows() (overflows, drops uint64, err error) {
	b, err := os.ReadFile(netstatPath)
	if err != nil {
		return 0, 0, err
	}
	lines := strings.Split(string(b), "\n")
	for i := 0; i+1 < len(lines); i++ {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) == 0 || names[0] != "TcpExt:" || len(values) != len(names) || values[0] != "TcpExt:" {
			continue
		}
		found := 0
		for j, n := range names {
			switch n {
			case "ListenOverflows":
				overflows, err = strconv.ParseUint(values[j], 10, 64)
				found++
			case "ListenDrops":
				drops, err = strconv.ParseUint(values[j], 10, 64)
				found++
			}
			if err != nil {
				return 0, 0, err
			}
		}
		if found == 2 {
			return overflows, drops, nil
		}
	}
	return 0, 0, errors.New("no ListenOverflows and ListenDrops in " + netstatPath)
}
