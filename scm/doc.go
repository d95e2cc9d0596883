// Package scm sends and receives file descriptors, with a small payload, over
// a SOCK_SEQPACKET Unix socket using SCM_RIGHTS.
//
// It is the leaf of handoff: it knows nothing of connections, workers or
// messages, only of bytes and fds.
//
// It is Linux only (SOCK_CLOEXEC, MSG_CMSG_CLOEXEC, close_range,
// /proc/self/fd): on every other OS the package is empty, and packages
// worker and balancer, which build everywhere, use it only on Linux.
//
// # Lifecycle
//
// [Socketpair] makes a connected pair: a *[Conn] for this process and an
// *os.File for a child process (pass it in exec.Cmd.ExtraFiles, then close
// it). A child turns its inherited end into a *[Conn] with [NewConn].
// [Conn.Close] closes the socket and unblocks a pending read or write.
//
// # Fd ownership
//
//   - [Conn.WriteMsg] and [Conn.TryWriteMsg] never take ownership of the fds
//     they send. The kernel holds its own reference while they are in
//     flight, so after a successful send the caller must close its copies
//     when it no longer needs them, or the peer's Close never sends FIN.
//   - [Conn.ReadMsg] and [Conn.TryReadMsg] give the caller ownership of every
//     fd they return in fds[:nfds]. On every error they have already closed
//     every fd that arrived, so the caller owns nothing.
//   - Received fds are always close-on-exec (MSG_CMSG_CLOEXEC).
//   - [NewConn] takes ownership of the fd it is given; [Socketpair]'s caller
//     owns both ends.
//
// At most [MaxFDs] (253, the kernel's SCM_MAX_FD) fds travel in one
// message. A message whose data or control part did not fit the receiver's
// buffers (MSG_TRUNC, MSG_CTRUNC) is an error, never a silent loss.
//
// # Goroutines and locking
//
// The package starts no goroutine. A Conn's writes may come from many
// goroutines: its write mutex serialises them and guards the sendmsg
// arguments it reuses. Its reads must come from one goroutine at a time,
// which owns the read buffers; the packages above hold their own lock for
// that. A blocked read or write returns when Close is called.
package scm
