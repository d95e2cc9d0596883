//go:build linux

package balancer

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/handoff-go/handoff/ipc"
	"golang.org/x/sys/unix"
)

// acceptBatch is the most connections accepted before they are dispatched.
const acceptBatch = 512

// maxFDReserve bounds how many fds the master keeps free for itself
// (Balancer.fdReserve): a worker's control socket, counter page and conns
// sockets, the pipes and pidfd of starting it, the admin port and the log.
// The accept loop stops accepting, and the pending queue stops growing,
// before the master's fd table is that full, so a flood of connections
// can never leave it unable to restart a worker; the flood waits in the
// kernel's backlog, which costs the master nothing. The reserve is a
// quarter of the fd limit, between 8 and maxFDReserve.
const maxFDReserve = 64

// fdReserveFor is the reserve for an fd limit; see maxFDReserve.
func fdReserveFor(limit uint64) int { return int(min(max(limit/4, 8), maxFDReserve)) }

// Backoff for accept errors that mean "out of fds or memory", as
// http.Server does for temporary errors.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// listener is one listening socket of the master. Its accept goroutine
// owns the fd and closes it.
type listener struct {
	id      uint32   // 1 for the first, counting up; the workers know it by this
	network string   // as first requested
	address string   // as first requested
	bound   net.Addr // the address the socket is bound to
	unix    string   // socket path to remove at close, for "unix"

	f  *os.File        // the listening socket, non-blocking, in the runtime poller
	rc syscall.RawConn // f's, for accept4 and setsockopt

	policy  Policy    // made by Options.Policy for this listener; under Balancer.mu
	workers []*Worker // listening here and routable, by id; under Balancer.mu

	// Dispatch scratch, under Balancer.mu.
	conn       Conn          // what policy.Pick sees of the connection (connLocked)
	loads      []WorkerLoad  // what policy.Pick sees of the workers
	touched    []*link       // the links a dispatch filled, to flush
	pending    handoffQueue  // connections no worker could take yet
	admit      handoffQueue  // new connections held under Options.MaxConns; see admission.go
	pollBuf    []unix.PollFd // pending.prune's scratch
	reclaimBuf []ipc.Handoff // what a reclaim read back, to dispatch again

	// Accept scratch, owned by the accept goroutine.
	batch []ipc.Handoff // the connections of one accept pass

	done chan struct{} // closed when the accept goroutine has closed the socket
}

// ListenSocket is SocketOptions{}.Listen: a listening socket opened as
// Balancer.Listen does with the default options (a Unix socket 0600), for
// a program that keeps the socket itself, to hand it to the next master
// (as the handoff CLI does with tableflip), and gives the balancer a dup
// of it with Adopt. The caller owns the net.Listener; closing it removes
// a Unix socket's path.
func ListenSocket(network, address string) (net.Listener, error) {
	return SocketOptions{}.Listen(network, address)
}

