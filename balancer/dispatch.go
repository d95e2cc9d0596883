//go:build linux

package balancer

import (
	"encoding/json"
	"errors"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/ipc"
	"github.com/handoff-go/handoff/scm"
	"golang.org/x/sys/unix"
)

// This file is the per-connection path of the master:
// accept (listener.go) → accepted → choose (pickLocked) → send and close
// (flushLocked) — and its failure half: the pending queue, and reclaim
// (reclaimLocked), which takes back from a worker's end of its conns
// socket what the worker never read, and dispatches it again.

// How long a worker whose conns socket is full gets no new connections.
const blockedFor = 5 * time.Millisecond

// maxPendingRetry bounds the pending queue's retry interval, which doubles
// from 1ms while connections wait; each retry also closes those whose
// client has gone.
const maxPendingRetry = 100 * time.Millisecond

// accepted dispatches a batch of freshly accepted connections.
func (b *Balancer) accepted(l *listener, hs []ipc.Handoff) {
	b.mu.Lock()
	b.stats.accepted += uint64(len(hs))
	b.admitLocked(l, hs)
	b.mu.Unlock()
}

// dispatchLocked gives every connection to a worker, or queues it. The
// master's copies of the fds sent are closed once every send is done,
// in one close_range per run of numbers. Connections whose send failed
// are dispatched again; the worker that failed is excluded by then, so
// this ends, at worst with every connection pending.
//
// fresh says the connections are new, and so held under Options.MaxConns;
// those taken back from a worker are not. since, if not nil, is parallel
// to hs: when each was first queued (drainQueueLocked).
func (b *Balancer) dispatchLocked(l *listener, hs []ipc.Handoff, since []int64, fresh bool) {
	for len(hs) > 0 {
		hs = b.dispatchOnceLocked(l, hs, since, fresh)
		since = nil // retries, after a failed send, count their wait afresh
	}
	scm.CloseFDs(b.sentFDs)
	b.sentFDs = b.sentFDs[:0]
}

// dispatchOnceLocked assigns connections to workers in batches, sends
// every batch, and returns those of the batches that could not be sent.
func (b *Balancer) dispatchOnceLocked(l *listener, hs []ipc.Handoff, since []int64, fresh bool) (retry []ipc.Handoff) {
	now := time.Now()
	room := b.roomLocked(fresh) // once a batch; -1 for no cap
	l.touched = l.touched[:0]
	for i := range hs {
		var at int64 // when hs[i] was first queued; 0 if never
		if since != nil {
			at = since[i]
		}
		if room == 0 {
			b.holdLocked(l, hs[i], queuedSince(at, now))
			continue
		}
		w := b.pickLocked(l, &hs[i], now)
		if w == nil {
			b.pendLocked(l, hs[i], queuedSince(at, now), fresh)
			continue
		}
		if room > 0 {
			room--
		}
		if at != 0 {
			b.stats.pendingWait.observe(time.Duration(mono(now) - at))
		}
		k := w.links[l]
		if len(k.out) == 0 {
			l.touched = append(l.touched, k)
		}
		k.out = append(k.out, hs[i])
		if len(k.out) >= w.frameFDs() {
			retry = append(retry, b.flushLocked(k, now)...)
		}
	}
	for _, k := range l.touched {
		retry = append(retry, b.flushLocked(k, now)...)
	}
	return retry
}

// pickLocked asks the listener's policy to choose for h among the workers
// that can take a connection now. Each worker's counts include what the
// dispatch under way has put in its batch, so that a batch of accepted
// connections does not all go to the worker that was least loaded before
// it. Serving, Busy and Idle are read once from the page, and clamped to
// the connections the worker holds, as Worker.Stats does.
func (b *Balancer) pickLocked(l *listener, h *ipc.Handoff, now time.Time) *Worker {
	l.loads = l.loads[:0]
	var only *Worker
	for _, w := range l.workers {
		out := len(w.links[l].out)
		unread := w.unreadLocked() + out
		if unread >= b.opts.MaxUnread || now.Before(w.blockedUntil) {
			continue
		}
		active := w.activeLocked() + out
		load := WorkerLoad{ID: w.id, Slot: w.slot.index, Active: active, Unread: unread}
		if w.ctr.Serving.Load() == 1 {
			load.Serving = true
			load.Busy = min(int(w.ctr.Busy.Load()), active-unread)
			load.Idle = min(int(w.ctr.Idle.Load()), active-unread-load.Busy)
		}
		l.loads = append(l.loads, load)
		only = w
	}
	switch len(l.loads) {
	case 0:
		return nil
	case 1:
		_ = l.policy.Pick(l.connLocked(h), l.loads) // keep its rotation state current
		return only
	}
	i := l.policy.Pick(l.connLocked(h), l.loads)
	if i < 0 || i >= len(l.loads) {
		i = 0
	}
	id := l.loads[i].ID
	for _, w := range l.workers {
		if w.id == id {
			return w
		}
	}
	return nil
}

