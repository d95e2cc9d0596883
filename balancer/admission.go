//go:build linux

package balancer

import (
	"context"
	"math"
	"time"

	"github.com/handoff-go/handoff/ipc"
)

// Admission control (Options.MaxConns): a cap on the connections in
// progress across all workers, those handed to a worker and not yet
// closed by it, unread ones included; the sum of Worker.Active.
//
// A new connection past the cap waits in its listener's admit queue,
// which the pending queue's bound (MaxPending) and prune cover as they
// cover the pending queue, and is dispatched, oldest first, once others
// have closed. The master learns of a close only from the worker's
// counter page, which no frame announces: while connections wait for
// room, a timer looks again every admitRetry. That costs one timer wakeup
// and a read of each worker's counters per tick, and no syscall: the
// prune, which polls every queued fd, stays on the pending queue's own
// slower schedule (armPendingLocked).
//
// Connections taken back from a worker (reclaimed from a dead or stalled
// one, or handed back by one that closed its listener) were admitted
// already: the sum stopped counting them when they were taken back, and
// counts them again once they are sent. They go to l.pending, not to the
// admit queue, and are dispatched before any new connection, so the cap
// never starves what a worker's failure put back.
//
// The in-progress sum is taken once per dispatch batch (O(workers)), and
// counted down as the batch assigns connections, not per connection.

// admitRetry is how often the master looks for room while connections
// wait for admission.
const admitRetry = time.Millisecond

// admission is the admit queues' retry; under Balancer.mu.
type admission struct {
	timer *time.Timer // runs retryAdmission
	armed bool        // timer is set
}

// monoEpoch is what mono counts from.
var monoEpoch = time.Now()

// mono is now as nanoseconds on the monotonic clock, for the queues'
// times, which a wall clock step must not make negative; never 0, which
// dispatchLocked's since would not tell from "not queued".
func mono(now time.Time) int64 { return int64(now.Sub(monoEpoch)) + 1 }

// queuedSince is at, when a connection was first queued, or now for one
// queued for the first time.
func queuedSince(at int64, now time.Time) int64 {
	if at != 0 {
		return at
	}
	return mono(now)
}

// initAdmission makes the admission timer, stopped; New calls it.
func (b *Balancer) initAdmission() {
	b.adm.timer = time.AfterFunc(time.Hour, b.retryAdmission)
	b.adm.timer.Stop()
}

// inProgressLocked is the number of connections handed to workers and
// not yet closed by them, unread ones included: what MaxConns caps.
func (b *Balancer) inProgressLocked() int {
	n := 0
	for _, w := range b.workers {
		n += w.activeLocked()
	}
	return n
}

// roomLocked is how many more fresh connections may be handed out now:
// -1 for no limit (no cap, or connections that are not fresh), else
// MaxConns less those in progress, at least 0.
func (b *Balancer) roomLocked(fresh bool) int {
	if !fresh || b.opts.MaxConns == 0 {
		return -1
	}
	return max(b.opts.MaxConns-b.inProgressLocked(), 0)
}

// admissionQueuedLocked is the number of new connections held under
// MaxConns, on every listener.
func (b *Balancer) admissionQueuedLocked() int {
	n := 0
	for _, l := range b.listeners {
		n += l.admit.len()
	}
	return n
}

// admitLocked dispatches freshly accepted connections, behind those that
// wait for admission already: with a cap and a queue, they join its tail
// and the queue is drained as far as the cap lets it.
func (b *Balancer) admitLocked(l *listener, hs []ipc.Handoff) {
	if b.opts.MaxConns == 0 || b.admissionQueuedLocked() == 0 {
		b.dispatchLocked(l, hs, nil, true)
		return
	}
	at := mono(time.Now())
	for i := range hs {
		b.holdLocked(l, hs[i], at)
	}
	b.admitOldestLocked()
}

// admitOldestLocked lets in as many of the admit queues' connections as
// the cap has room for, oldest first across every listener, so that a
// busy listener's new clients never pass another's older ones. Each round
// takes, from the listener whose queue has the oldest head, the run of
// its queue older than every other listener's head (at most the room),
// so one listener costs one round. It stops when the cap is reached,
// the queues of listeners with workers are empty, or a round let nobody
// in (no worker could take them now: they are queued again, and the
// pending retry or a worker's return brings them back).
func (b *Balancer) admitOldestLocked() {
	for {
		room := b.roomLocked(true)
		if room <= 0 {
			return
		}
		var first *listener
		next := int64(math.MaxInt64) // the oldest head of the others
		for _, x := range b.listeners {
			if x.admit.len() == 0 || len(x.workers) == 0 {
				continue
			}
			switch h := x.admit.oldest(); {
			case first == nil:
				first = x
			case h < first.admit.oldest():
				next = min(next, first.admit.oldest())
				first = x
			default:
				next = min(next, h)
			}
		}
		if first == nil {
			return
		}
		n := min(first.admit.olderThan(next), room)
		hs, since := first.admit.takeN(max(n, 1))
		b.pending -= len(hs)
		b.dispatchLocked(first, hs, since, true)
		if b.roomLocked(true) >= room {
			return
		}
	}
}

