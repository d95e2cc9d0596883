//go:build linux

package balancer

import (
	"context"
	"testing"
	"time"

	"github.com/handoff-go/handoff/ipc"
)

// MaxConns holds new connections past the cap in the admit queue, lets
// them in, oldest first, as the workers' pages show closes, times their
// wait, and lets re-dispatched connections past a full cap.
func TestAdmissionHoldsNewConnectionsPastTheCap(t *testing.T) {
	b, l, ws := testBalancer(t, RoundRobin, 2)
	b.opts.MaxConns = 4
	hs := eventfds(t, 10)
	b.accepted(l, hs)

	b.mu.Lock()
	sent := func() (n int) {
		for _, w := range ws {
			n += int(w.sent)
		}
		return n
	}
	if got, queued := sent(), l.admit.len(); got != 4 || queued != 6 || b.pending != 6 {
		t.Fatalf("sent %d, admit queue %d, pending %d; want 4, 6 and 6", got, queued, b.pending)
	}
	if s := b.inProgressLocked(); s != 4 {
		t.Fatalf("in progress %d, want 4", s)
	}
	// Worker 1 read both of its connections and closed them.
	ws[0].ctr.Received.Store(ws[0].sent)
	ws[0].ctr.Closed.Store(ws[0].sent)
	b.mu.Unlock()
	b.retryAdmission()
	b.mu.Lock()
	if got, queued := sent(), l.admit.len(); got != 6 || queued != 4 {
		t.Fatalf("after 2 closes: sent %d, admit queue %d; want 6 and 4", got, queued)
	}
	if h := b.stats.pendingWait; h.count != 2 {
		t.Errorf("%d waits observed, want 2", h.count)
	}
	// The next to go were the oldest: hs[4] and hs[5].
	if first, _ := l.admit.takeN(1); first[0].FD != hs[6].FD {
		t.Errorf("the admit queue's head is fd %d, want %d (the 7th accepted)", first[0].FD, hs[6].FD)
	}
	b.pending--
	// The cap is full again; a connection taken back goes through.
	again := eventfds(t, 1)
	b.dispatchLocked(l, again, nil, false)
	if got := sent(); got != 7 {
		t.Errorf("a re-dispatch under a full cap: sent %d, want 7", got)
	}
	if !b.adm.armed {
		t.Errorf("the admission retry is not armed while connections wait for room")
	}
	for _, w := range ws {
		drainLink(t, w.links[l])
	}
	forgetQueuesLocked(b, l)
	b.mu.Unlock()
	if err := b.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// takeN takes from the head, keeps the times with their connections, and
// take then returns the rest in order.
func TestHandoffQueueTakeN(t *testing.T) {
	var q handoffQueue
	for i := range 6 {
		q.push(ipc.Handoff{FD: int32(i)}, int64(100+i))
	}
	hs, since := q.takeN(2)
	if len(hs) != 2 || hs[0].FD != 0 || since[1] != 101 || q.len() != 4 {
		t.Fatalf("takeN(2) = %v %v, %d left", hs, since, q.len())
	}
	hs, since = q.takeN(2)
	if hs[0].FD != 2 || since[0] != 102 {
		t.Fatalf("second takeN(2) = %v %v", hs, since)
	}
	q.push(ipc.Handoff{FD: 6}, 106)
	hs, since = q.takeN(10)
	if len(hs) != 3 || hs[0].FD != 4 || hs[2].FD != 6 || since[2] != 106 || q.len() != 0 {
		t.Fatalf("takeN(10) = %v %v, %d left", hs, since, q.len())
	}
}

// Room the cap frees goes to the oldest waiting connection of any
// listener: a busy listener's new clients do not pass another's older
// ones.
func TestAdmissionIsOldestFirstAcrossListeners(t *testing.T) {
	b, l1, ws := testBalancer(t, RoundRobin, 1)
	l2 := &listener{id: 2, policy: RoundRobin(), done: make(chan struct{})}
	w2 := testWorker(t, b, 2, l2)
	b.mu.Lock()
	b.listeners = append(b.listeners, l2)
	b.mu.Unlock()
	b.opts.MaxConns = 2

	b.accepted(l1, eventfds(t, 2)) // fill the cap
	old := eventfds(t, 1)
	b.accepted(l2, old) // waits first
	b.accepted(l1, eventfds(t, 3))
	b.mu.Lock()
	if q1, q2 := l1.admit.len(), l2.admit.len(); q1 != 3 || q2 != 1 {
		t.Fatalf("admit queues %d and %d, want 3 and 1", q1, q2)
	}
	// One close makes room for one: it must be l2's, queued first.
	ws[0].ctr.Received.Store(ws[0].sent)
	ws[0].ctr.Closed.Store(1)
	b.mu.Unlock()
	b.retryAdmission()
	b.mu.Lock()
	if w2.sent != 1 || l2.admit.len() != 0 || l1.admit.len() != 3 {
		t.Errorf("after one close: l2's worker was sent %d, admit queues %d and %d; want 1, 3 and 0", w2.sent, l1.admit.len(), l2.admit.len())
	}
	// A connection accepted on l1 now waits behind l1's older ones.
	b.mu.Unlock()
	b.accepted(l1, eventfds(t, 1))
	b.mu.Lock()
	if n := l1.admit.len(); n != 4 || ws[0].sent != 2 {
		t.Errorf("l1's admit queue %d, its worker sent %d; want 4 and 2", n, ws[0].sent)
	}
	for _, w := range append(ws, w2) {
		for _, k := range w.links {
			drainLink(t, k)
		}
	}
	forgetQueuesLocked(b, l1, l2)
	b.mu.Unlock()
	if err := b.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// A connection taken back from a worker is kept even when new clients
// fill the queues to MaxPending: MaxPending bounds what new connections
// may add, not the clients already being served.
func TestTakenBackConnectionPassesAFullQueue(t *testing.T) {
	b, l, ws := testBalancer(t, RoundRobin, 1)
	b.opts.MaxConns = 1
	b.opts.MaxPending = 2
	b.accepted(l, eventfds(t, 3)) // 1 in progress, 2 waiting: the queue is full
	b.mu.Lock()
	if l.admit.len() != 2 || b.pending != 2 {
		t.Fatalf("admit queue %d, pending %d; want 2 and 2", l.admit.len(), b.pending)
	}
	ws[0].blockedUntil = time.Now().Add(time.Hour) // no worker can take one now
	b.dispatchLocked(l, eventfds(t, 1), nil, false)
	if l.pending.len() != 1 || b.stats.dropped != 0 {
		t.Errorf("a taken-back connection past a full queue: pending queue %d, dropped %d; want 1 and 0", l.pending.len(), b.stats.dropped)
	}
	b.dispatchLocked(l, eventfds(t, 1), nil, true) // a new one is still bounded
	if b.stats.dropped != 1 {
		t.Errorf("a new connection past a full queue: dropped %d, want 1", b.stats.dropped)
	}
	drainLink(t, ws[0].links[l])
	forgetQueuesLocked(b, l)
	b.mu.Unlock()
	if err := b.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// At Shutdown with MaxConns, the workers' drain gets what the wait for
// admission left of ShutdownTimeout, at least minDrain.
func TestDrainTimeoutIsWhatAdmissionLeft(t *testing.T) {
	t.Parallel()
	b := &Balancer{opts: Options{ShutdownTimeout: 30 * time.Second}}
	if d := b.drainTimeout(); d != 30*time.Second {
		t.Errorf("no shutdown under way: %v, want ShutdownTimeout", d)
	}
	b.drainBy = time.Now().Add(5 * time.Second)
	if d := b.drainTimeout(); d > 5*time.Second || d < 4*time.Second {
		t.Errorf("5s left: %v", d)
	}
	b.drainBy = time.Now().Add(-time.Second)
	if d := b.drainTimeout(); d != minDrain {
		t.Errorf("nothing left: %v, want %v", d, minDrain)
	}
}
