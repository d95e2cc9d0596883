// Command handoff runs a handoff master: it listens, starts one worker
// process per CPU and hands every accepted connection to one of them.
//
// Without a COMMAND the workers run the built-in demo, an HTTP server that
// answers "hello world". With one, every worker runs that program, which
// uses the github.com/handoff-go/handoff/worker package.
//
//	handoff [flags] [-- COMMAND [ARG...]]
//
// Signals: SIGHUP replaces every worker with no failed request; SIGUSR2
// replaces the master itself and all its workers with the binary now on
// disk, with no failed request either; SIGTERM or SIGINT drains the
// workers (after --shutdown-delay) and exits 0; a second SIGINT or SIGTERM
// kills them at once.
//
// For operations: --admin serves Prometheus metrics, a JSON list of the
// workers and a health check; under systemd the master takes its sockets
// from socket activation and reports its state with sd_notify. See
// handoff.service and handoff.socket beside this file.
//
// The master needs Linux: built for another OS, handoff only says so and
// exits 1.
package main
