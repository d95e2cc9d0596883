//go:build linux

package balancer

import "github.com/handoff-go/handoff/ipc"

// connLocked fills l's Conn scratch with what its policy sees of h, and
// returns it: nothing escapes, nothing is allocated per connection.
func (l *listener) connLocked(h *ipc.Handoff) *Conn {
	remote, _ := h.AddrPort() // a policy needs no IPv6 zone
	l.conn = Conn{Remote: remote, Listener: l.bound}
	return &l.conn
}
