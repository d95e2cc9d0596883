package balancer

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/rs/zerolog"
)

// Defaults for the zero Options.
const (
	DefaultShutdownTimeout   = 30 * time.Second
	DefaultHandoffTimeout    = 5 * time.Second
	DefaultReloadTimeout     = time.Minute
	DefaultMaxUnread         = 1024
	DefaultKeepAlive         = 15 * time.Second
	DefaultMaxPending        = 4096
	DefaultReloadConcurrency = 1
	DefaultRestartWindow     = time.Minute
)

// Restart backoff for workers that exit unexpectedly: the first restart
// waits RestartBackoffMin, each further crash of the same slot doubles it up
// to RestartBackoffMax, and a worker that stayed up StableUptime resets it.
// Uptime counts from when the worker first listened: one that fails
// before it listens was never up, however long it ran.
const (
	RestartBackoffMin = 100 * time.Millisecond
	RestartBackoffMax = 30 * time.Second
	StableUptime      = 5 * time.Second
)

// Recycling by memory: Options.MaxMemory is checked against each worker's
// resident memory every MemoryCheckInterval, and a worker above it for
// MemoryChecks samples in a row is recycled, so that a passing peak (a
// large request, a GC cycle) is not.
const (
	MemoryCheckInterval = time.Second
	MemoryChecks        = 3
)

var (
	// ErrClosed is returned by methods of a balancer that has shut down.
	ErrClosed = errors.New("balancer: shut down")
	// ErrStarted is returned by Start called twice.
	ErrStarted = errors.New("balancer: already started")
	// ErrWorkerGone is returned by Worker.Send to a worker that has exited
	// or been disconnected.
	ErrWorkerGone = errors.New("balancer: worker is gone")
	// ErrReloadAborted wraps the reason a rolling restart stopped early.
	ErrReloadAborted = errors.New("balancer: reload aborted")
)

