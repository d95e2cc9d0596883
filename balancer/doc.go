// Package balancer is the handoff master: it owns the listening sockets,
// accepts every connection, and hands each one's fd to a worker process
// over its control socket (SCM_RIGHTS), choosing the worker with a
// [Policy]. It also runs the workers' lifecycle: start, restart with
// backoff after a crash, graceful disconnect, rolling restart and
// shutdown, as Node's cluster module does for its primary.
//
// The master needs Linux (SCM_RIGHTS over SOCK_SEQPACKET with
// MSG_CMSG_CLOEXEC, accept4, memfd_create). On every other OS the package
// has the same API, so that a program that can run as a master builds
// there, but [New] returns an error matching [errors.ErrUnsupported]
// (after [Options.Validate]'s, for options that mean nothing). The
// program can then serve alone, with worker.Listen, which is net.Listen
// outside a master.
//
// # Lifecycle
//
//	b, _ := balancer.New(balancer.Options{Policy: balancer.LeastLoaded})
//	b.Listen("tcp", ":8000") // opened before any worker starts
//	b.Start()                // Options.Workers processes
//	...
//	b.Reload(ctx)            // replace every worker, nothing lost (SIGHUP)
//	b.Shutdown(ctx)          // stop accepting, drain, wait (SIGTERM)
//
// or, with the handoff command's signal handling, in one call:
//
//	b.Run(ctx) // Start; SIGHUP reloads, SIGTERM/SIGINT shut down, a second kills
//
// By default each worker re-executes the current binary with the same
// arguments; the program tells the two roles apart with worker.IsWorker.
// Workers also make the master open addresses with worker.Listen.
//
// A worker's State is its life: starting, online, listening,
// disconnecting (from then on its exit is expected), dead. Beside it, its
// health says what the master makes of its behaviour: healthy, stalled
// (routed around until it answers a ping) or failed (it broke the
// protocol, a send failed for good, it stayed stalled and silent, or it
// left a heartbeat ping unanswered; it is killed). Each question has one predicate: routableLocked (may it get
// connections?), watchedLocked (is its progress watched, would a reload
// replace it?) and IsConnected.
//
// Each worker has a slot, which keeps one worker at a time, alive or
// starting: a worker that exits is restarted, with backoff, only if that
// leaves its slot empty (no reload replacement is there) and Disconnect
// did not retire it. With Options.MaxRestarts, a slot in a crash loop
// stays empty until the next Reload (crashloop.go). The master keeps a reserve of fds for itself (a
// quarter of its limit, 8 to 64): it stops accepting before its table is
// that full, so a flood waits in the kernel's backlog and a worker can
// always be restarted.
//
// # The path of a connection
//
// One goroutine per listener accepts with raw accept4 until EAGAIN (no
// epoll registration of accepted fds, no goroutine per connection), with
// SOCK_NONBLOCK and the client's sockaddr, which travels with the fd. The
// Policy picks a worker for each fd, seeing its client's address (decoded
// from that sockaddr, without a syscall) and each candidate's load, and
// each worker gets its batch in one sendmsg on its conns socket for that
// listener (see package ipc); then the master closes its copies, one
// close_range per run of fd numbers.
// That is the whole per-connection cost in the master: no ack, no copy
// kept, no close later. Socket options (TCP_NODELAY, keep-alive,
// TCP_USER_TIMEOUT) are set once on the listener, and accepted sockets
// inherit them.
//
// The failure half is reclaim: the master keeps its own copy of each
// worker's end of its conns sockets, and reads back what the worker never
// read when
//
//   - the worker dies: its unread connections go to other workers;
//   - the worker stalls (has unread connections and reads none for three
//     10ms checks, by its counter page): it is routed around at once, and
//     routed again when it answers a ping with an Accept waiting; one that
//     answers nothing for Options.HandoffTimeout is killed;
//   - the worker closes the listener: what it read and never accepted it
//     hands back in a Return frame, and the rest is reclaimed;
//   - a send fails (full socket, ETOOMANYREFS): the batch goes to other
//     workers.
//
// While no worker can take a connection, it waits in a queue bounded by
// Options.MaxPending and is dispatched as soon as one can; so does a new
// connection past Options.MaxConns, until others close (admission.go). Each worker
// counts the connections it read and closed on its counter page, which
// is the load LeastLoaded balances, and the master's measure of progress;
// one that serves through worker.Serve also counts there its connections
// with a request in flight, which LeastRequests balances.
//
// # Fd ownership
//
// Each listening socket is owned by its accept goroutine, which closes it
// at Shutdown after a last pass over the backlog. An accepted fd is owned
// by the dispatch state (under Balancer.mu) until a sendmsg carries it,
// when the master closes its copy; from then on it belongs to whoever
// reads its frame: the worker, or the master by reclaim, which owns it
// again. A connection the pending queue cannot hold is closed. Each
// worker's control socket and counter page are owned by its Worker and
// closed once the process has been reaped; each conns socket (both ends)
// by its link, closed once it has been read empty (a link that could not
// be emptied for lack of fd room is kept and retried).
//
// # Locking
//
// One mutex, Balancer.mu, guards the balancer, every Worker's fields
// marked so, every listener's candidate list and scratch space, and the
// stats. Nothing blocks while it is held: sends and reclaims are
// non-blocking, pings use TryWriteFrame, and process starts, binds and
// waits happen outside it. Helpers that need it end in Locked.
//
// Reload holds reloadMu, so that one rolling restart runs at a time, and
// takes mu under it, never the other way round. The recycler takes
// reloadMu too, with TryLock, so that it never recycles during a Reload
// and a Reload waits for its one recycling in progress. The event queue has a
// mutex of its own, never held with mu.
//
// # Goroutines
//
// Each has one owner and ends in one known way; Shutdown joins them all
// before it returns.
//
//   - One accept loop per listener, started by Listen or Adopt; it ends at
//     Shutdown, after a last pass over the backlog, and closes the
//     listener's done channel, which Shutdown waits for before it drains
//     the workers (so that nothing accepted is left unserved).
//   - Per worker, a control reader (readLoop), which ends when the control
//     socket closes, and a waiter (waitExit), which reaps the process,
//     closes the control socket and counter page, and reclaims what the
//     worker never read. On Disconnect, one goroutine writes the
//     Disconnect frame and one sends SIGTERM and, after ShutdownTimeout,
//     SIGQUIT then SIGKILL (hung.go); it ends when the process has exited.
//     All four are counted in Balancer.wg.
//   - For a worker the heartbeat or the stall check found hung, one
//     goroutine that sends SIGQUIT, waits for the goroutine dump up to
//     DumpWait, and sends SIGKILL; it ends within DumpWait.
//   - A restart timer per slot waiting to restart, also in wg; Shutdown
//     cancels those not yet run.
//   - Timers that run under mu and never block: the pending queue's
//     retry, the admission retry (admission.go), the stall check
//     (stall.go) and, with Options.Heartbeat, the heartbeat
//     (heartbeat.go), stopped at Shutdown.
//   - With Options.MaxRequests, MaxLifetime or MaxMemory, the recycler
//     (recycle.go), started by Start and counted in wg: it replaces one
//     due worker at a time, as Reload does, and ends at Shutdown.
//   - The event queue's one goroutine, which calls Options.OnEvent; it
//     ends when Shutdown closes the queue and the queue is empty.
//   - Reload's replacements, one per worker replaced at once, joined by
//     Reload itself; Run's reload and shutdown, joined by Run.
//
// # Events
//
// Options.OnEvent receives ForkEvent, OnlineEvent, ListeningEvent,
// DisconnectEvent, ExitEvent and MessageEvent, in order, on one goroutine
// of the balancer's; see [Event].
package balancer
