//go:build linux

package balancer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/ipc"
	"github.com/rs/zerolog"
)

// slot is a worker's place in the pool: its replacement after a crash or
// a reload takes the same slot, with the same env and crash history.
type slot struct {
	index    int  // its place in the pool, from 0, kept by every worker it holds; see Balancer.newSlotLocked
	retired  bool // Disconnect was asked for its worker: it stays empty
	env      []string
	crashes  int
	restarts int         // workers that exited unexpectedly in this slot
	restart  *time.Timer // under Balancer.mu
	exits    []time.Time // its unexpected exits within Options.RestartWindow, oldest first; see crashLoopLocked
	failed   bool        // in a crash loop past Options.MaxRestarts: not restarted until a Reload
}

// listenersCloseTimeout bounds how long a disconnecting worker may take to
// close its listeners before it gets SIGTERM anyway.
const listenersCloseTimeout = 2 * time.Second

// exitDrainTimeout bounds how long the master reads a dead worker's
// control socket before closing it.
const exitDrainTimeout = time.Second

// link is a worker's conns socket for one listener. The master keeps
// both ends: it sends on send, and reads back from recv, its copy of the
// worker's end, whatever the worker never read (reclaimLocked).
type link struct {
	w    *Worker
	l    *listener
	send *ipc.ConnsSocket
	recv *ipc.ConnsSocket
	out  []ipc.Handoff // the dispatch batch being built; under Balancer.mu

	// maxFrame is the most fds of any frame sent here, which is the room
	// a reclaim needs; under Balancer.mu. It is the master's own count,
	// not the worker's page, which a worker could change.
	maxFrame int
}

func newLink(w *Worker, l *listener) (*link, error) {
	send, recv, err := ipc.ConnsPair()
	if err != nil {
		return nil, err
	}
	return &link{w: w, l: l, send: send, recv: recv, out: make([]ipc.Handoff, 0, ipc.MaxConns)}, nil
}

// close closes both ends. Anything still in the socket is closed with it,
// so callers reclaim first.
func (k *link) close() {
	_ = k.send.Close()
	_ = k.recv.Close()
}

// Worker is the master's handle on one worker process. Its methods are
// safe for concurrent use.
type Worker struct {
	b    *Balancer
	id   int
	pid  int
	slot *slot
	cmd  *exec.Cmd
	ctl  *ipc.Conn
	page *ipc.Page     // the worker's counter page; nil in unit tests
	ctr  *ipc.Counters // its counters (or a private set when page is nil)
	log  zerolog.Logger
	born time.Time

	gomaxprocs int // the GOMAXPROCS put in its environment, 0 if the user set it
	cpu        int // the CPU it is pinned to, or -1

	// Under Balancer.mu.
	state        State               // its life; from StateDisconnecting on its exit is expected
	health       health              // whether its behaviour lets it get connections
	links        map[*listener]*link // its conns socket for each listener it listens on
	blockedUntil time.Time           // conns socket full: no dispatch before this
	exited       chan struct{}       // closed once the process has been reaped

	// Connection counts, under Balancer.mu. What the worker read and
	// closed comes from its counter page, clamped by these.
	sent      uint64 // handed to it
	reclaimed uint64 // taken back unread from its sockets
	returned  uint64 // handed back by it (Return frames)

	// Stall detection, under Balancer.mu; see stall.go.
	lastReceived uint64    // its Received count at the last check
	idleTicks    int       // checks in a row with unread connections and no progress
	stalledSince time.Time // the first stall since it last made progress; zero after progress
	lastPong     time.Time

	listened time.Time   // when it first listened, under Balancer.mu; zero until then
	fleet    workerFleet // recycling and heartbeat state, under Balancer.mu; see recycle.go
}

// receivedLocked is the number of connections the worker has read, as its
// page says, at most what it could have read.
func (w *Worker) receivedLocked() uint64 {
	return min(w.ctr.Received.Load(), w.sent-w.reclaimed)
}

// unreadLocked is the number of connections waiting in its sockets.
func (w *Worker) unreadLocked() int {
	return int(w.sent - w.reclaimed - w.receivedLocked())
}

