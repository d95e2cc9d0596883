//go:build !linux

package worker

import (
	"errors"
	"net"
	"testing"
)

// Outside Linux the package acts as in a process that no master started.
func TestOutsideLinux(t *testing.T) {
	if IsWorker() || ID() != 0 || Messages() != nil {
		t.Errorf("IsWorker %v, ID %d, Messages %v; want false, 0, nil", IsWorker(), ID(), Messages())
	}
	if err := Send("hello"); !errors.Is(err, ErrNotWorker) {
		t.Errorf("Send: %v, want ErrNotWorker", err)
	}
	ln, err := Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, ok := ln.(*net.TCPListener); !ok {
		t.Errorf("Listen returned a %T, want net.Listen's *net.TCPListener", ln)
	}
	if _, err := (&Listener{}).Accept(); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("Listener.Accept: %v, want errors.ErrUnsupported", err)
	}
}