// flushLocked sends k's batch in one frame, and queues the master's copies
// of its fds to be closed. On failure the worker is blocked for a moment
// (or for good, if its socket is broken) and the connections are returned
// for re-dispatch: nothing is dropped.
func (b *Balancer) flushLocked(k *link, now time.Time) []ipc.Handoff {
	hs := k.out
	k.out = k.out[:0]
	if len(hs) == 0 {
		return nil
	}
	w := k.w
	err := k.send.TrySend(k.l.id, hs)
	if err == nil {
		k.maxFrame = max(k.maxFrame, len(hs))
		for i := range hs {
			b.sentFDs = append(b.sentFDs, int(hs[i].FD))
		}
		w.sent += uint64(len(hs))
		b.stats.dispatched += uint64(len(hs))
		b.armStallCheckLocked()
		return nil
	}
	switch {
	case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.ENOBUFS), errors.Is(err, unix.ETOOMANYREFS):
		// Full, or too many fds in flight for this user: try others.
		w.blockedUntil = now.Add(blockedFor)
		b.armPendingLocked()
	default:
		// EPIPE, ECONNRESET...: the socket is broken for good. The
		// worker gets nothing more and is killed (a signal does not
		// block); its exit brings back what it never read.
		b.failLocked(w)
		_ = w.Kill(syscall.SIGKILL)
	}
	if b.badLogLimit.allow() {
		w.log.Warn().Err(err).Int("conns", len(hs)).Msg("handoff failed; re-dispatching")
	}
	b.stats.redispatched += uint64(len(hs))
	return append([]ipc.Handoff(nil), hs...)
}

// pendLocked queues h, first queued at since, until a worker can take it
// (in l.admit if it is fresh and a cap is set), or closes it past
// Options.MaxPending.
func (b *Balancer) pendLocked(l *listener, h ipc.Handoff, since int64, fresh bool) {
	if b.stopping && len(b.workers) == 0 {
		closeFD(int(h.FD))
		return
	}
	// The fd is already the master's: queueing it takes no room. What
	// bounds the queue by the fd table is the accept loop's reserve.
	// MaxPending bounds what new connections may add: one taken back
	// from a worker (fresh false) was a client already being served, is
	// bounded by what workers held (MaxUnread each), and is kept even
	// past it, so that a queue full of new clients waiting under
	// MaxConns, or for a worker, never closes it.
	if fresh && b.pending >= b.opts.MaxPending {
		closeFD(int(h.FD))
		b.stats.dropped++
		if b.dropLogLimit.allow() {
			b.log.Error().Int("max_pending", b.opts.MaxPending).Int("pending", b.pending).Uint64("dropped_total", b.stats.dropped).
				Msg("no worker can take connections and the pending queue is full (or the master's fds are); closing new connections")
		}
		return
	}
	q := &l.pending
	if fresh && b.opts.MaxConns > 0 {
		q = &l.admit
	}
	q.push(h, since)
	b.pending++
	b.armPendingLocked()
}

// armPendingLocked makes sure pending connections are retried soon even if
// no new worker comes to trigger it.
func (b *Balancer) armPendingLocked() {
	if b.pendArmed {
		return
	}
	b.pendArmed = true
	b.pendDelay = min(max(2*b.pendDelay, time.Millisecond), maxPendingRetry)
	b.pendTimer.Reset(b.pendDelay)
}

func (b *Balancer) retryPending() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pendArmed = false
	// Close queued connections whose client left first: that frees fds,
	// for taking back what dead workers never read.
	for _, l := range b.listeners {
		for _, q := range [...]*handoffQueue{&l.pending, &l.admit} {
			var n int
			n, l.pollBuf = q.prune(l.pollBuf)
			b.pending -= n
			b.stats.gone += uint64(n)
		}
	}
	b.reclaimOrphansLocked()
	if b.pending == 0 {
		if len(b.orphans) > 0 {
			b.armPendingLocked()
		} else {
			b.pendDelay = 0
		}
		return
	}
	for _, l := range b.listeners {
		b.drainPendingLocked(l)
	}
	if b.pending > 0 || len(b.orphans) > 0 {
		b.armPendingLocked()
	}
	if b.pending == 0 {
		b.pendDelay = 0
	}
}

