//go:build linux

package ipc

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/handoff-go/handoff/scm"
	"golang.org/x/sys/unix"
)

// ConnsSocket is one end of a listener's conns socket: a SOCK_SEQPACKET
// socketpair per worker and listener that carries only Conns frames, from
// the master to the worker. The master keeps both ends: it sends on one,
// and it can read back from the other (the worker's end, of which the
// worker has its own copy) whatever the worker has not read. A message goes
// whole to exactly one reader, so two processes never get one connection.
//
// Send is for one goroutine at a time (the master sends under its lock).
// Recv may be called from many goroutines; they take turns.
type ConnsSocket struct {
	sc *scm.Conn // the socket; ConnsSocket owns it

	wbuf []byte        // Send's frame
	wfds [MaxConns]int // Send's fds

	rmu  sync.Mutex    // guards the read buffers below
	rbuf []byte        // Recv's frame
	rfds [MaxConns]int // Recv's fds
}

// ConnsPair makes a listener's conns socket. send is the master's sending
// end, already shut for reading so that the worker cannot fill its queue;
// recv is the worker's end, whose fd the master hands to the worker (see
// Fd) and keeps, to take back what the worker never read. Both are
// unpolled (scm.NewUnpolledConn): the master never waits on them, and in
// its poller every read by the worker, and every send, would be an event
// that wakes it for nothing. So they are for TrySend and Recv without
// wait only, under the caller's lock.
func ConnsPair() (send, recv *ConnsSocket, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, nil, os.NewSyscallError("socketpair", err)
	}
	a, b := scm.NewUnpolledConn(fds[0]), scm.NewUnpolledConn(fds[1])
	_ = a.ShutdownRead()
	return NewConnsSocket(a), NewConnsSocket(b), nil
}

// NewConnsSocket frames a conns socket on sc and takes ownership of it.
func NewConnsSocket(sc *scm.Conn) *ConnsSocket {
	return &ConnsSocket{sc: sc, wbuf: make([]byte, 0, MaxFrame), rbuf: make([]byte, MaxFrame+1)}
}

// Close closes this end.
func (s *ConnsSocket) Close() error { return s.sc.Close() }

// Fd runs f with the socket's fd, open and valid while f runs: to send it
// in a message, whose receiver gets a copy of its own.
func (s *ConnsSocket) Fd(f func(fd int)) error { return s.sc.Control(f) }

// Unsent returns what the peer has not read of what this end sent, in
// the kernel's accounting of socket memory: 0 when it has read it all.
func (s *ConnsSocket) Unsent() (int, error) { return s.sc.Unsent() }

// Unread returns the bytes waiting to be read at this end.
func (s *ConnsSocket) Unread() (int, error) { return s.sc.Unread() }

// TrySend sends one Conns frame for hs, at most MaxConns of them, without
// waiting. It returns an error matching unix.EAGAIN when the socket is
// full; then nothing was sent. It allocates nothing. The caller keeps
// ownership of the fds: after a successful send it must close its copies.
func (s *ConnsSocket) TrySend(listener uint32, hs []Handoff) error {
	if len(hs) == 0 || len(hs) > MaxConns {
		return ErrFDs
	}
	for i := range hs {
		s.wfds[i] = int(hs[i].FD)
	}
	s.wbuf = AppendConns(s.wbuf[:0], listener, hs)
	return s.sc.TryWriteMsg(s.wbuf, s.wfds[:len(hs)])
}

// Recv reads one Conns frame into m; the fds are in m.Handoffs[i].FD and
// belong to the caller. With wait it waits for a frame, otherwise it
// returns an error matching unix.EAGAIN when there is none. room, if not
// nil, is asked before every read, and while it says false Recv returns
// scm.ErrNoRoom and leaves the frame in the socket. On an error matching
// ErrFDsLost (MSG_CTRUNC) the fds are gone and m.Handoffs says how many
// connections the frame carried, each with FD -1. A frame that is not a
// well-formed Conns frame is dropped, its fds closed, and a *ProtocolError
// returned.
func (s *ConnsSocket) Recv(m *Message, wait bool, room func() bool) error {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	n, nfds, err := s.sc.ReadMsgWhen(s.rbuf, s.rfds[:], wait, room)
	switch {
	case errors.Is(err, scm.ErrTruncated):
		return fmt.Errorf("%w: frame over %d bytes: %w", ErrMalformed, MaxFrame, err)
	case errors.Is(err, scm.ErrControlTruncated):
		// The fds are gone; decode the frame so that the caller can
		// count the connections lost (m.Handoffs, each FD -1).
		if n > MaxFrame || Decode(s.rbuf[:n], m) != nil || m.Kind != KindConns {
			m.Handoffs = m.Handoffs[:0]
		}
		return fmt.Errorf("%w: %w", ErrFDsLost, err)
	case errors.Is(err, scm.ErrTooManyFDs), errors.Is(err, scm.ErrBadControl):
		return fmt.Errorf("%w: %w", ErrFDs, err)
	case err != nil:
		return err
	}
	fds := s.rfds[:nfds]
	if n > MaxFrame {
		closeFDs(fds)
		return fmt.Errorf("%w: frame over %d bytes", ErrMalformed, MaxFrame)
	}
	if err := Decode(s.rbuf[:n], m); err != nil {
		closeFDs(fds)
		return err
	}
	if m.Kind != KindConns {
		closeFDs(fds)
		return fmt.Errorf("%w: %s on a conns socket", ErrUnknownKind, m.Kind)
	}
	if len(m.Handoffs) != len(fds) {
		closeFDs(fds)
		return fmt.Errorf("%w: %s with %d fds", ErrFDs, m.Kind, len(fds))
	}
	for i, fd := range fds {
		m.Handoffs[i].FD = int32(fd)
	}
	return nil
}

// ConnsSocketFrom takes ownership of fd, the worker's end of a conns
// socket received in a ListenReply.
func ConnsSocketFrom(fd int) (*ConnsSocket, error) {
	sc, err := scm.NewConn(fd)
	if err != nil {
		return nil, err
	}
	return NewConnsSocket(sc), nil
}
