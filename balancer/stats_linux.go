package balancer

import (
	"net"
	"slices"
	"syscall"

	"golang.org/x/sys/unix"
)

// Stats returns the master's counters.
func (b *Balancer) Stats() Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := Stats{
		Accepted:       b.stats.accepted,
		Dispatched:     b.stats.dispatched,
		AcceptErrors:   make(map[string]uint64, len(b.stats.acceptErrors)),
		Redispatched:   b.stats.redispatched,
		Reclaimed:      b.stats.reclaimed,
		Dropped:        b.stats.dropped,
		Gone:           b.stats.gone,
		Pending:        b.pending,
		Admission:      b.admissionQueuedLocked(),
		InProgress:     b.inProgressLocked(),
		MaxConns:       b.opts.MaxConns,
		PendingWait:    b.stats.pendingWait.export(),
		Forked:         b.stats.forked,
		Restarts:       b.stats.restarts,
		ProtocolErrors: b.stats.protocolErrors,
		BadReturns:     b.stats.badReturns,
		Stalls:         b.stats.stalls,
		StuckKills:     b.stats.stuckKills,
		LostFDs:        b.stats.lostFDs,
		ListenErrors:   b.stats.listenErrors,
		Exits:          make(map[string]uint64, len(b.stats.exits)),
		Recycles:       make(map[string]uint64, len(b.stats.recycles)),
		HeartbeatKills: b.stats.heartbeatKills,
		FailedSlots:    len(b.fleet.failed),
		Workers:        len(b.workers),
		Draining:       b.stopping,
	}
	for r, n := range b.stats.exits {
		s.Exits[r] = n
	}
	for r, n := range b.stats.recycles {
		s.Recycles[r] = n
	}
	for e, n := range b.stats.acceptErrors {
		s.AcceptErrors[unix.ErrnoName(e)] += n
	}
	for _, w := range b.workers {
		if w.routableLocked() {
			s.Listening++
		}
	}
	return s
}

// Stats returns the worker's counters.
func (w *Worker) Stats() WorkerStats {
	// /proc is read outside the lock. Until exited is closed the worker
	// is alive or reaped a moment ago, and a pid is reused only once the
	// kernel's pids wrap around: this is its own RSS.
	var rss int64
	select {
	case <-w.exited:
	default:
		rss, _ = residentBytes(w.pid)
	}
	w.b.mu.Lock()
	defer w.b.mu.Unlock()
	r := w.receivedLocked()
	held := r - min(w.returned, r)
	active := w.activeLocked() // once: the page's counters move meanwhile, and Busy is at most Active
	return WorkerStats{
		ID:         w.id,
		PID:        w.pid,
		Slot:       w.slot.index,
		State:      w.state,
		Started:    w.born,
		Dispatched: w.sent,
		Received:   r,
		Reclaimed:  w.reclaimed,
		Returned:   w.returned,
		Closed:     min(w.ctr.Closed.Load(), held),
		Active:     active,
		Unread:     w.unreadLocked(),
		Stalled:    w.health == stalled,
		Restarts:   w.slot.restarts,
		GOMAXPROCS: w.gomaxprocs,
		Pinned:     w.cpu >= 0,
		CPU:        max(w.cpu, 0),
		Serving:    w.ctr.Serving.Load() == 1,
		Busy:       min(int(w.ctr.Busy.Load()), active),
		RSS:        rss,
		LastPong:   w.lastPong,
	}
}

// ListenQueues reads, for every TCP listener, the connections waiting in
// the kernel's accept queue and its backlog: one getsockopt each, off the
// hot path (for a scrape). A Unix listener has no such figures.
func (b *Balancer) ListenQueues() []ListenQueue {
	b.mu.Lock()
	ls := slices.Clone(b.listeners)
	b.mu.Unlock()
	out := make([]ListenQueue, 0, len(ls))
	for _, l := range ls {
		if _, ok := l.bound.(*net.TCPAddr); !ok {
			continue
		}
		if n, max, err := listenQueue(l.rc); err == nil {
			out = append(out, ListenQueue{Listener: l.bound.String(), Length: n, Backlog: max})
		}
	}
	return out
}

// listenQueue reads a listening TCP socket's accept-queue length and
// backlog from TCP_INFO, where Linux puts them for a socket in LISTEN.
func listenQueue(rc syscall.RawConn) (length, backlog int, err error) {
	var info *unix.TCPInfo
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		info, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		return 0, 0, err
	}
	if gerr != nil {
		return 0, 0, gerr
	}
	return int(info.Unacked), int(info.Sacked), nil
}
