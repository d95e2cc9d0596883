//go:build linux

package balancer

import (
	"encoding/binary"
	"net/netip"

	"github.com/handoff-go/handoff/ipc"
	"golang.org/x/sys/unix"
)

// connLocked fills l's Conn scratch with what its policy sees of h, and
// returns it: nothing escapes, nothing is allocated per connection.
func (l *listener) connLocked(h *ipc.Handoff) *Conn {
	l.conn = Conn{Remote: peerOf(h.Addr[:min(int(h.AddrLen), ipc.MaxAddr)]), Listener: l.bound}
	return &l.conn
}

// peerOf decodes the client's sockaddr_in or sockaddr_in6 that accept4
// (or, for a connection a worker handed back, getpeername) filled in,
// without a syscall and without allocating. Anything else, a Unix
// socket's address or none, is the zero AddrPort. An IPv6 zone is
// dropped: a string would allocate, and no policy needs it.
func peerOf(sa []byte) netip.AddrPort {
	if len(sa) < 4 {
		return netip.AddrPort{}
	}
	port := binary.BigEndian.Uint16(sa[2:4])
	switch binary.NativeEndian.Uint16(sa) {
	case unix.AF_INET:
		if len(sa) >= unix.SizeofSockaddrInet4 {
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(sa[4:8])), port)
		}
	case unix.AF_INET6:
		if len(sa) >= unix.SizeofSockaddrInet6 {
			return netip.AddrPortFrom(netip.AddrFrom16([16]byte(sa[8:24])), port)
		}
	}
	return netip.AddrPort{}
}