// drainPendingLocked dispatches l's queued connections, oldest first:
// those taken back from workers, then the new ones that MaxConns holds,
// as far as it lets them in.
func (b *Balancer) drainPendingLocked(l *listener) {
	if len(l.workers) == 0 {
		return
	}
	b.drainQueueLocked(l, &l.pending, false)
	b.admitOldestLocked() // every listener's, oldest first
	if b.pending == 0 {
		b.pendDelay = 0
	}
}

// drainQueueLocked dispatches q, one of l's queues, whose connections are
// fresh or not as dispatchLocked has it.
func (b *Balancer) drainQueueLocked(l *listener, q *handoffQueue, fresh bool) {
	if q.len() == 0 {
		return
	}
	n := q.len()
	if fresh && b.opts.MaxConns > 0 {
		// Only as many as may go in: the rest keep their place.
		if n = b.roomLocked(true); n == 0 {
			return
		}
	}
	hs, since := q.takeN(n)
	b.pending -= len(hs)
	b.dispatchLocked(l, hs, since, fresh)
}

// dropPendingLocked closes l's queued connections, at Shutdown.
func (b *Balancer) dropPendingLocked(l *listener) {
	hs, _ := l.pending.take()
	more, _ := l.admit.take()
	hs = append(hs, more...)
	for _, h := range hs {
		closeFD(int(h.FD))
		b.pending--
		b.stats.dropped++
	}
	if len(hs) > 0 {
		b.log.Warn().Int("conns", len(hs)).Str("listener", l.bound.String()).Msg("shut down with connections no worker took; closed them")
	}
}

// routeLocked makes w a candidate on each of its listeners if it can take
// connections now, and takes it out of every candidate list otherwise.
// It is the one place that decides; call it after any change that
// routable depends on.
func (b *Balancer) routeLocked(w *Worker) {
	ok := w.routableLocked()
	for l := range w.links {
		if ok {
			l.addWorkerLocked(w)
		} else {
			l.removeWorkerLocked(w)
		}
	}
}

// removeWorkerLocked takes w out of l's workers.
func (l *listener) removeWorkerLocked(w *Worker) {
	for i, x := range l.workers {
		if x == w {
			l.workers = append(l.workers[:i:i], l.workers[i+1:]...)
			return
		}
	}
}

// addWorkerLocked adds w to l's workers, keeping them in id order; a worker
// already there stays once.
func (l *listener) addWorkerLocked(w *Worker) {
	i := len(l.workers)
	for i > 0 && l.workers[i-1].id >= w.id {
		if l.workers[i-1] == w {
			return
		}
		i--
	}
	l.workers = append(l.workers, nil)
	copy(l.workers[i+1:], l.workers[i:])
	l.workers[i] = w
}

// reclaimLocked takes back every frame the worker has not read from k's
// worker end and dispatches its connections again, to other workers if
// k's worker is no longer routable. It reads only while the master has
// room for a whole frame's fds; it reports whether the socket is empty.
func (b *Balancer) reclaimLocked(k *link) bool {
	w := k.w
	var m ipc.Message
	room := func() bool { return b.room.For(k.maxFrame + b.fdReserve) }
	for {
		err := k.recv.Recv(&m, false, room)
		switch {
		case err == nil:
		case errors.Is(err, unix.EAGAIN):
			return true
		case errors.Is(err, scm.ErrNoRoom):
			if b.badLogLimit.allow() {
				w.log.Error().Msg("no fd room to take back a worker's unread connections; will retry")
			}
			return false
		case errors.Is(err, ipc.ErrFDsLost):
			// Room was checked; something else took the fds meanwhile.
			n := uint64(len(m.Handoffs))
			w.reclaimed += n
			b.stats.lostFDs += n
			if b.badLogLimit.allow() {
				w.log.Error().Err(err).Uint64("conns", n).Msg("connections lost while taking back a worker's unread ones")
			}
			continue
		default:
			// Only the master writes this socket, so this cannot happen;
			// say so rather than spin.
			if b.badLogLimit.allow() {
				w.log.Error().Err(err).Msg("taking back a worker's unread connections failed")
			}
			return true
		}
		n := uint64(len(m.Handoffs))
		b.room.Took(len(m.Handoffs))
		w.reclaimed += n
		b.stats.reclaimed += n
		b.stats.redispatched += n
		hs := append(k.l.reclaimBuf[:0], m.Handoffs...)
		b.dispatchLocked(k.l, hs, nil, false)
		k.l.reclaimBuf = hs[:0]
	}
}

