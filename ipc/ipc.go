//go:build linux

package ipc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/handoff-go/handoff/scm"
	"golang.org/x/sys/unix"
)

// Version is the protocol version carried by every frame.
const Version = 2

// The environment of a worker process.
const (
	// EnvWorkerID holds the worker's id (1, 2, ...). Its presence makes a
	// process a worker.
	EnvWorkerID = "HANDOFF_WORKER_ID"
	// EnvControlFD holds the control socket's fd number, always ControlFD.
	EnvControlFD = "HANDOFF_CONTROL_FD"
	// ControlFD is the fd number of the control socket in a worker.
	ControlFD = 3
	// EnvPageFD holds the counter page's fd number, always PageFD.
	EnvPageFD = "HANDOFF_PAGE_FD"
	// PageFD is the fd number of the worker's counter page (see Page).
	PageFD = 4
)

// Size limits. A frame is one SOCK_SEQPACKET message.
const (
	// MaxFrame is the largest frame, header included. It stays well under
	// the default socket send buffer, so a frame always fits.
	MaxFrame = 64 << 10
	// HeaderSize is the size of a frame's header.
	HeaderSize = 4
	// MaxMessage is the largest user message, reassembled.
	MaxMessage = 4 << 20
	// MaxConns is the most connections in one Conns or Return frame: one
	// fd each, so SCM_MAX_FD.
	MaxConns = scm.MaxFDs
	// MaxAddr is the longest client address a Conns frame carries: a raw
	// sockaddr_in6. A longer one (a Unix socket's path) is not carried.
	MaxAddr   = unix.SizeofSockaddrInet6
	maxString = 1024
)

// Kind says what a frame carries.
type Kind uint8

// The kinds of frame. See the package doc for their layouts.
const (
	KindHello Kind = iota + 1
	KindListen
	KindListenReply
	KindConns
	KindReturn
	KindDisconnect
	KindUser
	KindPing
	KindPong
	kindEnd
)

var kindNames = [...]string{"invalid", "hello", "listen", "listen-reply", "conns", "return", "disconnect", "user", "ping", "pong"}