// activeLocked is the number of connections handed to the worker and not
// closed by it, unread ones included: the load LeastLoaded balances.
func (w *Worker) activeLocked() int {
	r := w.receivedLocked()
	held := r - min(w.returned, r)
	return int(w.sent-w.reclaimed-r) + int(held-min(w.ctr.Closed.Load(), held))
}

// heldLocked is the number of connections the worker read and has neither
// closed nor handed back, as far as its page says.
func (w *Worker) heldLocked() uint64 {
	r := w.receivedLocked()
	held := r - min(w.returned, r)
	return held - min(w.ctr.Closed.Load(), held)
}

// frameFDs is the most connections one frame to w may carry.
func (w *Worker) frameFDs() int {
	return min(max(int(w.ctr.FrameFDs.Load()), 1), ipc.MaxConns)
}

// routableLocked is the one answer to "may w get new connections now?".
func (w *Worker) routableLocked() bool {
	return w.state == StateListening && w.health == healthy
}

// watchedLocked is the one answer to "does the master still watch w's
// progress, and would it replace w in a reload?": it is alive, not
// leaving, and has not failed.
func (w *Worker) watchedLocked() bool {
	return w.state < StateDisconnecting && w.health != failed
}

// ID returns the worker's id: 1 for the first, counting up; a replacement
// gets a new id.
func (w *Worker) ID() int { return w.id }

// PID returns the worker's process id.
func (w *Worker) PID() int { return w.pid }

// State returns the worker's state.
func (w *Worker) State() State {
	w.b.mu.Lock()
	defer w.b.mu.Unlock()
	return w.state
}

// IsDead reports whether the worker process has exited.
func (w *Worker) IsDead() bool { return w.State() == StateDead }

// IsConnected reports whether the worker's control socket is open.
func (w *Worker) IsConnected() bool {
	w.b.mu.Lock()
	defer w.b.mu.Unlock()
	return w.state < StateDead && w.health != failed
}

// Send sends v, as JSON, to the worker. Messages arrive in the order sent.
// Connections travel on sockets of their own, so a message is not ordered
// with the connections handed off around it. A value larger than
// ipc.MaxMessage once marshalled returns an error matching
// ipc.ErrMessageTooLarge and nothing is sent.
func (w *Worker) Send(v any) error {
	p, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return w.sendRaw(p)
}

func (w *Worker) sendRaw(p []byte) error {
	if !w.IsConnected() {
		return ErrWorkerGone
	}
	if err := w.ctl.WriteUser(p); err != nil {
		if errors.Is(err, ipc.ErrMessageTooLarge) {
			return err
		}
		return fmt.Errorf("%w: %w", ErrWorkerGone, err)
	}
	return nil
}

// Kill sends sig to the worker process. A worker killed this way is
// restarted unless it was disconnecting.
func (w *Worker) Kill(sig os.Signal) error {
	select {
	case <-w.exited:
		return ErrWorkerGone
	default:
	}
	if w.cmd == nil { // a worker record of the unit tests, with no process
		return ErrWorkerGone
	}
	return w.cmd.Process.Signal(sig)
}

// Disconnect drains the worker gracefully: the master stops routing
// connections to it at once, its listeners close (Accept returns
// net.ErrClosed), it gets SIGTERM, and after Options.ShutdownTimeout
// SIGQUIT for its goroutine dump, then SIGKILL after DumpWait. It is not
// restarted: its slot stays empty.
func (w *Worker) Disconnect() {
	w.b.mu.Lock()
	w.slot.retired = true
	w.b.mu.Unlock()
	w.disconnect()
}

