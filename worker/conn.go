//go:build linux

package worker

import (
	"io"
	"math"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Conn is a handed-off connection: the connected stream socket (TCP or
// Unix) that this worker received from the master, served straight from
// that fd through the runtime poller. It costs what a kernel-accepted
// connection costs: no dup and no lookups, since its addresses come with
// the handoff. Read, Write and deadlines behave as on a *net.TCPConn, and
// it has the methods that net/http and other libraries reach through
// interfaces: ReadFrom (sendfile), CloseWrite, CloseRead, SyscallConn and
// the TCP socket options.
//
// A Conn is not a *net.TCPConn or *net.UnixConn. Code that type-asserts
// one silently does without: grpc-go, for one, sets TCP_USER_TIMEOUT only
// on a *net.TCPConn. Set such options on the master's listening socket
// (accepted sockets inherit them on Linux), or listen with
// ListenConfig.StdConns, which makes Accept return the real *net.TCPConn.
//
// Fd ownership: a Conn owns its fd from newConn on. Close closes it, and
// so does the *os.File's finalizer if a Conn is dropped unclosed. File
// returns a dup, which its caller owns; SyscallConn lends the fd.
//
// Errors look like package net's: each one but io.EOF is a *net.OpError;
// use of a closed Conn matches net.ErrClosed, and a passed deadline matches
// os.ErrDeadlineExceeded.
type Conn struct {
	f       *os.File // owns the fd, registered with the runtime poller
	network string   // "tcp" or "unix"
	onClose func()   // run once, after the Close that closed f; may be nil
	laddr   lazyAddr // local address
	raddr   lazyAddr // peer address
}

var _ net.Conn = (*Conn)(nil)

// lazyAddr is an address that newConn was given, or that is asked of the
// kernel once, on first use.
type lazyAddr struct {
	once sync.Once // guards addr, if newConn was not given it
	addr net.Addr  // the address; nil until once ran, unless given
}

// newConn takes ownership of fd, a connected, non-blocking stream socket
// (TCP or Unix) that this process received, and registers it with the
// runtime poller through os.NewFile: one fcntl(F_GETFL) and the epoll
// registration, no dup. network is "tcp" or "unix" (for errors and Addr
// networks). laddr or raddr may be nil: the kernel is then asked
// (getsockname/getpeername) once, on first use, and the result is cached.
// onClose, if not nil, runs exactly once, after the first Close that
// actually closes the fd (it bumps a shared counter; it must not allocate).
//
// A blocking fd would not be registered with the poller: each Read would
// hold a thread and deadlines would fail with os.ErrNoDeadline.
func newConn(fd int, network string, laddr, raddr net.Addr, onClose func()) *Conn {
	return &Conn{
		f:       os.NewFile(uintptr(fd), "handoff-conn"),
		network: network,
		onClose: onClose,
		laddr:   lazyAddr{addr: laddr},
		raddr:   lazyAddr{addr: raddr},
	}
}

// Read reads from the connection. At the end of the stream it returns
// io.EOF, bare, as package net does.
func (c *Conn) Read(b []byte) (int, error) {
	n, err := c.f.Read(b)
	if err != nil && err != io.EOF {
		err = c.opError("read", fileError(err))
	}
	return n, err
}

// Write writes to the connection.
func (c *Conn) Write(b []byte) (int, error) {
	n, err := c.f.Write(b)
	if err != nil {
		err = c.opError("write", fileError(err))
	}
	return n, err
}

// Close closes the connection and its fd; pending Reads and Writes return
// an error matching net.ErrClosed, and so does any later Close. The first
// Close runs onClose once the fd is closed.
func (c *Conn) Close() error {
	err := c.f.Close()
	if err != nil && isClosedFile(err) {
		return c.opError("close", net.ErrClosed) // another Close won
	}
	// This call closed the fd, even if close(2) reported an error.
	if c.onClose != nil {
		c.onClose()
	}
	if err != nil {
		return c.opError("close", fileError(err))
	}
	return nil
}

// LocalAddr returns the local address: the one newConn was given or,
// failing that, what getsockname says on first use (nil if the Conn was
// closed before that).
func (c *Conn) LocalAddr() net.Addr { return c.laddr.get(c, unix.Getsockname) }

// RemoteAddr returns the peer's address: the one newConn was given or,
// failing that, what getpeername says on first use (nil if the Conn was
// closed before that).
func (c *Conn) RemoteAddr() net.Addr { return c.raddr.get(c, unix.Getpeername) }

// get returns a.addr, asking the kernel with sockname for it the first time
// if newConn was not given it.
func (a *lazyAddr) get(c *Conn, sockname func(fd int) (unix.Sockaddr, error)) net.Addr {
	a.once.Do(func() {
		if a.addr != nil {
			return
		}
		var sa unix.Sockaddr
		err := c.control(func(fd int) { sa, _ = sockname(fd) })
		if err == nil && sa != nil {
			a.addr = sockaddrToAddr(sa)
		}
	})
	return a.addr
}

// sockaddrToAddr converts sa as package net does: *net.TCPAddr for an IP
// address, *net.UnixAddr for a Unix one (Name "@" if unnamed), nil else.
func sockaddrToAddr(sa unix.Sockaddr) net.Addr {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(sa.Addr[:]), Port: sa.Port}
	case *unix.SockaddrInet6:
		a := &net.TCPAddr{IP: net.IP(sa.Addr[:]), Port: sa.Port}
		if sa.ZoneId != 0 {
			a.Zone = strconv.Itoa(int(sa.ZoneId))
			if ifi, err := net.InterfaceByIndex(int(sa.ZoneId)); err == nil {
				a.Zone = ifi.Name
			}
		}
		return a
	case *unix.SockaddrUnix:
		return &net.UnixAddr{Name: sa.Name, Net: "unix"}
	}
	return nil
}

