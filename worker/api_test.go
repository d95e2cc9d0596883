package worker_test

import (
	"testing"

	"github.com/handoff-go/handoff/internal/apitest"
)

// The exported API is the same on every OS: a program that builds on Linux
// builds elsewhere, against the stubs of worker_other.go.
func TestAPISameOnEveryOS(t *testing.T) { apitest.SameOnEveryOS(t) }