// dropLinkLocked takes k away from its worker: no more routing there, and
// what the worker never read goes elsewhere. The sockets close once
// empty; a link still holding connections for lack of fd room is kept as
// an orphan and retried.
func (b *Balancer) dropLinkLocked(k *link) {
	w := k.w
	if w.links[k.l] == k {
		delete(w.links, k.l)
		k.l.removeWorkerLocked(w)
		b.notifyLocked()
	}
	if !b.reclaimLocked(k) {
		b.orphans = append(b.orphans, k)
		b.armPendingLocked()
		return
	}
	k.close()
}

// reclaimOrphansLocked retries the links whose reclaim ran out of room.
func (b *Balancer) reclaimOrphansLocked() {
	left := b.orphans[:0]
	for _, k := range b.orphans {
		if b.reclaimLocked(k) {
			k.close()
		} else {
			left = append(left, k)
		}
	}
	clear(b.orphans[len(left):])
	b.orphans = left
}

// readLoop reads the frames a worker sends until its control socket
// closes. A worker that breaks the protocol is logged and killed; the
// connections it never read go to other workers.
func (b *Balancer) readLoop(w *Worker) {
	var m ipc.Message
	for {
		fds, err := w.ctl.Read(&m)
		if err != nil {
			switch {
			case errors.Is(err, ipc.ErrFDsLost):
				// The master is at its fd limit: not the worker's fault.
				b.mu.Lock()
				b.stats.lostFDs++
				b.mu.Unlock()
				if b.badLogLimit.allow() {
					w.log.Error().Err(err).Msg("fds from a worker were lost: the master is out of fds")
				}
				continue
			case ipc.IsProtocolError(err):
				b.misbehaved(w, err.Error())
				continue
			}
			return // EOF, or closed by waitExit
		}
		switch m.Kind {
		case ipc.KindHello:
			b.hello(w)
		case ipc.KindListen:
			b.listenRequest(w, m.Req, m.Network, m.Address)
		case ipc.KindReturn:
			b.returned(w, m.Listener, fds)
		case ipc.KindPong:
			b.pong(w)
		case ipc.KindUser:
			if !json.Valid(m.Payload) {
				b.misbehaved(w, "message is not valid JSON")
				continue
			}
			if !b.events.push(MessageEvent{Worker: w, Payload: m.Payload}) {
				b.misbehaved(w, "message flood: event queue full")
			}
		default:
			closeFDs(fds)
			b.misbehaved(w, "unexpected frame kind "+m.Kind.String())
		}
	}
}

// misbehaved kills a worker that broke the protocol.
func (b *Balancer) misbehaved(w *Worker, why string) {
	b.mu.Lock()
	b.stats.protocolErrors++
	b.failLocked(w)
	b.mu.Unlock()
	if b.badLogLimit.allow() {
		w.log.Error().Str("reason", why).Msg("worker broke the control protocol; killing it")
	}
	_ = w.Kill(syscall.SIGKILL)
}

func (b *Balancer) hello(w *Worker) {
	b.mu.Lock()
	first := w.state == StateStarting
	if first {
		w.state = StateOnline
		b.notifyLocked()
	}
	b.mu.Unlock()
	if first {
		w.log.Debug().Msg("worker online")
		b.events.push(OnlineEvent{Worker: w})
	}
}

