// Command compat is the server of handoff's compatibility suite: real
// servers behind handoff's worker listener, driven by real clients across
// a rolling restart. Each worker runs it; it serves what its flags ask
// for, each on its own worker.Listen address:
//
//   - --http: HTTP/1.1 and h2c (Go's native unencrypted HTTP/2,
//     http.Protocols) through worker.ServeConfig.Serve, with /echo,
//     /file/NAME (http.ServeFile, which sends with sendfile(2) through
//     the handed-off connection), /copy/NAME (the same through user
//     space, the control for the sendfile check) and /ws, a WebSocket
//     echo (github.com/coder/websocket) whose OnDrain hook sends every
//     open WebSocket a close frame 1001 (going away);
//   - --tls: the same handler over tls.NewListener on the handed-off
//     listener, with h2 by ALPN;
//   - --grpc: grpc-go's grpc.Server.Serve on the handed-off listener,
//     with a unary and a server-streaming method and the standard health
//     service, stopped with GracefulStop when the listener closes (the
//     master's Disconnect) or on SIGTERM;
//   - --fasthttp: github.com/valyala/fasthttp's Server.Serve on the
//     handed-off listener, unchanged, drained so that keep-alive clients
//     close first (fasthttp.go); it serves alone.
//
// Every answer names the worker's pid (header X-Worker-Pid, gRPC header
// metadata worker-pid). Run it under the CLI; the worker command follows
// "--", and each address it serves is one the master listens on:
//
//	go build -o /tmp/compat . && go build -C ../.. -o /tmp/handoff ./cmd/handoff
//	/tmp/handoff --pid-file /tmp/handoff.pid --listen 127.0.0.1:8080 --listen 127.0.0.1:8443 --listen 127.0.0.1:9090 \
//	    -- /tmp/compat --http 127.0.0.1:8080 --tls 127.0.0.1:8443 --grpc 127.0.0.1:9090
//	curl --http2-prior-knowledge -i 'http://127.0.0.1:8080/echo?size=10'
//	curl -k --http2 -i 'https://127.0.0.1:8443/echo?size=10'
//	kill -HUP $(cat /tmp/handoff.pid)   # a rolling restart
//
// Its tests (main_test.go) build both binaries, start the CLI with two
// workers on a loopback port for each case, send SIGHUP while the case's
// clients run, and require 0 failures; see README.md.
//
// This is a module of its own, so that the library's go.mod does not
// take on grpc-go, coder/websocket and fasthttp.
package main
