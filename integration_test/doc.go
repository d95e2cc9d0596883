// Package integration_test proves handoff across what crosses a real
// network, and that the README's library example does what it says
// (readme_test.go: it needs no namespace and runs without root). Every
// other test builds its own hosts out of Linux network namespaces
// (internal/netnstest) and runs a real master, whose workers are this test
// binary re-executed (internal/testworker), against clients on other
// hosts; the TestFleet tests run HAProxy in front of several hosts, each
// running the handoff CLI. Only public APIs of the project are used.
//
// # Hosts
//
// The master runs in the test process, but its listening sockets are
// opened on a thread switched into the test's server namespace, so they
// live there; the accept loop then works from any thread. Workers need no
// namespace: they receive connection fds from the master. Clients dial
// from a thread switched into a client namespace, joined to the server by
// a veth pair.
//
// # Address plan
//
// Test X uses 10.200.X.0/24 and fd00:200:X::/64 (X in hex), with the
// server host at .1 (::1), client host k at .(2+k) (::(2+k)) and extra
// client source addresses from .100 on. These addresses exist only inside
// the test's namespaces; no namespace has a default route or any link to
// the machine's network, and clients dial only addresses in this plan.
//
//	X  test
//	1  TestPrivilegedPort80
//	2  TestClientAddressIPv4
//	3  TestClientAddressIPv6
//	4  TestRoundRobinExactVersusReusePort
//	5  TestUnixSocketInNamespace
//	6  TestWorkerKilledUnderLoad
//	7  TestWorkersRunAsAnotherUser
//	8  TestFleetRealClientAddresses
//	9  TestFleetDrainHost
//	10 TestFleetRollingRestartAndUpgrade
//	11 TestFleetHostKilled
//	12 TestFleetBalance
//
// # The fleet
//
// The TestFleet tests put HAProxy (mode tcp, send-proxy-v2, HTTP checks of
// each host's --admin /healthz; see haproxyConfig) in the network's server
// host, the hub, and use its client hosts as two client hosts and three
// handoff hosts. Each handoff host runs the real handoff CLI, built by
// TestMain, started in its namespace with netnstest's Host.Start; its
// workers are this test binary again (fleetWorkerMain), which wrap their
// listener with go-proxyproto and trust only HAProxy's address. Clients
// reach only HAProxy; only HAProxy reaches the hosts. Every process is
// stopped by its pid in t.Cleanup: HAProxy, each master the test started,
// a master's successor after SIGUSR2 (from --pid-file), and their workers.
// The fleet tests run one at a time: their health checks are timed.
//
// # Running
//
// The namespace tests need root (to create namespaces) and run in parallel, one
// namespace set each, so each can bind port 80. Without root they skip,
// saying how to run them (`sudo go test ./integration_test/`); with
// HANDOFF_REQUIRE_NETNS=1, as in CI, they fail instead.
package integration_test
