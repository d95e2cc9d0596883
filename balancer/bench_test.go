//go:build linux

package balancer_test

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"

	"github.com/handoff-go/handoff/balancer"
)

// BenchmarkHandoffRoundTrip: one full handoff per op, through a real
// worker process: connect, the master accepts and hands the fd over, the
// worker's http.Server answers "GET /", the client reads and closes.
func BenchmarkHandoffRoundTrip(b *testing.B) {
	c := startCluster(b, 1, balancer.Options{})
	c.waitListening(b, 1)
	req := []byte("GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
	b.ReportAllocs()
	for b.Loop() {
		conn, err := net.DialTimeout("tcp", c.addr, 5*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := conn.Write(req); err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, bufio.NewReader(conn)); err != nil {
			b.Fatal(err)
		}
		conn.Close()
	}
}
