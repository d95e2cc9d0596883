package worker

import (
	"errors"
	"time"
)

// What this file declares exists on every OS, as does the package's whole
// exported API: serve.go builds everywhere too, and the other functions
// and methods are in worker.go, listener.go and conn.go on Linux, and in
// worker_other.go elsewhere.

// ErrNotWorker is returned by Send in a process that no master started.
var ErrNotWorker = errors.New("worker: not running under a handoff master")

// ErrMasterGone is returned when the master has closed the control socket.
var ErrMasterGone = errors.New("worker: master is gone")

// EnvLogFormat is the environment variable in which a handoff CLI master
// tells its workers its log format; with "json", the few lines this
// package itself writes to stderr are JSON too.
const EnvLogFormat = "HANDOFF_LOG_FORMAT"

// ListenConfig chooses what a Listener's Accept returns. The zero value
// is what Listen uses.
type ListenConfig struct {
	// StdConns makes Accept return the *net.TCPConn or *net.UnixConn that
	// net.FileConn makes, for code that type-asserts them (grpc-go sets
	// TCP_USER_TIMEOUT only on a *net.TCPConn). It costs about 6 more
	// syscalls per connection (a dup, fcntl, getsockopt, getsockname,
	// getpeername and a close), and the master cannot see such a
	// connection close, so it stops counting it once Accept has returned
	// it: std conns are not under the master's Options.MaxConns and weigh
	// nothing in LeastLoaded (had they counted until the worker exits, a
	// cap would fill up with closed ones and admit nobody). Without it
	// Accept returns a *Conn.
	StdConns bool
}

// drainTimeout bounds how long a disconnecting worker waits for Accept to
// take the connections already handed to it before it closes its
// listeners and hands the rest back.
const drainTimeout = 500 * time.Millisecond