// Options configures a Balancer. The zero value runs one worker per CPU
// that the cgroup allows (DefaultWorkers), each re-executing the current
// binary with the same arguments, as cluster.fork() does. A zero field means its default; a value that
// means nothing (a negative count or timeout) makes Validate, and so New,
// fail with an *OptionError: nothing is quietly replaced.
type Options struct {
	// Workers is the number of worker processes; 0 means DefaultWorkers(),
	// the CPU limit of the master's cgroup, not runtime.NumCPU(): a
	// container given 2 CPUs of a 48-CPU host runs 2 workers.
	Workers int
	// Path is the program each worker runs; "" means the current binary.
	Path string
	// Args are the worker's arguments, without argv[0]. nil means this
	// process's own arguments (os.Args[1:]).
	Args []string
	// Env is added to this process's environment for every worker.
	// Unless GOMAXPROCS is set there, in this process's environment or in
	// Fork's env, each worker gets GOMAXPROCS=N, its share of the CPU
	// limit: max(1, DefaultWorkers() / Workers). Workers that each took
	// every CPU would run more threads than the container has CPUs.
	Env []string
	// Dir is the workers' working directory; "" means the master's.
	Dir string
	// Stdout and Stderr receive the workers' output; nil means the
	// master's own os.Stdout and os.Stderr.
	Stdout, Stderr io.Writer
	// User, if set, is the user name or numeric uid the workers run as
	// (with its primary group and supplementary groups). The master must
	// be root. Sockets stay the master's, so workers of an unprivileged
	// user still serve port 80.
	User string

	// Policy makes the dispatch policy of each listener; nil means
	// RoundRobin.
	Policy func() Policy

	// ShutdownTimeout is how long a disconnecting worker may drain after
	// SIGTERM before SIGKILL; 0 means DefaultShutdownTimeout. At Shutdown
	// with MaxConns, the wait for the connections the cap holds comes out
	// of it (the workers keep at least a second), so that it still bounds
	// the whole drain.
	ShutdownTimeout time.Duration
	// HandoffTimeout is how long a worker that has stopped reading its
	// connections (its unread ones were already taken back and served
	// elsewhere, within milliseconds) may also leave the master's pings
	// unanswered before it is killed; 0 means DefaultHandoffTimeout.
	HandoffTimeout time.Duration
	// ReloadTimeout bounds how long Reload waits for one replacement to
	// listen; 0 means DefaultReloadTimeout.
	ReloadTimeout time.Duration
	// ReloadConcurrency is how many workers Reload replaces at once; 0
	// means DefaultReloadConcurrency.
	ReloadConcurrency int
	// MaxUnread bounds the handoffs waiting, unread, in a worker's
	// sockets. A worker at the bound gets no more until it reads; 0 means
	// DefaultMaxUnread.
	MaxUnread int
	// MaxPending bounds the accepted connections waiting for a worker when
	// none can take them, or for room under MaxConns. Past it the newest
	// are closed; 0 means DefaultMaxPending.
	MaxPending int
	// MaxConns, if positive, caps the connections in progress across all
	// workers: handed to a worker and not yet closed by it, unread ones
	// included (the sum of Worker.Active). Past it new connections wait in
	// the pending queue, oldest first, until others close; connections
	// taken back from a worker and served elsewhere were admitted already
	// and are not held back. 0 means no cap. See admission.go.
	MaxConns int
	// CPUAffinity pins the worker of slot i (WorkerStats.Slot) to the
	// (i mod n)-th of the n CPUs the master may run on, as nginx's
	// worker_cpu_affinity auto does; its replacements keep that CPU, and
	// its GOMAXPROCS share is 1. Off, workers run on any CPU the master
	// may. Under a CPU quota below the CPUs the master may run on (a
	// container limited by time, not by a cpuset), it pins nothing and New
	// logs why: pinning would crowd every such container onto the host's
	// first CPUs.
	CPUAffinity bool

	// KeepAlive is the TCP keep-alive idle time and probe interval set on
	// every TCP listener, which accepted connections inherit (with 9
	// probes), as net.ListenConfig.KeepAlive does for Go's own accept; 0
	// means DefaultKeepAlive, negative turns keep-alive off. TCP_NODELAY
	// is always set, as Go sets it on every TCP connection.
	KeepAlive time.Duration
	// TCPUserTimeout, if positive, sets TCP_USER_TIMEOUT on every TCP
	// listener, and so on every connection accepted there: how long sent
	// data may stay unacknowledged before the kernel drops the connection;
	// 0 leaves the kernel's default.
	// Libraries that set it per connection (grpc-go) cannot on a handed-off
	// one unless it is a *net.TCPConn; set it here instead.
	TCPUserTimeout time.Duration

	// Recycling (see recycle.go): a worker due for any of these is
	// replaced as Reload replaces it, its successor listening before it
	// drains, one worker at a time and never during a Reload. 0 turns
	// each off.
	//
	// MaxRequests recycles a worker once the master has handed it that
	// many connections for good (not taken back unread nor handed back):
	// connections, not HTTP requests, which the master does not see.
	MaxRequests int
	// MaxLifetime recycles a worker once it has been up that long, less a
	// random jitter of up to a tenth of it, drawn for each worker, so
	// that workers started together do not all go at once.
	MaxLifetime time.Duration
	// MaxMemory recycles a worker whose resident memory (RSS, from
	// /proc/PID/statm) stays above this many bytes for
	// MemoryChecks samples in a row, MemoryCheckInterval apart.
	MaxMemory int64

	// Heartbeat, if positive, makes the master ping every worker that has
	// said hello and is not draining this often over its control socket
	// (the worker package answers on its own goroutine). A worker that
	// leaves a ping unanswered for HeartbeatTimeout is hung, even with no
	// connection: it gets no more connections, it is killed, what it never
	// read is served elsewhere, and its slot restarts it as after a crash.
	// 0 turns it off.
	Heartbeat time.Duration
	// HeartbeatTimeout is how long a ping may go unanswered; 0 means
	// 3 × Heartbeat. It must be longer than Heartbeat, at least
	// MinHeartbeatTimeout, and 0 without it.
	HeartbeatTimeout time.Duration

	// MaxRestarts, if positive, stops restarting a slot whose workers
	// exited unexpectedly more than MaxRestarts times within
	// RestartWindow: the slot stays empty (Stats.FailedSlots) until a
	// Reload starts it again with a fresh history. 0 means no limit.
	MaxRestarts int
	// RestartWindow is the window of MaxRestarts; 0 means
	// DefaultRestartWindow. Without MaxRestarts it is unused.
	RestartWindow time.Duration

	// Socket says how the listening sockets are opened: a Unix socket's
	// mode and group, the listen backlog.
	Socket SocketOptions

	// Logger receives the balancer's logs; the zero value is silent.
	Logger zerolog.Logger
	// OnEvent, if set, receives every Event; see Event.
	OnEvent func(Event)
}

