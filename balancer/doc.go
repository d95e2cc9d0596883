// Package balancer is the handoff master: it owns the listening sockets,
// accepts every connection, and hands each one's fd to a worker process
// over its control socket (SCM_RIGHTS), choosing the worker with a
// [Policy]. It also runs the workers' lifecycle: start, restart with
// backoff after a crash, graceful disconnect, rolling restart and
// shutdown, as Node's cluster module does for its primary.
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
// By default each worker re-executes the current binary with the same
// arguments; the program tells the two roles apart with worker.IsWorker.
// Workers also make the master open addresses with worker.Listen.
//
// # The path of a connection
//
// One goroutine per listener accepts with raw accept4 until EAGAIN (no
// epoll registration of accepted fds, no goroutine per connection), then
// the Policy picks a worker for each fd and each worker gets its batch in
// one sendmsg of up to 253 fds. The master keeps its own copy of every fd
// until the worker acknowledges it; the worker acks as soon as the fd is
// queued for Accept. So:
//
//   - a worker that dies before acking: its unacked connections go to
//     other workers, once the master has seen it exit;
//   - a worker that stops acking for Options.HandoffTimeout: it is killed
//     first, and then the same happens;
//   - no worker can take a connection: it waits in a queue bounded by
//     Options.MaxPending, and is dispatched as soon as one can;
//   - a failed sendmsg (full socket, dead worker): the batch goes to
//     other workers.
//
// Workers report closed connections in batches, which is the load that
// LeastLoaded balances.
//
// # Fd ownership
//
// Each listening socket is owned by its accept goroutine, which closes it
// at Shutdown after a last pass over the backlog. Each accepted fd is owned
// by the master's dispatch state (under one mutex) until the worker acks
// it, or is closed if it is dropped. Each worker's control socket is owned
// by its Worker and closed once the process has been reaped.
//
// # Events
//
// Options.OnEvent receives ForkEvent, OnlineEvent, ListeningEvent,
// DisconnectEvent, ExitEvent and MessageEvent, in order, on one goroutine
// of the balancer's; see [Event].
package balancer
