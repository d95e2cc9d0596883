//go:build linux

package netnstest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// EnvRequire, set to "1", makes a test that cannot create a network
// namespace fail instead of skipping.
const EnvRequire = "HANDOFF_REQUIRE_NETNS"

// The address plan: host numbers within 10.200.X.0/24 and fd00:200:X::/64.
const (
	serverHostNum   = 1
	firstClientNum  = 2
	firstExtraNum   = 100
	lastExtraNum    = 254
	maxClients      = firstExtraNum - firstClientNum
	serverLinkNameF = "veth-c%d" // the server's end of client k's veth pair
	clientLinkName  = "veth-srv" // a client's end, toward the server
)

// Prefixes that DialContext may reach: the plan's and loopback.
var (
	planIPv4 = netip.MustParsePrefix("10.200.0.0/16")
	planIPv6 = netip.MustParsePrefix("fd00:200::/32")
)

// Config describes one test's network.
type Config struct {
	// Subnet is the test's number X in the address plan, 1 to 255.
	Subnet int
	// Clients is the number of client hosts, 0 to 98.
	Clients int
}

// Network is a server host and its client hosts.
type Network struct {
	Server  *Host
	Clients []*Host

	subnet int

	mu        sync.Mutex
	nextExtra int
	hosts     []*Host  // every host made, for cleanup
	veths     []string // server-side veth names, for cleanup
}

// New builds the network described by cfg and registers its teardown with
// t.Cleanup. If no namespace can be created (not root), it skips the test,
// or fails it when HANDOFF_REQUIRE_NETNS=1.
func New(t testing.TB, cfg Config) *Network {
	t.Helper()
	if cfg.Subnet < 1 || cfg.Subnet > 255 || cfg.Clients < 0 || cfg.Clients > maxClients {
		t.Fatalf("netnstest: bad config %+v: Subnet is 1 to 255, Clients 0 to %d", cfg, maxClients)
	}
	n := &Network{subnet: cfg.Subnet, nextExtra: firstExtraNum}
	t.Cleanup(func() {
		if err := n.close(); err != nil {
			t.Errorf("netnstest: teardown: %v", err)
		}
	})
	srv, err := n.newHost("server", serverHostNum)
	if err != nil {
		if errors.Is(err, errNoNamespace) {
			unavailable(t, err)
		}
		t.Fatal(err)
	}
	n.Server = srv
	for k := 0; k < cfg.Clients; k++ {
		c, err := n.addClient(k)
		if err != nil {
			t.Fatal(err)
		}
		n.Clients = append(n.Clients, c)
	}
	for _, h := range n.hosts {
		if err := h.checkIsolated(); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

var errNoNamespace = errors.New("netnstest: cannot create a network namespace")

// NeedRoot skips a test that needs namespaces when this process is not
// root, saying so, before it looks for anything else it needs (it fails
// instead with EnvRequire=1).
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		unavailable(t, fmt.Errorf("running as uid %d, not root", os.Geteuid()))
	}
}

// unavailable skips or fails a test that cannot have namespaces.
func unavailable(t testing.TB, err error) {
	t.Helper()
	if os.Getenv(EnvRequire) == "1" {
		t.Fatalf("%v; %s=1 requires this test to run (it needs root, or CAP_SYS_ADMIN and CAP_NET_ADMIN)", err, EnvRequire)
	}
	t.Skipf("%v; this test needs root: run it as root, e.g. `sudo go test ./integration_test/ ./internal/netnstest/` (with %s=1 it fails instead of skipping)", err, EnvRequire)
}

// close deletes every veth pair and closes every handle, collecting errors.
func (n *Network) close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	var errs []error
	if n.Server != nil && n.Server.nl != nil {
		for _, name := range n.veths {
			l, err := n.Server.nl.LinkByName(name)
			if err == nil {
				// Deleting one end deletes the pair.
				err = n.Server.nl.LinkDel(l)
			}
			var nf netlink.LinkNotFoundError
			if err != nil && !errors.As(err, &nf) {
				errs = append(errs, fmt.Errorf("deleting %s: %w", name, err))
			}
		}
	}
	n.veths = nil
	for _, h := range n.hosts {
		if h.nl != nil {
			h.nl.Close()
			h.nl = nil
		}
		if h.ns.IsOpen() {
			if err := h.ns.Close(); err != nil {
				errs = append(errs, fmt.Errorf("closing %s's namespace: %w", h.Name, err))
			}
		}
	}
	n.hosts = nil
	return errors.Join(errs...)
}

