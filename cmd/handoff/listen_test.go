//go:build linux

package main

import (
	"strings"
	"testing"
)

func TestParseListen(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in                string
		wantName, network, addr string
		wantErr                 string
	}{
		{name: "host and port", in: "127.0.0.1:80", network: "tcp", addr: "127.0.0.1:80"},
		{name: "port only", in: ":8000", network: "tcp", addr: ":8000"},
		{name: "ipv6", in: "[::1]:80", network: "tcp", addr: "[::1]:80"},
		{name: "unix", in: "unix:/run/h.sock", network: "unix", addr: "/run/h.sock"},
		{name: "unix path with =", in: "unix:/tmp/a=b.sock", network: "unix", addr: "/tmp/a=b.sock"},
		{name: "named tcp", in: "web=:80", wantName: "web", network: "tcp", addr: ":80"},
		{name: "named unix", in: "api=unix:/run/api.sock", wantName: "api", network: "unix", addr: "/run/api.sock"},
		{name: "named with dots", in: "web.https=[::]:443", wantName: "web.https", network: "tcp", addr: "[::]:443"},
		{name: "empty name", in: "=:80", wantErr: "empty NAME"},
		{name: "no port", in: "8000", wantErr: "HOST:PORT"},
		{name: "named without port", in: "web=8000", wantErr: "HOST:PORT"},
		{name: "empty unix path", in: "unix:", wantErr: "path"},
		{name: "named empty unix path", in: "web=unix:", wantErr: "path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := parseListen(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseListen(%q) = %+v, %v; want an error mentioning %q", tt.in, s, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.name != tt.wantName || s.network != tt.network || s.address != tt.addr || s.text != tt.in {
				t.Errorf("parseListen(%q) = %+v, want name %q %s %q", tt.in, s, tt.wantName, tt.network, tt.addr)
			}
		})
	}
}