func (k Kind) String() string {
	if k < kindEnd {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// FlagMore marks a User fragment that more fragments follow.
const FlagMore = 1

// ProtocolError is the type of the errors that mean the peer broke the
// protocol: from Conn.Read and ConnsSocket.Recv, the frame was dropped,
// its fds closed, and the socket can still be read. Its values are the
// sentinels ErrMalformed, ErrVersion, ErrUnknownKind, ErrFDs, ErrFragment
// and ErrMessageTooLarge, which reads wrap with details; match one with
// errors.Is, or any with errors.As or IsProtocolError.
type ProtocolError struct {
	msg string // the message, "ipc: " and what was wrong
}

func (e *ProtocolError) Error() string { return e.msg }

var (
	// ErrMessageTooLarge is returned when a user message exceeds
	// MaxMessage: by Read, the peer sent one; by WriteUser, nothing was
	// sent.
	ErrMessageTooLarge error = &ProtocolError{fmt.Sprintf("ipc: message too large (limit %d bytes)", MaxMessage)}
	// ErrMalformed is returned for a frame whose lengths do not add up.
	ErrMalformed error = &ProtocolError{"ipc: malformed frame"}
	// ErrVersion is returned for a frame of another protocol version.
	ErrVersion error = &ProtocolError{"ipc: unsupported protocol version"}
	// ErrUnknownKind is returned for a frame of a kind this version lacks.
	ErrUnknownKind error = &ProtocolError{"ipc: unknown frame kind"}
	// ErrFDs is returned when a frame carries a different number of fds
	// than its kind and body say. The fds were closed.
	ErrFDs error = &ProtocolError{"ipc: wrong number of fds for frame"}
	// ErrFragment is returned for a frame that arrives between the
	// fragments of a user message.
	ErrFragment error = &ProtocolError{"ipc: frame interleaved with a fragmented message"}
)

var (
	// ErrFDsLost is returned when the kernel dropped fds of a frame because
	// the receiver was at its fd limit or its buffer was short
	// (MSG_CTRUNC). The frame is dropped and the fds that did arrive were
	// closed. It is not the peer's fault, so not a ProtocolError.
	ErrFDsLost = errors.New("ipc: fds lost in transit (MSG_CTRUNC)")
	// ErrBusy is returned by TryWriteFrame while another write holds the
	// socket.
	ErrBusy = errors.New("ipc: connection busy")
	// ErrNetwork is returned, wrapped, by CheckNetwork.
	ErrNetwork = errors.New("ipc: network not handed off")
)

// IsProtocolError reports whether err is, or wraps, a *ProtocolError: the
// peer broke the protocol (the frame was dropped, its fds closed, and the
// connection can still be read). ErrFDsLost is not one: the receiver ran
// out of fds.
func IsProtocolError(err error) bool {
	var pe *ProtocolError
	return errors.As(err, &pe)
}

// networks are the networks whose connections a master hands off: the
// network of every Listen frame is one of them.
var networks = []string{"tcp", "tcp4", "tcp6", "unix"}

// CheckNetwork returns nil if a master hands off connections of network,
// and otherwise an error wrapping ErrNetwork that lists those it does.
func CheckNetwork(network string) error {
	if slices.Contains(networks, network) {
		return nil
	}
	return fmt.Errorf("%w: %q is none of %s", ErrNetwork, network, strings.Join(networks, ", "))
}

// Handoff is one connection of a Conns frame: its fd, and the client's
// address as the raw sockaddr that accept4 filled in (AddrLen 0 when it is
// not carried), so the worker needs no getpeername.
type Handoff struct {
	FD      int32
	AddrLen uint8
	Addr    [MaxAddr]byte
}

// AddrPort decodes the client's address that came with h, a sockaddr_in
// or sockaddr_in6, without a syscall and without allocating; anything
// else (a Unix socket's address, none, or a truncated one) is the zero
// AddrPort. An IPv6 scope id is dropped, since a zone would allocate;
// scoped reports that there was one.
func (h *Handoff) AddrPort() (ap netip.AddrPort, scoped bool) {
	sa := h.Addr[:min(int(h.AddrLen), MaxAddr)]
	if len(sa) < 4 {
		return netip.AddrPort{}, false
	}
	port := binary.BigEndian.Uint16(sa[2:4])
	switch binary.NativeEndian.Uint16(sa) {
	case unix.AF_INET:
		if len(sa) >= unix.SizeofSockaddrInet4 {
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(sa[4:8])), port), false
		}
	case unix.AF_INET6:
		if len(sa) >= unix.SizeofSockaddrInet6 {
			return netip.AddrPortFrom(netip.AddrFrom16([16]byte(sa[8:24])), port), binary.NativeEndian.Uint32(sa[24:28]) != 0
		}
	}
	return netip.AddrPort{}, false
}

// Message is a decoded frame. Decode reuses its slices, so one Message kept
// across reads makes decoding allocation-free; Payload and Handoffs are
// valid until the next Decode into it.
type Message struct {
	Kind     Kind
	Flags    uint16
	PID      uint32    // Hello
	Req      uint32    // Listen, ListenReply
	Listener uint32    // ListenReply (0: failure), Conns, Return
	Network  string    // Listen
	Address  string    // Listen: requested; ListenReply: bound
	Errno    uint32    // ListenReply failure: the errno, or 0
	Syscall  string    // ListenReply failure: the call that failed
	Err      string    // ListenReply failure: the error's text
	Count    int       // Return: connections handed back
	Handoffs []Handoff // Conns: one per fd, FD filled in by the reader
	Payload  []byte    // User
}

// NumFDs is the number of fds a frame of this kind and body must carry.
func (m *Message) NumFDs() int {
	switch m.Kind {
	case KindConns:
		return len(m.Handoffs)
	case KindReturn:
		return m.Count
	case KindListenReply:
		if m.Listener != 0 {
			return 1 // the worker's end of the listener's conns socket
		}
	}
	return 0
}

