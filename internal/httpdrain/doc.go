// Package httpdrain drains an http.Server without failing a request: the
// way a handoff worker (the demo worker, the admin server, the test
// worker) stops serving.
package httpdrain
