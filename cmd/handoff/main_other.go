//go:build !linux

package main

import (
	"fmt"
	"os"
	"runtime"
)

// The master needs Linux: built for another OS, handoff only says so.
func main() {
	fmt.Fprintf(os.Stderr, "handoff: the master needs Linux, not %s\n", runtime.GOOS)
	os.Exit(1)
}