// openListener binds with o.Listen and keeps a dup of the socket for raw
// accept4; l removes a Unix socket's path when it closes.
func openListener(o SocketOptions, network, address string) (*listener, error) {
	ln, err := o.Listen(network, address)
	if err != nil {
		return nil, err
	}
	path := ""
	if ul, ok := ln.(*net.UnixListener); ok {
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
		err = fmt.Errorf("balancer: cannot take over a %T", ln)
	}
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Addr: l.bound, Err: err}
	}
	// File's dup shares O_NONBLOCK with ln, but make sure: accept4 runs
	// in the runtime poller.
	if err := unix.SetNonblock(int(fdOf(f)), true); err != nil {
		_ = f.Close()
		return nil, &net.OpError{Op: "listen", Net: network, Addr: l.bound, Err: os.NewSyscallError("setnonblock", err)}
	}
	l.f = f
	if l.rc, err = f.SyscallConn(); err != nil {
		_ = f.Close()
		return nil, &net.OpError{Op: "listen", Net: network, Addr: l.bound, Err: err}
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

// setOptions sets the socket options that connections accepted on a TCP
// listener inherit, so that neither the master nor the worker sets them
// per connection: TCP_NODELAY, keep-alive, and TCP_USER_TIMEOUT.
func (l *listener) setOptions(o Options) error {
	if l.network == "unix" {
		return nil
	}
	type opt struct {
		level, name, value int
		what               string
	}
	opts := []opt{{unix.IPPROTO_TCP, unix.TCP_NODELAY, 1, "TCP_NODELAY"}}
	if o.KeepAlive > 0 {
		secs := int(max(o.KeepAlive.Round(time.Second)/time.Second, 1))
		opts = append(opts,
			opt{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1, "SO_KEEPALIVE"},
			opt{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, secs, "TCP_KEEPIDLE"},
			opt{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, secs, "TCP_KEEPINTVL"},
			opt{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, keepAliveProbes, "TCP_KEEPCNT"})
	} else {
		opts = append(opts, opt{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 0, "SO_KEEPALIVE"})
	}
	if o.TCPUserTimeout > 0 {
		opts = append(opts, opt{unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(o.TCPUserTimeout.Milliseconds()), "TCP_USER_TIMEOUT"})
	}
	var serr error
	err := l.rc.Control(func(fd uintptr) {
		for _, x := range opts {
			if e := unix.SetsockoptInt(int(fd), x.level, x.name, x.value); e != nil {
				serr = os.NewSyscallError("setsockopt("+x.what+")", e)
				return
			}
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return &net.OpError{Op: "listen", Net: l.network, Addr: l.bound, Err: err}
	}
	return nil
}

// keepAliveProbes is TCP_KEEPCNT, as Go sets it.
const keepAliveProbes = 9

// acceptLoop accepts in batches until EAGAIN and dispatches each batch
// from inside the poller's callback, so that after EAGAIN it goes straight
// back to waiting: one accept4 that fails per wakeup, not two. It runs
// until stop, then accepts what is left in the backlog, dispatches it and
// closes the socket. It allocates nothing per connection.
func (b *Balancer) acceptLoop(l *listener) {
	defer close(l.done)
	defer l.close()
	l.batch = make([]ipc.Handoff, 0, acceptBatch)
	var aerr syscall.Errno
	reserveHit := false // aerr is the master's own reserve, not accept4's
	progress := false
	final := false
	var sa unix.RawSockaddrAny
	accept := func(fd uintptr) bool {
		for {
			empty := false
			// Accept only while the master keeps its reserve of fds (for
			// a worker's sockets, a restart, the admin port): past it,
			// connections wait in the kernel's backlog, which costs the
			// master nothing, instead of starving it.
			budget := min(b.room.Spare(b.fdReserve), cap(l.batch))
			if budget == 0 {
				aerr, reserveHit = unix.EMFILE, true
			}
			for len(l.batch) < budget && !empty && aerr == 0 {
				// Non-blocking, so that the worker's os.NewFile puts it in
				// its poller as it is; and with the client's address,
				// which travels with it so the worker needs no getpeername.
				// A raw syscall: on a non-blocking socket accept4 cannot
				// block, and entersyscall would wake the runtime's sysmon
				// thread on every connection of an otherwise idle master.
				salen := uint32(unix.SizeofSockaddrAny)
				nfd, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, fd, uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&salen)),
					unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0, 0)
				switch e {
				case 0:
					h := ipc.Handoff{FD: int32(nfd)}
					if salen <= ipc.MaxAddr {
						h.AddrLen = uint8(salen)
						copy(h.Addr[:], (*[unix.SizeofSockaddrAny]byte)(unsafe.Pointer(&sa))[:salen])
					}
					l.batch = append(l.batch, h)
				case unix.EINTR, unix.ECONNABORTED,
					// accept(2): errors pending on the new connection,
					// to be retried like EAGAIN.
					unix.ENETDOWN, unix.EPROTO, unix.ENOPROTOOPT, unix.EHOSTDOWN, unix.ENONET,
					unix.EHOSTUNREACH, unix.EOPNOTSUPP, unix.ENETUNREACH:
				case unix.EAGAIN:
					empty = true
				default:
					aerr = e
				}
			}
			if len(l.batch) > 0 {
				b.room.Took(len(l.batch)) // once a batch, not a lock per connection
				b.accepted(l, l.batch)
				l.batch = l.batch[:0]
				progress = true
			}
			switch {
			case aerr != 0:
				return true // back off outside
			case empty:
				return final // wait for more, unless this is the last pass
			}
			// A full batch, or the budget spent: the backlog may hold
			// more, and the next pass asks for room again.
		}
	}
	backoff := time.Duration(0)
	for {
		aerr, progress, reserveHit = 0, false, false
		if final {
			// Control runs accept once, whatever the deadline; it
			// accepts until EAGAIN.
			_ = l.rc.Control(func(fd uintptr) { accept(fd) })
			return
		}
		err := l.rc.Read(accept)
		if err != nil {
			// A deadline set by stop: a last pass over the backlog.
			if errors.Is(err, os.ErrDeadlineExceeded) {
				final = true
				continue
			}
			b.log.Error().Err(err).Str("listener", l.bound.String()).Msg("listener failed")
			return
		}
		if progress {
			backoff = 0 // the next error starts the backoff afresh
		}
		if aerr == 0 {
			continue
		}
		b.mu.Lock()
		b.stats.acceptErrorLocked(aerr)
		b.mu.Unlock()
		// Out of fds or memory: wait for some to be freed. Anything
		// else (say EINVAL after someone shut the socket down) backs off
		// the same way rather than spin.
		backoff = min(max(2*backoff, acceptBackoffMin), acceptBackoffMax)
		if b.acceptLogLimit.allow() {
			msg := "accept failed; backing off"
			switch {
			case reserveHit:
				msg = "not accepting: the master is down to its reserve of fds; connections wait in the backlog"
			case aerr == unix.EMFILE, aerr == unix.ENFILE, aerr == unix.ENOBUFS, aerr == unix.ENOMEM:
				msg = "accept failed, out of fds or memory; backing off"
			}
			b.log.Warn().Str("listener", l.bound.String()).Err(os.NewSyscallError("accept4", aerr)).
				Str("backoff", backoff.String()).Msg(msg)
		}
		select {
		case <-time.After(backoff):
		case <-b.stopAccept:
		}
	}
}

