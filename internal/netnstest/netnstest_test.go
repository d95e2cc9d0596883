//go:build linux

package netnstest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/goleak"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// echoRemote accepts until ln closes and writes each peer's address back.
func echoRemote(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return nil
		}
		_, _ = c.Write([]byte(c.RemoteAddr().String() + "\n"))
		_ = c.Close()
	}
}

func TestClientsReachServerFromTheirOwnAddresses(t *testing.T) {
	t.Parallel()
	n := New(t, Config{Subnet: 201, Clients: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var g errgroup.Group
	var lns []net.Listener
	for _, a := range []netip.Addr{n.Server.IPv4(), n.Server.IPv6()} {
		ln, err := n.Server.Listen(ctx, net.ListenConfig{}, "tcp", netip.AddrPortFrom(a, 7).String())
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		g.Go(func() error { return echoRemote(ln) })
	}
	t.Cleanup(func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
		_ = g.Wait()
	})
	extra, err := n.Clients[1].AddIPv4(3)
	if err != nil {
		t.Fatal(err)
	}
	type dial struct {
		host *Host
		from netip.Addr
		to   net.Listener
		want netip.Addr
	}
	var dials []dial
	for _, c := range n.Clients {
		dials = append(dials, dial{c, netip.Addr{}, lns[0], c.IPv4()}, dial{c, netip.Addr{}, lns[1], c.IPv6()})
	}
	for _, a := range extra {
		dials = append(dials, dial{n.Clients[1], a, lns[0], a})
	}
	for _, d := range dials {
		c, err := d.host.DialFrom(ctx, d.from, "tcp", d.to.Addr().String())
		if err != nil {
			t.Fatalf("%s dialing %v from %v: %v", d.host.Name, d.to.Addr(), d.from, err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		_ = c.Close()
		if err != nil {
			t.Fatal(err)
		}
		got, err := netip.ParseAddrPort(strings.TrimSpace(line))
		if err != nil || got.Addr() != d.want || got.String() != c.LocalAddr().String() {
			t.Errorf("%s dialing %v: server saw %q, want %v (%v)", d.host.Name, d.to.Addr(), line, c.LocalAddr(), err)
		}
	}
}

// TestStartRunsAProcessInTheNamespace: a process started by Start has the
// host's network namespace, and its children too.
func TestStartRunsAProcessInTheNamespace(t *testing.T) {
	t.Parallel()
	n := New(t, Config{Subnet: 206, Clients: 1})
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []*Host{n.Server, n.Clients[0]} {
		var st unix.Stat_t
		if err := unix.Fstat(int(h.ns), &st); err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("net:[%d]", st.Ino)
		if want == self {
			t.Fatalf("%s shares the test process's namespace %s", h.Name, self)
		}
		cmd := exec.Command("/bin/sh", "-c", "readlink /proc/self/ns/net; sh -c 'readlink /proc/self/ns/net'")
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := h.Start(cmd); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("%s: %v: %s", h.Name, err, out.String())
		}
		if got := out.String(); got != want+"\n"+want+"\n" {
			t.Errorf("%s: the process and its child are in %q, want %s twice", h.Name, got, want)
		}
	}
}

func TestRefusesDestinationsOutsideThePlan(t *testing.T) {
	t.Parallel()
	n := New(t, Config{Subnet: 202, Clients: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, addr := range []string{"192.0.2.1:80", "[2001:db8::1]:80", "example.com:80", "10.201.0.1:80", "8.8.8.8:53"} {
		if c, err := n.Clients[0].DialContext(ctx, "tcp", addr); err == nil {
			_ = c.Close()
			t.Errorf("dialing %s: no error, want a refusal", addr)
		} else if !strings.Contains(err.Error(), "refusing") {
			t.Errorf("dialing %s: %v, want a refusal before any socket", addr, err)
		}
	}
	if _, err := n.Clients[0].DialContext(ctx, "udp", "10.200.202.1:53"); err == nil {
		t.Error("dialing udp: no error, want not supported")
	}
}

func TestSocketsOutsideTheNamespaceAreRefused(t *testing.T) {
	t.Parallel()
	n := New(t, Config{Subnet: 203})
	// A socket made on an ordinary thread is in the test binary's own
	// namespace, not the host's: the guard must reject it.
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := socketIn(fd, n.Server.ns); err == nil {
		t.Error("a socket of the test process passed as one of the server's namespace")
	}
	err = n.Server.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return socketIn(fd, n.Server.ns)
	})
	if err != nil {
		t.Errorf("a socket made in Do: %v", err)
	}
}

func TestNoDefaultRouteAndOnlyOwnLinks(t *testing.T) {
	t.Parallel()
	n := New(t, Config{Subnet: 204, Clients: 3})
	for _, h := range append([]*Host{n.Server}, n.Clients...) {
		routes, err := h.nl.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{}, netlink.RT_FILTER_TABLE)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			if ones, _ := maskSize(r.Dst); ones == 0 {
				t.Errorf("%s has a default route: %v", h.Name, r)
			}
		}
		if err := h.checkIsolated(); err != nil {
			t.Error(err)
		}
	}
}

// TestTeardownDeletesLinks is not parallel: it looks at the test
// process's own namespace before and after. It keeps both namespaces of a
// veth pair open past the teardown, so only the teardown's own deletion
// can have removed the pair.
func TestTeardownDeletesLinks(t *testing.T) {
	before := hostLinks(t)
	var kept []netns.NsHandle
	t.Cleanup(func() {
		for _, ns := range kept {
			_ = ns.Close()
		}
	})
	skipped := false
	t.Run("network", func(t *testing.T) {
		t.Cleanup(func() { skipped = t.Skipped() })
		n := New(t, Config{Subnet: 205, Clients: 2})
		for _, h := range []*Host{n.Server, n.Clients[0]} {
			fd, err := unix.FcntlInt(uintptr(h.ns), unix.F_DUPFD_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			kept = append(kept, netns.NsHandle(fd))
		}
	})
	if skipped {
		t.Skip("the network could not be made (see the subtest): nothing to tear down")
	}
	if len(kept) != 2 {
		t.Fatal("no network was made")
	}
	for _, ns := range kept {
		var left []string
		err := inNamespace(ns, func() error {
			h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
			if err != nil {
				return err
			}
			defer h.Close()
			links, err := h.LinkList()
			for _, l := range links {
				if l.Type() == "veth" {
					left = append(left, l.Attrs().Name)
				}
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(left) > 0 {
			t.Errorf("veths left in a namespace after teardown: %v", left)
		}
	}
	if after := hostLinks(t); after != before {
		t.Errorf("the test process's links changed:\nbefore %s\nafter  %s", before, after)
	}
}

func hostLinks(t *testing.T) string {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	return strings.Join(names, " ")
}