// SetDeadline sets the read and write deadlines, as net.Conn says.
func (c *Conn) SetDeadline(t time.Time) error {
	return c.setError(c.f.SetDeadline(t))
}

// SetReadDeadline sets the read deadline, as net.Conn says.
func (c *Conn) SetReadDeadline(t time.Time) error {
	return c.setError(c.f.SetReadDeadline(t))
}

// SetWriteDeadline sets the write deadline, as net.Conn says.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	return c.setError(c.f.SetWriteDeadline(t))
}

// setError wraps an error from an os.File deadline setter.
func (c *Conn) setError(err error) error {
	if err != nil {
		return c.opError("set", pollError(err))
	}
	return nil
}

// CloseRead shuts down the reading side of the connection.
func (c *Conn) CloseRead() error { return c.shutdown(unix.SHUT_RD) }

// CloseWrite shuts down the writing side of the connection: the peer
// reads EOF, and can still write to this side.
func (c *Conn) CloseWrite() error { return c.shutdown(unix.SHUT_WR) }

func (c *Conn) shutdown(how int) error {
	var err error
	if cerr := c.control(func(fd int) { err = unix.Shutdown(fd, how) }); cerr != nil {
		return c.opError("close", cerr)
	}
	if err != nil {
		return c.opError("close", os.NewSyscallError("shutdown", err))
	}
	return nil
}

// SyscallConn returns the raw connection, which lends the fd. Never call
// Fd on an *os.File of the same fd instead.
func (c *Conn) SyscallConn() (syscall.RawConn, error) {
	return c.f.SyscallConn()
}

// File returns a dup of the fd (close-on-exec), owned by the caller, as
// (*net.TCPConn).File does. Closing one does not close the other. The dup
// shares the socket and its file status flags: it is non-blocking, and
// its Fd leaves it so.
func (c *Conn) File() (*os.File, error) {
	var nfd int
	var err error
	if cerr := c.control(func(fd int) { nfd, err = unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0) }); cerr != nil {
		return nil, c.opError("file", cerr)
	}
	if err != nil {
		return nil, c.opError("file", os.NewSyscallError("fcntl", err))
	}
	return os.NewFile(uintptr(nfd), "handoff-conn"), nil
}