// checkReturned checks that fd, handed back by a worker, is a connection
// accepted on l, and returns it as a handoff with the client's address as
// the kernel has it. A worker can hand back only sockets it holds; this
// keeps it from passing anything else (a pipe, a socket of its own) on to
// another worker.
//
// It also returns the socket's identity (device and inode), by which a
// caller tells two fds of one socket apart from two sockets.
func checkReturned(l *listener, fd int) (ipc.Handoff, [2]uint64, bool) {
	var none [2]uint64
	if l == nil {
		return ipc.Handoff{}, none, false
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return ipc.Handoff{}, none, false
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil || typ != unix.SOCK_STREAM {
		return ipc.Handoff{}, none, false
	}
	if acc, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || acc != 0 {
		return ipc.Handoff{}, none, false
	}
	local, err := unix.Getsockname(fd)
	if err != nil || !sameSocket(l.bound, local) {
		return ipc.Handoff{}, none, false
	}
	h := ipc.Handoff{FD: int32(fd)}
	var sa unix.RawSockaddrAny
	salen := uint32(unix.SizeofSockaddrAny)
	if _, _, e := unix.Syscall(unix.SYS_GETPEERNAME, uintptr(fd), uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&salen))); e != 0 {
		return ipc.Handoff{}, none, false
	}
	if salen <= ipc.MaxAddr {
		h.AddrLen = uint8(salen)
		copy(h.Addr[:], (*[unix.SizeofSockaddrAny]byte)(unsafe.Pointer(&sa))[:salen])
	}
	return h, [2]uint64{uint64(st.Dev), st.Ino}, true
}

// sameSocket reports whether local, a connection's own address, belongs to
// the listener bound at bound: the same port (TCP), or the same path (Unix).
func sameSocket(bound net.Addr, local unix.Sockaddr) bool {
	switch a := bound.(type) {
	case *net.TCPAddr:
		switch s := local.(type) {
		case *unix.SockaddrInet4:
			return s.Port == a.Port && (a.IP.IsUnspecified() || a.IP.Equal(net.IP(s.Addr[:])))
		case *unix.SockaddrInet6:
			return s.Port == a.Port && (a.IP.IsUnspecified() || a.IP.Equal(net.IP(s.Addr[:])))
		}
	case *net.UnixAddr:
		s, ok := local.(*unix.SockaddrUnix)
		return ok && s.Name == a.Name
	}
	return false
}

// handoffQueue is a FIFO of accepted connections waiting for a worker.
// It has no lock of its own: each listener's queue is under Balancer.mu,
// so its methods, which only that lock's holder calls, carry no suffix.
//
// Beside each connection it keeps when it was first queued (see mono),
// in a parallel slice, so that queueing allocates nothing per connection
// and a connection taken and queued again keeps its first time.
type handoffQueue struct {
	hs         []ipc.Handoff // the queue is hs[head:]
	since      []int64       // parallel to hs: when each was first queued
	spare      []ipc.Handoff // the slice take returned last, reused by the next
	spareSince []int64       // and its times
	head       int           // hs[:head] has been taken
}

