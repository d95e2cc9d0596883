//go:build linux

package balancer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/ipc"
	"github.com/handoff-go/handoff/scm"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// maxListeners bounds the sockets workers can make the master open.
const maxListeners = 256

// Balancer is a handoff master: it owns the listening sockets, accepts
// every connection, hands each to a worker process, and keeps the workers
// running. All its methods are safe for concurrent use.
type Balancer struct {
	opts   Options             // as given to New, with the defaults filled in
	log    zerolog.Logger      // Options.Logger
	events *eventQueue         // delivers to Options.OnEvent
	cred   *syscall.Credential // the workers' user (Options.User), or nil
	path   string              // the workers' program
	args   []string            // and its arguments
	openMu sync.Mutex          // one findOrOpen opens a socket at a time; taken before mu, never under it

	mu         sync.Mutex
	started    bool                 // Start has been called
	stopping   bool                 // Shutdown has begun: no restarts, no new workers
	nextID     int                  // the id of the last worker forked
	slots      int                  // the slots made, so the next one's index
	workers    []*Worker            // alive or exiting, by id
	listeners  []*listener          // every listener opened, by id - 1
	byKey      map[string]*listener // listeners by "network address", as requested and as bound
	restarting map[*slot]bool       // slots waiting for a restart timer
	pending    int                  // fds queued on all listeners
	pendTimer  *time.Timer          // retries the pending queues (retryPending)
	pendArmed  bool                 // pendTimer is set
	pendDelay  time.Duration        // pendTimer's last delay, doubled up to maxPendingRetry
	adm        admission            // the retry of what MaxConns holds; see admission.go
	cpus       cpuPlan              // the workers' CPU limit, GOMAXPROCS and pinned CPUs; see cpus_linux.go
	stallTimer *time.Timer          // checks for stalled workers (checkStalls)
	stallArmed bool                 // stallTimer is set
	closed     bool                 // Shutdown has finished: timers do nothing
	orphans    []*link              // links of gone workers still holding connections
	sentFDs    []int                // the master's copies of fds just sent, to close
	pingBuf    []byte               // the ping frame
	room       scm.Room             // the master's own fd room
	fdReserve  int                  // fds kept free for the master's own needs; see maxFDReserve
	changed    chan struct{}        // closed and replaced on every state change
	drainBy    time.Time            // at Shutdown with MaxConns, when the whole drain must end; see drainTimeout

	stopAccept     chan struct{} // closed by Shutdown: accept loops stop backing off
	acceptLogLimit rateLimit     // of "accept failed" lines
	dropLogLimit   rateLimit     // of "the pending queue is full" lines
	badLogLimit    rateLimit     // of lines about failed handoffs and reclaims

	reloadMu     sync.Mutex     // one Reload at a time
	shutdownOnce sync.Once      // one shutdown
	shutdownErr  error          // its result, for every Shutdown call
	done         chan struct{}  // closed when Shutdown has finished
	wg           sync.WaitGroup // worker goroutines and restart timers

	stats stats // the counters behind Stats; under mu

	fleet fleet // recycling, heartbeat and crash loops; see recycle.go
}

