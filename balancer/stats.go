package balancer

import (
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Stats are the master's counters since New.
type Stats struct {
	Accepted       uint64            // connections accepted
	AcceptErrors   map[string]uint64 // failed accept4 calls, by errno name (EMFILE, ...)
	Dispatched     uint64            // handoffs sent to workers, re-dispatches included
	Redispatched   uint64            // connections handed to another worker after a failure
	Dropped        uint64            // connections closed because the pending queue was full
	Pending        int               // connections waiting for a worker now
	Forked         uint64            // worker processes started
	Restarts       uint64            // unexpected worker exits that were restarted
	ProtocolErrors uint64            // workers killed for breaking the protocol
	BogusIDs       uint64            // acks, close reports and returns for connections a worker did not own
	StuckKills     uint64            // workers killed for not acking within HandoffTimeout
	ListenErrors   uint64            // workers' listen requests that failed
	Exits          map[string]uint64 // worker exits by reason: disconnect, code, signal
	Workers        int               // workers not yet exited
	Listening      int               // workers that can take connections now
	Draining       bool              // Shutdown has begun
}

// WorkerStats are one worker's counters.
type WorkerStats struct {
	ID         int
	PID        int
	State      State
	Started    time.Time
	Dispatched uint64 // connections handed to it
	Active     int    // handed to it and not yet closed
	Unacked    int    // handed to it and not yet acknowledged
	Restarts   int    // how many workers its slot had before it
	Acked      uint64 // connections it acknowledged
	Closed     uint64 // connections it reported closed
	AckLatency Histogram
}

// Stats returns the master's counters.
func (b *Balancer) Stats() Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := Stats{
		Accepted:       b.stats.accepted,
		Dispatched:     b.stats.dispatched,
		AcceptErrors:   make(map[string]uint64, len(b.stats.acceptErrors)),
		Redispatched:   b.stats.redispatched,
		Dropped:        b.stats.dropped,
		Pending:        b.pending,
		Forked:         b.stats.forked,
		Restarts:       b.stats.restarts,
		ProtocolErrors: b.stats.protocolErrors,
		BogusIDs:       b.stats.bogusIDs,
		StuckKills:     b.stats.stuckKills,
		ListenErrors:   b.stats.listenErrors,
		Exits:          make(map[string]uint64, len(b.stats.exits)),
		Workers:        len(b.workers),
		Draining:       b.stopping,
	}
	for r, n := range b.stats.exits {
		s.Exits[r] = n
	}
	for e, n := range b.stats.acceptErrors {
		s.AcceptErrors[unix.ErrnoName(e)] += n
	}
	for _, w := range b.workers {
		if w.state == StateListening && !w.broken {
			s.Listening++
		}
	}
	return s
}

// Stats returns the worker's counters.
func (w *Worker) Stats() WorkerStats {
	w.b.mu.Lock()
	defer w.b.mu.Unlock()
	return WorkerStats{
		ID:         w.id,
		PID:        w.pid,
		State:      w.state,
		Started:    w.born,
		Dispatched: w.stats.dispatched,
		Active:     len(w.conns),
		Unacked:    w.unacked,
		Restarts:   w.slot.restarts,
		Acked:      w.stats.acked,
		Closed:     w.stats.closed,
		AckLatency: w.stats.ackLatency,
	}
}

// stats are the master's counters, under Balancer.mu.
type stats struct {
	accepted       uint64
	acceptErrors   map[syscall.Errno]uint64
	redispatched   uint64
	dropped        uint64
	forked         uint64
	restarts       uint64
	protocolErrors uint64
	bogusIDs       uint64
	stuckKills     uint64
	dispatched     uint64
	listenErrors   uint64
	exits          map[string]uint64
}

func (s *stats) acceptError(e syscall.Errno) {
	if s.acceptErrors == nil {
		s.acceptErrors = make(map[syscall.Errno]uint64)
	}
	s.acceptErrors[e]++
}

// workerStats are one worker's counters, under Balancer.mu.
type workerStats struct {
	dispatched uint64
	acked      uint64
	closed     uint64
	ackLatency Histogram
}

// AckLatencyBuckets are the upper bounds of Histogram's buckets.
var AckLatencyBuckets = [...]time.Duration{
	10 * time.Microsecond, 25 * time.Microsecond, 50 * time.Microsecond, 100 * time.Microsecond,
	250 * time.Microsecond, 500 * time.Microsecond, time.Millisecond, 2500 * time.Microsecond,
	5 * time.Millisecond, 10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond, time.Second,
}

// Histogram counts handoff-to-ack latencies: Counts[i] is the number of
// observations ≤ AckLatencyBuckets[i] and > the bound before it; the last
// count is for those above every bound.
type Histogram struct {
	Counts [len(AckLatencyBuckets) + 1]uint64
	Sum    time.Duration
	Count  uint64
}

func (h *Histogram) observe(d time.Duration) {
	i := 0
	for i < len(AckLatencyBuckets) && d > AckLatencyBuckets[i] {
		i++
	}
	h.Counts[i]++
	h.Sum += d
	h.Count++
}