// holdLocked queues h, first queued at since, until the cap lets it in,
// and makes sure the cap is looked at again soon.
func (b *Balancer) holdLocked(l *listener, h ipc.Handoff, since int64) {
	b.pendLocked(l, h, since, true)
	if !b.adm.armed && l.admit.len() > 0 {
		b.adm.armed = true
		b.adm.timer.Reset(admitRetry)
	}
}

// retryAdmission dispatches what the admit queues hold as far as the cap
// now lets in, oldest first across the listeners, and looks again
// after admitRetry while connections still wait for room. Connections
// that wait for a worker rather than for room are the pending retry's.
func (b *Balancer) retryAdmission() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.adm.armed = false
	if b.closed || b.admissionQueuedLocked() == 0 {
		return
	}
	b.admitOldestLocked()
	if b.admissionQueuedLocked() > 0 && b.roomLocked(true) == 0 {
		b.adm.armed = true
		b.adm.timer.Reset(admitRetry)
	}
}

// minDrain is the least a worker may drain at Shutdown after awaitAdmission
// used up most of ShutdownTimeout.
const minDrain = time.Second

// drainTimeout is how long a disconnecting worker may drain after SIGTERM:
// ShutdownTimeout, but at Shutdown only what awaitAdmission left of it
// (at least minDrain), so that one --shutdown-timeout bounds the whole
// shutdown, as a service manager's stop timeout expects, cap or not.
func (b *Balancer) drainTimeout() time.Duration {
	b.mu.Lock()
	by := b.drainBy
	b.mu.Unlock()
	if by.IsZero() {
		return b.opts.ShutdownTimeout
	}
	return min(b.opts.ShutdownTimeout, max(time.Until(by), minDrain))
}

// admissionPoll is how often Shutdown looks whether the admit queues
// have emptied.
const admissionPoll = 10 * time.Millisecond

// awaitAdmission waits, at Shutdown, once nothing more is accepted, until
// the connections that MaxConns holds have gone to workers, or no worker
// can take them, or ShutdownTimeout or ctx ends: those clients were
// accepted, and draining the workers first would close them unserved.
// What is still queued then is closed with the pending queue.
func (b *Balancer) awaitAdmission(ctx context.Context) {
	if b.opts.MaxConns == 0 {
		return
	}
	b.mu.Lock()
	b.drainBy = time.Now().Add(b.opts.ShutdownTimeout) // see drainTimeout
	b.mu.Unlock()
	b.awaitQueue(ctx, b.opts.ShutdownTimeout, "shutting down: connections still wait under max-conns; closing them",
		func(routable, _ int) (int, bool) {
			n := b.admissionQueuedLocked()
			return n, n > 0 && routable > 0
		})
}

// awaitPending waits, at Shutdown, while connections wait in the pending
// queue, no worker can take them, and a worker that is only stalled (routed
// around until it answers a ping) is still watched: under load a worker
// can be slow to read for a few checks, and draining it now would leave
// what waits for it with no taker, to be closed. It waits up to
// HandoffTimeout, after which a stalled worker that answers nothing is
// killed anyway.
func (b *Balancer) awaitPending(ctx context.Context) {
	b.awaitQueue(ctx, b.opts.HandoffTimeout, "shutting down: connections still wait for a stalled worker; draining anyway",
		func(routable, stalled int) (int, bool) {
			return b.pending, b.pending > 0 && routable == 0 && stalled > 0
		})
}

// awaitQueue polls, every admissionPoll, while wait (called under mu with
// the workers that can take a connection now and those only stalled)
// says so, for up to timeout or until ctx ends; at the timeout it logs
// msg with the connections wait counted.
func (b *Balancer) awaitQueue(ctx context.Context, timeout time.Duration, msg string, wait func(routable, stalled int) (int, bool)) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		b.mu.Lock()
		routable, stalled := 0, 0
		for _, w := range b.workers {
			switch {
			case w.routableLocked():
				routable++
			case w.state == StateListening && w.watchedLocked():
				stalled++
			}
		}
		n, more := wait(routable, stalled)
		b.mu.Unlock()
		if !more {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			b.log.Warn().Int("conns", n).Str("timeout", timeout.String()).Msg(msg)
			return
		case <-time.After(admissionPoll):
		}
	}
}
