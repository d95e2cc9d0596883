//go:build !linux

package worker

import "net"

// requestWaiting is false where the unread bytes of a socket are not
// asked for: a drain then closes an idle connection after its grace as
// http.Server.Shutdown would.
func requestWaiting(net.Conn) bool { return false }