// newHost creates a namespace with lo up and a netlink handle opened in it.
func (n *Network) newHost(name string, num int) (*Host, error) {
	ns, err := newNamespace()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNoNamespace, err)
	}
	h := &Host{Name: name, ns: ns, ipv4: n.ipv4(num), ipv6: n.ipv6(num), network: n}
	n.mu.Lock()
	n.hosts = append(n.hosts, h)
	n.mu.Unlock()
	err = h.Do(func() error {
		var err error
		// netns.None: netlink opens its socket on this thread, in h's
		// namespace, without switching threads itself.
		h.nl, err = netlink.NewHandle(unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netnstest: netlink in %s: %w", name, err)
	}
	lo, err := h.nl.LinkByName("lo")
	if err == nil {
		err = h.nl.LinkSetUp(lo)
	}
	if err != nil {
		return nil, fmt.Errorf("netnstest: bringing up lo in %s: %w", name, err)
	}
	return h, nil
}

// addClient creates client host k and its veth pair to the server.
func (n *Network) addClient(k int) (*Host, error) {
	c, err := n.newHost(fmt.Sprintf("client%d", k), firstClientNum+k)
	if err != nil {
		return nil, err
	}
	srv := n.Server
	c.serverLink = fmt.Sprintf(serverLinkNameF, k)
	// Created in the server's namespace, the peer placed straight into
	// the client's: no end of it ever exists in the host's namespace.
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: c.serverLink},
		PeerName:      clientLinkName,
		PeerNamespace: netlink.NsFd(c.ns),
	}
	if err := srv.nl.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("netnstest: creating veth pair %s/%s: %w", c.serverLink, clientLinkName, err)
	}
	n.mu.Lock()
	n.veths = append(n.veths, c.serverLink)
	n.mu.Unlock()
	sl, err := srv.nl.LinkByName(c.serverLink)
	if err != nil {
		return nil, fmt.Errorf("netnstest: %s in server: %w", c.serverLink, err)
	}
	cl, err := c.nl.LinkByName(clientLinkName)
	if err != nil {
		return nil, fmt.Errorf("netnstest: %s in %s: %w", clientLinkName, c.Name, err)
	}
	c.link = cl
	for _, step := range []struct {
		what string
		do   func() error
	}{
		{"server link up", func() error { return srv.nl.LinkSetUp(sl) }},
		{"client link up", func() error { return c.nl.LinkSetUp(cl) }},
		{"server IPv4", func() error { return srv.nl.AddrAdd(sl, hostAddr(srv.ipv4, 32)) }},
		{"server IPv6", func() error { return srv.nl.AddrAdd(sl, hostAddr(srv.ipv6, 128)) }},
		{"client IPv4", func() error { return c.nl.AddrAdd(cl, hostAddr(c.ipv4, 24)) }},
		{"client IPv6", func() error { return c.nl.AddrAdd(cl, hostAddr(c.ipv6, 64)) }},
		{"server route to client IPv4", func() error { return srv.nl.RouteAdd(hostRoute(sl, c.ipv4)) }},
		{"server route to client IPv6", func() error { return srv.nl.RouteAdd(hostRoute(sl, c.ipv6)) }},
	} {
		if err := step.do(); err != nil {
			return nil, fmt.Errorf("netnstest: %s (%s): %w", step.what, c.Name, err)
		}
	}
	return c, nil
}

// hostAddr is an address for AddrAdd; IPv6 ones skip duplicate address
// detection, so they can be bound at once.
func hostAddr(a netip.Addr, bits int) *netlink.Addr {
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, a.BitLen())}}
	if a.Is6() {
		addr.Flags = unix.IFA_F_NODAD
	}
	return addr
}

// hostRoute is a route to a single address over link.
func hostRoute(link netlink.Link, a netip.Addr) *netlink.Route {
	r := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())},
	}
	if a.Is4() {
		r.Scope = netlink.SCOPE_LINK
	}
	return r
}

func (n *Network) ipv4(num int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 200, byte(n.subnet), byte(num)})
}

func (n *Network) ipv6(num int) netip.Addr {
	return netip.AddrFrom16([16]byte{0: 0xfd, 2: 0x02, 5: byte(n.subnet), 15: byte(num)})
}

// allowedDestination reports whether a test may send to a.
func allowedDestination(a netip.Addr) bool {
	a = a.Unmap()
	return a.IsLoopback() || planIPv4.Contains(a) || planIPv6.Contains(a)
}
