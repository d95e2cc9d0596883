package balancer

import (
	"encoding/json"
	"errors"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/ipc"
	"golang.org/x/sys/unix"
)

// This file is the per-connection path of the master:
// accept (listener.go) → accepted → choose (pickLocked) → send
// (flushLocked) → ack and close (report) — and what happens when a step
// fails: the pending queue and re-dispatch.

// How long a worker whose control socket is full gets no new connections.
const blockedFor = 5 * time.Millisecond

// accepted dispatches a batch of freshly accepted fds.
func (b *Balancer) accepted(l *listener, fds []int) {
	b.mu.Lock()
	b.stats.accepted += uint64(len(fds))
	b.dispatchLocked(l, fds)
	b.mu.Unlock()
}

// dispatchLocked gives every fd to a worker, or queues it. The master
// keeps each fd until the worker acknowledges it. Fds whose send failed
// are dispatched again; the worker that failed is excluded by then, so
// this ends, at worst with every fd pending.
func (b *Balancer) dispatchLocked(l *listener, fds []int) {
	for len(fds) > 0 {
		fds = b.dispatchOnceLocked(l, fds)
	}
}

// dispatchOnceLocked assigns fds to workers in batches, sends every batch,
// and returns the fds of the batches that could not be sent.
func (b *Balancer) dispatchOnceLocked(l *listener, fds []int) (retry []int) {
	now := time.Now()
	l.touched = l.touched[:0]
	for _, fd := range fds {
		w := b.pickLocked(l, now)
		if w == nil {
			b.pendLocked(l, fd)
			continue
		}
		if len(w.outIDs) == 0 {
			l.touched = append(l.touched, w)
		}
		b.nextConn++
		w.outIDs = append(w.outIDs, b.nextConn)
		w.outFDs = append(w.outFDs, fd)
		if len(w.outIDs) == ipc.MaxConns {
			retry = append(retry, b.flushLocked(l, w, now)...)
		}
	}
	for _, w := range l.touched {
		retry = append(retry, b.flushLocked(l, w, now)...)
	}
	return retry
}

// pickLocked asks the listener's policy to choose among the workers that
// can take a connection now.
func (b *Balancer) pickLocked(l *listener, now time.Time) *Worker {
	l.loads = l.loads[:0]
	var only *Worker
	for _, w := range l.workers {
		if w.unacked+len(w.outIDs) >= b.opts.MaxUnacked || now.Before(w.blockedUntil) {
			continue
		}
		l.loads = append(l.loads, WorkerLoad{ID: w.id, Active: len(w.conns) + len(w.outIDs)})
		only = w
	}
	switch len(l.loads) {
	case 0:
		return nil
	case 1:
		_ = l.policy.Pick(l.loads) // keep its rotation state current
		return only
	}
	i := l.policy.Pick(l.loads)
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

// flushLocked sends w's batch in one frame. On failure the worker is
// blocked for a moment (or for good, if its socket is broken) and the fds
// are returned for re-dispatch: nothing is dropped.
func (b *Balancer) flushLocked(l *listener, w *Worker, now time.Time) []int {
	ids, fds := w.outIDs, w.outFDs
	w.outIDs, w.outFDs = w.outIDs[:0], w.outFDs[:0]
	if len(ids) == 0 {
		return nil
	}
	err := w.ctl.TryWriteConns(l.id, ids, fds)
	if err == nil {
		if w.unacked == 0 {
			w.ackDeadline = now.Add(b.opts.HandoffTimeout)
		}
		sent := int64(now.Sub(b.epoch))
		for i, id := range ids {
			w.conns[id] = connRec{fd: int32(fds[i]), listener: l.id, sent: sent}
		}
		w.unacked += len(ids)
		w.stats.dispatched += uint64(len(ids))
		b.stats.dispatched += uint64(len(ids))
		return nil
	}
	switch {
	case errors.Is(err, ipc.ErrBusy), errors.Is(err, unix.EAGAIN), errors.Is(err, unix.ENOBUFS):
		w.blockedUntil = now.Add(blockedFor)
		b.armPendingLocked()
	default:
		// EPIPE, ECONNRESET, ETOOMANYREFS...: no more for this worker.
		// A broken socket means it is dying; its exit does the rest.
		if errors.Is(err, unix.ETOOMANYREFS) {
			w.blockedUntil = now.Add(blockedFor)
			b.armPendingLocked()
		} else {
			w.broken = true
			b.unrouteLocked(w)
		}
		if b.badLogLimit.allow() {
			w.log.Warn().Err(err).Int("conns", len(fds)).Msg("handoff failed; re-dispatching")
		}
	}
	b.stats.redispatched += uint64(len(fds))
	return append([]int(nil), fds...)
}

// pendLocked queues fd until a worker can take it, or closes it past
// Options.MaxPending.
func (b *Balancer) pendLocked(l *listener, fd int) {
	if b.stopping && len(b.workers) == 0 {
		closeFD(fd)
		return
	}
	if b.pending >= b.opts.MaxPending {
		closeFD(fd)
		b.stats.dropped++
		if b.dropLogLimit.allow() {
			b.log.Error().Int("max_pending", b.opts.MaxPending).Uint64("dropped_total", b.stats.dropped).
				Msg("no worker can take connections and the pending queue is full; closing new connections")
		}
		return
	}
	l.pending.push(fd)
	b.pending++
	b.armPendingLocked()
}

// armPendingLocked makes sure pending connections are retried soon even if
// no ack or new worker comes to trigger it.
func (b *Balancer) armPendingLocked() {
	if b.pendArmed {
		return
	}
	b.pendArmed = true
	b.pendDelay = min(max(2*b.pendDelay, time.Millisecond), 100*time.Millisecond)
	b.pendTimer.Reset(b.pendDelay)
}

func (b *Balancer) retryPending() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pendArmed = false
	if b.pending == 0 {
		b.pendDelay = 0
		return
	}
	for _, l := range b.listeners {
		b.drainPendingLocked(l)
	}
	if b.pending > 0 {
		b.armPendingLocked()
	}
}

