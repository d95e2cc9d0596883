//go:build linux

package worker

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/handoff-go/handoff/ipc"
	"github.com/handoff-go/handoff/scm"
	"golang.org/x/sys/unix"
)

// Listen is worker.Listen with lc's choices.
func (lc *ListenConfig) Listen(network, address string) (net.Listener, error) {
	if client == nil {
		return net.Listen(network, address)
	}
	return client.listen(network, address, lc.StdConns)
}

// Listener is a net.Listener fed with connections handed off by the
// master. Accept reads them from the listener's own conns socket, with no
// goroutine in between. Close is idempotent and unblocks Accept, which
// then returns an error matching net.ErrClosed.
type Listener struct {
	c       *controlClient   // the control client it belongs to
	id      uint32           // the master's id for the listener
	network string           // as Listen was called
	addr    net.Addr         // the address the master bound
	laddr   net.Addr         // addr, or nil for a wildcard: each conn then asks the kernel
	std     bool             // Accept returns net.FileConn's conns
	sock    *ipc.ConnsSocket // the worker's end of the conns socket
	room    func() bool      // may the next frame be read? (fd room)

	readMu sync.Mutex  // one Accept reads the socket at a time; guards msg
	msg    ipc.Message // the frame read

	mu       sync.Mutex    // guards the fields below
	queue    []ipc.Handoff // read off the socket, not yet taken by Accept
	head     int           // queue[:head] has been taken
	wrapping int           // conns taken off the queue by Accept and not yet returned
	closed   bool          // Close has begun
	done     chan struct{} // closed by Close
}

var _ net.Listener = (*Listener)(nil)

func newListener(c *controlClient, id uint32, network, address string, sock *ipc.ConnsSocket, std bool) *Listener {
	l := &Listener{c: c, id: id, network: network, sock: sock, std: std, done: make(chan struct{})}
	l.room = func() bool { return c.room.For(c.frameFDs) }
	if network == "unix" {
		l.addr = &net.UnixAddr{Name: address, Net: "unix"}
		l.laddr = l.addr
	} else if a, err := net.ResolveTCPAddr("tcp", address); err == nil {
		l.addr = a // the master sends a numeric address: no lookup
		if !a.IP.IsUnspecified() && a.IP != nil {
			l.laddr = a
		}
	} else {
		l.addr = stringAddr{network, address}
	}
	return l
}

// Accept waits for the next handed-off connection.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return nil, l.opError(net.ErrClosed)
		}
		if l.head < len(l.queue) {
			h := l.queue[l.head]
			l.head++
			l.wrapping++
			l.mu.Unlock()
			c, err := l.wrap(h)
			l.mu.Lock()
			l.wrapping--
			l.mu.Unlock()
			return c, err
		}
		l.mu.Unlock()
		if err := l.read(); err != nil {
			if err == errMasterClosed {
				_ = l.Close()
				return nil, l.opError(net.ErrClosed)
			}
			return nil, err
		}
	}
}

// errMasterClosed is read's answer when the master closed its end of the
// conns socket.
var errMasterClosed = errors.New("worker: the master closed the conns socket")

// read reads one frame into the queue, waiting for it, unless another
// Accept already did. It reads only while this process has room for a
// whole frame's fds; otherwise it leaves the frame in the socket, says so
// on the counter page (the master then serves it elsewhere), and waits for
// a conn to close.
func (l *Listener) read() error {
	l.readMu.Lock()
	defer l.readMu.Unlock()
	l.mu.Lock()
	ready := l.head < len(l.queue) || l.closed
	l.mu.Unlock()
	if ready {
		return nil
	}
	l.c.ctr.Readers.Add(1)
	err := l.sock.Recv(&l.msg, true, l.room)
	l.c.ctr.Readers.Add(^uint32(0))
	switch {
	case err == nil:
	case errors.Is(err, scm.ErrNoRoom):
		l.c.waitForRoom(l.done)
		return nil
	case errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed):
		return l.opError(net.ErrClosed)
	case errors.Is(err, io.EOF):
		// The master closed its end: it died, or it stopped routing
		// here for good. Nothing more will come; Accept closes l (not
		// here: Close waits for readMu).
		return errMasterClosed
	case errors.Is(err, ipc.ErrFDsLost):
		// Room was checked, so something else took the fds meanwhile.
		// The connections are gone: count them read and closed, so
		// that the master's view of this worker stays true.
		n := uint64(len(l.msg.Handoffs))
		l.c.ctr.Received.Add(n)
		l.c.ctr.Closed.Add(n)
		l.c.fdsLost(err)
		return nil
	case ipc.IsProtocolError(err):
		return nil // only the master writes here; its fds were closed
	default:
		return l.opError(err)
	}
	hs := l.msg.Handoffs
	l.c.room.Took(len(hs))
	l.c.ctr.Received.Add(uint64(len(hs)))
	l.mu.Lock()
	// Even if Close has begun: it waits for this read (readMu) and then
	// hands back the whole queue in one Return frame.
	if l.head == len(l.queue) {
		l.queue, l.head = l.queue[:0], 0
	}
	l.queue = append(l.queue, hs...)
	l.mu.Unlock()
	return nil
}

