//go:build linux

package worker

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// requestWaiting reports whether bytes wait unread in c's socket: a
// request the server has not read yet, which a drain must not close
// unanswered. It looks through wrappers that have NetConn, as *tls.Conn
// does; a connection it cannot see into has none.
func requestWaiting(c net.Conn) bool {
	for {
		switch x := c.(type) {
		case syscall.Conn:
			rc, err := x.SyscallConn()
			if err != nil {
				return false
			}
			n := 0
			if rc.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }) != nil {
				return false
			}
			return n > 0
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return false
		}
	}
}
