// Package proctest holds the helpers that the tests of balancer, the
// handoff command and integration_test share for the processes they run:
// a TestMain that builds a binary and checks for leaked goroutines, a
// buffer for a process's output, and a look at /proc for a process's
// state and children. It is for tests only.
package proctest
