// Package worker is the worker side of handoff: the part of a program that
// serves connections handed to it by a master.
//
// A process started by a handoff master has the environment variable
// ipc.EnvWorkerID set and its control socket on fd 3. When this package is
// imported into such a process, its init connects to the master, says
// hello (the master's "online" event) and starts one goroutine that reads
// the control socket for as long as the process lives. In any other
// process the package does nothing: [Listen] is [net.Listen], [IsWorker]
// is false and [Send] returns [ErrNotWorker]. So the same program runs
// alone and under a master.
//
// A master needs Linux. On every other OS (macOS, the BSDs, Windows) the
// package has the same API and acts as in a process that no master
// started: a program that imports it builds and runs there alone, as on a
// developer's laptop, and [Serve] serves and drains it as it does alone on
// Linux. [Listener] and [Conn] exist there too, so that code naming them
// builds, but nothing makes one.
//
// # Listening
//
// Under a master, [Listen] asks the master to open the address, or to share
// the one it already has open, and returns a [*Listener] fed with the
// connections the master hands off. Accept reads them itself from the
// listener's own conns socket (whose end came with the master's reply):
// no goroutine and no channel in between, so it returns as soon as the
// frame arrives, as Accept on a kernel socket returns from accept4.
//
// Accept returns a [*Conn]: the received socket fd, registered with the
// runtime poller by os.NewFile, with its addresses taken from the handoff
// frame, so it costs no dup and no getpeername. It has what net/http and
// most libraries reach through interfaces (sendfile through ReadFrom,
// CloseWrite, SyscallConn, the socket options). It is not a *net.TCPConn:
// code that type-asserts one does without, as grpc-go does for
// TCP_USER_TIMEOUT; set such options on the master's listener, or use
// [ListenConfig] with StdConns for the real *net.TCPConn, at about six
// syscalls more per connection.
//
// Nothing is acknowledged: a connection is this worker's once it has read
// its frame, and what it has not read the master takes back if this worker
// dies, stalls or closes the listener. The worker counts the connections
// it read and closed on a page of memory it shares with the master, which
// is how the master sees its load and its progress, with no message.
// A reader reads a frame only while the process has room for all of its
// fds; otherwise it leaves it for the master, which serves it elsewhere.
//
// Closing a Listener tells the master to stop routing to it; connections
// read but not yet accepted go back to the master, which hands them to
// another worker (or closes them if there is none).
//
// # Lifecycle
//
// When the master asks a worker to disconnect, every Listener closes once
// Accept has taken and returned what was already handed over (plus
// drainGrace; at most drainTimeout, then the rest goes back to the
// master), so Accept returns net.ErrClosed; the master then sends SIGTERM.
//
// # Serving HTTP
//
// [Serve] (and [ServeConfig]) is srv.Serve for a worker: it drains on that
// Disconnect, on SIGTERM or SIGINT, or when its context ends, and no
// request is closed unanswered, which http.Server.Shutdown alone does not
// ensure: Shutdown closes, unanswered, a connection whose first request it
// reads after it began. Serve waits for those first requests before it
// calls Shutdown, then waits for hijacked connections, which it tells to
// go through OnDrain. It reports on the counter page how many connections
// have a request in flight.
// When the master dies, even by SIGKILL, the control socket reads EOF at
// once, without polling. No master is left to take back what it handed
// over, so each listener first serves it: Accept returns the connections
// queued and still unread in its socket, and the listener closes once it
// is empty (drainGrace later, at most drainTimeout). Then the worker sends
// itself SIGTERM, so that the program's own shutdown runs. The worker answers the master's pings
// at once; a worker that answers none while it reads nothing is killed.
//
// # Messages
//
// [Send] sends a JSON value to the master. [Messages] returns a channel of
// the master's messages, in order; messages that arrive before anyone
// reads are queued without bound, so the control socket is never blocked
// by a slow reader.
//
// # Fd ownership
//
// Each fd read off a conns socket is owned by the Listener's queue until
// Accept wraps it in a conn, which owns it from then on (with StdConns,
// net.FileConn dups it and the original is closed at once). Fds still
// queued when the Listener closes are sent back to the master and closed
// here. The conns socket is owned by its Listener and closed by Close.
// Serve owns no fd: srv and the listeners stay the caller's, and Serve
// closes the listeners when it drains.
//
// # Goroutines
//
//   - The control reader (readLoop), started by init in a worker process,
//     lives as long as the control socket: at EOF (the master is gone) it
//     closes the listeners, sends the process SIGTERM and returns.
//   - The inbox's forwarder starts at the first call to Messages and ends
//     when the control socket closes and the queue is empty.
//   - On Disconnect, one goroutine per Listener (closeWhenDrained) closes
//     it once Accept has taken what was queued, within drainTimeout.
//   - Serve starts one goroutine per listener (srv.Serve), one that waits
//     for them, one that absorbs signals during the drain, and OnDrain's;
//     each ends before Serve returns, except OnDrain past the drain's
//     deadline.
//
// Accept runs on the caller's goroutine and reads the conns socket
// itself: there is no goroutine per listener or per connection.
//
// # Locking
//
// The control client's mu guards its requests and its listeners; a
// Listener's mu guards its queue and its closed state, and its readMu
// lets one Accept read the conns socket at a time. The order is readMu,
// then mu; the control client's mu is never held with a Listener's. Only
// readMu is held across a blocking call (an Accept waiting for a frame),
// and Close wakes that Accept by closing the socket before it takes
// readMu. Writes to the control socket are serialised by ipc.Conn.
package worker
