package balancer

import (
	"context"
	"testing"

	"github.com/handoff-go/handoff/ipc"
	"github.com/handoff-go/handoff/scm"
	"golang.org/x/sys/unix"
)

// hotPath is a balancer with one listener and two in-process workers whose
// control sockets are read by the test: the master's per-connection path
// (dispatch, send, ack, close) without processes or sockets to accept.
type hotPath struct {
	b     *Balancer
	l     *listener
	ws    []*Worker
	peers []*scm.Conn
	buf   []byte
	fds   []int
	m     ipc.Message
	one   []int
}

func newHotPath(tb testing.TB) *hotPath {
	tb.Helper()
	b, err := New(Options{Path: "/bin/true"})
	if err != nil {
		tb.Fatal(err)
	}
	h := &hotPath{b: b, buf: make([]byte, ipc.MaxFrame+1), fds: make([]int, scm.MaxFDs), one: make([]int, 1)}
	h.l = &listener{id: 1, policy: RoundRobin(), done: make(chan struct{})}
	b.listeners = append(b.listeners, h.l)
	for i := 0; i < 2; i++ {
		sc, remote, err := scm.Socketpair()
		if err != nil {
			tb.Fatal(err)
		}
		// The peer end, read by the test in place of a worker.
		var fd int
		rc, _ := remote.SyscallConn()
		_ = rc.Control(func(x uintptr) { fd, err = unix.FcntlInt(x, unix.F_DUPFD_CLOEXEC, 0) })
		remote.Close()
		if err != nil {
			tb.Fatal(err)
		}
		peer, err := scm.NewConn(fd)
		if err != nil {
			tb.Fatal(err)
		}
		w := b.newWorker(i+1, &slot{}, nil, ipc.NewConn(sc))
		w.listening[h.l] = true
		w.state = StateListening
		h.ws = append(h.ws, w)
		h.peers = append(h.peers, peer)
		h.l.workers = append(h.l.workers, w)
	}
	tb.Cleanup(func() {
		b.mu.Lock()
		b.listeners = nil
		b.mu.Unlock()
		for i, w := range h.ws {
			_ = w.ctl.Close()
			_ = h.peers[i].Close()
		}
		_ = b.Shutdown(context.Background())
	})
	return h
}

// conn hands off one connection (an eventfd stands for the accepted
// socket), receives it as the worker would, and reports it acked and
// closed in one Report, as a worker's batch does.
func (h *hotPath) conn(tb testing.TB) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		tb.Fatal(err)
	}
	h.one[0] = fd
	h.b.accepted(h.l, h.one)
	for i, peer := range h.peers {
		if h.ws[i].unacked == 0 {
			continue // this conn went to the other worker
		}
		n, nfds, err := peer.ReadMsg(h.buf, h.fds)
		if err != nil {
			tb.Fatal(err)
		}
		for _, fd := range h.fds[:nfds] {
			_ = unix.Close(fd)
		}
		if err := ipc.Decode(h.buf[:n], &h.m); err != nil {
			tb.Fatal(err)
		}
		h.b.report(h.ws[i], h.m.IDs, h.m.IDs)
	}
}

// The master's steady state allocates nothing per connection (issue 6).
func TestDispatchSteadyStateAllocatesNothing(t *testing.T) {
	h := newHotPath(t)
	for i := 0; i < 1000; i++ {
		h.conn(t) // warm the maps and scratch slices
	}
	if allocs := testing.AllocsPerRun(2000, func() { h.conn(t) }); allocs != 0 {
		t.Errorf("%.2f allocations per connection on the master's path, want 0", allocs)
	}
	for _, w := range h.ws {
		if len(w.conns) != 0 || w.unacked != 0 {
			t.Errorf("worker %d: %d conns, %d unacked after every one was closed", w.id, len(w.conns), w.unacked)
		}
	}
}

// BenchmarkMasterPerConnection: dispatch, sendmsg, the worker's recvmsg,
// ack and close, per connection, in one process.
func BenchmarkMasterPerConnection(b *testing.B) {
	h := newHotPath(b)
	b.ReportAllocs()
	for b.Loop() {
		h.conn(b)
	}
}
