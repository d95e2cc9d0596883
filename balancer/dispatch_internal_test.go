package balancer

import (
	"context"
	"testing"

	"github.com/handoff-go/handoff/ipc"
	"golang.org/x/sys/unix"
)

// A send that fails for one worker must not strand the batches of others:
// every fd ends up sent or pending. (A reviewer found the recursive
// re-dispatch dropping other workers' partial batches.)
func TestFailedSendStrandsNoBatch(t *testing.T) {
	b, err := New(Options{Policy: LeastLoaded, Path: "/bin/true"})
	if err != nil {
		t.Fatal(err)
	}
	l := &listener{id: 1, policy: LeastLoaded(), done: make(chan struct{})}
	b.listeners = append(b.listeners, l)
	var ws []*Worker
	for i, load := range []int{0, 100, 150} {
		ctl, remote, err := ipc.Socketpair()
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			remote.Close() // worker 1's sends fail with EPIPE
		} else {
			defer remote.Close()
		}
		defer ctl.Close()
		w := b.newWorker(i+1, &slot{}, nil, ctl)
		w.listening[l] = true
		for j := 0; j < load; j++ {
			w.conns[uint64(1<<40+i<<20+j)] = connRec{fd: -1, listener: 1}
		}
		ws = append(ws, w)
		l.workers = append(l.workers, w)
	}
	var fds []int
	for i := 0; i < acceptBatch; i++ {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		fds = append(fds, fd)
	}
	b.accepted(l, fds)

	b.mu.Lock()
	sent := 0
	for _, w := range ws {
		if len(w.outIDs) != 0 {
			t.Errorf("worker %d: %d fds stranded in its batch", w.id, len(w.outIDs))
		}
		for _, rec := range w.conns {
			if rec.fd >= 0 {
				sent++
				closeFD(int(rec.fd))
			}
		}
	}
	pending := l.pending.len()
	for _, fd := range l.pending.take() {
		closeFD(fd)
	}
	b.pending = 0
	b.listeners = nil
	b.mu.Unlock()
	if sent+pending != len(fds) {
		t.Errorf("%d fds sent and %d pending, of %d accepted", sent, pending, len(fds))
	}
	if err := b.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}