// TCP socket options. On a Unix socket they do not apply, and these
// methods do nothing and return nil.

// defaultKeepAliveIdle is what SetKeepAlivePeriod(0) sets, as in package
// net.
const defaultKeepAliveIdle = 15 * time.Second

// SetNoDelay sets TCP_NODELAY: true (the default of package net's TCP
// conns) sends each write at once, false lets Nagle's algorithm batch them.
// A handed-off socket has whatever the master's listening socket had.
func (c *Conn) SetNoDelay(noDelay bool) error {
	return c.setsockopt(unix.IPPROTO_TCP, unix.TCP_NODELAY, boolint(noDelay))
}

// SetKeepAlive turns keep-alive probes (SO_KEEPALIVE) on or off.
func (c *Conn) SetKeepAlive(keepAlive bool) error {
	return c.setsockopt(unix.SOL_SOCKET, unix.SO_KEEPALIVE, boolint(keepAlive))
}

// SetKeepAlivePeriod sets the idle time before the first keep-alive probe
// (TCP_KEEPIDLE), rounded up to whole seconds, as package net does: 0
// means defaultKeepAliveIdle, and a negative d changes nothing.
func (c *Conn) SetKeepAlivePeriod(d time.Duration) error {
	if d < 0 {
		return nil
	}
	if d == 0 {
		d = defaultKeepAliveIdle
	}
	secs := (d + time.Second - 1) / time.Second
	return c.setsockopt(unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(secs))
}

// SetLinger sets SO_LINGER as (*net.TCPConn).SetLinger does: sec < 0
// turns it off (the default), 0 makes Close reset the connection, and
// sec > 0 makes Close wait up to sec seconds for unsent data.
func (c *Conn) SetLinger(sec int) error {
	if c.network != "tcp" {
		return nil
	}
	l := unix.Linger{}
	if sec >= 0 {
		l = unix.Linger{Onoff: 1, Linger: int32(sec)}
	}
	var err error
	if cerr := c.control(func(fd int) { err = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &l) }); cerr != nil {
		return c.opError("set", cerr)
	}
	if err != nil {
		return c.opError("set", os.NewSyscallError("setsockopt", err))
	}
	return nil
}

// setsockopt sets an int option on a TCP conn; on a Unix one it does
// nothing.
func (c *Conn) setsockopt(level, opt, value int) error {
	if c.network != "tcp" {
		return nil
	}
	var err error
	if cerr := c.control(func(fd int) { err = unix.SetsockoptInt(fd, level, opt, value) }); cerr != nil {
		return c.opError("set", cerr)
	}
	if err != nil {
		return c.opError("set", os.NewSyscallError("setsockopt", err))
	}
	return nil
}

func boolint(b bool) int {
	if b {
		return 1
	}
	return 0
}

// ReadFrom copies r to the connection until r's EOF. If r is an *os.File,
// or an *io.LimitedReader of one, the kernel copies with sendfile(2),
// from the file's current position, which it advances as Read would; if
// the file is not one sendfile can read (not a regular file), ReadFrom
// copies through a buffer instead.
func (c *Conn) ReadFrom(r io.Reader) (int64, error) {
	n, err, handled := c.sendfile(r)
	if !handled {
		n, err = io.Copy(writerOnly{c}, r) // would sendfile again, if not hidden
	}
	if err != nil {
		err = c.opError("readfrom", err)
	}
	return n, err
}

// writerOnly hides Conn's ReadFrom from io.Copy.
type writerOnly struct {
	io.Writer // the Conn
}

// maxSendfile bounds one sendfile(2) call, as internal/poll does.
const maxSendfile = 1<<31 - 1

// testHookSendfile, if not nil, is called with the bytes each ReadFrom
// moved with sendfile(2). Tests set it.
var testHookSendfile func(written int64)