// disconnect is Disconnect without retiring the slot, for a reload's old
// worker (its slot has the replacement) and for Shutdown.
func (w *Worker) disconnect() {
	b := w.b
	b.mu.Lock()
	if w.state >= StateDisconnecting {
		b.mu.Unlock()
		return
	}
	w.state = StateDisconnecting
	b.routeLocked(w)
	b.notifyLocked()
	b.mu.Unlock()
	w.log.Info().Msg("disconnecting worker")
	b.wg.Add(2)
	go func() {
		defer b.wg.Done()
		// Every Conns frame was sent before this, so it is in the
		// worker's conns sockets when the worker reads this frame: it
		// lets Accept take them, and then closes its listeners. A worker that does not read is stopped by
		// the signals below, and the write ends when its socket closes.
		_ = w.ctl.WriteFrame(ipc.AppendDisconnect(nil), nil)
	}()
	go func() {
		defer b.wg.Done()
		// SIGTERM once its listeners are closed (each closing sends a
		// Return frame), so that the program's own shutdown does not
		// close connections still queued for Accept; at the latest after
		// listenersCloseTimeout.
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), listenersCloseTimeout)
		err := b.waitFor(ctx, func() bool { return len(w.links) == 0 || w.state == StateDead })
		cancel()
		if err != nil {
			w.log.Warn().Str("after", time.Since(start).String()).Msg("disconnecting worker: its listeners are still open; sending SIGTERM")
		} else {
			w.log.Debug().Str("after", time.Since(start).String()).Msg("disconnecting worker: listeners closed; sending SIGTERM")
		}
		_ = w.Kill(syscall.SIGTERM)
		timeout := b.drainTimeout()
		t := time.NewTimer(timeout)
		defer t.Stop()
		select {
		case <-w.exited:
		case <-t.C:
			w.log.Warn().Str("timeout", timeout.String()).Msg("worker did not drain in time; killing it")
			w.killHung("drain past the shutdown timeout")
		}
	}()
}

// abandon kills a worker that is not wanted, a reload's replacement that
// failed to come up; its slot is restarted only if that leaves it empty.
func (w *Worker) abandon() {
	w.b.mu.Lock()
	if w.state < StateDisconnecting {
		w.state = StateDisconnecting
	}
	w.b.routeLocked(w)
	w.b.mu.Unlock()
	_ = w.Kill(syscall.SIGKILL)
}

// fork starts a worker process in s.
func (b *Balancer) fork(s *slot) (*Worker, error) {
	return b.forkWith(s, b.startProcess)
}

// startFunc starts the process of worker id in s. It returns the started
// process, the master's end of its control socket and its page (which may
// be nil); on an error it has closed what it opened.
type startFunc func(id int, s *slot) (*exec.Cmd, *ipc.Conn, *ipc.Page, error)

// forkWith is fork with the process started by start: the seam through
// which a test starts a process of its own and plays the worker, as
// tableflip's env.newProc is. The rest, the master's record of the worker
// and its reader and reaper, is fork's.
func (b *Balancer) forkWith(s *slot, start startFunc) (*Worker, error) {
	b.mu.Lock()
	if b.stopping {
		b.mu.Unlock()
		return nil, ErrClosed
	}
	b.nextID++
	id := b.nextID
	b.mu.Unlock()

	cmd, ctl, page, err := start(id, s)
	if err != nil {
		return nil, err
	}
	w := b.newWorker(id, s, cmd, ctl, page)
	b.mu.Lock()
	b.workers = append(b.workers, w)
	b.stats.forked++
	// Shutdown may have begun while the process started: it will not be
	// in Shutdown's list, so it goes now. Shutdown waits for its exit.
	late := b.stopping
	if late {
		w.state = StateDisconnecting
	}
	b.notifyLocked()
	b.mu.Unlock()
	w.log.Info().Msg("worker started")
	if late {
		_ = cmd.Process.Signal(syscall.SIGKILL)
	}
	b.events.push(ForkEvent{Worker: w})
	readerDone := make(chan struct{})
	b.wg.Add(2)
	go func() {
		defer b.wg.Done()
		defer close(readerDone)
		b.readLoop(w)
	}()
	go func() {
		defer b.wg.Done()
		b.waitExit(w, readerDone)
	}()
	return w, nil
}

