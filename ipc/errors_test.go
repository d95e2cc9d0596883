//go:build linux

package ipc_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/handoff-go/handoff/ipc"
)

// The protocol's sentinels are all of one type, *ipc.ProtocolError, so
// that a reader tells "the peer broke the protocol" with one errors.As;
// errors.Is still matches each one through the details reads wrap it in.
func TestProtocolErrorIsOneType(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		err      error
		protocol bool
	}{
		{name: "malformed", err: ipc.ErrMalformed, protocol: true},
		{name: "version", err: ipc.ErrVersion, protocol: true},
		{name: "unknown kind", err: ipc.ErrUnknownKind, protocol: true},
		{name: "fds", err: ipc.ErrFDs, protocol: true},
		{name: "fragment", err: ipc.ErrFragment, protocol: true},
		{name: "message too large", err: ipc.ErrMessageTooLarge, protocol: true},
		{name: "fds lost", err: ipc.ErrFDsLost, protocol: false},
		{name: "busy", err: ipc.ErrBusy, protocol: false},
		{name: "network", err: ipc.ErrNetwork, protocol: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			wrapped := fmt.Errorf("%w: details", tt.err)
			var pe *ipc.ProtocolError
			if got := errors.As(wrapped, &pe); got != tt.protocol {
				t.Errorf("errors.As(%v, *ProtocolError) = %v, want %v", wrapped, got, tt.protocol)
			}
			if got := ipc.IsProtocolError(wrapped); got != tt.protocol {
				t.Errorf("IsProtocolError(%v) = %v, want %v", wrapped, got, tt.protocol)
			}
			if !errors.Is(wrapped, tt.err) {
				t.Errorf("errors.Is(%v, %v) = false", wrapped, tt.err)
			}
		})
	}
}

func TestCheckNetwork(t *testing.T) {
	t.Parallel()
	for _, n := range []string{"tcp", "tcp4", "tcp6", "unix"} {
		if err := ipc.CheckNetwork(n); err != nil {
			t.Errorf("CheckNetwork(%q) = %v", n, err)
		}
	}
	for _, n := range []string{"", "udp", "unixgram", "unixpacket", "ip4:icmp"} {
		if err := ipc.CheckNetwork(n); !errors.Is(err, ipc.ErrNetwork) {
			t.Errorf("CheckNetwork(%q) = %v, want ErrNetwork", n, err)
		}
	}
}