// Decode parses one frame into m. It never panics and never keeps frame.
func Decode(frame []byte, m *Message) error {
	if len(frame) < HeaderSize {
		return ErrMalformed
	}
	if frame[0] != Version {
		return fmt.Errorf("%w: %d", ErrVersion, frame[0])
	}
	hs := m.Handoffs[:0]
	*m = Message{Kind: Kind(frame[1]), Flags: binary.LittleEndian.Uint16(frame[2:4]), Handoffs: hs}
	d := decoder{b: frame[HeaderSize:]}
	switch m.Kind {
	case KindHello:
		m.PID = d.u32()
	case KindListen:
		m.Req = d.u32()
		m.Network = d.str()
		m.Address = d.str()
	case KindListenReply:
		m.Req = d.u32()
		m.Listener = d.u32()
		m.Errno = d.u32()
		m.Address = d.str()
		m.Syscall = d.str()
		m.Err = d.str()
		if m.Listener != 0 && (m.Errno != 0 || m.Err != "") {
			return fmt.Errorf("%w: listen-reply with both a listener and an error", ErrMalformed)
		}
	case KindConns:
		m.Listener = d.u32()
		n := int(d.u16())
		if n > MaxConns {
			return ErrMalformed
		}
		for i := 0; i < n && !d.bad; i++ {
			a := d.take(int(d.u8()))
			if len(a) > MaxAddr {
				d.bad = true
				break
			}
			h := Handoff{FD: -1, AddrLen: uint8(len(a))}
			copy(h.Addr[:], a)
			m.Handoffs = append(m.Handoffs, h)
		}
	case KindReturn:
		m.Listener = d.u32()
		m.Count = int(d.u16())
		if m.Count > MaxConns {
			return ErrMalformed
		}
	case KindDisconnect, KindPing, KindPong:
	case KindUser:
		m.Payload = d.b
		d.b = nil
	default:
		return fmt.Errorf("%w: %d", ErrUnknownKind, frame[1])
	}
	if d.bad || len(d.b) != 0 {
		return fmt.Errorf("%w: %s", ErrMalformed, m.Kind)
	}
	return nil
}

type decoder struct {
	b   []byte
	bad bool
}

func (d *decoder) take(n int) []byte {
	if d.bad || n > len(d.b) {
		d.bad = true
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

func (d *decoder) u8() uint8 {
	if p := d.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (d *decoder) u16() uint16 {
	if p := d.take(2); p != nil {
		return binary.LittleEndian.Uint16(p)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if p := d.take(4); p != nil {
		return binary.LittleEndian.Uint32(p)
	}
	return 0
}

func (d *decoder) str() string {
	n := int(d.u16())
	if n > maxString {
		d.bad = true
		return ""
	}
	return string(d.take(n))
}

func header(dst []byte, k Kind, flags uint16) []byte {
	return append(dst, Version, byte(k), byte(flags), byte(flags>>8))
}

func appendStr(dst []byte, s string) []byte {
	if len(s) > maxString {
		s = s[:maxString]
	}
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(s)))
	return append(dst, s...)
}

// AppendHello appends a Hello frame.
func AppendHello(dst []byte, pid int) []byte {
	return binary.LittleEndian.AppendUint32(header(dst, KindHello, 0), uint32(pid))
}

// AppendListen appends a Listen frame. Strings longer than 1024 bytes are
// cut; no network address is that long.
func AppendListen(dst []byte, req uint32, network, address string) []byte {
	dst = binary.LittleEndian.AppendUint32(header(dst, KindListen, 0), req)
	return appendStr(appendStr(dst, network), address)
}

// AppendListenReply appends a ListenReply frame.
func AppendListenReply(dst []byte, req, listener, errno uint32, address, syscall, errText string) []byte {
	dst = header(dst, KindListenReply, 0)
	dst = binary.LittleEndian.AppendUint32(dst, req)
	dst = binary.LittleEndian.AppendUint32(dst, listener)
	dst = binary.LittleEndian.AppendUint32(dst, errno)
	return appendStr(appendStr(appendStr(dst, address), syscall), errText)
}

// AppendConns appends a Conns frame for hs, at most MaxConns of them;
// their fds travel beside it.
func AppendConns(dst []byte, listener uint32, hs []Handoff) []byte {
	dst = binary.LittleEndian.AppendUint32(header(dst, KindConns, 0), listener)
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(hs)))
	for i := range hs {
		n := min(int(hs[i].AddrLen), MaxAddr)
		dst = append(dst, byte(n))
		dst = append(dst, hs[i].Addr[:n]...)
	}
	return dst
}

