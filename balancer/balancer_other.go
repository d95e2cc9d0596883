//go:build !linux

package balancer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
)

// The master needs Linux: SOCK_SEQPACKET socketpairs with SCM_RIGHTS and
// MSG_CMSG_CLOEXEC, accept4, memfd_create. On any other OS the package
// has the same API, so that programs that can run as a master build
// there, but New fails and nothing else runs.

// errNeedsLinux is the error of New, and of every method here that
// returns one.
var errNeedsLinux = fmt.Errorf("balancer: the master needs Linux (it hands connections to workers with SCM_RIGHTS over SOCK_SEQPACKET), not %s: %w", runtime.GOOS, errors.ErrUnsupported)

// Balancer is a handoff master; outside Linux none runs.
type Balancer struct{}

// New returns Validate's error, or else one matching
// errors.ErrUnsupported: the master needs Linux.
func New(opts Options) (*Balancer, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	return nil, errNeedsLinux
}

// done is what Done returns: closed, since nothing runs.
var done = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (b *Balancer) Listen(network, address string) (net.Addr, error) { return nil, errNeedsLinux }
func (b *Balancer) Adopt(network, address string, ln net.Listener) (net.Addr, error) {
	return nil, errNeedsLinux
}
func (b *Balancer) WaitReady(ctx context.Context) error { return errNeedsLinux }
func (b *Balancer) Addrs() []net.Addr                   { return nil }
func (b *Balancer) Start() error                        { return errNeedsLinux }
func (b *Balancer) Fork(env ...string) (*Worker, error) { return nil, errNeedsLinux }
func (b *Balancer) Workers() []*Worker                  { return nil }
func (b *Balancer) Broadcast(v any) error               { return errNeedsLinux }
func (b *Balancer) Done() <-chan struct{}               { return done }
func (b *Balancer) Reload(ctx context.Context) error    { return errNeedsLinux }
func (b *Balancer) Run(ctx context.Context) error       { return errNeedsLinux }
func (b *Balancer) Shutdown(ctx context.Context) error  { return errNeedsLinux }
func (b *Balancer) Kill()                               {}
func (b *Balancer) Stats() Stats                        { return Stats{} }

// Worker is the master's handle on a worker process; outside Linux there
// is none.
type Worker struct{}

func (w *Worker) ID() int                  { return 0 }
func (w *Worker) PID() int                 { return 0 }
func (w *Worker) State() State             { return StateDead }
func (w *Worker) IsDead() bool             { return true }
func (w *Worker) IsConnected() bool        { return false }
func (w *Worker) Send(v any) error         { return errNeedsLinux }
func (w *Worker) Kill(sig os.Signal) error { return errNeedsLinux }
func (w *Worker) Disconnect()              {}
func (w *Worker) Active() int              { return 0 }
func (w *Worker) Stats() WorkerStats       { return WorkerStats{State: StateDead} }

// DefaultWorkers is the worker count that Options.Workers 0 means: on
// Linux the CPU limit of the cgroup; here runtime.NumCPU().
func DefaultWorkers() int { return runtime.NumCPU() }

func ListenSocket(network, address string) (net.Listener, error) { return nil, errNeedsLinux }
func (b *Balancer) ListenQueues() []ListenQueue                  { return nil }
func (o SocketOptions) Listen(network, address string) (net.Listener, error) {
	return nil, errNeedsLinux
}
