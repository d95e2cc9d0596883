// Package testworker is the worker program of handoff's multi-process
// tests. A test binary calls Main first thing in its TestMain; when the
// binary was re-executed by a master (worker.IsWorker), Main runs the
// worker chosen by the environment variable EnvMode and exits; otherwise
// it returns at once.
//
// The modes:
//
//	http    serve Handler on every address in EnvListen (default), echo
//	        every message back to the master, drain on SIGTERM
//	exit    exit at once with the code in EnvExitCode
//	busy    listen, then spin in a busy loop forever
//	report  try worker.Listen on each address in EnvListen and send a
//	        ListenResult per address to the master, then serve like http
package testworker
