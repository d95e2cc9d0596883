// Package netnstest builds small, isolated networks for tests out of Linux
// network namespaces: one "server host" and any number of "client hosts",
// each client joined to the server by its own veth pair. Tests that need
// real addresses, privileged ports or many source addresses get them
// without touching the machine's network, and run in parallel because
// every test has its own namespaces.
//
// # Lifecycle
//
//	n := netnstest.New(t, netnstest.Config{Subnet: 7, Clients: 2})
//	n.Server.Do(func() error { ... net.Listen on n.Server.IPv4() ... })
//	conn, err := n.Clients[0].DialContext(ctx, "tcp", "10.200.7.1:80")
//
// New creates the namespaces and links, and registers a t.Cleanup that
// deletes every veth pair and closes every namespace handle, whether the
// test passed or not. The namespaces are anonymous (netns.New, never
// netns.NewNamed): nothing is mounted under /run/netns, so even a test
// binary that crashes leaves nothing behind; the kernel frees a namespace,
// and the links in it, once its last handle and socket are closed.
//
// # Namespace switching
//
// A namespace is a property of an OS thread. Every switch happens on a
// fresh goroutine locked to its thread (runtime.LockOSThread): it saves
// the thread's namespace, switches with setns, does its work, and switches
// back. It calls runtime.UnlockOSThread only once the thread is back in
// its original namespace (checked, or restored with setns successfully);
// otherwise the goroutine exits still locked, and the Go runtime then ends
// that thread, so no other goroutine ever runs in the wrong namespace.
// Sockets stay in the namespace they were created in, so a listener or
// conn made by [Host.Do], [Host.Listen] or [Host.DialContext] is used
// afterwards from any goroutine. A process started by [Host.Start] is
// forked from such a thread, so it and its children have the host's
// network. Netlink sockets are opened the same way,
// inside the namespace, so netlink never switches threads itself.
//
// # Address plan
//
// Each test picks a number X (Config.Subnet, 1 to 255) and gets:
//
//	IPv4  10.200.X.0/24      IPv6  fd00:200:X::/64 (X in hex)
//	server host      .1                ::1
//	client host k    .(2+k)            ::(2+k in hex), k < 98
//	extra sources    .100 to .254      (IPv4 only, Host.AddIPv4)
//
// The server owns .1 (and ::1) as a /32 (/128) on each of its veths, with
// a host route to each client address over that client's veth; a client
// host has its address as a /24 (/64) on its one veth. No namespace ever
// has a default route (New checks it), and no link ever leads to the
// host's own network: the veth pairs are created in the server namespace
// with their peer placed straight into the client namespace. These
// addresses exist only inside the test namespaces.
//
// # Safety
//
// [Host.DialContext] refuses any destination outside 10.200.0.0/16,
// fd00:200::/32 and loopback, and any host name (so no DNS lookup ever
// happens), and both dialing and listening check with SIOCGSKNS that the
// new socket really is in the host's namespace before it connects or
// binds. [Host.HTTPClient] uses no proxy from the environment.
//
// # Two ways to run
//
// Creating a namespace needs CAP_SYS_ADMIN (root). If it fails, New skips
// the test with a message saying how to run it, unless the environment
// has HANDOFF_REQUIRE_NETNS=1 (as CI does): then the test fails.
package netnstest