// New returns a Balancer; it opens nothing and starts no worker until
// Listen and Start. Options that Validate rejects are its error; zero
// fields get their defaults.
func New(opts Options) (*Balancer, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	cpus := planCPUs(opts)
	if opts.Workers == 0 {
		opts.Workers = cpus.limit
	}
	if opts.Policy == nil {
		opts.Policy = RoundRobin
	}
	if opts.ShutdownTimeout == 0 {
		opts.ShutdownTimeout = DefaultShutdownTimeout
	}
	if opts.HandoffTimeout == 0 {
		opts.HandoffTimeout = DefaultHandoffTimeout
	}
	if opts.ReloadTimeout == 0 {
		opts.ReloadTimeout = DefaultReloadTimeout
	}
	if opts.ReloadConcurrency == 0 {
		opts.ReloadConcurrency = DefaultReloadConcurrency
	}
	if opts.MaxUnread == 0 {
		opts.MaxUnread = DefaultMaxUnread
	}
	if opts.KeepAlive == 0 {
		opts.KeepAlive = DefaultKeepAlive
	}
	if opts.MaxPending == 0 {
		opts.MaxPending = DefaultMaxPending
	}
	if opts.Stdout == nil {
		opts.Stdout = os.Stdout
	}
	if opts.Stderr == nil {
		opts.Stderr = os.Stderr
	}
	b := &Balancer{
		pingBuf:        ipc.AppendPing(nil),
		opts:           opts,
		log:            opts.Logger,
		path:           opts.Path,
		args:           opts.Args,
		byKey:          make(map[string]*listener),
		restarting:     make(map[*slot]bool),
		changed:        make(chan struct{}),
		sentFDs:        make([]int, 0, acceptBatch),
		stopAccept:     make(chan struct{}),
		acceptLogLimit: rateLimit{every: time.Second},
		dropLogLimit:   rateLimit{every: time.Second},
		badLogLimit:    rateLimit{every: time.Second},
		done:           make(chan struct{}),
		cpus:           cpus,
	}
	if b.path == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("balancer: finding the current binary: %w", err)
		}
		b.path = exe
	}
	if b.args == nil {
		b.args = os.Args[1:]
	}
	if opts.User != "" {
		cred, err := lookupUser(opts.User)
		if err != nil {
			return nil, err
		}
		b.cred = cred
	}
	b.fdReserve = maxFDReserve
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil {
		b.fdReserve = fdReserveFor(lim.Cur)
	}
	if cpus.unpinned != "" {
		b.log.Warn().Msg(cpus.unpinned)
	}
	b.pendTimer = time.AfterFunc(time.Hour, b.retryPending)
	b.pendTimer.Stop()
	b.stallTimer = time.AfterFunc(time.Hour, b.checkStalls)
	b.stallTimer.Stop()
	b.initAdmission()
	b.events = newEventQueue(opts.OnEvent)
	return b, nil
}

func lookupUser(name string) (*syscall.Credential, error) {
	u, err := user.Lookup(name)
	if err != nil {
		if _, nerr := strconv.Atoi(name); nerr == nil {
			u, err = user.LookupId(name)
		}
		if err != nil {
			return nil, fmt.Errorf("balancer: user %q: %w", name, err)
		}
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	if gids, err := u.GroupIds(); err == nil {
		for _, g := range gids {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				cred.Groups = append(cred.Groups, uint32(n))
			}
		}
	}
	return cred, nil
}

// Listen opens a listening socket in the master, as net.Listen(network,
// address) would, and starts accepting on it. Workers that call
// worker.Listen with the same address share it. It returns the bound
// address. Listening on an address already open returns that one.
func (b *Balancer) Listen(network, address string) (net.Addr, error) {
	l, err := b.findOrOpen(network, address)
	if err != nil {
		return nil, err
	}
	return l.bound, nil
}

// findOrOpen finds or opens the listener for a request. The socket is
// opened without holding b.mu, so a slow bind never stalls dispatch.
func (b *Balancer) findOrOpen(network, address string) (*listener, error) {
	resolved := resolve(network, address) // outside b.mu: it may ask DNS
	// One open at a time: two workers asking for one new Unix path at
	// once would each find the other's fresh socket "stale" (connect is
	// refused until listen) and remove its file. Listens are rare.
	b.openMu.Lock()
	defer b.openMu.Unlock()
	b.mu.Lock()
	l, err := b.lookupLocked(network, address, resolved)
	b.mu.Unlock()
	if l != nil || err != nil {
		return l, err
	}
	l, err = openListener(b.opts.Socket, network, address)
	if err != nil {
		return nil, err
	}
	return b.register(network, address, resolved, l)
}