// listenRequest opens or shares a listener for the worker, makes the
// worker's conns socket for it, and sends the worker its end in the reply
// before routing any connection to it.
func (b *Balancer) listenRequest(w *Worker, req uint32, network, address string) {
	l, err := b.findOrOpen(network, address)
	if err == nil {
		b.mu.Lock()
		if w.links[l] != nil {
			err = &net.OpError{Op: "listen", Net: network, Addr: l.bound, Err: os.NewSyscallError("bind", syscall.EADDRINUSE)}
		}
		b.mu.Unlock()
	}
	var k *link
	if err == nil {
		k, err = newLink(w, l)
	}
	if err != nil {
		b.mu.Lock()
		b.stats.listenErrors++
		b.mu.Unlock()
		if b.badLogLimit.allow() {
			w.log.Warn().Err(err).Str("network", network).Str("address", address).Msg("worker's listen failed")
		}
		_ = w.ctl.WriteFrame(listenErrorReply(req, address, err), nil)
		return
	}
	var werr error
	if err := k.recv.Fd(func(fd int) {
		werr = w.ctl.WriteFrame(ipc.AppendListenReply(nil, req, l.id, 0, l.bound.String(), "", ""), []int{fd})
	}); err != nil {
		werr = err
	}
	if werr != nil {
		// Say so, without the fd (ETOOMANYREFS: too many fds in flight
		// for this user), rather than leave the worker waiting.
		k.close()
		b.mu.Lock()
		b.stats.listenErrors++
		b.mu.Unlock()
		if b.badLogLimit.allow() {
			w.log.Warn().Err(werr).Str("address", l.bound.String()).Msg("sending a worker its conns socket failed")
		}
		_ = w.ctl.WriteFrame(listenErrorReply(req, address, &net.OpError{Op: "listen", Net: network, Addr: l.bound, Err: werr}), nil)
		return
	}
	b.mu.Lock()
	if w.state >= StateDisconnecting || w.links[l] != nil {
		b.mu.Unlock()
		k.close()
		return
	}
	w.links[l] = k
	if w.state < StateListening {
		w.state = StateListening
		w.listened = time.Now() // its uptime counts from here; see backoffLocked
	}
	b.routeLocked(w)
	b.drainPendingLocked(l)
	b.notifyLocked()
	b.mu.Unlock()
	w.log.Info().Str("address", l.bound.String()).Msg("worker listening")
	b.events.push(ListeningEvent{Worker: w, Network: l.network, Address: l.bound.String()})
}

// listenErrorReply encodes err as a failed ListenReply, so that the
// worker's net.Listen returns the error the master's gave.
func listenErrorReply(req uint32, address string, err error) []byte {
	var errno syscall.Errno
	var sysErr *os.SyscallError
	call := ""
	if errors.As(err, &sysErr) {
		call = sysErr.Syscall
	}
	errors.As(err, &errno)
	text := err.Error()
	if oe, ok := err.(*net.OpError); ok {
		text = oe.Err.Error()
	}
	return ipc.AppendListenReply(nil, req, 0, uint32(errno), address, call, text)
}

// returned handles a Return frame: the worker stopped listening on the
// listener, and hands back the connections it had read but not accepted.
// Each fd is checked to be a connection accepted on that listener, and
// its client address is taken from the kernel, not from the worker; what
// fails the check is closed and counted. Then whatever the worker never
// read is reclaimed, and all of it goes to other workers.
func (b *Balancer) returned(w *Worker, lid uint32, fds []int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	l := b.listenerByIDLocked(lid)
	// No longer routed there first, so what comes back goes elsewhere.
	if l != nil && w.links[l] != nil {
		b.dropLinkLocked(w.links[l])
	}
	// A worker hands back at most the connections it holds, each once.
	held := int(w.heldLocked())
	var hs []ipc.Handoff
	seen := make(map[[2]uint64]bool, len(fds))
	for _, fd := range fds {
		h, id, ok := checkReturned(l, fd)
		if !ok || seen[id] || len(hs) >= held {
			closeFD(fd)
			b.stats.badReturns++
			continue
		}
		seen[id] = true
		hs = append(hs, h)
	}
	if n := len(fds) - len(hs); n > 0 && b.badLogLimit.allow() {
		w.log.Warn().Int("fds", n).Msg("worker returned fds that are not connections of that listener, or the same one twice; closed them")
	}
	n := uint64(len(hs))
	w.returned += n
	b.stats.redispatched += n
	if l != nil && len(hs) > 0 {
		b.dispatchLocked(l, hs, nil, false)
	}
}

// pong handles a worker's answer to a ping: a stalled worker that answers,
// has fd room and has an Accept waiting is routed again; see stall.go.
func (b *Balancer) pong(w *Worker) {
	b.mu.Lock()
	w.lastPong = time.Now()
	if w.health == stalled && w.ctr.NoRoom.Load() == 0 && w.ctr.Readers.Load() > 0 {
		b.unstallLocked(w)
	}
	b.mu.Unlock()
}

func closeFD(fd int) { _ = unix.Close(fd) }

func closeFDs(fds []int) {
	for _, fd := range fds {
		closeFD(fd)
	}
}
