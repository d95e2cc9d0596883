//go:build linux

package balancer

import (
	"net"
	"syscall"
	"testing"
	"time"
)

// TestListenQueue reads a real listening socket that accepts nothing, as a
// master's whose accept is paused: the clients that connected wait in its
// accept queue, and its backlog is the one it was opened with.
func TestListenQueue(t *testing.T) {
	t.Parallel()
	const backlog, clients = 8, 3
	ln, err := SocketOptions{Backlog: backlog}.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	rc, err := ln.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if n, max, err := listenQueue(rc); err != nil || n != 0 || max != backlog {
		t.Fatalf("an idle listener: length %d, backlog %d, %v; want 0 and %d", n, max, err, backlog)
	}
	for range clients {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, max, err := listenQueue(rc)
		if err != nil || max != backlog {
			t.Fatalf("length %d, backlog %d, %v", n, max, err)
		}
		if n == clients {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("accept queue %d, want %d clients waiting", n, clients)
		}
		time.Sleep(time.Millisecond)
	}
}
