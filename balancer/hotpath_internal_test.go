//go:build linux

package balancer

import (
	"context"
	"testing"

	"github.com/handoff-go/handoff/ipc"
	"golang.org/x/sys/unix"
)

// hotPath is a balancer with one listener and two in-process workers whose
// conns sockets are read by the test: the master's per-connection path
// (choose, send, close its copy) without processes or sockets to accept.
type hotPath struct {
	b     *Balancer
	l     *listener
	ws    []*Worker
	m     ipc.Message
	one   []ipc.Handoff
	peers uint8 // counts the client's IPv4 address, so that ip-hash sees many
}

func newHotPath(tb testing.TB) *hotPath { return newHotPathWith(tb, LeastLoaded) }

// newHotPathWith is newHotPath with another policy.
func newHotPathWith(tb testing.TB, newPolicy func() Policy) *hotPath {
	tb.Helper()
	b, l, ws := testBalancer(tb, newPolicy, 2)
	h := &hotPath{b: b, l: l, ws: ws, one: make([]ipc.Handoff, 1)}
	tb.Cleanup(func() {
		b.mu.Lock()
		b.listeners = nil
		b.workers = nil
		b.mu.Unlock()
		_ = b.Shutdown(context.Background())
	})
	return h
}

// conn hands off one connection (an eventfd stands for the accepted
// socket), from the next of 256 client addresses as accept4 gives them,
// receives it as the worker would, counts it read and closed on the
// worker's counters, and closes it.
func (h *hotPath) conn(tb testing.TB) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		tb.Fatal(err)
	}
	h.peers++
	h.one[0] = sockaddrInet4(int32(fd), [4]byte{192, 0, 2, h.peers}, 40000)
	h.b.accepted(h.l, h.one)
	for _, w := range h.ws {
		if err := w.links[h.l].recv.Recv(&h.m, false, nil); err != nil {
			continue // this conn went to the other worker
		}
		for _, x := range h.m.Handoffs {
			_ = unix.Close(int(x.FD))
		}
		w.ctr.Received.Add(uint64(len(h.m.Handoffs)))
		w.ctr.Closed.Add(uint64(len(h.m.Handoffs)))
	}
}

// The master's steady state allocates nothing per connection.
func TestDispatchSteadyStateAllocatesNothing(t *testing.T) {
	h := newHotPath(t)
	for i := 0; i < 1000; i++ {
		h.conn(t) // warm the scratch slices
	}
	if allocs := testing.AllocsPerRun(2000, func() { h.conn(t) }); allocs != 0 {
		t.Errorf("%.2f allocations per connection on the master's path, want 0", allocs)
	}
	h.b.mu.Lock()
	defer h.b.mu.Unlock()
	for _, w := range h.ws {
		if a, u := w.activeLocked(), w.unreadLocked(); a != 0 || u != 0 {
			t.Errorf("worker %d: %d active, %d unread after every one was closed", w.id, a, u)
		}
	}
	if d := h.ws[0].sent - h.ws[1].sent; d > 1 && -d > 1 {
		t.Errorf("least-loaded split %d/%d with equal load", h.ws[0].sent, h.ws[1].sent)
	}
}

// Pick is given the connection without an allocation, and no built-in
// policy allocates on the master's path either.
func TestPoliciesAllocateNothing(t *testing.T) {
	for _, name := range PolicyNames() {
		t.Run(name, func(t *testing.T) {
			newPolicy, err := PolicyByName(name)
			if err != nil {
				t.Fatal(err)
			}
			h := newHotPathWith(t, newPolicy)
			for range 1000 {
				h.conn(t) // warm the scratch slices
			}
			if allocs := testing.AllocsPerRun(2000, func() { h.conn(t) }); allocs != 0 {
				t.Errorf("%.2f allocations per connection with %s, want 0", allocs, name)
			}
			h.b.mu.Lock()
			defer h.b.mu.Unlock()
			if h.ws[0].sent == 0 || h.ws[1].sent == 0 {
				t.Errorf("%s sent %d and %d: one worker got nothing", name, h.ws[0].sent, h.ws[1].sent)
			}
		})
	}
}

// BenchmarkMasterPerConnection: choose, sendmsg, close, the worker's
// recvmsg, per connection, in one process.
func BenchmarkMasterPerConnection(b *testing.B) {
	h := newHotPath(b)
	b.ReportAllocs()
	for b.Loop() {
		h.conn(b)
	}
}