// AppendReturn appends a Return frame for n connections handed back; n 0
// means only "no longer listening".
func AppendReturn(dst []byte, listener uint32, n int) []byte {
	dst = binary.LittleEndian.AppendUint32(header(dst, KindReturn, 0), listener)
	return binary.LittleEndian.AppendUint16(dst, uint16(n))
}

// AppendDisconnect appends a Disconnect frame.
func AppendDisconnect(dst []byte) []byte { return header(dst, KindDisconnect, 0) }

// AppendPing appends a Ping frame; the worker answers with a Pong.
func AppendPing(dst []byte) []byte { return header(dst, KindPing, 0) }

// AppendPong appends a Pong frame.
func AppendPong(dst []byte) []byte { return header(dst, KindPong, 0) }

// Conn frames messages on an scm.Conn. Writes are safe from many
// goroutines and are never interleaved with a fragmented user message;
// reads are for one goroutine.
type Conn struct {
	sc *scm.Conn // the socket; Conn owns it

	wmu  sync.Mutex // serialises writes; guards wbuf
	wbuf []byte     // the fragment being written by WriteUser

	// Read state, for the one reading goroutine.
	rbuf    []byte          // the frame read, one byte over MaxFrame to see an oversize one
	rfds    [scm.MaxFDs]int // the fds that came with it
	frag    []byte          // the fragments of a user message read so far
	infrg   bool            // a user message's fragments are being read (frag holds them)
	discard bool            // the rest of a dropped user message's fragments are skipped
}

// NewConn frames messages on sc and takes ownership of it.
func NewConn(sc *scm.Conn) *Conn {
	return &Conn{sc: sc, wbuf: make([]byte, 0, MaxFrame), rbuf: make([]byte, MaxFrame+1)}
}

// Close closes the socket; pending reads and writes return errors.
func (c *Conn) Close() error { return c.sc.Close() }

