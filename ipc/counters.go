package ipc

import "sync/atomic"

// Counters are the fields of a Page. Every field is written by the worker
// only. Their layout is part of the protocol, as Page says: a field is
// added only at the end.
type Counters struct {
	// Received counts the connections the worker has read off its conns
	// sockets: the master's measure of its progress.
	Received atomic.Uint64
	// Closed counts the handed-off connections the worker has closed.
	Closed atomic.Uint64
	// FrameFDs is the most fds the worker can take in one Conns frame,
	// from its fd limit; 0 until the worker has said. The master sends
	// no larger frame.
	FrameFDs atomic.Uint32
	// NoRoom is 1 while a reader of the worker waits for room in its fd
	// table before it reads the next frame.
	NoRoom atomic.Uint32
	// Readers counts the worker's Accept calls reading or waiting to read
	// its conns sockets: above 0, it will read what it is sent.
	Readers atomic.Uint32
	// Busy counts the worker's connections with a request in flight, as
	// its serving helper (worker.Serve) sees them: an HTTP/1 connection
	// between its request and its response, an HTTP/2 one with a stream
	// open. Meaningful only while Serving is 1.
	Busy atomic.Uint32
	// Serving is 1 once the worker reports Busy (it serves through
	// worker.Serve): a policy balancing on requests in flight can use
	// Busy for it, and falls back to connections for the others.
	Serving atomic.Uint32
	// Idle is the number of the worker's connections that its serving
	// helper sees idle between requests (HTTP/1 keep-alive waiting for
	// the next request). Everything else it holds, new connections whose
	// first request is on its way, those with a request in flight and
	// hijacked ones, is at work: Active minus Idle is what the master
	// counts as in flight, which sees even the connections a worker with
	// its CPU busy has read but not begun. Meaningful only while Serving
	// is 1.
	Idle atomic.Uint32
}
