package balancer

import (
	"syscall"
	"time"
)

// Stats are the master's counters since New.
type Stats struct {
	Accepted       uint64            // connections accepted
	AcceptErrors   map[string]uint64 // failed accept4 calls, by errno name (EMFILE, ...)
	Dispatched     uint64            // handoffs sent to workers, re-dispatches included
	Redispatched   uint64            // connections handed to another worker after a failure, a stall, an exit or a return
	Reclaimed      uint64            // connections taken back unread from a worker's sockets
	Dropped        uint64            // connections closed because the pending queue was full
	Gone           uint64            // queued connections closed because their client had gone
	Pending        int               // connections waiting for a worker now, or for room under MaxConns
	Admission      int               // of Pending, the new ones, queued while MaxConns is set (for room, or for a worker)
	InProgress     int               // connections handed to workers and not yet closed: what MaxConns caps
	MaxConns       int               // Options.MaxConns; 0 for no cap
	PendingWait    WaitHistogram     // how long connections handed to a worker from the pending queue had waited there
	Forked         uint64            // worker processes started
	Restarts       uint64            // unexpected worker exits that were restarted
	ProtocolErrors uint64            // workers killed for breaking the protocol
	BadReturns     uint64            // fds a worker handed back that were not connections of that listener
	Stalls         uint64            // times a worker was found not reading its connections
	StuckKills     uint64            // stalled workers killed for answering nothing within HandoffTimeout
	LostFDs        uint64            // frames whose fds the kernel dropped because the master was out of fds
	ListenErrors   uint64            // workers' listen requests that failed
	Exits          map[string]uint64 // worker exits by reason: disconnect, code, signal
	Recycles       map[string]uint64 // workers replaced by recycling, by reason: requests, lifetime, memory
	HeartbeatKills uint64            // workers killed for leaving a heartbeat ping unanswered for HeartbeatTimeout
	FailedSlots    int               // slots no longer restarted after a crash loop (MaxRestarts), until a Reload
	Workers        int               // workers not yet exited
	Listening      int               // workers that can take connections now
	Draining       bool              // Shutdown has begun
}

// WorkerStats are one worker's counters. Received and Closed come from the
// worker's own counter page, clamped to what is possible.
type WorkerStats struct {
	ID         int
	PID        int
	Slot       int // its place in the pool, from 0; a replacement takes its predecessor's
	State      State
	Started    time.Time
	Dispatched uint64 // connections handed to it
	Received   uint64 // connections it read off its sockets
	Reclaimed  uint64 // connections taken back from it unread
	Returned   uint64 // connections it handed back unaccepted
	Closed     uint64 // connections it closed
	Active     int    // handed to it and not yet closed, unread ones included
	Unread     int    // waiting in its sockets now
	Stalled    bool   // not reading: routed around until it answers a ping
	Restarts   int    // how many workers its slot had before it
	GOMAXPROCS int    // the GOMAXPROCS the master set in its environment; 0 if the user set it
	Pinned     bool   // it is pinned to one CPU (Options.CPUAffinity)
	CPU        int    // the CPU it is pinned to, if Pinned
	// Serving is true once the worker reports its requests in flight
	// (it serves HTTP through worker.Serve); Busy is then how many of
	// its connections have a request in flight, at most Active.
	Serving bool
	Busy    int
	// RSS is its resident memory in bytes, read from /proc when Stats
	// is called; 0 if it could not be read.
	RSS int64
	// LastPong is when it last answered a ping (of the heartbeat or of
	// the stall check); zero if it never did.
	LastPong time.Time
}

// WaitBuckets is the number of buckets of a WaitHistogram.
const WaitBuckets = 13

// pendingWaitBounds are WaitHistogram's bucket bounds: from 1ms, under
// which a connection waits for a worker that is merely busy, to 10s,
// past which clients give up.
var pendingWaitBounds = [WaitBuckets]time.Duration{
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second,
}

// WaitHistogram counts how long connections waited, in fixed buckets, in
// the form of a Prometheus histogram.
type WaitHistogram struct {
	Count   uint64                     // waits observed
	Sum     time.Duration              // their total
	Bounds  [WaitBuckets]time.Duration // the buckets' upper bounds, ascending
	Buckets [WaitBuckets]uint64        // Buckets[i]: the waits of at most Bounds[i] (cumulative)
}

// waitHistogram is WaitHistogram's live form, under Balancer.mu: each
// bucket counts only its own range, so an observation is one increment.
type waitHistogram struct {
	counts [WaitBuckets + 1]uint64 // the last: longer than every bound
	count  uint64
	sum    time.Duration
}

// observe counts one wait.
func (h *waitHistogram) observe(d time.Duration) {
	i := 0
	for i < WaitBuckets && d > pendingWaitBounds[i] {
		i++
	}
	h.counts[i]++
	h.count++
	h.sum += d
}

// export returns h as a WaitHistogram, with cumulative buckets.
func (h *waitHistogram) export() WaitHistogram {
	out := WaitHistogram{Count: h.count, Sum: h.sum, Bounds: pendingWaitBounds}
	var n uint64
	for i := range out.Buckets {
		n += h.counts[i]
		out.Buckets[i] = n
	}
	return out
}

// stats are the master's counters, under Balancer.mu.
type stats struct {
	accepted       uint64
	acceptErrors   map[syscall.Errno]uint64
	redispatched   uint64
	reclaimed      uint64
	dropped        uint64
	gone           uint64
	forked         uint64
	restarts       uint64
	protocolErrors uint64
	badReturns     uint64
	stalls         uint64
	stuckKills     uint64
	lostFDs        uint64
	dispatched     uint64
	listenErrors   uint64
	exits          map[string]uint64
	pendingWait    waitHistogram
	recycles       map[string]uint64
	heartbeatKills uint64
}

// acceptErrorLocked counts a failed accept4 by its errno.
func (s *stats) acceptErrorLocked(e syscall.Errno) {
	if s.acceptErrors == nil {
		s.acceptErrors = make(map[syscall.Errno]uint64)
	}
	s.acceptErrors[e]++
}

// ListenQueue is what the kernel holds in front of one of the master's
// TCP listening sockets, as Balancer.ListenQueues reads it.
type ListenQueue struct {
	Listener string // the bound address
	Length   int    // connections complete and not yet accepted (TCP_INFO tcpi_unacked)
	Backlog  int    // the most the kernel queues: the listen backlog (tcpi_sacked)
}