// startProcess is fork's startFunc: it re-executes b.path with the
// control socket and the page as fds 3 and 4.
func (b *Balancer) startProcess(id int, s *slot) (*exec.Cmd, *ipc.Conn, *ipc.Page, error) {
	ctl, remote, err := ipc.Socketpair()
	if err != nil {
		return nil, nil, nil, err
	}
	page, pageFile, err := ipc.NewPage()
	if err != nil {
		_ = ctl.Close()
		_ = remote.Close()
		return nil, nil, nil, err
	}
	cmd := exec.Command(b.path, b.args...)
	cmd.Env = append(os.Environ(), b.opts.Env...)
	cmd.Env = append(cmd.Env, s.env...)
	if n := b.gomaxprocsFor(s); n > 0 {
		cmd.Env = append(cmd.Env, "GOMAXPROCS="+strconv.Itoa(n))
	}
	cmd.Env = append(cmd.Env, ipc.EnvWorkerID+"="+strconv.Itoa(id), ipc.EnvControlFD+"="+strconv.Itoa(ipc.ControlFD),
		ipc.EnvPageFD+"="+strconv.Itoa(ipc.PageFD))
	cmd.Dir = b.opts.Dir
	cmd.Stdout = b.opts.Stdout
	cmd.Stderr = b.opts.Stderr
	cmd.ExtraFiles = []*os.File{remote, pageFile} // fds 3 and 4
	// If Stdout or Stderr is not an *os.File, Wait also waits for the
	// copying; a grandchild holding the pipe must not delay the reaping
	// (and the re-dispatch of what the worker never acked) for long.
	cmd.WaitDelay = 2 * time.Second
	// Own process group: a terminal's Ctrl-C reaches only the master,
	// which then drains the workers itself.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: b.cred}
	if cpu := b.cpus.cpuFor(s); cpu >= 0 {
		err = startOnCPU(cmd, cpu)
	} else {
		err = cmd.Start()
	}
	_ = remote.Close()
	_ = pageFile.Close()
	if err != nil {
		_ = ctl.Close()
		_ = page.Close()
		return nil, nil, nil, fmt.Errorf("balancer: starting worker %d: %w", id, err)
	}
	return cmd, ctl, page, nil
}

// newWorker makes the master's record of a started worker process.
func (b *Balancer) newWorker(id int, s *slot, cmd *exec.Cmd, ctl *ipc.Conn, page *ipc.Page) *Worker {
	w := &Worker{
		b:      b,
		id:     id,
		slot:   s,
		cmd:    cmd,
		ctl:    ctl,
		page:   page,
		born:   time.Now(),
		links:  make(map[*listener]*link),
		exited: make(chan struct{}),

		gomaxprocs: b.gomaxprocsFor(s),
		cpu:        b.cpus.cpuFor(s),
	}
	if page != nil {
		w.ctr = page.Counters()
	} else {
		w.ctr = new(ipc.Counters)
	}
	if cmd != nil && cmd.Process != nil {
		w.pid = cmd.Process.Pid
	}
	w.log = b.log.With().Int("worker", id).Int("pid", w.pid).Logger()
	return w
}

// waitExit reaps the worker, and then hands the connections it never
// read to other workers.
func (b *Balancer) waitExit(w *Worker, readerDone <-chan struct{}) {
	err := w.cmd.Wait()
	// Read what the worker sent before it died (returned fds) to the end:
	// closing the socket first would drop fds still in flight. Only a
	// grandchild that kept the control fd could delay the EOF.
	select {
	case <-readerDone:
	case <-time.After(exitDrainTimeout):
		w.log.Warn().Msg("control socket still open after the worker exited; closing it")
	}
	_ = w.ctl.Close()
	<-readerDone
	ev := ExitEvent{Worker: w, Code: -1}
	if ps := w.cmd.ProcessState; ps != nil {
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			ev.Signal = ws.Signal()
		} else {
			ev.Code = ps.ExitCode()
		}
	} else if err != nil {
		w.log.Error().Err(err).Msg("waiting for worker")
	}
	now := time.Now()
	uptime := now.Sub(w.born)

	b.mu.Lock()
	ev.ExitedAfterDisconnect = w.state == StateDisconnecting
	w.state = StateDead
	close(w.exited)
	for i, x := range b.workers {
		if x == w {
			b.workers = append(b.workers[:i:i], b.workers[i+1:]...)
			break
		}
	}
	// Take back what the dead worker never read, and serve it elsewhere.
	before := w.reclaimed
	for _, k := range w.links {
		b.dropLinkLocked(k)
	}
	redone := w.reclaimed - before
	ev.Active = w.activeLocked()
	// The page is read only under b.mu and only for workers in b.workers
	// or with links: neither holds now.
	last := new(ipc.Counters)
	last.Received.Store(w.ctr.Received.Load())
	last.Closed.Store(w.ctr.Closed.Load())
	w.ctr = last
	if w.page != nil {
		_ = w.page.Close()
	}
	if b.stats.exits == nil {
		b.stats.exits = make(map[string]uint64)
	}
	b.stats.exits[exitReason(ev)]++
	// A slot has one worker at a time, alive or starting: it is restarted
	// only if it is left empty (no replacement from a reload or a restart
	// is there) and was not retired. So a worker killed while its reload
	// replacement starts is not also restarted, and a replacement that
	// fails after its predecessor died still leaves the slot a worker.
	restart := !b.stopping && !w.slot.retired && !b.restarting[w.slot] && !b.slotFilledLocked(w.slot)
	var delay time.Duration
	gaveUp := false
	if restart {
		delay = w.backoffLocked(now)
		if gaveUp = b.crashLoopLocked(w.slot, now); gaveUp {
			restart = false
		} else {
			w.slot.restarts++
			b.stats.restarts++
			b.scheduleRestartLocked(w.slot, delay)
		}
	}
	b.notifyLocked()
	b.mu.Unlock()

	l := w.log.Info()
	if !ev.ExitedAfterDisconnect {
		l = w.log.Warn()
	}
	l = l.Int("code", ev.Code).Bool("after_disconnect", ev.ExitedAfterDisconnect).Str("uptime", uptime.Round(time.Millisecond).String())
	if ev.Signal != nil {
		l = l.Str("signal", ev.Signal.String())
	}
	if redone > 0 {
		l = l.Uint64("redispatched", redone)
	}
	l.Msg("worker exited")
	if restart {
		e := w.log.Warn()
		if w.slot.crashes >= 3 {
			e = w.log.Error().Bool("crash_loop", true)
		}
		e.Int("crashes", w.slot.crashes).Str("restart_in", delay.String()).Msg("worker died unexpectedly; restarting")
	}
	if gaveUp {
		b.logCrashLoop(w.slot)
	}
	b.events.push(DisconnectEvent{Worker: w})
	b.events.push(ev)
}

