// Package ipc is the versioned message protocol between a handoff master
// and its workers, framed on a SOCK_SEQPACKET socketpair with [scm].
//
// Like package scm it is Linux only. On every other OS it declares only
// [Counters], the counter page's layout, which worker.Serve counts on
// (there is no page to map there, so it never does), and packages worker
// and balancer, which build everywhere, use nothing else of it.
//
// # Lifecycle
//
// A worker's control socket and counter page are made by the master
// before it starts the worker, live as long as the worker, and are closed
// by the master once it has reaped the process. A conns socket is made
// when the worker first listens on a listener, and closed by the master
// once it has been read empty after the worker closed the listener or
// died. The worker sees the master go as EOF on its control socket.
//
// # The control socket
//
// The master makes a socketpair per worker and passes one end to the
// worker process as fd [ControlFD] (3, the first of exec.Cmd.ExtraFiles).
// The worker learns it is a worker from the environment variable
// [EnvWorkerID], which holds its id; [EnvControlFD] repeats the fd number.
// The socket is never a path on disk, so only the master and that one
// worker can reach it.
//
// # The conns sockets
//
// For each listener a worker listens on, the master makes a second
// socketpair that carries only Conns frames, master to worker
// ([ConnsPair]). The master sends on one end (shut for reading, so that the
// worker cannot fill it) and keeps the other, the worker's end, of which
// the worker gets its own copy in the ListenReply. Since the master holds
// the worker's end too, whatever the worker has not read stays readable:
// when the worker dies, stalls or closes the listener, the master reads it
// back, fds included ([ConnsSocket.Recv]), and serves it elsewhere. A
// SEQPACKET message goes whole to exactly one reader, so this is safe
// while the worker lives, and a connection is never read by two processes.
// The master therefore keeps no copy of a handed-off fd and needs no ack.
//
// # The counter page
//
// Each worker also inherits one page of shared memory, fd [PageFD]
// ([Page], [Counters]): the worker counts there, with atomic adds, the
// connections it read and closed, and says whether it has fd room and an
// Accept waiting. The master reads it when it picks a worker, with no
// frame and no syscall. What a worker writes there is untrusted; the
// master clamps it, and a worker can only lie about itself.
//
// # Frames
//
// Each SOCK_SEQPACKET message is one frame of at most [MaxFrame] bytes:
//
//	[0] version ([Version])   [1] kind   [2:4] flags, little-endian
//	[4:] body, its layout fixed by the kind
//
// All integers are little-endian. Strings are a length (u16) and bytes.
//
//	Hello       w→m  pid u32
//	Listen      w→m  req u32, network str, address str
//	ListenReply m→w  req u32, listener u32, errno u32, address str,
//	                 syscall str, error str; on success (listener ≠ 0,
//	                 errno 0, error "") 1 fd: the worker's end of the
//	                 listener's conns socket
//	Conns       m→w  on a conns socket only: listener u32, n u16,
//	                 n × (len u8, len bytes of the client's raw sockaddr);
//	                 exactly n fds attached
//	Return      w→m  listener u32, n u16; exactly n fds attached: conns the
//	                 worker read and hands back unaccepted; n 0 says only
//	                 "no longer listening"
//	Disconnect  m→w  (empty)
//	Ping        m→w  (empty): the worker answers Pong at once
//	Pong        w→m  (empty)
//	User        both  JSON bytes; flag [FlagMore] when more fragments follow
//
// A user message longer than one frame is cut into fragments that are
// written back to back under one lock, so nothing is ever interleaved with
// them; the receiver reassembles up to [MaxMessage] bytes. Every other
// frame is independent.
//
// # Order
//
// Frames on one socket arrive in the order sent. Conns frames travel on
// their own sockets, so they are not ordered with the control socket's
// frames, with one exception that the protocol relies on: a sendmsg has
// queued its frame when it returns, so every Conns frame sent before a
// Disconnect is readable when the worker reads the Disconnect.
//
// # Fd ownership
//
// [Conn.Read] and [ConnsSocket.Recv] hand the caller every fd they return;
// on error they have closed them all. Writers keep ownership of the fds
// they send (see [scm]); the master closes its copies right after a send.
//
// # Goroutines and locking
//
// The package starts no goroutine. A [Conn]'s writes are serialised by
// its write mutex, which also guards the frame buffer it reuses; its reads
// are for one goroutine at a time. A [ConnsSocket]'s read mutex guards its
// receive buffers, so that the worker's Accept and the master's reclaim
// never share them; its sends are for one goroutine at a time (the master
// sends under its own lock). A [Page] is read and written with atomic
// operations only.
//
// # Robustness
//
// [Decode] checks every length and never panics: a fuzz target proves it,
// and its seed corpus runs with the normal tests. Which kinds are allowed in
// which direction is for the receiver to check.
package ipc
