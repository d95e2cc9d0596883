//go:build linux

package balancer

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/handoff-go/handoff/ipc"
	"golang.org/x/sys/unix"
)

// testWorker adds an in-process worker record with a real conns socket on
// l, routed as if it listened there. Its control socket's peer is closed
// at cleanup.
func testWorker(tb testing.TB, b *Balancer, id int, l *listener) *Worker {
	tb.Helper()
	ctl, remote, err := ipc.Socketpair()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = ctl.Close(); _ = remote.Close() })
	w := b.newWorker(id, &slot{index: id - 1}, nil, ctl, nil)
	w.ctr.FrameFDs.Store(ipc.MaxConns)
	k, err := newLink(w, l)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(k.close)
	b.mu.Lock()
	w.state = StateListening
	w.links[l] = k
	b.workers = append(b.workers, w)
	b.routeLocked(w)
	b.mu.Unlock()
	return w
}

// testBalancer makes a balancer that never forks (its Path is /bin/true)
// with one listener, id 1, dispatching by newPolicy, and n in-process
// workers on it (see testWorker).
func testBalancer(tb testing.TB, newPolicy func() Policy, n int) (*Balancer, *listener, []*Worker) {
	tb.Helper()
	b, err := New(Options{Policy: newPolicy, Path: "/bin/true"})
	if err != nil {
		tb.Fatal(err)
	}
	l := &listener{id: 1, policy: newPolicy(), done: make(chan struct{})}
	b.listeners = append(b.listeners, l)
	ws := make([]*Worker, n)
	for i := range ws {
		ws[i] = testWorker(tb, b, i+1, l)
	}
	return b, l, ws
}

// forgetQueuesLocked closes what the queues of ls hold and empties the
// balancer's lists, so that a test balancer whose links the test drained
// shuts down with nothing of its own to wait for or close.
func forgetQueuesLocked(b *Balancer, ls ...*listener) {
	for _, l := range ls {
		for _, q := range []*handoffQueue{&l.admit, &l.pending} {
			queued, _ := q.take()
			for _, h := range queued {
				closeFD(int(h.FD))
			}
		}
	}
	b.pending = 0
	b.listeners = nil
	b.workers = nil
}

// eventfds makes n fds that stand for accepted sockets.
func eventfds(tb testing.TB, n int) []ipc.Handoff {
	tb.Helper()
	hs := make([]ipc.Handoff, n)
	for i := range hs {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
		if err != nil {
			tb.Fatal(err)
		}
		hs[i].FD = int32(fd)
	}
	return hs
}

// drainLink reads every frame in k's worker end, as the worker would, and
// closes the fds; it returns how many there were.
func drainLink(tb testing.TB, k *link) int {
	tb.Helper()
	var m ipc.Message
	n := 0
	for {
		if err := k.recv.Recv(&m, false, nil); err != nil {
			return n
		}
		for _, h := range m.Handoffs {
			_ = unix.Close(int(h.FD))
		}
		n += len(m.Handoffs)
	}
}