// drainPendingLocked dispatches l's queued connections, oldest first.
func (b *Balancer) drainPendingLocked(l *listener) {
	if l.pending.len() == 0 || len(l.workers) == 0 {
		return
	}
	fds := l.pending.take()
	b.pending -= len(fds)
	b.dispatchLocked(l, fds)
	if b.pending == 0 {
		b.pendDelay = 0
	}
}

// dropPendingLocked closes l's queued connections, at Shutdown.
func (b *Balancer) dropPendingLocked(l *listener) {
	fds := l.pending.take()
	for _, fd := range fds {
		closeFD(fd)
		b.pending--
		b.stats.dropped++
	}
	if len(fds) > 0 {
		b.log.Warn().Int("conns", len(fds)).Str("listener", l.bound.String()).Msg("shut down with connections no worker took; closed them")
	}
}

// unrouteLocked stops routing new connections to w.
func (b *Balancer) unrouteLocked(w *Worker) {
	for l := range w.listening {
		l.removeWorker(w)
	}
}

func (l *listener) removeWorker(w *Worker) {
	for i, x := range l.workers {
		if x == w {
			l.workers = append(l.workers[:i:i], l.workers[i+1:]...)
			return
		}
	}
}

// addWorker adds w to l's workers, keeping them in id order.
func (l *listener) addWorker(w *Worker) {
	i := len(l.workers)
	for i > 0 && l.workers[i-1].id > w.id {
		i--
	}
	l.workers = append(l.workers, nil)
	copy(l.workers[i+1:], l.workers[i:])
	l.workers[i] = w
}

