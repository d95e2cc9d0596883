//go:build !linux

package main

import (
	"fmt"
	"os"
	"runtime"
)

// The bench runs a handoff master, which needs Linux (and perf and
// /proc): built for another OS, it only says so.
func main() {
	fmt.Fprintf(os.Stderr, "handoff-bench: needs Linux, not %s\n", runtime.GOOS)
	os.Exit(1)
}
