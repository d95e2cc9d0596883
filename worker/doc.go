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
// # Listening
//
// Under a master, [Listen] asks the master to open the address, or to share
// the one it already has open, and returns a [*Listener] fed with the
// connections the master hands off. Its Accept returns a [*TCPConn] or
// [*UnixConn], which embed the real *net.TCPConn or *net.UnixConn (made by
// net.FileConn), so http.Server keeps sendfile, splice and CloseWrite and
// RemoteAddr is the true client address. The wrapper exists only to tell
// the master when the connection is closed, which is how the master knows
// each worker's load. Use [TCPConn.NetConn] to reach the inner conn.
//
// A connection is acknowledged to the master as soon as it is queued for
// Accept; until then the master keeps its own copy and re-dispatches it if
// this worker dies. Acks and close reports are batched into Report frames.
//
// Closing a Listener tells the master to stop routing to it; connections
// queued but not yet accepted go back to the master, which hands them to
// another worker (or closes them if there is none).
//
// # Lifecycle
//
// When the master asks a worker to disconnect, every Listener closes once
// Accept has taken and returned what was already handed over (plus 50ms;
// at most 500ms, then the rest goes back to the master), so Accept returns
// net.ErrClosed; the master then sends SIGTERM: the usual
// signal.NotifyContext + http.Server.Shutdown path drains the worker. Note
// that net/http's Shutdown closes, unanswered, a connection whose first
// request it reads after Shutdown began; the README shows a drain that
// waits for such connections instead.
// When the master dies, even by SIGKILL, the control socket reads EOF: the
// worker closes its listeners and sends itself SIGTERM, within a
// millisecond and without polling.
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
// Each fd received from the master is owned by the Listener's queue until
// Accept turns it into a conn (net.FileConn dups it, and the original is
// closed at once), after which the conn owns it. Fds still queued when the
// Listener closes are sent back to the master and closed here.
package worker
