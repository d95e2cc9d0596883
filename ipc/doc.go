// Package ipc is the versioned message protocol between a handoff master
// and its workers, framed on a SOCK_SEQPACKET socketpair with [scm].
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
//	                 syscall str, error str    (errno 0 and error "" = success)
//	Conns       m→w  listener u32, n u16, n × conn id u64; exactly n fds attached
//	Report      w→m  nacked u16, nclosed u16, conn ids u64 (acked, then closed)
//	Return      w→m  listener u32, n u16, n × conn id u64; exactly n fds attached
//	Disconnect  m→w  (empty)
//	User        both  JSON bytes; flag [FlagMore] when more fragments follow
//
// A user message longer than one frame is cut into fragments that are
// written back to back under one lock, so nothing is ever interleaved with
// them; the receiver reassembles up to [MaxMessage] bytes. Every other
// frame is independent.
//
// # Fd ownership
//
// [Conn.Read] hands the caller every fd it returns; on error it has closed
// them all. Writers keep ownership of the fds they send (see [scm]).
//
// # Robustness
//
// [Decode] checks every length and never panics: a fuzz target proves it,
// and its seed corpus runs with the normal tests. Which kinds are allowed in
// which direction is for the receiver to check.
package ipc