// scheduleRestartLocked forks a replacement into s after delay.
func (b *Balancer) scheduleRestartLocked(s *slot, delay time.Duration) {
	b.wg.Add(1)
	b.restarting[s] = true
	s.restart = time.AfterFunc(delay, func() {
		defer b.wg.Done()
		b.restart(s)
	})
}

// cancelRestartsLocked stops every scheduled restart, for Shutdown.
func (b *Balancer) cancelRestartsLocked() {
	for s := range b.restarting {
		if s.restart.Stop() {
			b.wg.Done()
		}
		delete(b.restarting, s)
	}
}

// slotFilledLocked reports whether s has a worker that is alive and not
// leaving.
func (b *Balancer) slotFilledLocked(s *slot) bool {
	for _, w := range b.workers {
		if w.slot == s && w.state < StateDisconnecting {
			return true
		}
	}
	return false
}

// restart forks a replacement into s, after its backoff, unless the slot
// was filled or retired meanwhile.
func (b *Balancer) restart(s *slot) {
	b.mu.Lock()
	delete(b.restarting, s)
	skip := b.stopping || s.retired || b.slotFilledLocked(s)
	b.mu.Unlock()
	if skip {
		return
	}
	if _, err := b.fork(s); err != nil && !errors.Is(err, ErrClosed) {
		b.log.Error().Err(err).Msg("restarting worker failed; retrying")
		b.mu.Lock()
		gaveUp := false
		if !b.stopping {
			delay := s.backoffLocked()
			if gaveUp = b.crashLoopLocked(s, time.Now()); !gaveUp {
				b.scheduleRestartLocked(s, delay)
			}
		}
		b.mu.Unlock()
		if gaveUp {
			b.logCrashLoop(s)
		}
	}
}

// listenerByIDLocked returns the listener with id, or nil.
func (b *Balancer) listenerByIDLocked(id uint32) *listener {
	if id == 0 || int(id) > len(b.listeners) {
		return nil
	}
	return b.listeners[id-1]
}

// Active returns the number of connections handed to the worker and not
// yet closed by it, those still unread included: the load LeastLoaded
// balances.
func (w *Worker) Active() int {
	w.b.mu.Lock()
	defer w.b.mu.Unlock()
	return w.activeLocked()
}

// exitReason classifies an exit for Stats.Exits.
func exitReason(ev ExitEvent) string {
	switch {
	case ev.ExitedAfterDisconnect:
		return "disconnect"
	case ev.Signal != nil:
		return "signal"
	default:
		return "code"
	}
}
