// Package fuzzctl is the input format that the control-socket fuzzers
// share, balancer's FuzzMasterControl and worker's FuzzWorkerControl, and
// the real fds their frames carry. It is for tests only.
//
// An input is a sequence of ops, each
//
//	h      1 byte
//	n      2 bytes, little-endian
//	frame  n bytes, cut short at the end of the input
//
// The frame goes out raw, as one message, with h&3 fds attached (3 means
// none). Bits 2-3 and 4-5 of h choose each fd (see Kind). Bits 6 and 7
// are each fuzzer's own: what an op is other than a frame, or where its
// frame goes.
package fuzzctl
