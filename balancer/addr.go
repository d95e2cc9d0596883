package balancer

import (
	"net"
	"path/filepath"
)

// Serves reports whether a listening socket bound at bound is the one that
// a request to listen on network and address means, as the balancer
// matches such requests with the sockets it has open (after the address
// as first written): a Unix socket by its path; a TCP one by port and IP,
// where an address without a host (":80") means a socket bound to any
// unspecified address, and for "tcp" "0.0.0.0" and "::" are alike, since
// Go binds both as the dual-stack wildcard. A TCP address with port 0, or
// whose host does not resolve, means no open socket: it asks for a new
// one. The handoff CLI picks with it which socket that systemd passed
// serves a --listen.
func Serves(bound net.Addr, network, address string) bool {
	return serves(bound, network, address, resolve(network, address))
}

// resolve returns the TCP address a request names, for matching it with
// an open listener, or nil. It may ask DNS.
func resolve(network, address string) *net.TCPAddr {
	if network == "unix" {
		return nil
	}
	a, err := net.ResolveTCPAddr(network, address)
	if err != nil || a.Port == 0 {
		return nil
	}
	return a
}

// serves is Serves with the request's address already resolved.
func serves(bound net.Addr, network, address string, resolved *net.TCPAddr) bool {
	switch a := bound.(type) {
	case *net.UnixAddr:
		return network == "unix" && filepath.Clean(a.Name) == filepath.Clean(address)
	case *net.TCPAddr:
		if resolved == nil || resolved.Port != a.Port {
			return false
		}
		switch ip := resolved.IP; {
		case ip == nil:
			return a.IP.IsUnspecified()
		case ip.Equal(a.IP):
			return true
		default:
			return network == "tcp" && ip.IsUnspecified() && a.IP.IsUnspecified()
		}
	}
	return false
}
