//go:build linux

package scm

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// MaxFDs is the most fds one message carries: the kernel's SCM_MAX_FD.
const MaxFDs = 253

// OOBSize is the size of the control buffer that receives MaxFDs fds.
var OOBSize = unix.CmsgSpace(4 * MaxFDs)

var (
	// ErrTooManyFDs is returned for a send of more than MaxFDs fds, or a
	// receive whose fds slice is too short for what arrived.
	ErrTooManyFDs = errors.New("scm: too many fds in one message")
	// ErrTruncated means the message was longer than the receive buffer
	// (MSG_TRUNC). Its fds were closed.
	ErrTruncated = errors.New("scm: message truncated (MSG_TRUNC)")
	// ErrControlTruncated means the kernel dropped fds because the control
	// buffer was too small or the receiver was at its fd limit
	// (MSG_CTRUNC). The fds that did arrive were closed; the data did
	// arrive, and its length is returned with this error.
	ErrControlTruncated = errors.New("scm: control data truncated (MSG_CTRUNC)")
	// ErrBadControl means a control message could not be parsed. Every fd
	// that could be found in it was closed.
	ErrBadControl = errors.New("scm: malformed control message")
	// ErrEmpty is returned for a send with no payload: the protocol never
	// sends empty messages, and the receiver reads them as end of stream.
	ErrEmpty = errors.New("scm: empty payload")
	// ErrNoRoom is returned by ReadMsgWhen when its condition was false:
	// nothing was read, and the message is still in the socket.
	ErrNoRoom = errors.New("scm: no room for the fds of a message; left unread")
)

// Conn is one end of a connected SOCK_SEQPACKET Unix socket. Writes may be
// called from many goroutines (they are serialised); reads from one
// goroutine at a time. A Conn makes no allocation per message.
type Conn struct {
	f      *os.File        // the socket, in the runtime poller; nil if unpolled
	rc     syscall.RawConn // f's, or an unpolled one: every syscall goes through it
	closed atomic.Bool     // Close has been called

	// The write side. wmu serialises writes and guards the rest: the
	// arguments and result of the sendmsg that wfn makes, kept here so
	// that a write allocates nothing.
	wmu   sync.Mutex
	wiov  unix.Iovec            // the payload
	wmsg  unix.Msghdr           // sendmsg's header, over wiov and woob
	woob  []byte                // the SCM_RIGHTS control message, OOBSize bytes
	wwait bool                  // wait for room (WriteMsg), or return EAGAIN (TryWriteMsg)
	werr  error                 // sendmsg's error
	wfn   func(fd uintptr) bool // doWrite, made once, for rc.Write

	// The read side, the same way: rmu guards the rest.
	rmu    sync.Mutex
	riov   unix.Iovec            // the buffer read into
	rmsg   unix.Msghdr           // recvmsg's header, over riov and roob
	roob   []byte                // the control messages received, OOBSize bytes
	rwait  bool                  // wait for a message, or return EAGAIN
	rn     int                   // recvmsg's byte count
	rerr   error                 // recvmsg's error, or ErrNoRoom
	rflags int                   // recvmsg's flags (MSG_TRUNC, MSG_CTRUNC)
	rok    func() bool           // ReadMsgWhen's condition, or nil
	rfn    func(fd uintptr) bool // doRead, made once, for rc.Read
}

// Socketpair returns a connected SOCK_SEQPACKET pair. local is ready for
// use in this process; remote is meant for a child process through
// exec.Cmd.ExtraFiles. The caller owns both and closes remote once the
// child has started. Both ends are close-on-exec in this process; ExtraFiles
// clears that flag for the child's copy only.
func Socketpair() (local *Conn, remote *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, nil, os.NewSyscallError("socketpair", err)
	}
	local, err = NewConn(fds[0])
	if err != nil {
		_ = unix.Close(fds[1])
		return nil, nil, err
	}
	return local, os.NewFile(uintptr(fds[1]), "handoff-control"), nil
}

