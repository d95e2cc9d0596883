//go:build linux

package netnstest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Host is one network namespace of a Network.
type Host struct {
	// Name is "server" or "client0", "client1", ...
	Name string

	ns      netns.NsHandle
	nl      *netlink.Handle // a netlink socket opened inside ns
	network *Network
	ipv4    netip.Addr
	ipv6    netip.Addr

	// Client hosts only.
	link       netlink.Link // this host's end of its veth pair
	serverLink string       // the server's end
}

// IPv4 returns the host's IPv4 address.
func (h *Host) IPv4() netip.Addr { return h.ipv4 }

// IPv6 returns the host's IPv6 address.
func (h *Host) IPv6() netip.Addr { return h.ipv6 }

// Do runs fn on a goroutine locked to a thread switched into the host's
// namespace, and waits for it. Sockets fn creates stay in the namespace
// and may be used from anywhere afterwards; goroutines fn starts do not
// run in the namespace.
func (h *Host) Do(fn func() error) error {
	return inNamespace(h.ns, fn)
}

// Start starts cmd inside the host's namespace: it is forked from a
// thread switched into the namespace, so the process, and every process it
// forks, has the host's network and nothing else. The caller waits for it
// and stops it. A cmd.SysProcAttr.Pdeathsig fires when the test process
// exits (the forking thread is not ended: Do puts it back).
func (h *Host) Start(cmd *exec.Cmd) error {
	return h.Do(cmd.Start)
}

// Listen is lc.Listen run inside the host's namespace. It refuses a socket
// that is not in the namespace.
func (h *Host) Listen(ctx context.Context, lc net.ListenConfig, network, address string) (net.Listener, error) {
	lc.Control = h.guard(lc.Control)
	var ln net.Listener
	err := h.Do(func() error {
		var err error
		ln, err = lc.Listen(ctx, network, address)
		return err
	})
	return ln, err
}

// DialContext dials address from inside the host's namespace, from the
// host's own address. See DialFrom.
func (h *Host) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return h.DialFrom(ctx, netip.Addr{}, network, address)
}

// DialFrom dials address from inside the host's namespace, from the source
// address from if it is valid. For TCP the address must be a literal IP
// and port in the test address plan or on loopback: nothing else is ever
// dialed, and no name is ever looked up.
func (h *Host) DialFrom(ctx context.Context, from netip.Addr, network, address string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
		ap, err := netip.ParseAddrPort(address)
		if err != nil || !allowedDestination(ap.Addr()) {
			return nil, &net.OpError{Op: "dial", Net: network, Err: fmt.Errorf("netnstest: refusing to dial %q: only literal addresses in %v, %v or loopback", address, planIPv4, planIPv6)}
		}
	case "unix":
	default:
		return nil, &net.OpError{Op: "dial", Net: network, Err: fmt.Errorf("netnstest: network %q not supported", network)}
	}
	d := net.Dialer{Control: h.guard(nil)}
	if from.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: from.AsSlice()}
	}
	var c net.Conn
	err := h.Do(func() error {
		var err error
		// A literal address: the dial runs on this goroutine, so the
		// socket is created on this thread, in the namespace.
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// HTTPClient returns a client whose every connection is a new one dialed
// from inside the host's namespace (keep-alives off), with no proxy.
func (h *Host) HTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:             nil, // never a proxy from the environment
			DialContext:       h.DialContext,
			DisableKeepAlives: true,
		},
	}
}

// AddIPv4 adds n more IPv4 addresses from the plan's extra range to a
// client host's link, with host routes back to them in the server, and
// returns them. Use them as DialFrom sources.
func (h *Host) AddIPv4(n int) ([]netip.Addr, error) {
	if h.link == nil {
		return nil, errors.New("netnstest: AddIPv4 is for client hosts")
	}
	nw := h.network
	nw.mu.Lock()
	first := nw.nextExtra
	if first+n-1 > lastExtraNum {
		nw.mu.Unlock()
		return nil, fmt.Errorf("netnstest: only %d extra addresses left in the plan", lastExtraNum-first+1)
	}
	nw.nextExtra += n
	nw.mu.Unlock()
	sl, err := nw.Server.nl.LinkByName(h.serverLink)
	if err != nil {
		return nil, err
	}
	var addrs []netip.Addr
	for i := 0; i < n; i++ {
		a := nw.ipv4(first + i)
		if err := h.nl.AddrAdd(h.link, hostAddr(a, 32)); err != nil {
			return addrs, fmt.Errorf("netnstest: adding %v to %s: %w", a, h.Name, err)
		}
		if err := nw.Server.nl.RouteAdd(hostRoute(sl, a)); err != nil {
			return addrs, fmt.Errorf("netnstest: server route to %v: %w", a, err)
		}
		addrs = append(addrs, a)
	}
	return addrs, nil
}

// guard wraps a Control function with a check that the socket is in the
// host's namespace.
func (h *Host) guard(next func(network, address string, c syscall.RawConn) error) func(string, string, syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var err error
		if cerr := c.Control(func(fd uintptr) { err = socketIn(int(fd), h.ns) }); cerr != nil {
			return cerr
		}
		if err != nil {
			return err
		}
		if next != nil {
			return next(network, address, c)
		}
		return nil
	}
}

// checkIsolated fails if the host has a default route, or a link that is
// not lo or its own veth.
func (h *Host) checkIsolated() error {
	routes, err := h.nl.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: syscall.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("netnstest: listing routes of %s: %w", h.Name, err)
	}
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			if ones, _ := maskSize(r.Dst); ones == 0 {
				return fmt.Errorf("netnstest: %s has a default route (%v); refusing to run", h.Name, r)
			}
		}
	}
	links, err := h.nl.LinkList()
	if err != nil {
		return fmt.Errorf("netnstest: listing links of %s: %w", h.Name, err)
	}
	for _, l := range links {
		name := l.Attrs().Name
		if name == "lo" || l.Type() == "veth" && (name == clientLinkName || h.link == nil) {
			continue
		}
		// Fallback tunnel devices (tunl0, sit0...) appear in every new
		// namespace when their module is loaded; down, they carry nothing.
		if l.Attrs().Flags&net.FlagUp != 0 {
			return fmt.Errorf("netnstest: %s has an unexpected link %s (%s) up", h.Name, name, l.Type())
		}
	}
	return nil
}

func maskSize(n *net.IPNet) (int, int) {
	if n == nil {
		return 0, 0
	}
	return n.Mask.Size()
}
