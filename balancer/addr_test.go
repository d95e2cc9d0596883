package balancer_test

import (
	"net"
	"testing"

	"github.com/handoff-go/handoff/balancer"
)

func TestServes(t *testing.T) {
	t.Parallel()
	tcp := func(s string) net.Addr {
		a, err := net.ResolveTCPAddr("tcp", s)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	unix := &net.UnixAddr{Name: "/run/h.sock", Net: "unix"}
	tests := []struct {
		name             string
		bound            net.Addr
		network, address string
		want             bool
	}{
		{name: "same ip and port", bound: tcp("127.0.0.1:80"), network: "tcp", address: "127.0.0.1:80", want: true},
		{name: "other port", bound: tcp("127.0.0.1:80"), network: "tcp", address: "127.0.0.1:81"},
		{name: "other ip", bound: tcp("127.0.0.1:80"), network: "tcp", address: "127.0.0.2:80"},
		{name: "port only, wildcard", bound: tcp("[::]:80"), network: "tcp", address: ":80", want: true},
		{name: "port only, bound ip", bound: tcp("127.0.0.1:80"), network: "tcp", address: ":80"},
		{name: "ipv4 wildcard, ipv6 wildcard", bound: tcp("[::]:80"), network: "tcp", address: "0.0.0.0:80", want: true},
		{name: "tcp6 wildcard, ipv4 wildcard", bound: tcp("0.0.0.0:80"), network: "tcp6", address: "[::]:80"},
		{name: "port 0", bound: tcp("127.0.0.1:0"), network: "tcp", address: "127.0.0.1:0"},
		{name: "unix path", bound: unix, network: "unix", address: "/run/x/../h.sock", want: true},
		{name: "other path", bound: unix, network: "unix", address: "/run/i.sock"},
		{name: "unix request, tcp socket", bound: tcp("127.0.0.1:80"), network: "unix", address: "127.0.0.1:80"},
		{name: "tcp request, unix socket", bound: unix, network: "tcp", address: "/run/h.sock"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := balancer.Serves(tt.bound, tt.network, tt.address); got != tt.want {
				t.Errorf("Serves(%v, %q, %q) = %v, want %v", tt.bound, tt.network, tt.address, got, tt.want)
			}
		})
	}
}