// NewConn takes ownership of fd, a connected SOCK_SEQPACKET Unix socket
// (for example one inherited from a parent), makes it non-blocking and
// close-on-exec, and returns a Conn over it. On error fd is closed.
func NewConn(fd int) (*Conn, error) {
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("scm: fd %d is not a socket: %w", fd, os.NewSyscallError("getsockopt", err))
	}
	if typ != unix.SOCK_SEQPACKET {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("scm: fd %d is socket type %d, want SOCK_SEQPACKET", fd, typ)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		return nil, os.NewSyscallError("setnonblock", err)
	}
	unix.CloseOnExec(fd)
	// os.NewFile sees the fd is non-blocking and registers it with the
	// runtime poller, so waits park the goroutine, not a thread.
	f := os.NewFile(uintptr(fd), "handoff-control")
	rc, err := f.SyscallConn()
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	c := &Conn{f: f, rc: rc, woob: make([]byte, OOBSize), roob: make([]byte, OOBSize)}
	c.wfn = c.doWrite
	c.rfn = c.doRead
	return c, nil
}

// NewUnpolledConn takes ownership of fd, a connected SOCK_SEQPACKET Unix
// socket, and returns a Conn over it that is not registered with the
// runtime poller: only TryReadMsg, TryWriteMsg, Control and the queue
// ioctls work on it, and only from one goroutine at a time or under the
// caller's lock (Close must not race with them). It is for a socket this
// process only ever uses without waiting, whose readiness events would
// only wake the poller for nothing: the master's ends of a conns socket,
// which would otherwise turn writable on every read by the worker. fd's
// O_NONBLOCK flag is left as it is (it is shared with every copy of the
// socket, such as the worker's); every call passes MSG_DONTWAIT.
func NewUnpolledConn(fd int) *Conn {
	c := &Conn{rc: &unpolled{fd: fd}, woob: make([]byte, OOBSize), roob: make([]byte, OOBSize)}
	c.wfn = c.doWrite
	c.rfn = c.doRead
	return c
}

// unpolled is the syscall.RawConn of an unpolled Conn: it runs f at once,
// and never waits.
type unpolled struct {
	fd     int
	closed bool
}

var errWouldBlock = errors.New("scm: an unpolled socket cannot wait")

func (u *unpolled) Control(f func(fd uintptr)) error {
	if u.closed {
		return os.ErrClosed
	}
	f(uintptr(u.fd))
	return nil
}

func (u *unpolled) Read(f func(fd uintptr) bool) error {
	if u.closed {
		return os.ErrClosed
	}
	if !f(uintptr(u.fd)) {
		return errWouldBlock
	}
	return nil
}

func (u *unpolled) Write(f func(fd uintptr) bool) error { return u.Read(f) }

func (u *unpolled) close() error {
	if u.closed {
		return nil
	}
	u.closed = true
	return os.NewSyscallError("close", unix.Close(u.fd))
}

// Close closes the socket. A read or write blocked on it returns an error
// matching os.ErrClosed. Close is safe to call more than once.
func (c *Conn) Close() error {
	c.closed.Store(true)
	if u, ok := c.rc.(*unpolled); ok {
		return u.close()
	}
	err := c.f.Close()
	if errors.Is(err, os.ErrClosed) {
		return nil
	}
	return err
}

// WriteMsg sends p (which must not be empty) and fds as one message,
// waiting while the socket's buffer is full. It does not take ownership
// of fds: see the package doc.
func (c *Conn) WriteMsg(p []byte, fds []int) error { return c.write(p, fds, true) }

// TryWriteMsg is WriteMsg without waiting: when the socket's buffer is full
// it returns an error matching unix.EAGAIN and nothing was sent.
func (c *Conn) TryWriteMsg(p []byte, fds []int) error { return c.write(p, fds, false) }

