// Command handoff-bench measures handoff's master-side dispatch side by
// side with what a user would otherwise pick, in one run on one machine.
//
//	cd cmd/handoff-bench && go run . [-duration 10s] [-workers N] [-out DIR]
//
// It is a module of its own, so that its plotting dependencies stay out of
// the library's go.mod; a replace directive in its go.mod builds it against
// the library in ../.., as checked out.
//
// Servers, each with -workers worker processes and the same handler (it
// answers "hello world\n", and spins the CPU for ?burn=DURATION):
//
//	single       one Go process, net/http, GOMAXPROCS=workers
//	reuseport    N Go processes, each with its own SO_REUSEPORT listener
//	handoff-rr   a handoff master (balancer.RoundRobin) and N workers
//	handoff-ll   the same with balancer.LeastLoaded
//	handoff-lr   the same with balancer.LeastRequests
//	node-rr      Node.js cluster, NODE_CLUSTER_SCHED_POLICY=rr   (if node is on PATH)
//	node-none    Node.js cluster, NODE_CLUSTER_SCHED_POLICY=none (if node is on PATH)
//
// Every Go server is this binary re-executed in a role (-role=single,
// reuseport, master or worker), so the handler is literally the same code.
// Workers of the multi-process servers run with GOMAXPROCS=1; a handoff
// worker serves through worker.Serve, which reports its requests in
// flight to the master (what handoff-lr balances). The handoff master is
// a child process of its own, so its CPU is measured apart from
// the bench and from the load generator.
//
// Workloads: keep-alive; new-conn (a new connection per request, wrk's
// -H "Connection: close"); new-conn-c1 and new-conn-c4 (the same with 1
// and 4 client connections, so that batching cannot hide the master's
// wakeups); skewed (half the connections keep alive, half
// send Connection: close, and a tenth of all requests burn -burn of CPU).
// The load comes from wrk, which must be on PATH (the skewed mix is its Lua
// script). Within each workload the servers run one after another (rotated every round), so
// drift hits all of them alike.
//
// Each server runs as a process group the bench started; they are stopped
// by pid (SIGTERM, then SIGKILL) on every exit path, Ctrl-C included. Each
// worker process serves its request count on a Unix socket of its own in a
// per-run directory; the bench reads the counts, and the worker pids, from
// there before and after the measured run, and reads utime+stime from
// /proc/PID/stat at the same moments. With perf on PATH it also counts
// syscalls and context switches over exactly the measured run, with one
// perf stat on the master and one on those worker pids (perfstat.go):
// each is a child the bench started, stopped by SIGINT to its pid.
//
// Output, in -out: results.md (the table, the ratios issue 6 set goals
// for, and a description of the machine and the load), results.json,
// chart.png and chart.svg, and logs/ with each server's stderr. The bench
// measures the ratios and does not grade them: README.md has the goals.
//
// It needs Linux, as the master does: built for another OS, it only says
// so and exits 1.
package main