// register starts accepting on l, unless another request opened the same
// address meanwhile or the balancer is shutting down.
func (b *Balancer) register(network, address string, resolved *net.TCPAddr, l *listener) (*listener, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if other, err := b.lookupLocked(network, address, resolved); other != nil || err != nil {
		l.close()
		return other, err
	}
	if err := l.setOptions(b.opts); err != nil {
		l.close()
		return nil, err
	}
	l.id = uint32(len(b.listeners) + 1)
	l.policy = b.opts.Policy()
	b.listeners = append(b.listeners, l)
	b.byKey[network+" "+address] = l
	b.byKey[network+" "+l.bound.String()] = l
	b.log.Info().Str("network", network).Str("address", l.bound.String()).Msg("listening")
	go b.acceptLoop(l)
	return l, nil
}

// Adopt makes the master accept on ln, a listening socket opened
// elsewhere (inherited through systemd socket activation or from a
// previous master), for requests of network and address as well as for
// ln's own address. The balancer works on a dup of ln's fd: the caller
// keeps ln and may close it. A Unix socket's path is left in place.
func (b *Balancer) Adopt(network, address string, ln net.Listener) (net.Addr, error) {
	if err := ipc.CheckNetwork(network); err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Addr: ln.Addr(), Err: err}
	}
	l, err := dupListener(network, address, ln)
	if err != nil {
		return nil, err
	}
	r, err := b.register(network, address, resolve(network, address), l)
	if err != nil {
		return nil, err
	}
	if r != l {
		return nil, &net.OpError{Op: "listen", Net: network, Addr: ln.Addr(), Err: fmt.Errorf("balancer: %s is already open", address)}
	}
	return l.bound, nil
}

// WaitReady waits until there is at least one worker and every worker
// that is not draining listens, for example after Start or a restart, or
// until ctx ends. It returns ErrClosed once Shutdown has begun.
func (b *Balancer) WaitReady(ctx context.Context) error {
	err := b.waitFor(ctx, func() bool {
		if b.stopping {
			return true
		}
		n := 0
		for _, w := range b.workers {
			switch {
			case w.routableLocked():
				n++
			case w.state < StateListening:
				return false
			}
		}
		return n > 0
	})
	b.mu.Lock()
	defer b.mu.Unlock()
	if err == nil && b.stopping {
		return ErrClosed
	}
	return err
}

// lookupLocked returns the open listener for a request, or an error if
// no new one may be opened, or neither.
func (b *Balancer) lookupLocked(network, address string, resolved *net.TCPAddr) (*listener, error) {
	if b.stopping {
		return nil, &net.OpError{Op: "listen", Net: network, Err: ErrClosed}
	}
	if l := b.findLocked(network, address, resolved); l != nil {
		return l, nil
	}
	if len(b.listeners) >= maxListeners {
		return nil, &net.OpError{Op: "listen", Net: network, Err: fmt.Errorf("balancer: too many listeners (%d)", maxListeners)}
	}
	return nil, nil
}

// findLocked matches a request with an open listener, by the address as
// written or, as Serves does, by the address it resolved to (a).
func (b *Balancer) findLocked(network, address string, a *net.TCPAddr) *listener {
	if l := b.byKey[network+" "+address]; l != nil {
		return l
	}
	for _, l := range b.listeners {
		if serves(l.bound, network, address, a) {
			return l
		}
	}
	return nil
}

// Addrs returns the bound address of every open listener.
func (b *Balancer) Addrs() []net.Addr {
	b.mu.Lock()
	defer b.mu.Unlock()
	addrs := make([]net.Addr, len(b.listeners))
	for i, l := range b.listeners {
		addrs[i] = l.bound
	}
	return addrs
}

// Start starts Options.Workers workers.
func (b *Balancer) Start() error {
	b.mu.Lock()
	if b.started {
		b.mu.Unlock()
		return ErrStarted
	}
	b.started = true
	b.startFleetLocked()
	b.mu.Unlock()
	for i := 0; i < b.opts.Workers; i++ {
		if _, err := b.fork(b.newSlot(nil)); err != nil {
			return err
		}
	}
	return nil
}

