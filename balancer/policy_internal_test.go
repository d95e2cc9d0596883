//go:build linux

package balancer

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/handoff-go/handoff/ipc"
	"golang.org/x/sys/unix"
)

// sockaddrInet4 is a handoff of fd from ip:port, with the raw sockaddr_in
// that accept4 fills in.
func sockaddrInet4(fd int32, ip [4]byte, port uint16) ipc.Handoff {
	h := ipc.Handoff{FD: fd, AddrLen: unix.SizeofSockaddrInet4}
	binary.NativeEndian.PutUint16(h.Addr[0:], unix.AF_INET)
	binary.BigEndian.PutUint16(h.Addr[2:], port)
	copy(h.Addr[4:8], ip[:])
	return h
}

func TestPeerOf(t *testing.T) {
	t.Parallel()
	v6 := ipc.Handoff{AddrLen: unix.SizeofSockaddrInet6}
	binary.NativeEndian.PutUint16(v6.Addr[0:], unix.AF_INET6)
	binary.BigEndian.PutUint16(v6.Addr[2:], 443)
	ip6 := netip.MustParseAddr("2001:db8::1").As16()
	copy(v6.Addr[8:24], ip6[:])
	binary.NativeEndian.PutUint32(v6.Addr[24:], 3) // a scope id, dropped
	unixAddr := ipc.Handoff{AddrLen: 2}
	binary.NativeEndian.PutUint16(unixAddr.Addr[0:], unix.AF_UNIX)
	short := sockaddrInet4(0, [4]byte{192, 0, 2, 1}, 80)
	short.AddrLen = 8
	for _, tt := range []struct {
		name string
		h    ipc.Handoff
		want netip.AddrPort
	}{
		{name: "ipv4", h: sockaddrInet4(0, [4]byte{192, 0, 2, 1}, 54321), want: netip.MustParseAddrPort("192.0.2.1:54321")},
		{name: "ipv6", h: v6, want: netip.MustParseAddrPort("[2001:db8::1]:443")},
		{name: "unix", h: unixAddr},
		{name: "none", h: ipc.Handoff{}},
		{name: "truncated", h: short},
		{name: "length past the buffer", h: ipc.Handoff{AddrLen: 255}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l := &listener{bound: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 80}}
			c := l.connLocked(&tt.h)
			if c.Remote != tt.want || c.Listener != l.bound {
				t.Errorf("Conn %v, %v; want %v, %v", c.Remote, c.Listener, tt.want, l.bound)
			}
		})
	}
}

// pickLocked gives the policy the connection's client and listener and
// each candidate's slot, connections, unread ones, and requests in flight
// from its counter page, counting what the dispatch under way gave it.
func TestPickSeesConnAndLoads(t *testing.T) {
	var got Conn
	var loads [][]WorkerLoad
	record := func() Policy {
		return PolicyFunc(func(c *Conn, ws []WorkerLoad) int {
			got = *c
			loads = append(loads, append([]WorkerLoad(nil), ws...))
			return 0
		})
	}
	b, l, ws := testBalancer(t, record, 2)
	l.bound = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080}
	b.mu.Lock()
	ws[0].slot, ws[1].slot = &slot{index: 4}, &slot{index: 7}
	// Worker 1 serves through worker.Serve: 5 read, 3 with a request in
	// flight. Worker 2 does not: 4 sent, 1 read, and a Busy it does not
	// mean.
	ws[0].sent = 5
	ws[0].ctr.Received.Store(5)
	ws[0].ctr.Serving.Store(1)
	ws[0].ctr.Busy.Store(3)
	ws[1].sent = 4
	ws[1].ctr.Received.Store(1)
	ws[1].ctr.Busy.Store(2)
	b.mu.Unlock()
	fd := eventfds(t, 2)
	b.accepted(l, []ipc.Handoff{
		sockaddrInet4(fd[0].FD, [4]byte{192, 0, 2, 9}, 1234),
		sockaddrInet4(fd[1].FD, [4]byte{192, 0, 2, 9}, 1235),
	})
	b.mu.Lock()
	drainLink(t, ws[0].links[l])
	b.listeners = nil
	b.workers = nil
	b.mu.Unlock()
	if err := b.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if want := netip.MustParseAddrPort("192.0.2.9:1235"); got.Remote != want || got.Listener != l.bound {
		t.Errorf("Conn %v %v, want %v %v", got.Remote, got.Listener, want, l.bound)
	}
	want := [][]WorkerLoad{
		{{ID: 1, Slot: 4, Active: 5, Unread: 0, Serving: true, Busy: 3}, {ID: 2, Slot: 7, Active: 4, Unread: 3}},
		// The first connection is in worker 1's batch, not sent yet.
		{{ID: 1, Slot: 4, Active: 6, Unread: 1, Serving: true, Busy: 3}, {ID: 2, Slot: 7, Active: 4, Unread: 3}},
	}
	if len(loads) != len(want) {
		t.Fatalf("%d picks, want %d", len(loads), len(want))
	}
	for i := range want {
		for j := range want[i] {
			if loads[i][j] != want[i][j] {
				t.Errorf("pick %d, candidate %d: %+v, want %+v", i+1, j, loads[i][j], want[i][j])
			}
		}
	}
}

// A batch of accepted connections is spread by the load it adds: it does
// not all go to the worker that was least loaded before it.
func TestBatchCountsTowardLoad(t *testing.T) {
	b, l, ws := testBalancer(t, LeastLoaded, 2)
	b.mu.Lock()
	ws[1].sent = 2
	ws[1].ctr.Received.Store(2)
	b.mu.Unlock()
	b.accepted(l, eventfds(t, 6))
	b.mu.Lock()
	sent := []uint64{ws[0].sent, ws[1].sent - 2}
	for _, w := range ws {
		drainLink(t, w.links[l])
	}
	b.listeners = nil
	b.workers = nil
	b.mu.Unlock()
	if err := b.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if sent[0] != 4 || sent[1] != 2 {
		t.Errorf("6 connections split %d/%d over workers with 0 and 2 active, want 4/2", sent[0], sent[1])
	}
}
