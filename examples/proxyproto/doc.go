// Command proxyproto shows that a handoff worker's listener composes with
// github.com/pires/go-proxyproto: behind an L4 load balancer that sends
// the PROXY protocol (HAProxy's send-proxy or send-proxy-v2, an AWS NLB,
// ...), handlers see the real client's address in r.RemoteAddr instead of
// the balancer's.
//
//	go run ./examples/proxyproto --listen 127.0.0.1:8080 --trust 127.0.0.1/32
//	printf 'PROXY TCP4 203.0.113.7 127.0.0.1 51234 8080\r\nGET / HTTP/1.0\r\n\r\n' | nc 127.0.0.1 8080
//
// answers "203.0.113.7:51234". One binary is both the master and its
// workers, as with Node's cluster.fork(): the master re-executes it, and
// worker.IsWorker tells the roles apart.
//
// Only the peers in --trust may send a PROXY header; from any other peer a
// header is refused, so a client cannot claim another address. Put the
// balancer's addresses there.
package main
