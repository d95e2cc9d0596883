// Package loadtest is the HTTP load that the tests of balancer and the
// handoff command put on workers serving testworker.Handler while they
// reload, upgrade, or lose workers, to count the requests that failed. It
// is for tests only.
package loadtest
