//go:build linux

// Command hostileworker is a worker that breaks the rules, for the
// balancer's reliability tests. It speaks the control protocol by hand
// (it does not import the worker package) and misbehaves as the
// environment variable HANDOFF_HOSTILE says, once. With HANDOFF_HOSTILE
// empty, or if the file named by HANDOFF_HOSTILE_ONCE already exists, it
// execs HANDOFF_HOSTILE_GOOD, a well-behaved worker, keeping its control
// socket and environment: so a slot restarted after the misbehaviour comes
// back good, and one binary can serve as every worker of a balancer.
//
// Only the modes noack-exit and stuck listen, on the first address of
// HANDOFF_TEST_LISTEN (network!address), and so take connections; the
// others misbehave without any. After misbehaving it tells the master it
// does not listen (an empty Return frame), hands back any connection it is
// sent, and stays alive until killed or the master goes away.
//
// Modes:
//
//	noack-exit   read Conns frames, never ack, exit 3 after the first
//	stuck        stop reading the control socket; sleep
//	unknown-kind send a frame of an unknown kind
//	bad-version  send a frame of another protocol version
//	truncated    send a Report frame cut short
//	oversized    send a frame larger than ipc.MaxFrame
//	fds-report   send a Report frame with fds attached
//	bogus-ids    ack and close ids the worker never got
//	bad-listen   ask to listen on nonsense addresses, many times
//	flood        send 100000 user messages as fast as possible
//	bad-json     send a user message that is not JSON
//	huge-message send user fragments past ipc.MaxMessage
package main