func (c *Conn) write(p []byte, fds []int, wait bool) error {
	if len(p) == 0 {
		return ErrEmpty
	}
	if len(fds) > MaxFDs {
		return ErrTooManyFDs
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wiov.Base = &p[0]
	c.wiov.SetLen(len(p))
	c.wmsg.Iov = &c.wiov
	c.wmsg.Iovlen = 1
	c.wmsg.Control = nil
	c.wmsg.Controllen = 0
	if len(fds) > 0 {
		n := putRights(c.woob, fds)
		c.wmsg.Control = &c.woob[0]
		c.wmsg.SetControllen(n)
	}
	c.wwait = wait
	c.werr = nil
	err := c.rc.Write(c.wfn)
	c.wiov.Base = nil
	c.wmsg.Control = nil
	if err != nil {
		return c.rawErr("sendmsg", err)
	}
	return c.werr
}

// doWrite runs inside RawConn.Write. Returning false asks the poller to
// wait for writability and call it again.
func (c *Conn) doWrite(fd uintptr) bool {
	for {
		// Raw: with MSG_DONTWAIT it cannot block, and skipping
		// entersyscall spares the runtime's sysmon a wakeup per message.
		_, _, e := unix.RawSyscall(unix.SYS_SENDMSG, fd, uintptr(unsafe.Pointer(&c.wmsg)), unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT)
		switch e {
		case 0:
			c.werr = nil
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			if c.wwait {
				return false
			}
		}
		c.werr = syscallError("sendmsg", e)
		return true
	}
}

// rawErr turns the error of a RawConn call on a closed Conn, the poller's
// "use of closed file", which does not match os.ErrClosed, into one that
// does, as Close promises.
func (c *Conn) rawErr(op string, err error) error {
	if c.closed.Load() {
		name := "handoff-unpolled"
		if c.f != nil {
			name = c.f.Name()
		}
		return &os.PathError{Op: op, Path: name, Err: os.ErrClosed}
	}
	return err
}

// putRights writes one SCM_RIGHTS control message for fds into oob and
// returns its length.
func putRights(oob []byte, fds []int) int {
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level = unix.SOL_SOCKET
	h.Type = unix.SCM_RIGHTS
	h.SetLen(unix.CmsgLen(4 * len(fds)))
	data := oob[unix.CmsgLen(0):]
	for i, fd := range fds {
		*(*int32)(unsafe.Pointer(&data[4*i])) = int32(fd)
	}
	return unix.CmsgSpace(4 * len(fds))
}

// ReadMsg receives one message into p, waiting until one arrives. The fds
// that came with it are stored in fds[:nfds] and belong to the caller;
// fds should have room for MaxFDs. At end of stream it returns io.EOF. On
// every error, every fd that arrived has been closed and nfds is 0.
func (c *Conn) ReadMsg(p []byte, fds []int) (n, nfds int, err error) {
	return c.read(p, fds, true, nil)
}

// ReadMsgWhen is ReadMsg (with wait) or TryReadMsg (without) that calls ok
// right before every recvmsg, and returns ErrNoRoom, reading nothing,
// when ok says false. It is for a reader that must not take a message
// whose fds it has no room for (see Room): the kernel would drop them.
func (c *Conn) ReadMsgWhen(p []byte, fds []int, wait bool, ok func() bool) (n, nfds int, err error) {
	return c.read(p, fds, wait, ok)
}

// TryReadMsg is ReadMsg without waiting: with nothing to read it returns an
// error matching unix.EAGAIN.
func (c *Conn) TryReadMsg(p []byte, fds []int) (n, nfds int, err error) {
	return c.read(p, fds, false, nil)
}

func (c *Conn) read(p []byte, fds []int, wait bool, ok func() bool) (n, nfds int, err error) {
	if len(p) == 0 {
		return 0, 0, ErrEmpty
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.riov.Base = &p[0]
	c.riov.SetLen(len(p))
	c.rmsg.Iov = &c.riov
	c.rmsg.Iovlen = 1
	c.rmsg.Control = &c.roob[0]
	c.rmsg.SetControllen(len(c.roob))
	c.rmsg.Flags = 0
	c.rwait = wait
	c.rerr = nil
	c.rok = ok
	err = c.rc.Read(c.rfn)
	c.riov.Base = nil
	c.rok = nil
	if err != nil {
		return 0, 0, c.rawErr("recvmsg", err)
	}
	if c.rerr != nil {
		return 0, 0, c.rerr
	}
	n = c.rn
	nfds, err = parseRights(c.roob[:c.rmsg.Controllen], fds)
	switch {
	case err != nil:
	case c.rflags&unix.MSG_CTRUNC != 0:
		err = ErrControlTruncated
	case c.rflags&unix.MSG_TRUNC != 0:
		err = ErrTruncated
	case n == 0:
		err = io.EOF
	}
	if err != nil {
		closeAll(fds[:nfds])
		if err == ErrControlTruncated {
			// The data arrived whole: its length lets the caller learn
			// what the message carried, and count what was lost.
			return n, 0, err
		}
		return 0, 0, err
	}
	return n, nfds, nil
}

func (c *Conn) doRead(fd uintptr) bool {
	if c.rok != nil && !c.rok() {
		c.rerr = ErrNoRoom
		return true
	}
	for {
		// Raw, as in doWrite: with MSG_DONTWAIT it cannot block.
		r, _, e := unix.RawSyscall(unix.SYS_RECVMSG, fd, uintptr(unsafe.Pointer(&c.rmsg)), unix.MSG_CMSG_CLOEXEC|unix.MSG_DONTWAIT)
		switch e {
		case 0:
			c.rn = int(r)
			c.rflags = int(c.rmsg.Flags)
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			if c.rwait {
				return false
			}
		}
		c.rerr = syscallError("recvmsg", e)
		return true
	}
}

// parseRights collects the fds of every SCM_RIGHTS control message in oob
// into fds. Fds that do not fit, and every fd on error, are closed; on
// error it returns 0 and the fds already stored are closed too.
func parseRights(oob []byte, fds []int) (int, error) {
	nfds := 0
	var err error
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(oob) {
			// Nothing past here can be parsed. The kernel writes
			// well-formed headers, so this is not expected.
			err = ErrBadControl
			break
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_RIGHTS {
			data := oob[unix.CmsgLen(0):l]
			for i := 0; i+4 <= len(data); i += 4 {
				fd := int(*(*int32)(unsafe.Pointer(&data[i])))
				if nfds < len(fds) {
					fds[nfds] = fd
					nfds++
				} else {
					_ = unix.Close(fd)
					err = ErrTooManyFDs
				}
			}
		}
		next := unix.CmsgSpace(l - unix.CmsgLen(0))
		if next > len(oob) {
			break
		}
		oob = oob[next:]
	}
	if err != nil {
		closeAll(fds[:nfds])
		return 0, err
	}
	return nfds, nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		_ = unix.Close(fd)
	}
}

// The EAGAIN errors of TryReadMsg and TryWriteMsg are made once: a
// non-blocking reader meets them after every burst.
var (
	errReadAgain  = os.NewSyscallError("recvmsg", unix.EAGAIN)
	errWriteAgain = os.NewSyscallError("sendmsg", unix.EAGAIN)
)

func syscallError(call string, e unix.Errno) error {
	if e == unix.EAGAIN {
		if call == "recvmsg" {
			return errReadAgain
		}
		return errWriteAgain
	}
	return os.NewSyscallError(call, e)
}

// Control runs f with the socket's fd, which stays open and valid while f
// runs; f must not close it. It is how the fd is handed on in a message
// (the receiver gets its own copy) without calling Fd.
func (c *Conn) Control(f func(fd int)) error {
	err := c.rc.Control(func(fd uintptr) { f(int(fd)) })
	if err != nil {
		return c.rawErr("control", err)
	}
	return nil
}

// Unsent returns the bytes this end has sent that the peer has not read
// yet (SIOCOUTQ): the kernel's count, whatever the peer says.
func (c *Conn) Unsent() (int, error) { return c.ioctl(unix.SIOCOUTQ, "ioctl(SIOCOUTQ)") }

// Unread returns the bytes waiting to be read on this end (SIOCINQ).
func (c *Conn) Unread() (int, error) { return c.ioctl(unix.SIOCINQ, "ioctl(SIOCINQ)") }

func (c *Conn) ioctl(req uint, name string) (int, error) {
	var n int
	var ierr error
	err := c.rc.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), req) })
	if err != nil {
		return 0, c.rawErr(name, err)
	}
	if ierr != nil {
		return 0, os.NewSyscallError(name, ierr)
	}
	return n, nil
}

// ShutdownRead shuts down the receiving side: the peer's sends fail with
// EPIPE from then on. A socket that only sends uses it so that its peer
// cannot fill its receive queue.
func (c *Conn) ShutdownRead() error {
	var serr error
	err := c.rc.Control(func(fd uintptr) { serr = unix.Shutdown(int(fd), unix.SHUT_RD) })
	if err != nil {
		return c.rawErr("shutdown", err)
	}
	return os.NewSyscallError("shutdown", serr)
}