// wrap turns a received fd into the conn that Accept returns.
func (l *Listener) wrap(h ipc.Handoff) (net.Conn, error) {
	raddr := remoteAddr(l.network, h)
	if !l.std {
		return newConn(int(h.FD), l.network, l.laddr, raddr, l.c.connClosed), nil
	}
	f := os.NewFile(uintptr(h.FD), "handoff-conn")
	nc, err := net.FileConn(f) // dups the fd
	_ = f.Close()
	// The conn is the program's from here, and its Close is net's, which
	// this package cannot see: it leaves the master's count now, rather
	// than counting as open until the worker exits, which would hold a
	// slot of the master's Options.MaxConns for good and weigh on
	// LeastLoaded forever. The master thus does not count std conns
	// among a worker's connections in progress.
	l.c.connClosed()
	if err != nil {
		return nil, l.opError(err)
	}
	return nc, nil
}

// remoteAddr decodes the client's address that came with a handoff, or
// returns nil (the conn then asks the kernel) when none came.
func remoteAddr(network string, h ipc.Handoff) net.Addr {
	if h.AddrLen < 2 {
		return nil
	}
	sa := h.Addr[:h.AddrLen]
	switch binary.NativeEndian.Uint16(sa) {
	case unix.AF_INET, unix.AF_INET6:
		// A scoped IPv6 address needs its zone's name: the conn asks
		// the kernel for it.
		if ap, scoped := h.AddrPort(); ap.IsValid() && !scoped {
			return net.TCPAddrFromAddrPort(ap)
		}
	case unix.AF_UNIX:
		if network == "unix" {
			// As package net has it: "@" for an unnamed socket, and
			// the leading NUL of an abstract name shown as "@".
			name := append([]byte{'@'}, sa[min(len(sa), 3):]...)
			if len(sa) > 2 && sa[2] != 0 {
				name = sa[2:]
			}
			for i, c := range name {
				if c == 0 {
					name = name[:i]
					break
				}
			}
			return &net.UnixAddr{Name: string(name), Net: "unix"}
		}
	}
	return nil
}

// drainGrace is how long a listener must stay drained, with no Accept in
// progress, before a disconnecting worker closes it: time for the caller
// of Accept (http.Server.Serve) to start tracking the last conn, so that
// its Shutdown waits for it.
const drainGrace = 50 * time.Millisecond

// closeWhenDrained closes l once Accept has taken and returned everything
// the master handed it (its socket and queue are empty), or after timeout.
// The master stopped sending before it asked, so nothing more comes.
func (l *Listener) closeWhenDrained(timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	var emptySince time.Time
	for {
		l.mu.Lock()
		empty := l.closed || (l.head == len(l.queue) && l.wrapping == 0)
		l.mu.Unlock()
		if empty {
			if n, err := l.sock.Unread(); err == nil && n > 0 {
				empty = false
			}
		}
		now := time.Now()
		switch {
		case !empty:
			emptySince = time.Time{}
		case emptySince.IsZero():
			emptySince = now
		}
		if (empty && now.Sub(emptySince) >= drainGrace) || now.After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	_ = l.Close()
}

// Close stops the listener. Connections read but not yet accepted go back
// to the master, which also takes back what this worker never read.
func (l *Listener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.done)
	l.mu.Unlock()
	// Closing the socket wakes an Accept waiting on it; readMu then waits
	// for a read in progress, whose frame joins the queue. So one Return
	// frame hands back everything read and not accepted, and no frame
	// comes after it: the master may take a later Listen for a new one.
	_ = l.sock.Close()
	l.readMu.Lock()
	l.mu.Lock()
	rest := l.queue[l.head:]
	l.queue, l.head = nil, 0
	l.mu.Unlock()
	l.readMu.Unlock()
	l.c.listenerClosed(l, rest)
	return nil
}

// Addr returns the address the master bound.
func (l *Listener) Addr() net.Addr { return l.addr }

func (l *Listener) opError(err error) error {
	return &net.OpError{Op: "accept", Net: l.network, Addr: l.addr, Err: err}
}
