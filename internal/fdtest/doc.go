// Package fdtest holds the fd helpers that the tests of scm, ipc, worker
// and balancer share: a pipe whose write end proves that every copy of an
// fd was closed, a count of this process's open fds, and a run at a low
// fd limit. It is for tests only.
//
// Tests that count fds, or that lower the fd limit, must not run in
// parallel with other tests of their package: another test's fds would
// be counted, or would fail to open.
package fdtest