// Fork starts one more worker, with env added to its environment on top of
// Options.Env. If it crashes it is restarted with the same env.
func (b *Balancer) Fork(env ...string) (*Worker, error) {
	return b.fork(b.newSlot(env))
}

// newSlot makes a place in the pool. Slots are numbered from 0 in the
// order made, so Start's are 0 to Workers-1, and a slot keeps its index
// across every restart and reload: what must stay with a place rather
// than a process (a CPU pinned by CPUAffinity, an ip-hash client's
// worker) follows the index.
func (b *Balancer) newSlot(env []string) *slot {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := &slot{index: b.slots, env: env}
	b.slots++
	return s
}

// Workers returns the workers that have not exited, by id.
func (b *Balancer) Workers() []*Worker {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*Worker(nil), b.workers...)
}

// Broadcast sends v, as JSON, to every connected worker. It returns the
// errors of the sends that failed, joined.
func (b *Balancer) Broadcast(v any) error {
	p, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var errs []error
	for _, w := range b.Workers() {
		if !w.IsConnected() {
			continue
		}
		if err := w.sendRaw(p); err != nil {
			errs = append(errs, fmt.Errorf("worker %d: %w", w.id, err))
		}
	}
	return errors.Join(errs...)
}

// Done is closed when Shutdown has finished.
func (b *Balancer) Done() <-chan struct{} { return b.done }

// notifyLocked wakes everything waiting for a state change.
func (b *Balancer) notifyLocked() {
	close(b.changed)
	b.changed = make(chan struct{})
}