// sendfile copies r to c with sendfile(2) if r is an *os.File, or an
// *io.LimitedReader of one. It reports handled false if it copied nothing
// and the caller must copy instead: r is not a file, or the kernel cannot
// sendfile from it (EINVAL, ENOSYS, EOPNOTSUPP). Its errors are ready for
// an *net.OpError's Err.
func (c *Conn) sendfile(r io.Reader) (written int64, err error, handled bool) {
	remain := int64(math.MaxInt64)
	lr, ok := r.(*io.LimitedReader)
	if ok {
		remain, r = lr.N, lr.R
		if remain <= 0 {
			return 0, nil, true
		}
	}
	f, ok := r.(*os.File)
	if !ok {
		return 0, nil, false
	}
	src, err := f.SyscallConn()
	if err != nil {
		return 0, nil, false
	}
	dst, err := c.f.SyscallConn()
	if err != nil {
		return 0, nil, false
	}
	var werr, serr error // from dst.Write, from sendfile(2)
	// The source's Read holds its read lock, and calls this once: a
	// regular file is not pollable. dst.Write calls its function again
	// each time the poller says the socket is writable.
	rerr := src.Read(func(sfd uintptr) bool {
		werr = dst.Write(func(dfd uintptr) bool {
			for remain > 0 {
				n, err := unix.Sendfile(int(dfd), int(sfd), nil, int(min(remain, maxSendfile)))
				if n > 0 {
					written += int64(n)
					remain -= int64(n)
				}
				switch {
				case err == unix.EINTR:
				case err == unix.EAGAIN:
					return false // wait until writable
				case err != nil:
					serr = err
					return true
				case n == 0:
					return true // end of the file
				}
			}
			return true
		})
		return true
	})
	if lr != nil {
		lr.N = remain
	}
	if written > 0 && testHookSendfile != nil {
		testHookSendfile(written)
	}
	switch {
	case rerr != nil:
		return 0, nil, false // the file is closed: the copy says so
	case werr != nil:
		return written, pollError(werr), true
	case written == 0 && (serr == unix.EINVAL || serr == unix.ENOSYS || serr == unix.EOPNOTSUPP):
		return 0, nil, false
	case serr != nil:
		return written, os.NewSyscallError("sendfile", serr), true
	}
	return written, nil, true
}

// control runs fn with the fd while c is open, or returns net.ErrClosed.
func (c *Conn) control(fn func(fd int)) error {
	rc, err := c.f.SyscallConn()
	if err != nil {
		return net.ErrClosed // only for a nil *os.File
	}
	return pollError(rc.Control(func(fd uintptr) { fn(int(fd)) }))
}

// opError wraps err, ready for its Err field, as package net does.
func (c *Conn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: c.network, Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// fileError converts an error of c.f's Read, Write or Close into what
// package net puts in an *net.OpError's Err: a syscall's Errno in an
// *os.SyscallError, net.ErrClosed for a closed file, deadline errors bare.
func fileError(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		if errno, ok := pe.Err.(syscall.Errno); ok {
			return os.NewSyscallError(pe.Op, errno)
		}
		err = pe.Err
	}
	if err == os.ErrClosed {
		return net.ErrClosed
	}
	return err
}

// isClosedFile reports whether err, from c.f's Close, says another Close
// came first.
func isClosedFile(err error) bool {
	pe, ok := err.(*os.PathError)
	return ok && pe.Err == os.ErrClosed
}

// pollError converts an error that internal/poll returned as is, through
// an os.File's deadline setters or its RawConn. Those fail only when the
// file is closed (with poll's unexported ErrFileClosing), when a deadline
// passed, or when the fd is not pollable (os.ErrNoDeadline): anything but
// the last two means closed.
func pollError(err error) error {
	switch {
	case err == nil:
		return nil
	case err == os.ErrDeadlineExceeded, err == os.ErrNoDeadline:
		return err
	}
	return net.ErrClosed
}