// WriteFrame writes one encoded frame with fds attached, waiting while the
// socket is full. The caller keeps ownership of fds.
func (c *Conn) WriteFrame(frame []byte, fds []int) error {
	if len(frame) > MaxFrame {
		return ErrMalformed
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.sc.WriteMsg(frame, fds)
}

// TryWriteFrame writes one encoded frame, with no fds, without waiting:
// it returns ErrBusy if another write holds the socket and an error
// matching unix.EAGAIN if the socket is full; then nothing was sent. It is
// for a caller that must never block, such as one holding a lock.
func (c *Conn) TryWriteFrame(frame []byte) error {
	if len(frame) > MaxFrame {
		return ErrMalformed
	}
	if !c.wmu.TryLock() {
		return ErrBusy
	}
	defer c.wmu.Unlock()
	return c.sc.TryWriteMsg(frame, nil)
}

// WriteUser writes one user message, cut into fragments if it needs more
// than one frame. A message over MaxMessage returns ErrMessageTooLarge and
// nothing is sent.
func (c *Conn) WriteUser(payload []byte) error {
	if len(payload) > MaxMessage {
		return fmt.Errorf("%w: %d bytes", ErrMessageTooLarge, len(payload))
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for {
		chunk := payload[:min(len(payload), MaxFrame-HeaderSize)]
		payload = payload[len(chunk):]
		var flags uint16
		if len(payload) > 0 {
			flags = FlagMore
		}
		c.wbuf = append(header(c.wbuf[:0], KindUser, flags), chunk...)
		if err := c.sc.WriteMsg(c.wbuf, nil); err != nil {
			return err
		}
		if len(payload) == 0 {
			return nil
		}
	}
}

// Read reads the next whole message into m, waiting for it. The returned
// fds, exactly m.NumFDs() of them, belong to the caller; the slice is
// reused by the next Read. A user message's Payload is a fresh slice the
// caller may keep. On error no fds are returned: all were closed. A
// *ProtocolError means the peer broke the protocol; the frame was
// dropped, with the whole user message it belonged to or interrupted, and
// the connection can still be read.
func (c *Conn) Read(m *Message) ([]int, error) { return c.read(m, true) }

// TryRead is Read without waiting: with nothing to read it returns an
// error matching unix.EAGAIN.
func (c *Conn) TryRead(m *Message) ([]int, error) { return c.read(m, false) }

func (c *Conn) read(m *Message, wait bool) ([]int, error) {
	for {
		var n, nfds int
		var err error
		if wait {
			n, nfds, err = c.sc.ReadMsg(c.rbuf, c.rfds[:])
		} else {
			n, nfds, err = c.sc.TryReadMsg(c.rbuf, c.rfds[:])
		}
		if errors.Is(err, scm.ErrTruncated) {
			// Longer than rbuf, so over MaxFrame; scm closed its fds
			// and rbuf holds its start.
			c.dropped(c.rbuf)
			return nil, fmt.Errorf("%w: frame over %d bytes: %w", ErrMalformed, MaxFrame, err)
		}
		switch {
		case errors.Is(err, scm.ErrControlTruncated):
			return nil, fmt.Errorf("%w: %w", ErrFDsLost, err)
		case errors.Is(err, scm.ErrTooManyFDs), errors.Is(err, scm.ErrBadControl):
			return nil, fmt.Errorf("%w: %w", ErrFDs, err)
		case err != nil:
			return nil, err
		}
		fds := c.rfds[:nfds]
		if n > MaxFrame {
			closeFDs(fds)
			c.dropped(c.rbuf[:n])
			return nil, fmt.Errorf("%w: frame over %d bytes", ErrMalformed, MaxFrame)
		}
		if err := Decode(c.rbuf[:n], m); err != nil {
			closeFDs(fds)
			c.dropped(c.rbuf[:n])
			return nil, err
		}
		if m.NumFDs() != len(fds) {
			closeFDs(fds)
			c.dropped(c.rbuf[:n])
			return nil, fmt.Errorf("%w: %s with %d fds", ErrFDs, m.Kind, len(fds))
		}
		if m.Kind != KindUser {
			if c.infrg || c.discard {
				closeFDs(fds)
				c.dropped(c.rbuf[:n])
				return nil, fmt.Errorf("%w: %s", ErrFragment, m.Kind)
			}
			return fds, nil
		}
		more := m.Flags&FlagMore != 0
		if c.discard {
			c.discard = more
			continue
		}
		if len(c.frag)+len(m.Payload) > MaxMessage {
			c.resetFragments()
			c.discard = more // drop the rest of this message's fragments
			return nil, ErrMessageTooLarge
		}
		if m.Flags&FlagMore != 0 {
			c.frag = append(c.frag, m.Payload...)
			c.infrg = true
			continue
		}
		if c.infrg {
			m.Payload = append(c.frag, m.Payload...)
			c.frag, c.infrg = nil, false
		} else {
			m.Payload = append([]byte(nil), m.Payload...)
		}
		return nil, nil
	}
}

// dropped updates the reassembly state for a frame that read drops. A user
// message is delivered whole or not at all: when the dropped frame is a
// user fragment, or interrupts a user message, the rest of that message's
// fragments are discarded too, so that neither a message with a hole in it
// nor the tail of one is ever delivered.
func (c *Conn) dropped(frame []byte) {
	switch {
	case len(frame) >= HeaderSize && frame[0] == Version && Kind(frame[1]) == KindUser:
		more := binary.LittleEndian.Uint16(frame[2:4])&FlagMore != 0
		c.resetFragments()
		c.discard = more
	case c.infrg || c.discard:
		c.resetFragments()
		c.discard = true
	}
}

func (c *Conn) resetFragments() { c.frag, c.infrg, c.discard = nil, false, false }

func closeFDs(fds []int) {
	for _, fd := range fds {
		_ = unix.Close(fd)
	}
}

// Socketpair returns a control connection for the master and the file to
// pass to the worker as fd ControlFD.
func Socketpair() (*Conn, *os.File, error) {
	sc, f, err := scm.Socketpair()
	if err != nil {
		return nil, nil, err
	}
	return NewConn(sc), f, nil
}

// Inherited returns the worker's control connection on fd ControlFD,
// taking ownership of the fd.
func Inherited() (*Conn, error) {
	sc, err := scm.NewConn(ControlFD)
	if err != nil {
		return nil, err
	}
	return NewConn(sc), nil
}
