package balancer

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// acceptBatch is the most connections accepted before they are dispatched.
const acceptBatch = 512

// Backoff for accept errors that mean "out of fds or memory", as
// http.Server does for temporary errors.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// listener is one listening socket of the master. Its accept goroutine
// owns the fd and closes it.
type listener struct {
	id      uint32
	network string
	address string // as first requested
	bound   net.Addr
	unix    string // socket path to remove at close, for "unix"

	f  *os.File // the listening socket, non-blocking, in the runtime poller
	rc syscall.RawConn

	policy  Policy
	workers []*Worker // listening here and routable, by id; under Balancer.mu

	// Dispatch scratch, under Balancer.mu.
	loads   []WorkerLoad
	touched []*Worker
	pending fdQueue

	done chan struct{}
}

// openListener binds like net.Listen, so its errors are net.Listen's, and
// keeps a dup of the socket for raw accept4.
func openListener(network, address string) (*listener, error) {
	if err := checkNetwork(network); err != nil {
		return nil, err
	}
	ln, err := net.Listen(network, address)
	if err != nil {
		return nil, err
	}
	path := ""
	if ul, ok := ln.(*net.UnixListener); ok {
		// Only this master and the users it allows may connect.
		if err := os.Chmod(address, 0o600); err != nil {
			_ = ln.Close()
			return nil, &net.OpError{Op: "listen", Net: network, Addr: ln.Addr(), Err: err}
		}
		ul.SetUnlinkOnClose(false)
		path = address
	}
	l, err := dupListener(network, address, ln)
	// The dup in l shares the socket; the net.Listener's own fd is
	// closed so that only l's is registered with the poller.
	_ = ln.Close()
	if err != nil {
		if path != "" {
			_ = os.Remove(path)
		}
		return nil, err
	}
	l.unix = path
	return l, nil
}

func checkNetwork(network string) error {
	switch network {
	case "tcp", "tcp4", "tcp6", "unix":
		return nil
	}
	return &net.OpError{Op: "listen", Net: network, Err: fmt.Errorf("handoff: network %q is not supported (tcp, tcp4, tcp6, unix)", network)}
}

// dupListener makes a listener from a dup of ln's socket. The caller
// keeps ln and closes it when it likes; the socket stays open for l.
func dupListener(network, address string, ln net.Listener) (*listener, error) {
	l := &listener{network: network, address: address, bound: ln.Addr(), done: make(chan struct{})}
	var f *os.File
	var err error
	switch ln := ln.(type) {
	case *net.TCPListener:
		f, err = ln.File()
	case *net.UnixListener:
		f, err = ln.File()
	default:
		err = fmt.Errorf("handoff: cannot take over a %T", ln)
	}
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Addr: l.bound, Err: err}
	}
	// File's dup shares O_NONBLOCK with ln, but make sure: accept4 runs
	// in the runtime poller.
	if err := unix.SetNonblock(int(fdOf(f)), true); err != nil {
		_ = f.Close()
		return nil, os.NewSyscallError("setnonblock", err)
	}
	l.f = f
	if l.rc, err = f.SyscallConn(); err != nil {
		_ = f.Close()
		return nil, err
	}
	return l, nil
}

// fdOf returns f's fd without f.Fd, which would make it blocking.
func fdOf(f *os.File) uintptr {
	var fd uintptr
	if rc, err := f.SyscallConn(); err == nil {
		_ = rc.Control(func(x uintptr) { fd = x })
	}
	return fd
}

// close closes the listening socket and removes its path.
func (l *listener) close() {
	_ = l.f.Close()
	if l.unix != "" {
		_ = os.Remove(l.unix)
	}
}

// acceptLoop accepts in batches until EAGAIN and dispatches each batch. It
// runs until stop, then accepts what is left in the backlog, dispatches it
// and closes the socket. It allocates nothing per connection.
func (b *Balancer) acceptLoop(l *listener) {
	defer close(l.done)
	defer l.close()
	fds := make([]int, 0, acceptBatch)
	var aerr syscall.Errno
	final := false
	accept := func(fd uintptr) bool {
		for len(fds) < cap(fds) {
			// Accepted fds stay blocking: the master never reads them,
			// and a blocking fd is not registered with the worker's
			// poller by os.NewFile before net.FileConn makes its own
			// non-blocking dup (two epoll_ctl calls saved per conn).
			nfd, _, e := unix.Syscall6(unix.SYS_ACCEPT4, fd, 0, 0, unix.SOCK_CLOEXEC, 0, 0)
			switch e {
			case 0:
				fds = append(fds, int(nfd))
				continue
			case unix.EINTR, unix.ECONNABORTED:
				continue
			case unix.EAGAIN:
				return len(fds) > 0 || final
			}
			aerr = e
			return true
		}
		return true
	}
	backoff := time.Duration(0)
	for {
		fds, aerr = fds[:0], 0
		var err error
		if final {
			// Control runs accept once, whatever the deadline.
			err = l.rc.Control(func(fd uintptr) { accept(fd) })
		} else {
			err = l.rc.Read(accept)
		}
		if len(fds) > 0 {
			b.accepted(l, fds)
		}
		if final && (err != nil || len(fds) < cap(fds)) {
			return
		}
		if err != nil {
			// A deadline set by stop: last passes over the backlog.
			if errors.Is(err, os.ErrDeadlineExceeded) {
				final = true
				continue
			}
			b.log.Error().Err(err).Str("listener", l.bound.String()).Msg("listener failed")
			return
		}
		if aerr == 0 || len(fds) > 0 {
			backoff = 0 // progress: the next error starts the backoff afresh
		}
		if aerr == 0 {
			continue
		}
		b.mu.Lock()
		b.stats.acceptError(aerr)
		b.mu.Unlock()
		// Out of fds or memory: wait for some to be freed. Anything
		// else (say EINVAL after someone shut the socket down) backs off
		// the same way rather than spin.
		backoff = min(max(2*backoff, acceptBackoffMin), acceptBackoffMax)
		if b.acceptLogLimit.allow() {
			msg := "accept failed; backing off"
			switch aerr {
			case unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM:
				msg = "accept failed, out of fds or memory; backing off"
			}
			b.log.Warn().Str("listener", l.bound.String()).Err(os.NewSyscallError("accept4", aerr)).
				Dur("backoff", backoff).Msg(msg)
		}
		select {
		case <-time.After(backoff):
		case <-b.stopAccept:
		}
	}
}

// fdQueue is a FIFO of accepted fds waiting for a worker.
type fdQueue struct {
	fds   []int
	spare []int
	head  int
}

func (q *fdQueue) len() int { return len(q.fds) - q.head }

func (q *fdQueue) push(fd int) { q.fds = append(q.fds, fd) }

// take removes and returns every queued fd; the slice stays valid until
// the next take, so fds can be pushed back meanwhile.
func (q *fdQueue) take() []int {
	fds := q.fds[q.head:]
	q.fds, q.spare, q.head = q.spare[:0], q.fds, 0
	return fds
}

// rateLimit allows one event per interval, from any goroutine.
type rateLimit struct {
	every time.Duration
	next  atomic.Int64 // unix nanoseconds
}

func (r *rateLimit) allow() bool {
	now := time.Now().UnixNano()
	next := r.next.Load()
	return now >= next && r.next.CompareAndSwap(next, now+int64(r.every))
}