// A send that fails for one worker must not strand the batches of others:
// every connection ends up sent or pending. (A reviewer found the
// recursive re-dispatch dropping other workers' partial batches.)
func TestFailedSendStrandsNoBatch(t *testing.T) {
	b, l, ws := testBalancer(t, LeastLoaded, 3)
	// Worker 1's sends fail with EPIPE: its worker end is gone.
	_ = ws[0].links[l].recv.Close()
	// Workers 2 and 3 look busier, so least-loaded picks worker 1 first.
	ws[1].sent, ws[2].sent = 100, 150
	ws[1].ctr.Received.Store(100)
	ws[2].ctr.Received.Store(150)
	hs := eventfds(t, acceptBatch)
	b.accepted(l, hs)

	b.mu.Lock()
	sent := 0
	for _, w := range ws {
		if k := w.links[l]; len(k.out) != 0 {
			t.Errorf("worker %d: %d fds stranded in its batch", w.id, len(k.out))
		}
	}
	if ws[0].health != failed {
		t.Errorf("worker 1's failed send did not mark it broken")
	}
	for _, w := range ws[1:] {
		sent += drainLink(t, w.links[l])
	}
	pending := l.pending.len()
	forgetQueuesLocked(b, l)
	b.mu.Unlock()
	if sent+pending != len(hs) {
		t.Errorf("%d fds sent and %d pending, of %d accepted", sent, pending, len(hs))
	}
	if err := b.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// A worker that dies, or stalls, with connections it never read loses
// none: reclaim takes every one back from its worker end and hands it to
// another worker, and the master keeps no copy of any fd sent.
func TestReclaimHandsUnreadToAnother(t *testing.T) {
	b, l, ws := testBalancer(t, RoundRobin, 2)
	w1, w2 := ws[0], ws[1]
	hs := eventfds(t, 40)
	b.accepted(l, hs)
	b.mu.Lock()
	if w1.sent != 20 || w2.sent != 20 {
		t.Fatalf("sent %d and %d, want 20 each", w1.sent, w2.sent)
	}
	// Worker 1 stalls: it is routed around and what it never read moves.
	b.stallLocked(w1, w1.born)
	if w1.routableLocked() || len(l.workers) != 1 {
		t.Errorf("stalled worker still routed: %d candidates", len(l.workers))
	}
	if w1.reclaimed != 20 || w1.unreadLocked() != 0 {
		t.Errorf("reclaimed %d, unread %d; want 20 and 0", w1.reclaimed, w1.unreadLocked())
	}
	if w2.sent != 40 {
		t.Errorf("worker 2 was sent %d, want all 40", w2.sent)
	}
	got := drainLink(t, w2.links[l])
	b.listeners = nil
	b.workers = nil
	b.mu.Unlock()
	if got != 40 {
		t.Errorf("worker 2 read %d connections, want 40", got)
	}
	if err := b.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// A stalled worker that reads again is not silent: its HandoffTimeout
// counts from its progress. (It was counted from the zero time, which
// killed a new worker, never pinged yet, at the next check.)
func TestProgressWhileStalledIsNotSilence(t *testing.T) {
	b, l, ws := testBalancer(t, RoundRobin, 2)
	w1, w2 := ws[0], ws[1]
	b.accepted(l, eventfds(t, 40))
	b.mu.Lock()
	b.stallLocked(w1, time.Now())
	// It reads one more connection (as if one had been sent after the
	// reclaim), and answers no ping yet.
	w1.sent++
	w1.ctr.Received.Store(1)
	b.mu.Unlock()
	b.checkStalls()
	b.mu.Lock()
	stuck := w1.health == failed
	drainLink(t, w2.links[l])
	b.listeners = nil
	b.workers = nil
	b.mu.Unlock()
	if stuck {
		t.Error("a stalled worker that made progress was taken for silent and killed")
	}
	if err := b.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// The pending queue's prune closes a client that left, and keeps one that
// sent its request and half-closed, which still waits for its answer, for
// halfCloseGrace.
func TestPruneKeepsHalfClosedClientsWithARequest(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accept := func(send string) int {
		t.Helper()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		_, _ = io.WriteString(c, send)
		_ = c.(*net.TCPConn).CloseWrite()
		defer c.Close()
		f, err := s.(*net.TCPConn).File() // a dup, the queue's to close
		if err != nil {
			t.Fatal(err)
		}
		fd, err := unix.Dup(int(f.Fd()))
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		return fd
	}
	var q handoffQueue
	q.push(ipc.Handoff{FD: int32(accept("GET / HTTP/1.0\r\n\r\n"))}, 1) // half-closed, request waiting
	q.push(ipc.Handoff{FD: int32(accept(""))}, 2)                       // left without a word
	time.Sleep(50 * time.Millisecond)                                   // the FINs arrive
	closed, _ := q.prune(nil)
	if kept := q.len(); closed != 1 || kept != 1 {
		t.Fatalf("closed %d and kept %d, want 1 and 1 (the client with a request)", closed, kept)
	}
	// Past halfCloseGrace it is taken for a client that gave up.
	time.Sleep(halfCloseGrace + 100*time.Millisecond)
	closed, _ = q.prune(nil)
	kept, _ := q.take()
	for _, h := range kept {
		_ = unix.Close(int(h.FD))
	}
	if closed != 1 || len(kept) != 0 {
		t.Fatalf("after %s: closed %d and kept %d, want 1 and 0", halfCloseGrace, closed, len(kept))
	}
}
