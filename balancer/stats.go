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
	Pending        int               // connections waiting for a worker now
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