// waitFor waits until cond, checked under b.mu, holds.
func (b *Balancer) waitFor(ctx context.Context, cond func() bool) error {
	for {
		b.mu.Lock()
		ok := cond()
		ch := b.changed
		b.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Reload replaces every worker, a few at a time (Options.ReloadConcurrency),
// with no failed request: each replacement is started, and only once it
// listens on every address its predecessor served is the old worker
// disconnected gracefully. If a replacement fails to come up, Reload kills
// it, stops, and returns an error wrapping ErrReloadAborted; the workers
// not yet replaced keep serving.
func (b *Balancer) Reload(ctx context.Context) error {
	b.reloadMu.Lock()
	defer b.reloadMu.Unlock()
	var olds []*Worker
	for _, w := range b.Workers() {
		if w.replaceable() {
			olds = append(olds, w)
		}
	}
	b.log.Info().Int("workers", len(olds)).Msg("rolling restart")
	b.reviveFailedSlots() // a new deployment gets a fresh start
	for len(olds) > 0 {
		n := min(len(olds), b.opts.ReloadConcurrency)
		batch := olds[:n]
		olds = olds[n:]
		errs := make(chan error, n)
		for _, old := range batch {
			go func() {
				_, err := b.replace(ctx, old)
				errs <- err
			}()
		}
		var failed []error
		for range batch {
			if err := <-errs; err != nil {
				failed = append(failed, err)
			}
		}
		if len(failed) > 0 {
			err := fmt.Errorf("%w: %w", ErrReloadAborted, errors.Join(failed...))
			b.log.Error().Err(err).Msg("rolling restart aborted; old workers keep serving")
			return err
		}
	}
	b.log.Info().Msg("rolling restart done")
	return nil
}

// replaceable reports whether Reload replaces w: it is alive and not
// leaving, whether it listens, still starts or is stalled. (Only the
// routable ones were: a worker stalled or starting at SIGHUP kept the old
// binary after "rolling restart done".)
func (w *Worker) replaceable() bool {
	w.b.mu.Lock()
	defer w.b.mu.Unlock()
	return w.watchedLocked()
}

// replace starts a successor for old in its slot and disconnects old once
// the successor listens everywhere old did. It returns the successor, or
// nil if old was leaving already.
func (b *Balancer) replace(ctx context.Context, old *Worker) (*Worker, error) {
	b.mu.Lock()
	dead := old.state >= StateDisconnecting
	want := make([]*listener, 0, len(old.links))
	for l := range old.links {
		want = append(want, l)
	}
	b.mu.Unlock()
	if dead {
		return nil, nil // gone already; its slot restarts by itself
	}
	nw, err := b.fork(old.slot)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, b.opts.ReloadTimeout)
	defer cancel()
	err = b.waitFor(ctx, func() bool {
		if nw.state >= StateDisconnecting {
			return true
		}
		if nw.state < StateOnline {
			return false
		}
		for _, l := range want {
			if nw.links[l] == nil {
				return false
			}
		}
		return true
	})
	if err == nil && nw.IsDead() {
		err = fmt.Errorf("worker %d exited before listening", nw.id)
	}
	if err != nil {
		nw.abandon()
		return nil, fmt.Errorf("replacing worker %d: %w", old.id, err)
	}
	old.disconnect()
	return nw, nil
}

// Shutdown stops accepting, accepts what is already in the listen
// backlog, lets in what MaxConns holds (for up to ShutdownTimeout), drains
// every worker gracefully and waits for them to exit. If
// ctx ends first, the workers left are killed. The balancer cannot be used
// again.
func (b *Balancer) Shutdown(ctx context.Context) error {
	b.shutdownOnce.Do(func() { b.shutdownErr = b.shutdown(ctx) })
	<-b.done
	return b.shutdownErr
}

func (b *Balancer) shutdown(ctx context.Context) error {
	defer close(b.done)
	b.mu.Lock()
	b.stopping = true
	b.cancelRestartsLocked()
	b.stopFleetLocked()
	ls := b.listeners
	forked := b.stats.forked
	b.notifyLocked()
	b.mu.Unlock()
	if forked > 0 {
		b.log.Info().Msg("shutting down: closing listeners, draining workers")
	} else {
		b.log.Info().Msg("shutting down: closing listeners; no worker was started")
	}
	close(b.stopAccept)
	for _, l := range ls {
		_ = l.f.SetReadDeadline(time.Unix(1, 0))
		<-l.done
	}
	b.awaitAdmission(ctx)
	b.awaitPending(ctx)
	for _, w := range b.Workers() {
		w.disconnect()
	}
	err := b.waitFor(ctx, func() bool { return len(b.workers) == 0 })
	if err != nil {
		b.log.Warn().Err(err).Msg("drain deadline passed; killing the workers left")
		for _, w := range b.Workers() {
			_ = w.Kill(syscall.SIGKILL)
		}
	}
	b.mu.Lock()
	b.cancelRestartsLocked()
	b.mu.Unlock()
	b.wg.Wait()
	b.mu.Lock()
	for _, l := range ls {
		b.dropPendingLocked(l)
	}
	for _, k := range b.orphans {
		// No worker is left to serve what they hold: closing the
		// sockets closes those connections.
		if n := k.w.unreadLocked(); n > 0 {
			b.stats.dropped += uint64(n)
			b.log.Warn().Int("conns", n).Msg("shut down with connections a dead worker never read and no fd room to take back; closed them")
		}
		k.close()
	}
	b.orphans = nil
	b.closed = true
	b.mu.Unlock()
	b.pendTimer.Stop()
	b.stallTimer.Stop()
	b.adm.timer.Stop()
	b.events.close()
	b.log.Info().Msg("shut down")
	return err
}

// Kill sends SIGKILL to every worker at once, without draining; for a
// second Ctrl-C. Shutdown still needs to be called (or be running) to
// wait for them.
func (b *Balancer) Kill() {
	b.mu.Lock()
	b.stopping = true
	b.cancelRestartsLocked()
	b.mu.Unlock()
	for _, w := range b.Workers() {
		_ = w.Kill(syscall.SIGKILL)
	}
}