// readLoop reads the frames a worker sends until its control socket
// closes. A worker that breaks the protocol is logged and killed; the
// connections it never acknowledged go to other workers once it is dead.
func (b *Balancer) readLoop(w *Worker) {
	var m ipc.Message
	for {
		fds, err := w.ctl.Read(&m)
		if err != nil {
			switch {
			case errors.Is(err, ipc.ErrFDsLost):
				// The master is at its fd limit: not the worker's fault.
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
		case ipc.KindReport:
			b.report(w, m.IDs, m.Closed)
		case ipc.KindReturn:
			b.returned(w, m.Listener, m.IDs, fds)
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
	w.broken = true
	b.unrouteLocked(w)
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

// listenRequest opens or shares a listener for the worker and replies
// before routing any connection to it, so the reply comes first.
func (b *Balancer) listenRequest(w *Worker, req uint32, network, address string) {
	l, err := b.listener(network, address)
	if err != nil {
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
		b.mu.Lock()
		b.stats.listenErrors++
		b.mu.Unlock()
		if b.badLogLimit.allow() {
			w.log.Warn().Err(err).Str("network", network).Str("address", address).Msg("worker's listen failed")
		}
		_ = w.ctl.WriteFrame(ipc.AppendListenReply(nil, req, 0, uint32(errno), address, call, text), nil)
		return
	}
	if err := w.ctl.WriteFrame(ipc.AppendListenReply(nil, req, l.id, 0, l.bound.String(), "", ""), nil); err != nil {
		return
	}
	b.mu.Lock()
	if w.state >= StateDisconnecting || w.broken || w.listening[l] {
		b.mu.Unlock()
		return
	}
	w.listening[l] = true
	l.addWorker(w)
	if w.state < StateListening {
		w.state = StateListening
	}
	b.drainPendingLocked(l)
	b.notifyLocked()
	b.mu.Unlock()
	w.log.Info().Str("address", l.bound.String()).Msg("worker listening")
	b.events.push(ListeningEvent{Worker: w, Network: l.network, Address: l.bound.String()})
}

// report applies a worker's acks and close reports. Ids the worker does
// not own are ignored: they cannot touch another worker's connections.
func (b *Balancer) report(w *Worker, acked, closed []uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	bogus, real := 0, 0
	t := time.Now()
	now := int64(t.Sub(b.epoch))
	for _, id := range acked {
		rec, ok := w.conns[id]
		if !ok || rec.fd < 0 {
			bogus++
			continue
		}
		b.ackLocked(w, id, rec, now)
		real++
	}
	for _, id := range closed {
		rec, ok := w.conns[id]
		if !ok {
			bogus++
			continue
		}
		if rec.fd >= 0 { // closed before its ack arrived: that is an ack
			b.ackLocked(w, id, rec, now)
			real++
		}
		delete(w.conns, id)
		w.stats.closed++
	}
	if bogus > 0 {
		b.stats.bogusIDs += uint64(bogus)
		if b.badLogLimit.allow() {
			w.log.Warn().Int("ids", bogus).Msg("worker reported connections it does not own; ignored")
		}
	}
	if real > 0 { // progress; bogus ids do not keep a stuck worker alive
		w.blockedUntil = time.Time{}
		w.ackDeadline = t.Add(b.opts.HandoffTimeout)
	}
	if b.pending > 0 {
		for l := range w.listening {
			b.drainPendingLocked(l)
		}
	}
}

func (b *Balancer) ackLocked(w *Worker, id uint64, rec connRec, now int64) {
	closeFD(int(rec.fd))
	rec.fd = -1
	w.conns[id] = rec
	w.unacked--
	w.stats.acked++
	w.stats.ackLatency.observe(time.Duration(now - rec.sent))
}

// returned handles a Return frame: the worker stopped listening on the
// listener, and hands back the connections it had queued but not accepted.
// Those go to other workers. Fds for ids it does not own are closed.
func (b *Balancer) returned(w *Worker, lid uint32, ids []uint64, fds []int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	l := b.listenerByID(lid)
	if l != nil && w.listening[l] {
		delete(w.listening, l)
		l.removeWorker(w)
		b.notifyLocked()
	}
	var redo []int
	for i, id := range ids {
		rec, ok := w.conns[id]
		if !ok || l == nil || rec.listener != lid {
			closeFD(fds[i])
			b.stats.bogusIDs++
			continue
		}
		if rec.fd >= 0 {
			closeFD(int(rec.fd))
			w.unacked--
		}
		delete(w.conns, id)
		redo = append(redo, fds[i])
	}
	if len(redo) > 0 {
		b.stats.redispatched += uint64(len(redo))
		b.dispatchLocked(l, redo)
	}
}

// watchdog kills workers that hold handoffs without acknowledging any for
// Options.HandoffTimeout. Their connections go to other workers only after
// they are dead (waitExit), so no two processes ever read one connection.
func (b *Balancer) watchdog() {
	defer close(b.watchdogDone)
	tick := max(b.opts.HandoffTimeout/10, 10*time.Millisecond)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-b.watchdogStop:
			return
		}
		now := time.Now()
		var stuck []*Worker
		b.mu.Lock()
		for _, w := range b.workers {
			if w.unacked > 0 && now.After(w.ackDeadline) && w.state != StateDead && !w.stuck {
				w.stuck = true
				w.broken = true
				b.stats.stuckKills++
				b.unrouteLocked(w)
				stuck = append(stuck, w)
			}
		}
		b.mu.Unlock()
		for _, w := range stuck {
			w.log.Error().Dur("timeout", b.opts.HandoffTimeout).Msg("worker stopped acknowledging handoffs; killing it")
			_ = w.Kill(syscall.SIGKILL)
		}
	}
}

func closeFD(fd int) { _ = unix.Close(fd) }

func closeFDs(fds []int) {
	for _, fd := range fds {
		closeFD(fd)
	}
}
