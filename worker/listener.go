package worker

import (
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Listener is a net.Listener fed with connections handed off by the
// master. Close is idempotent and unblocks Accept, which then returns an
// error matching net.ErrClosed.
type Listener struct {
	c       *controlClient
	id      uint32
	network string
	addr    net.Addr

	mu     sync.Mutex
	ids    []uint64 // queued conns, in arrival order
	fds    []int
	head   int
	taking int // conns taken off the queue by Accept and not yet returned
	closed bool
	ready  chan struct{} // a token while the queue may be non-empty
	done   chan struct{} // closed by Close
}

var _ net.Listener = (*Listener)(nil)

func newListener(c *controlClient, id uint32, network, address string) *Listener {
	l := &Listener{c: c, id: id, network: network, ready: make(chan struct{}, 1), done: make(chan struct{})}
	if network == "unix" {
		l.addr = &net.UnixAddr{Name: address, Net: "unix"}
	} else if a, err := net.ResolveTCPAddr("tcp", address); err == nil {
		l.addr = a // the master sends a numeric address: no lookup
	} else {
		l.addr = stringAddr{network, address}
	}
	return l
}

// enqueue queues handed-off fds; it reports false, taking nothing, if the
// listener is closed.
func (l *Listener) enqueue(ids []uint64, fds []int) bool {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return false
	}
	if l.head > 0 && l.head == len(l.ids) {
		l.ids, l.fds, l.head = l.ids[:0], l.fds[:0], 0
	}
	l.ids = append(l.ids, ids...)
	l.fds = append(l.fds, fds...)
	l.mu.Unlock()
	select {
	case l.ready <- struct{}{}:
	default:
	}
	return true
}

// Accept waits for the next handed-off connection.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return nil, l.opError(net.ErrClosed)
		}
		if l.head < len(l.ids) {
			id, fd := l.ids[l.head], l.fds[l.head]
			l.head++
			l.taking++
			more := l.head < len(l.ids)
			l.mu.Unlock()
			if more {
				select {
				case l.ready <- struct{}{}:
				default:
				}
			}
			c, err := l.wrap(id, fd)
			l.mu.Lock()
			l.taking--
			l.mu.Unlock()
			return c, err
		}
		l.mu.Unlock()
		select {
		case <-l.ready:
		case <-l.done:
		}
	}
}

// wrap turns a received fd into a conn that reports its close.
func (l *Listener) wrap(id uint64, fd int) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "handoff-conn")
	nc, err := net.FileConn(f) // dups the fd
	_ = f.Close()
	if err != nil {
		// The fd is gone; tell the master so its load count stays true.
		l.c.connClosed(id)
		return nil, l.opError(err)
	}
	switch nc := nc.(type) {
	case *net.TCPConn:
		return &TCPConn{TCPConn: nc, closer: closer{c: l.c, id: id}}, nil
	case *net.UnixConn:
		return &UnixConn{UnixConn: nc, closer: closer{c: l.c, id: id}}, nil
	default:
		_ = nc.Close()
		l.c.connClosed(id)
		return nil, l.opError(unix.EPROTONOSUPPORT)
	}
}

// drainGrace is how long a listener's queue must stay empty, with no
// Accept in progress, before a disconnecting worker closes it: time for
// the caller of Accept (http.Server.Serve) to start tracking the last
// conn, so that its Shutdown waits for it.
const drainGrace = 50 * time.Millisecond

// closeWhenDrained closes l once Accept has taken and returned everything
// queued, or after timeout.
func (l *Listener) closeWhenDrained(timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	var emptySince time.Time
	for {
		l.mu.Lock()
		empty := l.closed || (l.head == len(l.ids) && l.taking == 0)
		l.mu.Unlock()
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

// Close stops the listener. Connections queued and not yet accepted go
// back to the master.
func (l *Listener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	ids, fds := l.ids[l.head:], l.fds[l.head:]
	l.ids, l.fds, l.head = nil, nil, 0
	close(l.done)
	l.mu.Unlock()
	l.c.listenerClosed(l, ids, fds)
	return nil
}

// Addr returns the address the master bound.
func (l *Listener) Addr() net.Addr { return l.addr }

func (l *Listener) opError(err error) error {
	return &net.OpError{Op: "accept", Net: l.network, Addr: l.addr, Err: err}
}

// closer closes a handed-off conn once and reports it to the master.
//
// The master may still hold its copy of the fd until it reads the ack, so
// the write side is shut down first and the FIN leaves at once, from here.
// That makes the peer see EOF before the fd is closed, so the first Close
// holds a sync.Once that a concurrent second Close waits on: the Close that
// caused the EOF is the one that succeeds, as with a plain net.Conn.
type closer struct {
	c    *controlClient
	id   uint64
	once sync.Once
	err  error
}

func (c *closer) close(shutWrite, close func() error, nc net.Conn) error {
	first := false
	c.once.Do(func() {
		first = true
		_ = shutWrite()
		c.err = close()
		c.c.connClosed(c.id)
	})
	if !first {
		return &net.OpError{Op: "close", Net: nc.LocalAddr().Network(), Source: nc.LocalAddr(), Addr: nc.RemoteAddr(), Err: net.ErrClosed}
	}
	return c.err
}

// TCPConn is a handed-off TCP connection: the real *net.TCPConn, whose
// Close also tells the master the connection is gone.
type TCPConn struct {
	*net.TCPConn
	closer closer
}

// Close closes the connection and reports it to the master.
func (c *TCPConn) Close() error {
	return c.closer.close(c.TCPConn.CloseWrite, c.TCPConn.Close, c.TCPConn)
}

// NetConn returns the inner *net.TCPConn. Closing it directly is not
// reported to the master.
func (c *TCPConn) NetConn() *net.TCPConn { return c.TCPConn }

// UnixConn is a handed-off Unix-socket connection; see TCPConn.
type UnixConn struct {
	*net.UnixConn
	closer closer
}

// Close closes the connection and reports it to the master.
func (c *UnixConn) Close() error {
	return c.closer.close(c.UnixConn.CloseWrite, c.UnixConn.Close, c.UnixConn)
}

// NetConn returns the inner *net.UnixConn; see TCPConn.NetConn.
func (c *UnixConn) NetConn() *net.UnixConn { return c.UnixConn }
