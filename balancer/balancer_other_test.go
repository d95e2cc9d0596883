//go:build !linux

package balancer

import (
	"errors"
	"testing"
)

// Outside Linux New says that the master needs Linux.
func TestNewOutsideLinux(t *testing.T) {
	b, err := New(Options{})
	if b != nil || !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("New: %v, %v; want nil and an error matching errors.ErrUnsupported", b, err)
	}
}
