package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/balancer"
	"github.com/handoff-go/handoff/worker"
	"github.com/pires/go-proxyproto"
	"go.uber.org/goleak"
)

// TestMain is also the workers' main: the balancer re-executes this test
// binary, and a worker serves instead of running the tests.
func TestMain(m *testing.M) {
	if worker.IsWorker() {
		os.Exit(serveWorker(os.Getenv(envListen), strings.Split(os.Getenv(envTrust), ",")))
	}
	goleak.VerifyTestMain(m)
}

// startTestMaster runs a master with two workers on a loopback port, whose
// PROXY headers are trusted from 127.0.0.1 only.
func startTestMaster(t *testing.T) (*balancer.Balancer, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, addr, err := startMaster(ctx, "127.0.0.1:0", []string{"127.0.0.1/32"}, 2, []string{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return b, addr.String()
}

// get sends one HTTP request over a new connection from local (nil: any
// address), after header, and returns the body.
func get(t *testing.T, addr string, local net.Addr, header []byte) (string, error) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: local}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	req := append(append([]byte(nil), header...), "GET / HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n"...)
	if _, err := c.Write(req); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, body)
	}
	return strings.TrimSpace(string(body)), err
}

func v2Header(t *testing.T, src, dst string) []byte {
	t.Helper()
	s, err := net.ResolveTCPAddr("tcp", src)
	if err != nil {
		t.Fatal(err)
	}
	d, err := net.ResolveTCPAddr("tcp", dst)
	if err != nil {
		t.Fatal(err)
	}
	h := proxyproto.HeaderProxyFromAddrs(2, s, d)
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestHandlerSeesTheProxiedClientAddress(t *testing.T) {
	b, addr := startTestMaster(t)
	// The addresses in the headers are documentation ranges: they are
	// only claimed, no packet goes there.
	tests := []struct {
		name    string
		local   net.Addr // where the connection comes from
		header  []byte
		want    string // the handler's r.RemoteAddr; "" for the loopback client itself
		wantErr bool
	}{
		{name: "v1 tcp4 from the balancer", header: []byte("PROXY TCP4 203.0.113.7 127.0.0.1 51234 80\r\n"), want: "203.0.113.7:51234"},
		{name: "v1 tcp6 from the balancer", header: []byte("PROXY TCP6 2001:db8::1 ::1 40000 443\r\n"), want: "[2001:db8::1]:40000"},
		{name: "v2 from the balancer", header: v2Header(t, "198.51.100.20:6000", "127.0.0.1:80"), want: "198.51.100.20:6000"},
		{name: "no header from the balancer", want: ""},
		{name: "no header from another peer", local: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, want: ""},
		{name: "header from another peer is refused", local: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)},
			header: []byte("PROXY TCP4 203.0.113.9 127.0.0.1 1 80\r\n"), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for i := 0; i < 4; i++ { // both workers, round-robin
				got, err := get(t, addr, tt.local, tt.header)
				if tt.wantErr {
					if err == nil {
						t.Fatalf("request %d: answered %q, want the connection refused", i, got)
					}
					continue
				}
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				want := tt.want
				if want == "" { // the client's own address
					host, _, _ := net.SplitHostPort(got)
					want = "127.0.0.1"
					if tt.local != nil {
						want = tt.local.(*net.TCPAddr).IP.String()
					}
					if host != want {
						t.Fatalf("request %d: handler saw %q, want host %s", i, got, want)
					}
					continue
				}
				if got != want {
					t.Fatalf("request %d: handler saw %q, want %q", i, got, want)
				}
			}
		})
	}
	// Closing a wrapped conn closes the worker's conn, which reports the
	// close: the master's load count returns to zero.
	deadline := time.Now().Add(10 * time.Second)
	for {
		active, dispatched := 0, uint64(0)
		for _, w := range b.Workers() {
			s := w.Stats()
			active += s.Active
			dispatched += s.Dispatched
		}
		if active == 0 && dispatched >= 24 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("master sees %d active of %d dispatched connections, want 0", active, dispatched)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Example_proxyListener wraps a worker's listener so that an HTTP server
// behind HAProxy's send-proxy sees the clients' addresses.
func Example_proxyListener() {
	ln, err := worker.Listen("tcp", ":8080")
	if err != nil {
		panic(err)
	}
	pl, err := proxyListener(ln, []string{"10.0.0.0/8"}) // the balancers
	if err != nil {
		panic(err)
	}
	_ = http.Serve(pl, remoteAddrHandler())
}
