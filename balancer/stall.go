//go:build linux

package balancer

import (
	"time"
)

// A worker that does not read its conns socket (stopped, hung, or out of
// fds) is found by its counter page, with no frame and no syscall: if it
// has connections waiting in its sockets and the count of those it read
// has not moved for stallTicks checks stallTick apart (20 to 30ms), and
// the kernel confirms that its sockets hold unread data, it is stalled. A
// stalled worker gets no new connections, and what it never read is taken
// back at once and served by others (reclaimLocked): its clients wait
// milliseconds, not a timeout. It is then pinged on its control socket
// every stallTick, and routed again as soon as it answers while it has fd
// room and an Accept waiting (its page says both), so a worker that was
// only slow for a moment is back within a tick. One that answers nothing
// for Options.HandoffTimeout is killed.
const (
	stallTick  = 10 * time.Millisecond
	stallTicks = 3
)

// armStallCheckLocked makes sure the stall check runs within stallTick.
// The check runs only while some worker has unread connections or is
// stalled, so an idle master does not tick.
func (b *Balancer) armStallCheckLocked() {
	if !b.stallArmed {
		b.stallArmed = true
		b.stallTimer.Reset(stallTick)
	}
}

// checkStalls is the stall timer's function.
func (b *Balancer) checkStalls() {
	b.mu.Lock()
	b.stallArmed = false
	if b.closed {
		b.mu.Unlock()
		return
	}
	now := time.Now()
	again := false
	var kill []*Worker
	for _, w := range b.workers {
		// A disconnecting worker is routed nothing new, and drains what
		// it was sent; taking that back could leave it nowhere to go
		// (at Shutdown no worker takes new connections). If it never
		// reads it, its Return or its exit brings it back.
		if !w.watchedLocked() {
			continue
		}
		r := w.receivedLocked()
		unread := w.unreadLocked()
		switch {
		case r != w.lastReceived:
			w.lastReceived = r
			w.idleTicks, w.stalledSince = 0, time.Time{}
			if w.health == stalled {
				// Still routed around until it answers a ping, but
				// reading: its HandoffTimeout counts from now, not from
				// the zero time, which would kill it at the next tick.
				w.stalledSince = now
			}
		case unread > 0:
			w.idleTicks++
		default:
			w.idleTicks = 0
		}
		if w.health == healthy && w.idleTicks >= stallTicks && w.unreadInKernelLocked() {
			b.stallLocked(w, now)
		}
		if w.health == stalled {
			again = true
			if now.Sub(w.stalledSince) >= b.opts.HandoffTimeout && now.Sub(w.lastPong) >= b.opts.HandoffTimeout {
				b.stats.stuckKills++
				b.failLocked(w)
				kill = append(kill, w)
				continue
			}
			if w.unreadLocked() > 0 {
				for _, k := range w.links {
					b.reclaimLocked(k)
				}
			}
			_ = w.ctl.TryWriteFrame(b.pingBuf) // a full socket: the next tick pings again
		}
		if w.unreadLocked() > 0 {
			again = true
		}
	}
	if again {
		b.armStallCheckLocked()
	}
	b.mu.Unlock()
	for _, w := range kill {
		w.log.Error().Str("timeout", b.opts.HandoffTimeout.String()).Msg("worker stopped reading its connections and answers nothing; killing it")
		go w.killHung("handoff timeout") // ends within DumpWait
	}
}

// unreadInKernelLocked asks the kernel whether any of w's conns sockets
// holds what w has not read: its page could be late (a read whose count is
// not yet stored) or lie.
func (w *Worker) unreadInKernelLocked() bool {
	for _, k := range w.links {
		if n, err := k.send.Unsent(); err != nil || n > 0 {
			return true
		}
	}
	return false
}

// stallLocked takes w out of routing and takes back what it has not read.
func (b *Balancer) stallLocked(w *Worker, now time.Time) {
	if w.stalledSince.IsZero() {
		w.stalledSince = now
	}
	w.health = stalled
	w.idleTicks = 0
	b.stats.stalls++
	b.routeLocked(w)
	b.notifyLocked()
	n := w.reclaimed
	for _, k := range w.links {
		b.reclaimLocked(k) // what it cannot take for lack of room, the next check does
	}
	if b.badLogLimit.allow() {
		w.log.Warn().Uint64("reclaimed", w.reclaimed-n).Msg("worker is not reading its connections; routing around it")
	}
}

// unstallLocked routes a stalled worker again.
func (b *Balancer) unstallLocked(w *Worker) {
	w.health = healthy
	b.routeLocked(w)
	b.notifyLocked()
}

// failLocked takes w out of routing for good; the caller kills it.
func (b *Balancer) failLocked(w *Worker) {
	w.health = failed
	b.routeLocked(w)
}