func (q *handoffQueue) len() int { return len(q.hs) - q.head }

// oldest is when the connection at the head of q was first queued; q
// must not be empty.
func (q *handoffQueue) oldest() int64 { return q.since[q.head] }

// olderThan counts the run of connections at the head of q first queued
// before t. (q is not wholly in time order: a connection no worker could
// take when its turn came goes back to the tail with its first time.)
func (q *handoffQueue) olderThan(t int64) int {
	n := 0
	for _, at := range q.since[q.head:] {
		if at >= t {
			break
		}
		n++
	}
	return n
}

// push queues h, first queued at since (a mono time).
func (q *handoffQueue) push(h ipc.Handoff, since int64) {
	q.hs = append(q.hs, h)
	q.since = append(q.since, since)
}

// halfCloseGrace is how long a queued client that sent its request and
// then FIN is kept. One that half-closed to wait for its answer is served
// if a worker can take it within this; one that sent a request and gave
// up (the master cannot tell the two apart) is closed after it, so that a
// crash loop with clients coming and going holds no fds for them.
const halfCloseGrace = time.Second

// waitsForAnswer reports whether the TCP socket fd, whose client sent
// FIN, has a request waiting that arrived within halfCloseGrace.
func waitsForAnswer(fd int) bool {
	ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return false // not TCP
	}
	n, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
	return err == nil && n > 0 && time.Duration(ti.Last_data_recv)*time.Millisecond < halfCloseGrace
}

// prune closes the queued connections whose client has gone: it reset
// the connection (POLLHUP, POLLERR), or sent FIN (POLLRDHUP) with no
// request waiting, or with one older than halfCloseGrace. It returns how
// many it closed. Holding an fd for every client that left would starve
// the master.
func (q *handoffQueue) prune(scratch []unix.PollFd) (int, []unix.PollFd) {
	live := q.hs[q.head:]
	scratch = scratch[:0]
	for _, h := range live {
		scratch = append(scratch, unix.PollFd{Fd: h.FD, Events: unix.POLLRDHUP})
	}
	if len(scratch) == 0 {
		return 0, scratch
	}
	if n, err := unix.Poll(scratch, 0); err != nil || n == 0 {
		return 0, scratch
	}
	kept, keptSince, closed := live[:0], q.since[q.head:q.head], 0
	for i, h := range live {
		ev := scratch[i].Revents
		if ev&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0 || ev&unix.POLLRDHUP != 0 && !waitsForAnswer(int(h.FD)) {
			closeFD(int(h.FD))
			closed++
			continue
		}
		kept = append(kept, h)
		keptSince = append(keptSince, q.since[q.head+i])
	}
	q.hs = q.hs[:q.head+len(kept)]
	q.since = q.since[:q.head+len(keptSince)]
	return closed, scratch
}

// takeN removes and returns the n oldest queued connections (all of them
// if n is more, or negative) and when each was first queued; the slices
// stay valid until the next take or takeN, so connections can be pushed
// meanwhile.
func (q *handoffQueue) takeN(n int) ([]ipc.Handoff, []int64) {
	if n < 0 || n >= q.len() {
		return q.take()
	}
	if q.head > 0 && q.head >= len(q.hs)/2 {
		// Move the live part down, so that the front taken so far
		// does not hold memory for good: what an earlier takeN
		// returned has been dispatched by now.
		k := copy(q.hs, q.hs[q.head:])
		copy(q.since, q.since[q.head:])
		q.hs, q.since, q.head = q.hs[:k], q.since[:k], 0
	}
	hs, since := q.hs[q.head:q.head+n], q.since[q.head:q.head+n]
	q.head += n
	return hs, since
}

// take removes and returns every queued connection and when each was
// first queued; the slices stay valid until the next take, so
// connections can be pushed back meanwhile.
func (q *handoffQueue) take() ([]ipc.Handoff, []int64) {
	hs, since := q.hs[q.head:], q.since[q.head:]
	q.hs, q.spare, q.head = q.spare[:0], q.hs, 0
	q.since, q.spareSince = q.spareSince[:0], q.since
	return hs, since
}

// rateLimit allows one event per interval, from any goroutine.
type rateLimit struct {
	every time.Duration // the interval
	next  atomic.Int64  // when the next event is allowed, in unix nanoseconds
}

func (r *rateLimit) allow() bool {
	now := time.Now().UnixNano()
	next := r.next.Load()
	return now >= next && r.next.CompareAndSwap(next, now+int64(r.every))
}