// DumpWait bounds how long a hung worker has, after SIGQUIT, to write its
// goroutines' stacks before the master sends SIGKILL: a worker found hung
// by the heartbeat, by the stall check past HandoffTimeout, or in a drain
// past ShutdownTimeout is sent SIGQUIT first, so that Go's runtime writes
// every goroutine's stack to its stderr. A stopped one is killed at once.
const DumpWait = time.Second

// MinHeartbeatTimeout is the shortest HeartbeatTimeout (given, or 3 ×
// Heartbeat) that Validate takes: a worker whose CPU is busy, or in a
// stop-the-world pause, may take milliseconds to answer, and a timeout of
// a few would kill healthy workers.
const MinHeartbeatTimeout = 100 * time.Millisecond

// heartbeatTimeout is HeartbeatTimeout, or its default.
func (o Options) heartbeatTimeout() time.Duration {
	if o.HeartbeatTimeout > 0 {
		return o.HeartbeatTimeout
	}
	return 3 * o.Heartbeat
}

// OptionError is the error of Options.Validate, and so of New, for a field
// whose value means nothing.
type OptionError struct {
	Field string // the field of Options, such as "MaxPending"
	Value any    // its value
	Rule  string // what it breaks, such as "must not be negative"
}

func (e *OptionError) Error() string {
	return fmt.Sprintf("balancer: Options.%s %s, not %v", e.Field, e.Rule, e.Value)
}

// Validate returns an *OptionError for the first field whose value means
// nothing, or nil. Zero values are valid: they mean the defaults.
func (o Options) Validate() error {
	for _, f := range []struct {
		name string
		bad  bool
		val  any
	}{
		{"Workers", o.Workers < 0, o.Workers},
		{"ShutdownTimeout", o.ShutdownTimeout < 0, o.ShutdownTimeout},
		{"HandoffTimeout", o.HandoffTimeout < 0, o.HandoffTimeout},
		{"ReloadTimeout", o.ReloadTimeout < 0, o.ReloadTimeout},
		{"ReloadConcurrency", o.ReloadConcurrency < 0, o.ReloadConcurrency},
		{"MaxUnread", o.MaxUnread < 0, o.MaxUnread},
		{"MaxPending", o.MaxPending < 0, o.MaxPending},
		{"MaxConns", o.MaxConns < 0, o.MaxConns},
		{"TCPUserTimeout", o.TCPUserTimeout < 0, o.TCPUserTimeout},
		{"MaxRequests", o.MaxRequests < 0, o.MaxRequests},
		{"MaxLifetime", o.MaxLifetime < 0, o.MaxLifetime},
		{"MaxMemory", o.MaxMemory < 0, o.MaxMemory},
		{"Heartbeat", o.Heartbeat < 0, o.Heartbeat},
		{"HeartbeatTimeout", o.HeartbeatTimeout < 0, o.HeartbeatTimeout},
		{"MaxRestarts", o.MaxRestarts < 0, o.MaxRestarts},
		{"RestartWindow", o.RestartWindow < 0, o.RestartWindow},
	} {
		if f.bad {
			return &OptionError{Field: f.name, Value: f.val, Rule: "must not be negative"}
		}
	}
	if err := o.Socket.validate(); err != nil {
		return err
	}
	// A timeout no longer than the interval would find every worker hung
	// between two pings; one without a heartbeat would do nothing.
	switch {
	case o.HeartbeatTimeout > 0 && o.Heartbeat == 0:
		return &OptionError{Field: "HeartbeatTimeout", Value: o.HeartbeatTimeout, Rule: "must be 0 without a heartbeat interval"}
	case o.Heartbeat > 0 && o.heartbeatTimeout() < MinHeartbeatTimeout:
		return &OptionError{Field: "HeartbeatTimeout", Value: o.heartbeatTimeout(), Rule: "must be at least " + MinHeartbeatTimeout.String()}
	case o.HeartbeatTimeout > 0 && o.HeartbeatTimeout <= o.Heartbeat:
		return &OptionError{Field: "HeartbeatTimeout", Value: o.HeartbeatTimeout, Rule: "must be longer than the heartbeat interval (" + o.Heartbeat.String() + ")"}
	}
	return nil
}
