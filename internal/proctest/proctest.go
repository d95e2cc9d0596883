package proctest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

// Build builds the Go package pkg with go build and args (such as
// "-race") into a new temporary directory, as a binary called name. It
// returns the binary's path and a function that removes the directory.
// It is for TestMain, before any test runs: on a failure it prints the
// build's output and exits the process with status 1.
func Build(name, pkg string, args ...string) (bin string, remove func()) {
	dir, err := os.MkdirTemp("", "handoff-test-"+name)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	remove = func() { _ = os.RemoveAll(dir) }
	bin = filepath.Join(dir, name)
	// -buildvcs=false: in a checkout owned by another user, git refuses
	// to read it ("dubious ownership") and go build's VCS stamp fails.
	cmd := exec.Command("go", append(append([]string{"build", "-buildvcs=false"}, args...), "-o", bin, pkg)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building %s: %v\n%s", name, err, out)
		remove()
		os.Exit(1)
	}
	return bin, remove
}

// Main runs m's tests and checks, as goleak.VerifyTestMain does, that a
// successful run leaked no goroutine. Then it calls cleanup, if it is not
// nil, and exits with the tests' status.
func Main(m *testing.M, cleanup func()) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		if cleanup != nil {
			cleanup()
		}
		os.Exit(code)
	}))
}

// Output is a buffer safe for concurrent use, for what a process or a
// logger writes while the test reads it.
type Output struct {
	mu sync.Mutex   // guards b
	b  bytes.Buffer // what was written
}

// Write appends p.
func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.Write(p)
}

// String returns everything written so far.
func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}

// FreeAddr returns a loopback TCP address, 127.0.0.1:port, that is free
// now, for a process that the test starts to listen on.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// sbinDirs are where Debian installs daemons such as haproxy and nginx:
// on root's PATH, not on another user's.
var sbinDirs = []string{"/usr/sbin", "/sbin", "/usr/local/sbin"}

// LookPath finds the program name on PATH or, failing that, in the sbin
// directories, which another user's PATH leaves out.
func LookPath(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err == nil {
		return p, nil
	}
	for _, dir := range sbinDirs {
		if p, err2 := exec.LookPath(filepath.Join(dir, name)); err2 == nil {
			return p, nil
		}
	}
	return "", err
}
